"""The files of a run: where decaf may write, how it writes, and reading a checkpoint back.

An output folder (``out_dir``) *holds a decaf run* when it has the marker file ``decaf_run.json``, which every
run writes when it starts there, or -- runs of decaf_lora before the marker existed -- an
``<algorithm>/checkpoint.pt``. decaf writes ``summary.csv``, ``plot.png``, the marker and one folder per
algorithm (``log.jsonl``, ``checkpoint.pt``, ``adapter/``) there, so it refuses, unless told to overwrite, a
folder with other contents that holds no run.

Every file is written through a temporary ``.<name>.<random>.tmp`` beside it, then renamed over it: a crash
leaves the old file or the new one, and a run that starts removes the temporaries an earlier one left. Files and
folders are created with modes 0666 / 0777 less the umask, like any other file the user creates.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterable, List

import torch

from .names import ALGORITHMS

RUN_MARKER = "decaf_run.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
ADAPTER = "adapter"
SUMMARY = "summary.csv"
PLOT = "plot.png"
CHECKPOINT_FORMAT = 2  # 2: per-agent states, inline or in shards (decaf_lora.checkpoints)
# what decaf writes through temporaries in out_dir and in out_dir/<algorithm>
_WRITTEN = (RUN_MARKER, SUMMARY, PLOT, CHECKPOINT, LOG, ADAPTER)

# ------------------------------------------------------------------------------------------------ writing


def _new_temp(path: Path, *, folder: bool = False) -> Path:
    # os.open/os.mkdir with 0666/0777 let the kernel apply the umask (mkstemp/mkdtemp force 0600/0700)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            if folder:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")  # pragma: no cover


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, fsync it, then rename over ``path``: a crash leaves either
    the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def check_replaceable(path: Path, replaceable: Callable[[Path], bool]) -> None:
    """FileExistsError unless ``path`` is free or a folder that ``replaceable`` recognises as decaf's own."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and replaceable(path)):
        kind = "folder" if path.is_dir() else "file"
        raise FileExistsError(f"{str(path)!r} is a {kind} that decaf did not write; refusing to replace it: "
                              "pass another path, or move it away")


def atomic_write_folder(path: Path, fill: Callable[[Path], None], *, replaceable: Callable[[Path], bool]) -> None:
    """Fill a temporary folder beside ``path``, then put it in place of ``path``.

    An existing ``path`` is replaced only when ``replaceable(path)`` says it is one of ours (an earlier export);
    anything else there is refused with FileExistsError before anything is written.
    """
    path = Path(path)
    check_replaceable(path, replaceable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path, folder=True)
    old = None
    try:
        fill(tmp)
        if path.exists():
            old = _new_temp(path, folder=True)  # an empty folder, renamed over; .tmp: a later run cleans it
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for p in (tmp, old):
            if p is not None:
                _remove(p)


# ------------------------------------------------------------------------------------------------ the output folder


def holds_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a decaf run (see the module docstring)."""
    out_dir = Path(out_dir)
    return (out_dir / RUN_MARKER).is_file() or any((out_dir / a / CHECKPOINT).is_file() for a in ALGORITHMS)


def check_out_path(out_dir, algorithms: Iterable[str]) -> None:
    """FileExistsError when ``out_dir``, one of its parents or ``out_dir/<algorithm>`` exists and is not a folder."""
    out = Path(out_dir)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "out_dir" if existing == out else f"out_dir {str(out)!r}: its parent"
        raise FileExistsError(f"{what} {str(existing)!r} is a file, not a folder; pass another out_dir (--out-dir)")
    for a in algorithms:
        sub = out / a
        if sub.exists() and not sub.is_dir():
            raise FileExistsError(f"{str(sub)!r} is a file, but decaf needs a folder there for the {a} run; "
                                  "pass another out_dir (--out-dir)")


def check_out_dir(out_dir, algorithms: Iterable[str], *, resume: bool, overwrite: bool) -> None:
    """Refuse, before any data or model is loaded, to write where that would destroy something.

    Raises:
        FileExistsError: ``out_dir``, one of its parents or ``out_dir/<algorithm>`` exists and is not a folder
            (always); ``out_dir`` is a non-empty folder that holds no decaf run (unless ``overwrite``); an
            ``<algorithm>/checkpoint.pt`` of an earlier run exists (unless ``resume`` or ``overwrite``).
    """
    out = Path(out_dir)
    algorithms = list(algorithms)
    check_out_path(out, algorithms)
    if overwrite:
        return
    if out.is_dir() and any(out.iterdir()) and not holds_run(out):
        raise FileExistsError(f"out_dir {str(out)!r} is not empty and holds no decaf run (no {RUN_MARKER}); decaf "
                              "would replace summary.csv, plot.png and <algorithm>/ there. Pass an empty or new "
                              "out_dir, or overwrite=True (--overwrite) to write there anyway")
    if resume:
        return
    found = [str(out / a / CHECKPOINT) for a in algorithms if (out / a / CHECKPOINT).exists()]
    if found:
        raise FileExistsError(f"{', '.join(found)}: checkpoint(s) of an earlier run. Pass resume=True (--resume) to "
                              "continue, overwrite=True (--overwrite) to start over, or another out_dir")


def mark_run(out_dir: Path) -> None:
    """Write the marker that says ``out_dir`` holds decaf runs (kept if it is there already)."""
    marker = Path(out_dir) / RUN_MARKER
    if marker.is_file():
        return
    text = json.dumps({"written_by": "decaf_lora", "contents": "summary.csv, plot.png and one folder per "
                       "algorithm (log.jsonl, checkpoint.pt, adapter/)"}, indent=2) + "\n"
    atomic_write_bytes(marker, lambda p: p.write_text(text))


def clean_stale_temporaries(folder: Path) -> List[Path]:
    """Remove the ``.<name>.<random>.tmp`` files and folders that an interrupted write of decaf left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.endswith(".tmp")
             and any(p.name.startswith(f".{name}.") for name in _WRITTEN)]
    for p in stale:
        _remove(p)
    return stale


# ------------------------------------------------------------------------------------------------ checkpoints

_CHECKPOINT_FIELDS = {"algorithm": str, "config": dict, "run_hash": str, "round": int, "world": int,
                      "shards": list, "agents": dict, "history": list, "bytes_total": int, "wall_time": (int, float)}
_SHARD_FIELDS = {"run_hash": str, "round": int, "agents": dict}
_AGENT_FIELDS = {"B": list, "A": list, "dense": dict, "optimizer": dict, "sampler": dict, "rng": dict}
_NOT_OURS = "it is damaged or was not written by decaf_lora; move it away, or start over with --overwrite"


def _load_error(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # torch's weights_only refusal advises loading with weights_only=False, i.e. running the file's code: a
    # checkpoint of ours never needs that, so that advice is not passed on
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or not text:
        return f"{type(exc).__name__}: not a checkpoint of tensors and plain values"
    return f"{type(exc).__name__}: {text}"


def read_checkpoint(path: Path, *, shard: bool = False) -> dict:
    """Load a checkpoint (or, with ``shard``, one process's shard of it; tensors and plain values only) and check
    that it has every field of its format.

    Raises:
        ValueError: the file is empty, unreadable, of another format, or lacks a field; the message says why.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): {_NOT_OURS}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign bytes
        raise ValueError(f"cannot read checkpoint {path} ({_load_error(exc)}): {_NOT_OURS}") from None
    if isinstance(state, dict) and isinstance(state.get("format"), int) and state["format"] < CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} was written by an older decaf_lora (format {state['format']}, now "
                         f"{CHECKPOINT_FORMAT}) and cannot be resumed; start over with --overwrite")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a decaf_lora checkpoint of format {CHECKPOINT_FORMAT}: {_NOT_OURS}")
    _check_fields(path, state, _SHARD_FIELDS if shard else _CHECKPOINT_FIELDS)
    for agent, st in state["agents"].items():
        if not isinstance(agent, int) or not isinstance(st, dict):
            raise ValueError(f"checkpoint {path}: agent entry {agent!r} is malformed: {_NOT_OURS}")
        _check_fields(path, st, _AGENT_FIELDS)
        rng = st["rng"].get("torch")
        if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8):
            raise ValueError(f"checkpoint {path}: agent {agent}'s RNG state is missing or not a byte tensor: "
                             f"{_NOT_OURS}")
    return state


def _check_fields(path: Path, state: dict, fields: dict) -> None:
    missing = [k for k in fields if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(map(repr, missing))}: {_NOT_OURS}")
    for k, kind in fields.items():
        if not isinstance(state[k], kind) or isinstance(state[k], bool):
            raise ValueError(f"checkpoint {path}: {k!r} is a {type(state[k]).__name__}: {_NOT_OURS}")
