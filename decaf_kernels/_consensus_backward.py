"""The backward of the consensus TSVD: the vector-Jacobian product of the truncated SVD factors, in float64.

The forward (``_consensus.py``) never forms the d x k products M_i; neither does this. Every M_i lies in the span
of its neighbours' stacked factors, so the SVD is recomputed there (Householder QR of the stacked factors + SVD of
the small core) and the SVD derivative (Townsend 2016) is applied inside that span; the gradient of M_i stays
factored (G_M = Lf Rf^T) and is pushed back to every B_j, A_j and W_ij through Grams.
"""

import torch
from torch import Tensor

from ._consensus import flatten_layers
from ._plan import plan

# Kept singular values closer than this (relative) are treated as tied: (a + b) / (s_j - s_i) would be mostly
# rounding there (float64 J and K carry errors of ~eps |J|), while the tie limit is exact for losses of B'A' and S.
_TIE_RTOL = float(torch.finfo(torch.float64).eps) ** 0.5


def svd_coupling(J: Tensor, K: Tensor, s: Tensor, R1: int) -> Tensor:
    """Off-diagonal part of the SVD derivative, Z_ij = (s_j a_ij + s_i b_ij) / (s_j^2 - s_i^2) with a = J - J^T,
    b = K - K^T (Townsend 2016), written as (a + b) / (2 (s_j - s_i)) + (a - b) / (2 (s_j + s_i)).

    Only the first term is singular when s_i = s_j. For two kept directions with (nearly) equal singular values the
    factors are not differentiable (any rotation inside their plane is an SVD), but B'A' and S are, and for any loss
    of those a + b vanishes at the tie; its finite limit, (J + J^T + K + K^T)_ij / (2 (s_i + s_j)), is used there.
    Pairs with no kept direction carry no gradient; a kept/dropped tie (sigma_rank = sigma_rank+1) is outside the
    contract and gets none either.
    """
    t = s.shape[-1]
    si, sj = s[..., :, None], s[..., None, :]
    diff, total = sj - si, sj + si
    inside = torch.arange(t, device=s.device) < R1
    off = ~torch.eye(t, dtype=torch.bool, device=s.device)
    tie = (inside[:, None] & inside[None, :] & off) & (diff.abs() <= _TIE_RTOL * torch.maximum(si, sj))
    ok = (inside[:, None] | inside[None, :]) & off & (total > 0) & (tie | (diff != 0))
    one = torch.ones_like(diff)
    a, b = J - J.mT, K - K.mT
    first = torch.where(tie, (J + J.mT + K + K.mT) / (2 * torch.where(ok, total, one)),
                        (a + b) / (2 * torch.where(ok & ~tie, diff, one)))
    second = (a - b) / (2 * torch.where(ok, total, one))
    return torch.where(ok, first + second, torch.zeros_like(diff))


def consensus_backward(gB, gA, gS, B, A, W, B_new, A_new, alpha: float, need_W: bool):
    """Vector-Jacobian product of the truncated SVD factors, in float64, without forming d x k matrices.

    Recomputes the SVD of every M_i inside the span of its neighbours' factors (Householder QR of the stacked
    factors + SVD of the small core), aligns the signs with the forward outputs, and applies the SVD
    derivative (Townsend 2016) restricted to that span, so the gradient of the product
    B_new @ A_new (and of S) is exact where sigma_rank > sigma_(rank+1), ties inside the kept block included (see
    svd_coupling). The result G_M = Lf @ Rf stays factored. W is (n_out, N): the gradients of the outputs are
    (n_out, ...), those of B and A (N, ...) and that of W (n_out, N).
    """
    f64 = torch.float64
    n_out, d, r, k = W.shape[0], B.shape[-2], B.shape[-1], A.shape[-1]
    R = B_new.shape[-1]
    Bf, Af = (t.to(f64) for t in flatten_layers(B, A))
    L = Bf.shape[1]
    gBf = gB.reshape(n_out, L, d, R).to(f64)
    gAf = gA.reshape(n_out, L, R, k).to(f64)
    gSf = gS.reshape(n_out, L, R).to(f64)
    Bn = B_new.reshape(n_out, L, d, R).to(f64)
    An = A_new.reshape(n_out, L, R, k).to(f64)
    Wd = W.to(B.device, f64)  # W may live on the host (see consensus_tsvd)

    pl = plan(W, B.device, r, alpha)  # the forward's plan; its tables are per distinct row, expanded to outputs here
    idx = pl.idx[pl.inverse]
    slot = idx.clamp(min=0)
    w = pl.weights[pl.inverse]  # (n_out, D), 0 on empty slots
    D = idx.shape[1]
    Bc = (Bf[slot] * w[:, :, None, None, None]).permute(0, 2, 3, 1, 4).reshape(n_out, L, d, D * r)
    Ac = (Af[slot] * pl.active[pl.inverse][:, :, None, None, None]).permute(0, 2, 1, 3, 4).reshape(n_out, L, D * r, k)
    Qb, Rb = torch.linalg.qr(Bc)
    Qa, Ra = torch.linalg.qr(Ac.mT)
    Uc, s, Vch = torch.linalg.svd(Rb @ Ra.mT, full_matrices=False)
    U, Vm = Qb @ Uc, Qa @ Vch.mT  # (n_out, L, d, t), (n_out, L, k, t)
    t = s.shape[-1]
    R1 = min(R, t)
    s1 = s[..., :R1]
    tiny = torch.finfo(f64).eps * max(d, k, D * r) * s[..., :1]
    live = s1 > tiny  # directions the forward returned as zero carry no gradient
    sgn = torch.sign((U[..., :R1] * Bn[..., :R1]).sum(-2) + (Vm[..., :R1] * An[..., :R1, :].mT).sum(-2))
    sgn = torch.where(sgn == 0, torch.ones_like(sgn), sgn)
    U = torch.cat([U[..., :R1] * sgn[..., None, :], U[..., R1:]], -1)
    Vm = torch.cat([Vm[..., :R1] * sgn[..., None, :], Vm[..., R1:]], -1)
    U1, V1 = U[..., :R1], Vm[..., :R1]

    s_safe = torch.where(live, s1, torch.ones_like(s1))
    gU1 = gBf[..., :R1] * s_safe.pow(alpha)[..., None, :]
    gV1 = gAf[..., :R1, :].mT * s_safe.pow(1.0 - alpha)[..., None, :]
    gs1 = gSf[..., :R1] + (gBf[..., :R1] * U1).sum(-2) * (alpha * s_safe.pow(alpha - 1.0))
    gs1 = gs1 + (gAf[..., :R1, :].mT * V1).sum(-2) * ((1.0 - alpha) * s_safe.pow(-alpha))
    keep = live.to(f64)
    gU1, gV1, gs1 = gU1 * keep[..., None, :], gV1 * keep[..., None, :], gs1 * keep

    pad = lambda x, n: torch.cat([x, x.new_zeros(*x.shape[:-1], n)], -1)  # noqa: E731
    gU, gV, gs = pad(gU1, t - R1), pad(gV1, t - R1), pad(gs1, t - R1)
    J = U.mT @ gU
    K = Vm.mT @ gV
    Z = svd_coupling(J, K, s, R1) + torch.diag_embed(gs)
    inv1 = torch.where(live, 1.0 / s_safe, torch.zeros_like(s_safe))
    P2 = (gU1 - U @ J[..., :, :R1]) * inv1[..., None, :]
    Q3 = (gV1 - Vm @ K[..., :, :R1]) * inv1[..., None, :]
    Lf = torch.cat([U @ Z, P2, U1], -1)  # G_M = Lf @ Rf^T
    Rf = torch.cat([Vm, V1, Q3], -1)  # (n_out, L, k, p)

    LB = torch.einsum("ildp,jldr->ijlpr", Lf, Bf)  # Lf_i^T B_j: i over the outputs, j over the inputs
    RA = torch.einsum("ilkp,jlrk->ijlpr", Rf, Af)  # Rf_i^T A_j^T
    dB = torch.einsum("ij,ildp,ijlpr->jldr", Wd, Lf, RA)
    dA = torch.einsum("ij,ijlpr,ilkp->jlrk", Wd, LB, Rf)
    dW = (LB * RA).sum((-1, -2, -3)) if need_W else torch.zeros_like(Wd)
    return dB.reshape(B.shape), dA.reshape(A.shape), dW
