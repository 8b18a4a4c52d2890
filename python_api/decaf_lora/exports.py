"""Exports: a trained adapter as a folder that peft, transformers and ``decaf predict`` load.

An export holds peft's ``save_pretrained`` files (``adapter_config.json`` with the task type and the base model's
Hub id or absolute folder, ``adapter_model.safetensors``), the tokenizer, ``decaf_export.json`` (what was trained:
labels, base model, agent, round) and a README that says how to load it. With ``merged=True`` it is instead a whole
transformers model (the LoRA products added into the base weights): bigger, but loadable by
``AutoModelForSequenceClassification`` / ``AutoModelForCausalLM`` and ``pipeline()`` with no other argument.

How each kind loads (checked by the tests):

* causal LM adapter: ``peft.AutoPeftModelForCausalLM.from_pretrained(path)``, or
  ``transformers.pipeline("text-generation", model=path)``;
* sequence-classification adapter: ``peft.AutoPeftModelForSequenceClassification.from_pretrained(path,
  **decaf_lora.exports.label_kwargs(path))`` -- the base model's config does not know the number of labels, so
  they are passed (``num_labels``, ``id2label``, ``label2id``); then ``pipeline("text-classification", model=m,
  tokenizer=path)``;
* the built-in mean-pooling classifier: :func:`load_exported` (its head is not a transformers architecture, so
  peft's Auto classes cannot rebuild it);
* any of them: :func:`load_exported` and ``decaf predict``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .models import (EncoderClassifier, _quiet_transformers, model_reference, resolve_model_path)

EXPORT_INFO = "decaf_export.json"
EXPORT_FORMAT = 2  # 2: kind, base, tokenizer and README in the folder (1: the mean-pooling classifier only)

__all__ = ["EXPORT_INFO", "Export", "label_kwargs", "load_export", "load_exported", "write_export"]


def write_export(folder: Path, model, tokenizer, info: dict, *, merged: bool = False) -> None:
    """Fill ``folder`` (a new, empty folder) with the export of ``model`` (a peft model from
    :func:`decaf_lora.models.build_lora_model`, holding the adapter to export), ``tokenizer`` and ``info``.

    The caller's model is left as it was: the base model's reference is set on a copy of peft's config, and a
    merged export merges a copy of the model.
    """
    folder = Path(folder)
    kind = getattr(model, "decaf_kind", "mean_pooling")
    if merged and kind == "mean_pooling":
        raise ValueError("merged=True needs a transformers architecture; the mean-pooling classifier (head="
                         "'mean_pooling', the built-in model's default) has none: export the adapter, or train "
                         "with head='sequence_classification'")
    base = model_reference(info["model"])
    if merged:
        whole = copy.deepcopy(model).merge_and_unload()
        whole.save_pretrained(str(folder))
    else:
        saved = model.peft_config["default"]
        model.peft_config["default"] = copy.copy(saved)
        model.peft_config["default"].base_model_name_or_path = base
        try:
            model.save_pretrained(str(folder))
        finally:
            model.peft_config["default"] = saved
    tokenizer.save_pretrained(str(folder))
    full = dict(info, kind=kind, base=base, merged=merged, format=EXPORT_FORMAT)
    (folder / EXPORT_INFO).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(_readme(full))


def _readme(info: dict) -> str:
    what = {"causal_lm": "a causal language model", "sequence_classification": "a sequence classifier",
            "mean_pooling": "a mean-pooling text classifier"}[info["kind"]]
    agent = "the averaged model" if info.get("agent") == "average" else f"agent {info.get('agent')}"
    lines = [f"# decaf_lora export: {what}", "",
             f"LoRA fine-tuned with decaf_lora ({info.get('algorithm')}, {agent}, round {info.get('round')}) on the "
             f"base model `{info['base']}`" + (" and merged into it." if info["merged"] else "."), "", "Load it:", "",
             "```python"]
    if info["merged"]:
        auto = "AutoModelForCausalLM" if info["kind"] == "causal_lm" else "AutoModelForSequenceClassification"
        task = "text-generation" if info["kind"] == "causal_lm" else "text-classification"
        lines += [f"from transformers import {auto}, pipeline", f"model = {auto}.from_pretrained(PATH)",
                  f"pipe = pipeline({task!r}, model=PATH)"]
    elif info["kind"] == "causal_lm":
        lines += ["from peft import AutoPeftModelForCausalLM", "model = AutoPeftModelForCausalLM.from_pretrained(PATH)",
                  "# or: transformers.pipeline('text-generation', model=PATH)"]
    elif info["kind"] == "sequence_classification":
        lines += ["from peft import AutoPeftModelForSequenceClassification",
                  "from decaf_lora.exports import label_kwargs",
                  "model = AutoPeftModelForSequenceClassification.from_pretrained(PATH, **label_kwargs(PATH))",
                  "# label_kwargs(PATH) is num_labels, id2label and label2id from decaf_export.json"]
    else:
        lines += ["from decaf_lora import load_exported", "model, info = load_exported(PATH)"]
    lines += ["```", "", "or from the command line: `decaf predict PATH --text \"...\"`.", ""]
    return "\n".join(lines)


def read_export_info(path: Union[str, os.PathLike]) -> dict:
    """``decaf_export.json`` of an export, completed for exports written before format 2."""
    path = Path(path)
    info_file = path / EXPORT_INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{path} holds no {EXPORT_INFO}: it was not written by decaf_lora's export")
    try:
        info = json.loads(info_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{info_file} is not valid JSON ({exc}); the export is damaged") from None
    info.setdefault("kind", "mean_pooling")
    info.setdefault("merged", False)
    return info


def label_kwargs(path: Union[str, os.PathLike]) -> dict:
    """``num_labels``, ``id2label`` and ``label2id`` of a classifier export, for peft's / transformers' loaders."""
    names = read_export_info(path).get("label_names")
    if not names:
        raise ValueError(f"{path} is not a classifier export (it has no label names)")
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


@dataclass
class Export:
    """A loaded export: the model (eval mode), its tokenizer and ``decaf_export.json``."""

    model: Any
    tokenizer: Any
    info: dict


def load_export(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu") -> Export:
    """Load any export of :func:`write_export` (and of decaf_lora before format 2) for inference."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    from transformers import AutoTokenizer

    path = Path(path)
    info = read_export_info(path)
    kind = info["kind"]
    if kind == "mean_pooling":
        from peft import PeftModel
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(resolve_model_path(info["model"])))
        model = PeftModel.from_pretrained(EncoderClassifier(encoder, len(info["label_names"])), str(path))
    elif info["merged"]:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSequenceClassification
        model = auto.from_pretrained(str(path))
    elif kind == "causal_lm":
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path))
    else:
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(str(path), **label_kwargs(path))
    tok_dir = path if (path / "tokenizer_config.json").is_file() else resolve_model_path(info["model"])
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.to(device).eval()
    return Export(model, tokenizer, info)


def load_exported(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu"):
    """``(model, info)`` of an export (see :func:`load_export`, which also gives the tokenizer)."""
    export = load_export(path, device=device)
    return export.model, export.info


def is_export(path: Optional[Path]) -> bool:
    return path is not None and (Path(path) / EXPORT_INFO).is_file()
