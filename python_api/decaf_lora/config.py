"""Run configuration: one dataclass, loadable from YAML/JSON, overridable from the command line.

The defaults are the built-in default task (what ``make demo`` runs): WordNet noun supersenses, the
all-MiniLM-L6-v2 encoder with LoRA on its query and value projections, 8 agents on a ring with
Metropolis-Hastings weights, Dirichlet(0.5) non-IID partition.

A leaf of the package: loading and checking a configuration imports neither torch nor numpy, transformers or
:mod:`decaf_kernels` (the names it checks against come from :mod:`decaf_lora.names`), so the command line can
refuse a bad setting at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from ._checks import check_choice, is_real, shown
from .names import (A_INITS, ALGORITHMS, BUILTIN_MODEL, CONSENSUS_METHODS, DATA_BUILTIN, DEFAULT_WORDNET_NOUNS,
                    GRAPHS, HEADS, MOMENT_POLICIES, PARTITION_AUTO, PARTITIONS, REPORT_TO, SPLITS, TASKS,
                    TIME_VARYING, WEIGHTS, WIRE_DTYPES)


@dataclass
class TrainConfig:
    """Everything that defines a run. Field names are also the config-file keys and (with dashes) the CLI flags."""

    # what to train
    algorithm: str = "decaf"
    algorithms: List[str] = field(default_factory=lambda: ["decaf", "dlora", "local", "fedavg"])  # for compare
    task: str = "classification"  # or "causal_lm"
    model: str = BUILTIN_MODEL  # the built-in name, a local transformers folder, or a Hub id in the local cache
    head: str = "auto"  # classification: mean_pooling (built-in default) or sequence_classification (Auto class)
    target_modules: List[str] = field(default_factory=lambda: ["query", "value"])
    rank: int = 8
    lora_alpha: float = 16.0
    rslora: bool = False
    lora_dropout: float = 0.0
    a_init: str = "shared"  # or "independent": each agent draws its own A (B = 0 either way)
    # data
    data: str = DATA_BUILTIN  # "wordnet" or a .csv/.jsonl file of (text, label)
    test_data: Optional[str] = None  # user data: a test file; without one, test_fraction of `data` is held out
    wordnet_path: str = DEFAULT_WORDNET_NOUNS
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: Optional[str] = None  # causal_lm: the prompt (masked out of the loss) ...
    completion_column: Optional[str] = None  # ... and the completion the model learns; else text_column
    train_size: int = 2000  # built-in task: examples picked class-balanced for training ...
    test_size: int = 260  # ... and for the test set (10 per class)
    test_fraction: float = 0.2
    max_length: int = 32
    partition: str = PARTITION_AUTO  # dirichlet for the built-in task, iid for user data
    dirichlet_alpha: float = 0.5
    shards_per_agent: int = 2
    # agents and graph
    agents: int = 8
    graph: str = "ring"
    adjacency: Optional[str] = None  # graph == "custom": a file with the 0/1 adjacency matrix
    weights: str = "metropolis"
    time_varying: Optional[str] = None
    er_p: float = 0.3
    # optimisation
    rounds: int = 20
    comm_every: int = 2  # local steps between communications (one round = comm_every steps per agent)
    batch_size: int = 16
    length_grouping: int = 8  # batches drawn from runs of 8 * batch_size examples sorted by length (0: off)
    fused: bool = False  # all of a process's agents in one forward/backward per local step (decaf_lora.fused)
    lr: float = 5e-3
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    moments: str = "procrustes"
    split: str = "balanced"
    consensus_method: str = "exact"
    # evaluation and output
    eval_every: int = 5
    eval_batch_size: int = 16  # test examples per batch and adapter; every adapter rides in one pass
    seed: int = 0
    seeds: Optional[List[int]] = None  # compare: every algorithm once per seed (overrides seed), mean +- std
    device: str = "cpu"
    out_dir: str = "runs/decaf"
    checkpoint_every: int = 10
    progress: bool = True
    report_to: List[str] = field(default_factory=lambda: ["csv"])  # csv, tensorboard and/or none
    # several processes (torchrun): see decaf_lora.processes
    dist_timeout: float = 300.0  # seconds a process waits for a peer before the run stops with an error
    wire_dtype: str = "float32"  # dtype of the parameters sent between processes ("bfloat16" halves the bytes)

    # Fields that do not change what a run computes: a checkpoint may be resumed with other values of these.
    NOT_HASHED = ("algorithms", "seeds", "rounds", "out_dir", "checkpoint_every", "progress", "eval_batch_size",
                  "device", "dist_timeout", "report_to")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every value that can be checked without touching files or models, and normalise it.

        Numbers may come as numeric strings (YAML 1.1 reads ``5e-3`` as a string) and become int/float; lists may
        come as comma-separated strings; paths may be ``os.PathLike``; ``"none"``/``"null"`` is None where None
        is allowed. Raises TypeError (wrong type) or ValueError (wrong value) naming the field, the value and what
        is expected; nothing is changed unless every field is valid.
        """
        values = {name: _normalise(name, getattr(self, name)) for name in config_fields()}
        if values["graph"] == "custom" and not values["adjacency"]:
            raise ValueError("graph='custom' needs adjacency=<file with a 0/1 matrix>")
        if values["partition"] == PARTITION_AUTO:
            # the built-in task keeps its non-IID setting; a user's data is split IID unless asked otherwise
            values["partition"] = "dirichlet" if values["data"] == DATA_BUILTIN else "iid"
        if (values["prompt_column"] is None) != (values["completion_column"] is None):
            raise ValueError("prompt_column and completion_column go together: give both (causal_lm on "
                             "prompt/completion pairs) or neither")
        if values["prompt_column"] is not None and values["task"] != "causal_lm":
            raise ValueError("prompt_column/completion_column are for task='causal_lm'")
        if values["task"] == "causal_lm":
            if values["data"] == DATA_BUILTIN:
                raise ValueError("task='causal_lm' needs your own data (data=<file>): the built-in WordNet task is "
                                 "classification")
            if values["partition"] != "iid":
                raise ValueError(f"partition={values['partition']!r} splits by class label; causal_lm data have "
                                 "no labels: use partition='iid'")
            if values["head"] != "auto":
                raise ValueError(f"head={values['head']!r} is for task='classification'")
        for name, value in values.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def run_hash(self) -> str:
        """Hash of the fields that define what a run computes (used to refuse a checkpoint of another run)."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.NOT_HASHED}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: dict) -> dict:
        """Run-defining fields whose values differ from ``other`` (a saved to_dict()): name -> (saved, now). A field
        that ``other`` lacks was added after it was saved: that run had what is now the field's default."""
        defaults = TrainConfig().to_dict() if any(k not in other for k in self.to_dict()) else {}
        return {k: (other.get(k, defaults.get(k)), v) for k, v in self.to_dict().items()
                if k not in self.NOT_HASHED and other.get(k, defaults.get(k)) != v}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def config_fields() -> dict:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


# ---------------------------------------------------------------------------------------------------- field checks

_PATHS = {"model", "data", "test_data", "wordnet_path", "adjacency", "out_dir"}
# minimum of each integer field
_INTS = {"rank": 1, "agents": 2, "rounds": 1, "comm_every": 1, "batch_size": 1, "eval_every": 1,
         "eval_batch_size": 1, "max_length": 1, "train_size": 1, "test_size": 1, "shards_per_agent": 1,
         "length_grouping": 0, "checkpoint_every": 0, "seed": 0}
# (low, low included, high, high included) of each float field
_FLOATS = {"lora_alpha": (0.0, False, math.inf, False), "lora_dropout": (0.0, True, 1.0, False),
           "test_fraction": (0.0, False, 1.0, False), "dirichlet_alpha": (0.0, False, math.inf, False),
           "er_p": (0.0, False, 1.0, True), "lr": (0.0, False, math.inf, False),
           "weight_decay": (0.0, True, math.inf, False), "max_grad_norm": (0.0, False, math.inf, False),
           "dist_timeout": (0.0, False, math.inf, False)}
_INT_NOTES = {"agents": " (a decentralised run needs two agents)", "length_grouping": " (0 or 1: off)",
              "checkpoint_every": " (0: no checkpoints)"}
_LIST_ITEM = {"algorithms": "algorithm", "report_to": "destination (or 'none')"}
_DEVICE = re.compile(r"(cpu|cuda(:\d+)?|auto)")
_CHOICES = {"algorithm": ALGORITHMS, "a_init": A_INITS, "moments": MOMENT_POLICIES, "split": SPLITS,
            "consensus_method": CONSENSUS_METHODS,
            "graph": GRAPHS + ("custom",), "weights": WEIGHTS, "time_varying": TIME_VARYING,
            "wire_dtype": WIRE_DTYPES, "task": TASKS, "head": HEADS,
            "partition": PARTITIONS + (PARTITION_AUTO,)}


def _number(name: str, value: Any, expected: str) -> float | int:
    """A finite int or float from a number or a numeric string; TypeError for anything else."""
    given = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise TypeError(f"{name} must be {expected}, got {shown(given)}") from None
    if not is_real(value):
        raise TypeError(f"{name} must be {expected}, got {shown(given)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {expected} (finite), got {given!r}")
    return value


def _normalise(name: str, value: Any) -> Any:
    """The checked, normalised value of field ``name`` (see TrainConfig.validate)."""
    kind = str(config_fields()[name].type)
    if kind.startswith("Optional[") and (value is None or (isinstance(value, str)
                                                          and value.strip().lower() in ("none", "null", ""))):
        return None
    if name in _INTS:
        low = _INTS[name]
        expected = ("a positive integer" if low == 1 else f"an integer >= {low}") + _INT_NOTES.get(name, "")
        number = _number(name, value, expected)
        if number != int(number) or number < low:
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        return int(number)
    if name in _FLOATS:
        low, low_in, high, high_in = _FLOATS[name]
        expected = f"a number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
        if high == math.inf:
            expected = f"a number {'>=' if low_in else '>'} {low:g}"
        number = float(_number(name, value, expected))
        if not ((low <= number if low_in else low < number) and (number <= high if high_in else number < high)):
            raise ValueError(f"{name} must be {expected}, got {value!r}")
        return number
    if kind == "bool":
        # a quoted "false" is a non-empty string, which Python counts as true: refuse it rather than guess
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false (a boolean, unquoted in YAML/JSON), got {shown(value)}")
        return value
    if name == "seeds":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"seeds must be a list of integers or a comma-separated string, got {shown(value)}")
        items = [x for x in items if not (isinstance(x, str) and not x.strip())]
        seeds = [_number("seeds", x, "integers >= 0") for x in items]
        if not seeds or any(x != int(x) or x < 0 for x in seeds):
            raise ValueError(f"seeds must be one or more integers >= 0, got {value!r}")
        seeds = [int(x) for x in seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds has duplicates: {seeds}")
        return seeds
    if kind == "List[str]":
        if isinstance(value, str):  # "decaf,dlora" from the command line
            value = value.split(",")
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} must be a list of names or a comma-separated string, got {shown(value)}")
        items = [v.strip() for v in value if v.strip()]
        if not items:
            raise ValueError(f"{name} must name at least one {_LIST_ITEM.get(name, 'module')}, "
                             f"got {value!r}")
        if name == "report_to":
            for a in items:
                if a not in REPORT_TO:
                    raise ValueError(f"unknown report_to {a!r}; expected a comma-separated list of {REPORT_TO}")
            if "none" in items and len(items) > 1:
                raise ValueError(f"report_to 'none' cannot be combined with others, got {items}")
        if name == "algorithms":
            for a in items:
                if a not in ALGORITHMS:
                    raise ValueError(f"unknown algorithm {a!r} in algorithms; expected one of {ALGORITHMS}")
            if len(set(items)) != len(items):
                raise ValueError(f"algorithms has duplicates: {items}")
        return items
    # strings: paths, choices, names
    if name in _PATHS and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        what = {"data": f"{DATA_BUILTIN!r} or the path of a .csv/.jsonl file (a string)",
                "model": f"{BUILTIN_MODEL!r} or the path of a transformers model folder (a string)"}.get(
                    name, "a path (a string)" if name in _PATHS else "a string")
        raise TypeError(f"{name} must be {what}, got {shown(value)}")
    choices = _CHOICES.get(name)
    if name == "algorithm":
        check_choice("algorithm", value, choices)
    elif choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    if name == "device" and not _DEVICE.fullmatch(value):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict of TrainConfig fields (dashes allowed).

    Raises:
        FileNotFoundError: no such file. ValueError: a folder, another extension, text that is not UTF-8, or
        YAML/JSON that does not parse (the message names the file, line and column) or is not a mapping.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {str(path)!r} is a folder; expected a .yaml, .yml or .json file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".yaml", ".yml", ".json"):
        raise ValueError(f"config file {str(path)!r}: expected a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {str(path)!r}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg}") from None
    else:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("reading a YAML config needs PyYAML: pip install pyyaml (or use a .json config)") from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"config file {str(path)!r}: invalid YAML{where}: {problem}") from None
        raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of field names to values, "
                         f"got a {type(raw).__name__}")
    return normalise_keys(raw, source=str(path))


def normalise_keys(raw: dict, *, source: str) -> dict:
    fields = config_fields()
    out: dict[str, Any] = {}
    for key, val in raw.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ValueError(f"{source}: unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        out[name] = val
    return out
