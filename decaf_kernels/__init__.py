"""decaf_kernels: fused kernels for decentralized LoRA (DeCAF consensus truncated SVD, gossip mixing, diagnostics).

Public ops (registered with torch.library under ``decaf_kernels::``):

* :func:`consensus_tsvd`     DeCAF's consensus step: best rank-r factors of sum_j W_ij B_j A_j, never forming it
* :func:`mix_factors`        DLoRA gossip of one factor stack
* :func:`mix_products`       the dense mixed products (small shapes, checks)
* :func:`consensus_distance` how far the agents' products are from agreeing
* :func:`interference`       DLoRA's ||mix of products - product of mixed factors||
* :func:`backend_info`       which implementation each op uses on this machine
"""

from ._backend import backend_info
from .ops import consensus_distance, consensus_tsvd, interference, mix_factors, mix_products

__version__ = "0.1.0"

__all__ = ["consensus_tsvd", "mix_factors", "mix_products", "consensus_distance", "interference", "backend_info",
           "__version__"]
