"""Pure-PyTorch references: they read like the maths, run in any dtype (float64 included) on any device.

Two kinds live here:

* ``*_ref`` versions of the public ops, written densely (they form the d x k products). They are the test
  oracle's PyTorch twin and are only meant for small shapes.
* ``pair_gram_torch``, ``mix_lowrank_torch`` and ``small_core_torch``: the building blocks of the factored
  algorithm in plain PyTorch, used when no compiled or Triton kernel applies (see ``backend_info()``).
"""

from __future__ import annotations

import torch

__all__ = [
    "mix_factors_ref",
    "mix_products_ref",
    "consensus_tsvd_ref",
    "pair_gram_torch",
    "mix_lowrank_torch",
    "small_core_torch",
]


def mix_factors_ref(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """X_new[o] = sum_j W[o, j] X[j] for W (n_out, N) and X (N, ...): (n_out, ...)."""
    return torch.einsum("ij,j...->i...", W.to(X.dtype), X)


def mix_products_ref(B: torch.Tensor, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """M[o] = sum_j W[o, j] B[j] @ A[j] for W (n_out, N): (n_out, ..., d, k)."""
    return torch.einsum("ij,j...->i...", W.to(B.dtype), B @ A)


def consensus_tsvd_ref(B, A, W, rank: int, alpha: float = 0.5):
    """Dense float64 consensus TSVD: SVD of every M_o, truncated to `rank`, split U S^alpha, S^(1-alpha) V^T.

    W: (n_out, N) over the N agents of B, A. Returns float64 (B_new, A_new, S) with n_out in dimension 0. Only for
    small d, k (it forms the d x k matrices).
    """
    M = mix_products_ref(B.double(), A.double(), W.double())
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    U, S, Vh = U[..., :rank], S[..., :rank], Vh[..., :rank, :]
    return U * S.pow(alpha).unsqueeze(-2), S.pow(1.0 - alpha).unsqueeze(-1) * Vh, S


def pair_gram_torch(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """out[l, t] = x[j_t, l]^T @ x[k_t, l] for x: (N, L, P, Q), pairs: (T, 2). Returns (L, T, Q, Q) in float64."""
    xj = x[pairs[:, 0]].to(torch.float64)
    xk = x[pairs[:, 1]].to(torch.float64)
    return torch.einsum("tlpq,tlps->ltqs", xj, xk)


def mix_lowrank_torch(x: torch.Tensor, idx: torch.Tensor, t: torch.Tensor, out_dtype: torch.dtype | None = None):
    """out[i, l] = sum_{s: idx[i,s] >= 0} x[idx[i,s], l] @ t[i, l, s].

    x: (N, L, P, Q), idx: (n_out, D), t: (n_out, L, D, Q, R). Returns (n_out, L, P, R) in out_dtype (default x.dtype),
    computed in t's dtype.
    """
    mask = (idx >= 0).to(t.dtype)
    xs = x[idx.clamp(min=0)].to(t.dtype)  # (n_out, D, L, P, Q)
    out = torch.einsum("idlpq,ildqr,id->ilpr", xs, t, mask)
    return out.to(out_dtype or x.dtype)


def _psd_sqrt(G: torch.Tensor) -> torch.Tensor:
    """R with R^T R = G for a batch of symmetric PSD G, from an eigendecomposition.

    Eigenvalues at rounding level (<= m * eps * lambda_max) are set to zero, so exactly rank-deficient Grams
    (zero or duplicate agents) give exactly zero rows instead of noise amplified by a square root.
    """
    m = G.shape[-1]
    lam, V = torch.linalg.eigh(0.5 * (G + G.mT))
    cut = lam.amax(-1, keepdim=True).clamp(min=0) * (m * torch.finfo(G.dtype).eps)
    lam = torch.where(lam > cut, lam, torch.zeros_like(lam))
    return lam.sqrt().unsqueeze(-1) * V.mT


def small_core_torch(Gb: torch.Tensor, Ga: torch.Tensor, rank: int, alpha: float):
    """Top-`rank` SVD of M = Bc Ac from its Grams Gb = Bc^T Bc, Ga = Ac Ac^T (float64, batched (.., m, m)).

    Returns (X, Y, S): X (.., m, rank), Y (.., rank, m), S (.., rank) such that Bc X = U_r S_r^alpha and
    Y Ac = S_r^(1-alpha) V_r^T. Same contract as the C++ kernel ``_C.small_core``; no inverse of a
    factor is ever formed, and numerically null directions come out as zero columns / rows.
    """
    m = Gb.shape[-1]
    sb = Gb.diagonal(dim1=-2, dim2=-1).amax(-1).clamp(min=0)
    sa = Ga.diagonal(dim1=-2, dim2=-1).amax(-1).clamp(min=0)
    safe_b = torch.where(sb > 0, sb, torch.ones_like(sb))
    safe_a = torch.where(sa > 0, sa, torch.ones_like(sa))
    Rb = _psd_sqrt(Gb / safe_b[..., None, None])
    Ra = _psd_sqrt(Ga / safe_a[..., None, None])
    C = Rb @ Ra.mT
    Uc, s, Vch = torch.linalg.svd(C)
    Uc, s, Vc = Uc[..., :rank], s[..., :rank], Vch[..., :rank, :].mT
    null = (s <= max(m, 2) * torch.finfo(s.dtype).eps * s[..., :1]) | (s <= 0)
    null = null | ((sb == 0) | (sa == 0))[..., None]
    rb, ra = safe_b[..., None], safe_a[..., None]
    S = torch.where(null, torch.zeros_like(s), s * rb.sqrt() * ra.sqrt())
    s_safe = torch.where(null, torch.ones_like(s), s)
    # S_true = sqrt(sb) sqrt(sa) s; X = sqrt(sa) Ra^T Vc S_true^(alpha-1), Y = S_true^-alpha sqrt(sb) Uc^T Rb,
    # written as products of powers so nothing under- or overflows for Gram diagonals of 1e+-300
    xs = torch.where(null, torch.zeros_like(s), s_safe.pow(alpha - 1.0) * rb.pow((alpha - 1.0) / 2) * ra.pow(alpha / 2))
    ys = torch.where(null, torch.zeros_like(s), s_safe.pow(-alpha) * rb.pow((1.0 - alpha) / 2) * ra.pow(-alpha / 2))
    X = (Ra.mT @ Vc) * xs.unsqueeze(-2)
    Y = ys.unsqueeze(-1) * (Uc.mT @ Rb)
    if rank > s.shape[-1]:  # more directions asked for than the core has: the rest are null
        extra = rank - s.shape[-1]
        X = torch.cat([X, X.new_zeros(*X.shape[:-1], extra)], -1)
        Y = torch.cat([Y, Y.new_zeros(*Y.shape[:-2], extra, m)], -2)
        S = torch.cat([S, S.new_zeros(*S.shape[:-1], extra)], -1)
    return X, Y, S
