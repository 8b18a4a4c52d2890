"""decaf_kernels: fused kernels for decentralized LoRA (DeCAF consensus truncated SVD, gossip mixing, diagnostics).

Public ops (registered with torch.library under ``decaf_kernels::``):

* :func:`consensus_tsvd`     DeCAF's consensus step: best rank-r factors of sum_j W_ij B_j A_j, never forming it
* :func:`mix_factors`        DLoRA gossip of one factor stack
* :func:`mix_products`       the dense mixed products (small shapes, checks)
* :func:`consensus_distance` how far the agents' products are from agreeing
* :func:`interference`       DLoRA's ||mix of products - product of mixed factors||
* :func:`consensus_tsvd_grouped` consensus_tsvd over stacks of different shapes, one call per shape
* :class:`CapturedConsensus` one consensus step recorded in a CUDA graph, replayed every round
* :func:`backend_info`       which implementation each op uses on this machine
"""

from ._backend import backend_info
from .captured import CapturedConsensus
from .grouped import consensus_tsvd_grouped
from .ops import consensus_distance, consensus_tsvd, interference, mix_factors, mix_products

__version__ = "0.1.0"

__all__ = ["consensus_tsvd", "consensus_tsvd_grouped", "CapturedConsensus", "mix_factors", "mix_products", "consensus_distance", "interference", "backend_info",
           "__version__"]
