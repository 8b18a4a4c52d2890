"""decaf_lora: decentralized LoRA training on top of decaf_kernels.

This package is a skeleton: the graphs, algorithms (local, DLoRA, DLoRA-FA, DeCAF, FedAvg-LoRA), peft
integration, data partitioning and the ``decaf`` command line arrive with the training-loop issue. It
depends on :mod:`decaf_kernels`, never the other way round.
"""

import decaf_kernels as _kernels  # noqa: F401  (the dependency direction this package keeps)

__version__ = "0.1.0"
__all__ = ["__version__"]
