"""Run configuration: one dataclass, loadable from YAML/JSON, overridable from the command line.

The defaults are the built-in default task (what ``make demo`` runs): WordNet noun supersenses, the
all-MiniLM-L6-v2 encoder with LoRA on its query and value projections, 8 agents on a ring with
Metropolis-Hastings weights, Dirichlet(0.5) non-IID partition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from .algorithms import ALGORITHMS, MOMENT_POLICIES
from .models import BUILTIN_MODEL

DATA_BUILTIN = "wordnet"
SPLITS = ("balanced", "left", "right")


@dataclass
class TrainConfig:
    """Everything that defines a run. Field names are also the config-file keys and (with dashes) the CLI flags."""

    # what to train
    algorithm: str = "decaf"
    algorithms: List[str] = field(default_factory=lambda: ["decaf", "dlora", "local", "fedavg"])  # for compare
    model: str = BUILTIN_MODEL
    target_modules: List[str] = field(default_factory=lambda: ["query", "value"])
    rank: int = 8
    lora_alpha: float = 16.0
    rslora: bool = False
    lora_dropout: float = 0.0
    # data
    data: str = DATA_BUILTIN  # "wordnet" or a .csv/.jsonl file of (text, label)
    test_data: Optional[str] = None  # user data: a test file; without one, test_fraction of `data` is held out
    wordnet_path: str = "/usr/share/wordnet/data.noun"
    text_column: str = "text"
    label_column: str = "label"
    train_size: int = 2000  # built-in task: examples picked class-balanced for training ...
    test_size: int = 260  # ... and for the test set (10 per class)
    test_fraction: float = 0.2
    max_length: int = 32
    partition: str = "dirichlet"
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
    lr: float = 5e-3
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    moments: str = "procrustes"
    split: str = "balanced"
    consensus_method: str = "exact"
    # evaluation and output
    eval_every: int = 5
    eval_batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/decaf"
    checkpoint_every: int = 10
    progress: bool = True

    # Fields that do not change what a run computes: a checkpoint may be resumed with other values of these.
    NOT_HASHED = ("algorithms", "rounds", "out_dir", "checkpoint_every", "progress", "eval_batch_size", "device")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every value that can be checked without touching files or models; ValueError names the field."""

        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(msg)

        if isinstance(self.algorithms, str):  # "decaf,dlora" from the command line
            self.algorithms = [a.strip() for a in self.algorithms.split(",") if a.strip()]
        if isinstance(self.target_modules, str):
            self.target_modules = [t.strip() for t in self.target_modules.split(",") if t.strip()]
        need(self.algorithm in ALGORITHMS, f"unknown algorithm {self.algorithm!r}; expected one of {ALGORITHMS}")
        need(len(self.algorithms) > 0, "algorithms must name at least one algorithm")
        for a in self.algorithms:
            need(a in ALGORITHMS, f"unknown algorithm {a!r} in algorithms; expected one of {ALGORITHMS}")
        need(len(set(self.algorithms)) == len(self.algorithms), f"algorithms has duplicates: {self.algorithms}")
        need(len(self.target_modules) > 0, "target_modules must name at least one module")
        for name in ("rank", "agents", "rounds", "comm_every", "batch_size", "eval_every", "eval_batch_size",
                     "max_length", "train_size", "test_size", "shards_per_agent"):
            val = getattr(self, name)
            need(isinstance(val, int) and not isinstance(val, bool) and val >= 1,
                 f"{name} must be a positive integer, got {val!r}")
        need(self.agents >= 2, f"agents must be >= 2 for a decentralised run, got {self.agents}")
        need(isinstance(self.length_grouping, int) and self.length_grouping >= 0,
             f"length_grouping must be an integer >= 0 (0 or 1: off), got {self.length_grouping!r}")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
             f"checkpoint_every must be an integer >= 0 (0: no checkpoints), got {self.checkpoint_every!r}")
        need(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        need(0 < self.test_fraction < 1, f"test_fraction must be in (0, 1), got {self.test_fraction}")
        need(self.dirichlet_alpha > 0, f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        need(0 < self.er_p <= 1, f"er_p must be in (0, 1], got {self.er_p}")
        need(self.moments in MOMENT_POLICIES, f"moments must be one of {MOMENT_POLICIES}, got {self.moments!r}")
        need(self.split in SPLITS, f"split must be one of {SPLITS}, got {self.split!r}")
        need(self.consensus_method in ("exact", "randomized", "auto"),
             f"consensus_method must be 'exact', 'randomized' or 'auto', got {self.consensus_method!r}")
        from .data import PARTITIONS
        from .graphs import GRAPHS, TIME_VARYING, WEIGHTS

        need(self.partition in PARTITIONS, f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        need(self.graph in GRAPHS + ("custom",), f"graph must be one of {GRAPHS + ('custom',)}, got {self.graph!r}")
        need(self.graph != "custom" or self.adjacency, "graph='custom' needs adjacency=<file with a 0/1 matrix>")
        need(self.weights in WEIGHTS, f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        need(self.time_varying in TIME_VARYING, f"time_varying must be one of {TIME_VARYING}, got {self.time_varying!r}")

    # ------------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def run_hash(self) -> str:
        """Hash of the fields that define what a run computes (used to refuse a checkpoint of another run)."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.NOT_HASHED}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: dict) -> dict:
        """Run-defining fields whose values differ from ``other`` (a saved to_dict()): name -> (saved, now)."""
        return {k: (other.get(k), v) for k, v in self.to_dict().items()
                if k not in self.NOT_HASHED and other.get(k) != v}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def config_fields() -> dict:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_config_file(path: str | Path) -> dict:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict of TrainConfig fields (dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("reading a YAML config needs PyYAML: pip install pyyaml (or use a .json config)") from exc
        raw = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        raw = json.loads(text)
    else:
        raise ValueError(f"config file {str(path)!r}: expected a .yaml, .yml or .json file")
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of field names to values")
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
