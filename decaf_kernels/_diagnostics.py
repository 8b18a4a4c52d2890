"""The diagnostics' maths: how far agents are from agreeing, and DLoRA's interference, without d x k matrices.

Both are inner products of LoRA products, <B_i A_i, B_j A_j>_F = sum (B_i^T B_j) * (A_i A_j^T), taken through
r x r Grams in float64, so they resolve distances down to about 1e-8 of the products' norm.
"""

import torch
from torch import Tensor

from ._consensus import compute_dtype, flatten_layers


def grams(B64: Tensor, A64: Tensor, B2: Tensor, A2: Tensor) -> Tensor:
    """<B_i A_i, B2_j A2_j>_F for all i, j, per layer: (L, N, N2), through r x r Grams (no d x k matrices)."""
    GB = torch.einsum("ildr,jlds->lijrs", B64, B2)
    GA = torch.einsum("ilrk,jlsk->lijrs", A64, A2)
    return (GB * GA).sum((-1, -2))


def consensus_distance(B: Tensor, A: Tensor) -> Tensor:
    """(*batch,) RMS distance of the agents' products from their mean (see ops.consensus_distance)."""
    N = B.shape[0]
    Bf, Af = (t.to(torch.float64) for t in flatten_layers(B, A))
    K = grams(Bf, Af, Bf, Af)  # (L, N, N)
    sq = K.diagonal(dim1=-2, dim2=-1).sum(-1) - K.sum((-1, -2)) / N
    out = (sq.clamp(min=0) / N).sqrt()
    return out.reshape(B.shape[1:-2]).to(compute_dtype(B.dtype))


def interference(B: Tensor, A: Tensor, W: Tensor, relative: bool) -> Tensor:
    """(n_out, *batch) ||mix of products - product of mixed factors|| per output, W: (n_out, N) (see
    ops.interference)."""
    n_out = W.shape[0]
    Bf, Af = (t.to(torch.float64) for t in flatten_layers(B, A))
    W64 = W.to(torch.float64)
    Bbar = torch.einsum("ij,jldr->ildr", W64, Bf)
    Abar = torch.einsum("ij,jlrk->ilrk", W64, Af)
    K = grams(Bf, Af, Bf, Af)  # <P_j, P_k> over the inputs
    norm_M = torch.einsum("ij,ljk,ik->li", W64, K, W64)  # ||M_i||^2, (L, n_out)
    cross = torch.einsum("ij,lji->li", W64, grams(Bf, Af, Bbar, Abar))  # <M_i, Bbar_i Abar_i>
    GBb = torch.einsum("ildr,ilds->ilrs", Bbar, Bbar)
    GAb = torch.einsum("ilrk,ilsk->ilrs", Abar, Abar)
    norm_mix = (GBb * GAb).sum((-1, -2)).mT  # (L, n_out) ||Bbar_i Abar_i||^2
    sq = (norm_M - 2 * cross + norm_mix).clamp(min=0)
    out = sq.sqrt()
    if relative:
        nm = norm_M.clamp(min=0).sqrt()
        out = torch.where(nm > 0, out / torch.where(nm > 0, nm, torch.ones_like(nm)), torch.zeros_like(out))
    return out.mT.reshape(n_out, *B.shape[1:-2]).to(compute_dtype(B.dtype))
