"""``decaf predict``: texts in, labels (classifier exports) or generations (causal LM exports) out.

Texts come from ``--text`` (repeatable), an ``--input`` file (``.txt``: one text per line; ``.csv`` / ``.jsonl``:
the column the model was trained on, or ``--text-column``), or standard input. Each prediction is one JSON line:
``{"text", "label", "score"}`` (the most likely label and its probability) or ``{"prompt", "generation"}``
(greedy decoding, at most ``--max-new-tokens`` tokens, stopping at the end-of-sequence token). They go to
standard output, or to ``--output FILE`` (written atomically).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterable, List, Optional

import torch


def read_texts(path: Path, column: Optional[str]) -> List[str]:
    """The texts of an input file (see the module docstring); ValueError naming the file and line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--input {str(path)!r}: no such file")
    ext = path.suffix.lower()
    texts: List[str] = []
    try:
        if ext in (".csv", ".jsonl", ".json"):
            if column is None:
                raise ValueError(f"--input {path}: say which column holds the texts (--text-column)")
            with open(path, encoding="utf-8-sig", newline="") as fh:
                if ext == ".csv":
                    reader = csv.DictReader(fh)
                    if column not in (reader.fieldnames or []):
                        raise ValueError(f"{path}: no column {column!r}; columns: {reader.fieldnames}")
                    rows = ((reader.line_num, row[column]) for row in reader)
                else:
                    rows = ((n, _json_field(path, n, line, column)) for n, line in enumerate(fh, 1) if line.strip())
                for n, value in rows:
                    if not isinstance(value, str) or not value.strip():
                        raise ValueError(f"{path}:{n}: column {column!r} must hold a non-empty string, got {value!r}")
                    texts.append(value)
        else:
            with open(path, encoding="utf-8") as fh:
                texts = [line.rstrip("\n") for line in fh if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not texts:
        raise ValueError(f"--input {path}: no texts found")
    return texts


def _json_field(path: Path, n: int, line: str, column: str):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or column not in obj:
        raise ValueError(f"{path}:{n}: expected a JSON object with key {column!r}")
    return obj[column]


def _batches(items: List[str], size: int) -> Iterable[List[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def classify(export, texts: List[str], *, batch_size: int = 32, max_length: Optional[int] = None) -> List[dict]:
    """The most likely label of each text, with its probability."""
    from .models import model_output_logits

    names = export.info["label_names"]
    device = next(export.model.parameters()).device
    out = []
    for chunk in _batches(texts, batch_size):
        enc = export.tokenizer(chunk, padding=True, truncation=True, max_length=max_length or 512,
                               return_tensors="pt").to(device)
        logits = model_output_logits(export.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
        prob = torch.softmax(logits.float(), -1)
        score, label = prob.max(-1)
        out += [{"text": t, "label": names[int(k)], "score": round(float(p), 6)}
                for t, k, p in zip(chunk, label, score)]
    return out


@torch.no_grad()
def generate(export, prompts: List[str], *, batch_size: int = 8, max_new_tokens: int = 32) -> List[dict]:
    """Greedy continuations of ``prompts``, encoded as the prompts of training were."""
    from .lm_data import encode_prompts

    tok = export.tokenizer
    device = next(export.model.parameters()).device
    out = []
    for chunk in _batches(prompts, batch_size):
        ids, mask = encode_prompts(tok, chunk, export.info.get("max_length"))  # left-padded for generation
        ids, mask = ids.to(device), mask.to(device)
        seq = export.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = seq[:, ids.shape[1]:]
        out += [{"prompt": p, "generation": tok.decode(row, skip_special_tokens=True)} for p, row in zip(chunk, new)]
    return out


def main(args) -> int:
    """The ``decaf predict`` subcommand (``args``: the parsed flags of :mod:`decaf_lora.cli`)."""
    from .exports import load_export, read_export_info
    from .models import pick_device
    from .runfiles import atomic_write_bytes

    export_dir = Path(args.export)
    info = read_export_info(export_dir)  # before the model loads: a wrong folder fails at once
    lm = info.get("kind") == "causal_lm"
    texts = list(getattr(args, "text", None) or [])
    if getattr(args, "input", None):
        column = getattr(args, "text_column", None) or (info.get("prompt_column") if lm else None) \
            or info.get("text_column")
        texts += read_texts(Path(args.input), column)
    if not texts:
        if sys.stdin.isatty():
            raise ValueError("no texts: pass --text TEXT (repeatable), --input FILE, or texts on standard input")
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ValueError("no texts on standard input")
    batch_size = int(getattr(args, "batch_size", None) or (8 if lm else 32))
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    max_new = int(getattr(args, "max_new_tokens", None) or 32)
    if max_new < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new}")
    if getattr(args, "output", None) and Path(args.output).exists():
        raise FileExistsError(f"--output {args.output!r} exists; decaf predict does not overwrite files: pass "
                              "another path, or move it away")
    export = load_export(export_dir, device=pick_device(getattr(args, "device", None) or "cpu"))
    if lm:
        rows = generate(export, texts, batch_size=batch_size, max_new_tokens=max_new)
    else:
        rows = classify(export, texts, batch_size=batch_size, max_length=info.get("max_length"))
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if getattr(args, "output", None):
        atomic_write_bytes(Path(args.output), lambda p: p.write_text(text, encoding="utf-8"))
        print(f"{len(rows)} predictions: {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
