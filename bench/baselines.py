"""The comparison set of docs/design.md, in plain PyTorch (this module never imports decaf_kernels).

Every method has the signature ``method(B, A, W, rank) -> (B_new, A_new)`` with
``B: (N, *batch, d, r)``, ``A: (N, *batch, r, k)``, ``W: (N, N)`` (row i = the weights agent i gives
its neighbours) and returns ``B_new: (N, *batch, d, rank)``, ``A_new: (N, *batch, rank, k)`` in the
input dtype, such that ``B_new[i] @ A_new[i]`` approximates the best rank-``rank`` approximation of
``M_i = sum_j W[i, j] B[j] @ A[j]`` with the balanced split ``U S^1/2, S^1/2 V^T``.

* ``dense_svd``             materialise every M_i, ``torch.linalg.svd``, truncate (paper prototype)
* ``dense_svd_lowrank``     materialise every M_i, ``torch.svd_lowrank(q=rank+8, niter=2)``
* ``factored_householder``  stacked neighbour factors, Householder QR of both, SVD of the small core
* ``factored_cholesky``     the same with Cholesky-QR on Gram matrices; the strongest pure-PyTorch
                            version we could write, and the bar the library has to beat
* ``dlora_mix``             DLoRA gossip of B and A separately (not a consensus TSVD: the lower bar)

``optimality_error`` / ``OptimalityOracle`` judge any result against a float64 LAPACK truncated SVD.

bf16 / fp16 inputs are computed in float32 and the result is cast back, like the library does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = [
    "Neighbours",
    "neighbours_of",
    "dense_products",
    "dense_svd",
    "dense_svd_lowrank",
    "factored_householder",
    "factored_cholesky",
    "dlora_mix",
    "OptimalityOracle",
    "optimality_error",
    "BASELINES",
]


# --------------------------------------------------------------------------------------------------
# shared helpers


def _check(B: torch.Tensor, A: torch.Tensor, W: torch.Tensor, rank: int | None):
    if not isinstance(B, torch.Tensor) or not isinstance(A, torch.Tensor) or not isinstance(W, torch.Tensor):
        raise TypeError("B, A and W must be torch.Tensors")
    if B.dim() < 3 or A.dim() != B.dim():
        raise ValueError(f"B must be (N, *batch, d, r) and A (N, *batch, r, k); got {tuple(B.shape)}, {tuple(A.shape)}")
    if B.shape[:-2] != A.shape[:-2] or B.shape[-1] != A.shape[-2]:
        raise ValueError(f"B {tuple(B.shape)} and A {tuple(A.shape)} do not chain as (.., d, r) @ (.., r, k)")
    N = B.shape[0]
    if W.shape != (N, N):
        raise ValueError(f"W must be ({N}, {N}) for {N} agents, got {tuple(W.shape)}")
    r = B.shape[-1]
    rank = r if rank is None else rank
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    return rank


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _balanced_split(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, rank: int, out_dtype: torch.dtype):
    """``U S^1/2`` and ``S^1/2 V^T`` from a (possibly wider) SVD, truncated to ``rank`` columns."""
    root = S[..., :rank].clamp_min(0).sqrt()
    B_new = U[..., :rank] * root.unsqueeze(-2)
    A_new = root.unsqueeze(-1) * Vh[..., :rank, :]
    return B_new.to(out_dtype), A_new.to(out_dtype)


@dataclass(frozen=True)
class Neighbours:
    """Padded neighbour lists of a mixing matrix: agent i mixes ``index[i, a]`` with ``weight[i, a]``.

    Rows with fewer than ``degree`` non-zeros are padded with the agent itself and weight 0.
    ``regular`` says whether no padding was needed (every row has the same number of non-zeros).
    """

    index: torch.Tensor  # (N, D) int64, on the factors' device
    weight: torch.Tensor  # (N, D) on the factors' device, compute dtype
    regular: bool

    @property
    def degree(self) -> int:
        return self.index.shape[1]


def neighbours_of(W: torch.Tensor, device=None, dtype=None) -> Neighbours:
    """Non-zero pattern of ``W`` as padded index / weight tensors.

    This reads W on the host (one small device-to-host copy on CUDA): the neighbour count sets the
    shapes of everything downstream, so a shape-static implementation cannot avoid knowing it.
    """
    Wh = W.detach().to("cpu", torch.float64)
    nz = Wh != 0
    deg = nz.sum(dim=1)
    D = max(int(deg.max()), 1)
    N = Wh.shape[0]
    index = torch.arange(N).unsqueeze(1).repeat(1, D)
    weight = torch.zeros(N, D, dtype=torch.float64)
    for i in range(N):
        cols = torch.nonzero(nz[i]).flatten()
        index[i, : cols.numel()] = cols
        weight[i, : cols.numel()] = Wh[i, cols]
    device = W.device if device is None else device
    dtype = _compute_dtype(W.dtype) if dtype is None else dtype
    return Neighbours(index.to(device), weight.to(device=device, dtype=dtype), bool((deg == D).all()))


def _flatten_batch(B: torch.Tensor, A: torch.Tensor, dtype: torch.dtype):
    """(N, *batch, d, r) -> (N, L, d, r) with L = prod(batch), in the compute dtype."""
    N, d, r, k = B.shape[0], B.shape[-2], B.shape[-1], A.shape[-1]
    return B.to(dtype).reshape(N, -1, d, r), A.to(dtype).reshape(N, -1, r, k)


# --------------------------------------------------------------------------------------------------
# dense references


def dense_products(B: torch.Tensor, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``M_i = sum_j W[i, j] B[j] @ A[j]`` as dense (N, *batch, d, k) matrices (one einsum)."""
    _check(B, A, W, None)
    dt = _compute_dtype(B.dtype)
    return torch.einsum("ij,j...dr,j...rk->i...dk", W.to(dt), B.to(dt), A.to(dt))


def dense_svd(B, A, W, rank=None):
    """Materialise M, full ``torch.linalg.svd``, keep the top ``rank``, balanced split."""
    rank = _check(B, A, W, rank)
    M = dense_products(B, A, W)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return _balanced_split(U, S, Vh, rank, B.dtype)


def dense_svd_lowrank(B, A, W, rank=None, *, oversample: int = 8, niter: int = 2):
    """Materialise M, randomized ``torch.svd_lowrank(M, q=rank+oversample, niter)`` (batched), split.

    ``torch.svd_lowrank`` draws its test matrix from the global RNG; we do not reseed it (the error
    is measured on every run).
    """
    rank = _check(B, A, W, rank)
    M = dense_products(B, A, W)
    q = min(rank + oversample, M.shape[-2], M.shape[-1])
    U, S, V = torch.svd_lowrank(M, q=q, niter=niter)
    return _balanced_split(U, S, V.mT, rank, B.dtype)


# --------------------------------------------------------------------------------------------------
# factored methods


def _gather_stacked(B: torch.Tensor, A: torch.Tensor, index: torch.Tensor):
    """``Bc[i] = [B[j]]_j`` (N, L, d, D r) and ``Ac[i] = [A[j]]_j`` stacked by rows (N, L, D r, k).

    Written neighbour slot by neighbour slot straight into the stacked layout: one pass over the
    output, where ``B[index].permute(...).reshape(...)`` would copy it twice.
    """
    N, L, d, r = B.shape
    k = A.shape[-1]
    D = index.shape[1]
    Bc = B.new_empty(N, L, d, D, r)
    Ac = A.new_empty(N, L, D, r, k)
    for a in range(D):
        Bc[:, :, :, a] = B.index_select(0, index[:, a])
        Ac[:, :, a] = A.index_select(0, index[:, a])
    return Bc.view(N, L, d, D * r), Ac.view(N, L, D * r, k)


def factored_householder(B, A, W, rank=None):
    """Consensus TSVD from Householder QR of the stacked neighbour factors.

    ``Bc_i diag(w_i) = Qb (Rb diag(w_i))``, ``Ac_i^T = Qa Ra``; SVD of the core ``Rb diag(w_i) Ra^T``
    (D r x D r); ``B_new = Qb U_r S^1/2``, ``A_new = S^1/2 V_r^T Qa^T``. Robust to rank deficiency.
    """
    rank = _check(B, A, W, rank)
    out_shape_b = B.shape[:-1] + (rank,)
    out_shape_a = A.shape[:-2] + (rank, A.shape[-1])
    dt = _compute_dtype(B.dtype)
    nb = neighbours_of(W, device=B.device, dtype=dt)
    Bf, Af = _flatten_batch(B, A, dt)
    N, L, d, r = Bf.shape
    D = nb.degree
    # LAPACK factorises column-major matrices: gather the B stack transposed, (D r, d) row-major, so that
    # its .mT is the (d, D r) stack already in the layout geqrf wants (A's row stack is, as it is).
    Bt = Bf.new_empty(N, L, D, r, d)
    for a in range(D):
        Bt[:, :, a] = Bf.index_select(0, nb.index[:, a]).mT
    Ac = Af.new_empty(N, L, D, r, Af.shape[-1])
    for a in range(D):
        Ac[:, :, a] = Af.index_select(0, nb.index[:, a])
    Qb, Rb = torch.linalg.qr(Bt.view(N, L, D * r, d).mT)
    Qa, Ra = torch.linalg.qr(Ac.view(N, L, D * r, -1).mT)
    w = nb.weight.repeat_interleave(r, dim=1)[:, None, None, :]  # scales the columns of Rb
    U, S, Vh = torch.linalg.svd((Rb * w) @ Ra.mT)
    root = S[..., :rank].sqrt()
    B_new = Qb @ (U[..., :rank] * root.unsqueeze(-2))
    A_new = (root.unsqueeze(-1) * Vh[..., :rank, :]) @ Qa.mT
    return B_new.to(B.dtype).reshape(out_shape_b), A_new.to(B.dtype).reshape(out_shape_a)


def _layer_stacked(X: torch.Tensor) -> torch.Tensor:
    """(N, L, m, n) -> (L, m, N n): the agents of one layer side by side (one copy of the factor)."""
    N, L, m, n = X.shape
    return X.permute(1, 2, 0, 3).reshape(L, m, N * n)


def _neighbour_blocks(G: torch.Tensor, index: torch.Tensor, r: int) -> torch.Tensor:
    """Neighbour Gram blocks out of the all-agent Gram of one layer.

    ``G: (L, N r, N r)`` -> ``(N, L, D r, D r)`` with block (a, b) of agent i = ``G[nbr_ia, nbr_ib]``.
    """
    L, Nr, _ = G.shape
    N, D = index.shape
    G5 = G.view(L, N, r, N, r).permute(1, 3, 0, 2, 4)  # (N, N, L, r, r)
    blocks = G5[index[:, :, None], index[:, None, :]]  # (N, D, D, L, r, r)
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(N, L, D * r, D * r)


def factored_cholesky(B, A, W, rank=None, *, strategy: str = "auto"):
    """Consensus TSVD by Cholesky-QR of the stacked neighbour factors (the strongest pure-PyTorch bar).

    With ``Gb = Bc^T Bc = Lb Lb^T`` and ``Ga = Ac Ac^T = La La^T`` (unweighted stacks), the weighted
    product is ``M_i = Bc diag(w) Ac = Qb (Lb^T diag(w) La) Qa^T``. One ``torch.linalg.svd`` of that
    D r x D r core per (agent, layer), then ``B_new = Bc (Lb^-T U_r S^1/2)`` and
    ``A_new = (La^-T V_r S^1/2)^T Ac`` by triangular solves on the small matrices; the weights never
    touch the big tensors.

    The Gram matrices are taken per layer over all agents at once (one GEMM of ``(N r) x d x (N r)``
    per layer reads each factor once) and each agent's neighbour block is cut out of it; that beats
    gathering ``deg`` copies of the neighbours while ``N <= 2 deg^2`` (flops within 2x, one large GEMM
    instead of N small ones). The reconstruction multiplies the layer-stacked factors by a block-sparse
    ``(N r) x (N r)`` coefficient matrix while ``N <= 3 deg``, otherwise it accumulates ``deg`` batched
    products of index-selected neighbours. ``strategy`` = "layer" / "gather" forces one path for both.

    Not robust by design: ``cholesky_ex`` does not check its result (no host sync), so rank-deficient
    stacks (zero factors, duplicate agents, irregular graphs padded with zeros) give NaN/garbage.
    Benchmark inputs are generic; the library is the robust implementation. Irregular graphs are
    refused with a ValueError because their padding is rank deficient by construction.
    """
    rank = _check(B, A, W, rank)
    if strategy not in ("auto", "layer", "gather"):
        raise ValueError(f"strategy must be 'auto', 'layer' or 'gather', got {strategy!r}")
    out_shape_b = B.shape[:-1] + (rank,)
    out_shape_a = A.shape[:-2] + (rank, A.shape[-1])
    dt = _compute_dtype(B.dtype)
    nb = neighbours_of(W, device=B.device, dtype=dt)
    if not nb.regular:
        raise ValueError("factored_cholesky needs every row of W to have the same number of non-zeros")
    Bf, Af = _flatten_batch(B, A, dt)
    N, L, d, r = Bf.shape
    k = Af.shape[-1]
    D = nb.degree
    index = nb.index
    if rank > D * r:
        raise ValueError(f"rank {rank} exceeds the rank bound deg*r = {D * r} of the mixed products")
    gram_by_layer = strategy == "layer" or (strategy == "auto" and N <= 2 * D * D)
    rec_by_layer = strategy == "layer" or (strategy == "auto" and N <= 3 * D)

    Xb = Xa = None
    if gram_by_layer or rec_by_layer:
        Xb = _layer_stacked(Bf)  # (L, d, N r)
        Xa = Af.transpose(0, 1).reshape(L, N * r, k)  # (L, N r, k)
    if gram_by_layer:
        Gb = _neighbour_blocks(Xb.mT @ Xb, index, r)
        Ga = _neighbour_blocks(Xa @ Xa.mT, index, r)
    else:
        Bc, Ac = _gather_stacked(Bf, Af, index)
        Gb = Bc.mT @ Bc
        Ga = Ac @ Ac.mT
    Lb = torch.linalg.cholesky_ex(Gb).L
    La = torch.linalg.cholesky_ex(Ga).L
    w = nb.weight.repeat_interleave(r, dim=1)[:, None, :, None]  # (N, 1, D r, 1) scales rows of La
    U, S, Vh = torch.linalg.svd(Lb.mT @ (w * La))
    root = S[..., :rank].sqrt()
    Yb = torch.linalg.solve_triangular(Lb.mT, U[..., :rank] * root.unsqueeze(-2), upper=True)  # (N, L, Dr, rank)
    Ya = torch.linalg.solve_triangular(La.mT, Vh[..., :rank, :].mT * root.unsqueeze(-2), upper=True)

    if rec_by_layer:
        # Block-sparse coefficients Zb[l, j-block, i-block] = sum_a [nbr_ia == j] Yb[i, l, a-block],
        # built through a tiny one-hot (N x D x N) so that a neighbour listed twice adds up.
        onehot = torch.zeros(N, D, N, dtype=dt, device=B.device)
        onehot.scatter_(2, index.unsqueeze(-1), 1.0)
        Zb = torch.einsum("iaj,ilaps->ljpis", onehot, Yb.view(N, L, D, r, rank)).reshape(L, N * r, N * rank)
        Za = torch.einsum("iaj,ilaps->ljpis", onehot, Ya.view(N, L, D, r, rank)).reshape(L, N * r, N * rank)
        B_new = (Xb @ Zb).view(L, d, N, rank).permute(2, 0, 1, 3)
        A_new = (Za.mT @ Xa).view(L, N, rank, k).transpose(0, 1)
    else:
        Yb4 = Yb.view(N, L, D, r, rank)
        Ya4 = Ya.view(N, L, D, r, rank)
        B_new = Bf.index_select(0, index[:, 0]) @ Yb4[:, :, 0]
        A_new = Ya4[:, :, 0].mT @ Af.index_select(0, index[:, 0])
        for a in range(1, D):
            B_new.add_(Bf.index_select(0, index[:, a]) @ Yb4[:, :, a])
            A_new.add_(Ya4[:, :, a].mT @ Af.index_select(0, index[:, a]))
    return B_new.to(B.dtype).reshape(out_shape_b), A_new.to(B.dtype).reshape(out_shape_a)


def dlora_mix(B, A, W, rank=None):
    """DLoRA gossip: ``B_i <- sum_j W_ij B_j``, ``A_i <- sum_j W_ij A_j`` (``rank`` must be r or None)."""
    r = B.shape[-1]
    rank = _check(B, A, W, rank)
    if rank != r:
        raise ValueError(f"dlora_mix keeps the rank of the factors ({r}); got rank={rank}")
    dt = _compute_dtype(B.dtype)
    Wd = W.to(dt)
    B_new = torch.tensordot(Wd, B.to(dt), dims=([1], [0]))
    A_new = torch.tensordot(Wd, A.to(dt), dims=([1], [0]))
    return B_new.to(B.dtype), A_new.to(A.dtype)


BASELINES: dict[str, Callable] = {
    "dense_svd": dense_svd,
    "dense_svd_lowrank": dense_svd_lowrank,
    "factored_householder": factored_householder,
    "factored_cholesky": factored_cholesky,
    "dlora_mix": dlora_mix,
}


# --------------------------------------------------------------------------------------------------
# float64 oracle


class OptimalityOracle:
    """Best rank-``rank`` approximations of selected ``M_i`` (agent, layer) pairs, in float64 LAPACK.

    Built once per input set; ``error(B_new, A_new)`` is then cheap, so many methods can be judged
    against the same truncated SVDs. ``pairs`` index the agent and the flattened batch ("layer");
    default: every pair.

    ``svd="dense"`` takes ``numpy.linalg.svd`` of the dense float64 ``M_i``; ``svd="factored"`` gets the
    same truncation from float64 Householder QR of the stacked neighbour factors and the SVD of the
    small core (exact in exact arithmetic, float64 rounding, and minutes cheaper for d = k = 4096);
    ``"auto"`` uses dense up to ``max(d, k) <= 1024``.
    """

    def __init__(self, B, A, W, rank=None, pairs: Sequence[tuple[int, int]] | None = None, svd: str = "auto"):
        rank = _check(B, A, W, rank)
        if svd not in ("auto", "dense", "factored"):
            raise ValueError(f"svd must be 'auto', 'dense' or 'factored', got {svd!r}")
        N, d, k = B.shape[0], B.shape[-2], A.shape[-1]
        Bv = B.detach().reshape(N, -1, d, B.shape[-1])
        Av = A.detach().reshape(N, -1, A.shape[-2], k)
        L = Bv.shape[1]
        if pairs is None:
            pairs = [(i, layer) for i in range(N) for layer in range(L)]
        self.rank = rank
        self.svd = ("dense" if max(d, k) <= 1024 else "factored") if svd == "auto" else svd
        self.pairs = [(int(i), int(layer)) for i, layer in pairs]
        for i, layer in self.pairs:
            if not (0 <= i < N and 0 <= layer < L):
                raise ValueError(f"pair (agent={i}, layer={layer}) outside N={N}, layers={L}")
        # only the layers the pairs use travel to the host in float64
        used = sorted({layer for _, layer in self.pairs})
        pos = {layer: n for n, layer in enumerate(used)}
        sel = torch.tensor(used, device=Bv.device)
        Bf = Bv.index_select(1, sel).to("cpu", torch.float64).numpy()
        Af = Av.index_select(1, sel).to("cpu", torch.float64).numpy()
        Wn = W.detach().to("cpu", torch.float64).numpy()
        self._best = {}
        for i, layer_id in self.pairs:
            layer = pos[layer_id]
            nbrs = [j for j in range(N) if Wn[i, j] != 0]
            if self.svd == "dense":
                M = sum(Wn[i, j] * (Bf[j, layer] @ Af[j, layer]) for j in nbrs)
                U, S, Vt = np.linalg.svd(M, full_matrices=False)
                M_r = (U[:, :rank] * S[:rank]) @ Vt[:rank]
            else:
                Bc = np.concatenate([Wn[i, j] * Bf[j, layer] for j in nbrs], axis=1)
                Ac = np.concatenate([Af[j, layer] for j in nbrs], axis=0)
                Qb, Rb = np.linalg.qr(Bc)
                Qa, Ra = np.linalg.qr(Ac.T)
                U, S, Vt = np.linalg.svd(Rb @ Ra.T)
                M_r = (Qb @ (U[:, :rank] * S[:rank])) @ (Vt[:rank] @ Qa.T)
            self._best[(i, layer_id)] = (M_r, float(np.linalg.norm(S)), float(np.linalg.norm(S[rank:])))

    def error(self, B_new, A_new) -> float:
        """``max over pairs of ||B_new A_new - M_r||_F / ||M||_F``.

        ``B_new`` / ``A_new`` may cover only the first ``l`` layers (a subset run): pairs in later layers
        are skipped; a ValueError if none is left.
        """
        N = B_new.shape[0]
        Bv = B_new.detach().reshape(N, -1, B_new.shape[-2], B_new.shape[-1])
        Av = A_new.detach().reshape(N, -1, A_new.shape[-2], A_new.shape[-1])
        pairs = [p for p in self._best if p[1] < Bv.shape[1]]
        if not pairs:
            raise ValueError(f"no oracle pair lies in the {Bv.shape[1]} layers given")
        used = sorted({layer for _, layer in pairs})
        pos = {layer: n for n, layer in enumerate(used)}
        sel = torch.tensor(used, device=Bv.device)
        Bn = Bv.index_select(1, sel).to("cpu", torch.float64).numpy()
        An = Av.index_select(1, sel).to("cpu", torch.float64).numpy()
        worst = 0.0
        for i, layer in pairs:
            M_r, norm_M, _ = self._best[(i, layer)]
            P = Bn[i, pos[layer]] @ An[i, pos[layer]]
            err = float(np.linalg.norm(P - M_r)) / max(norm_M, np.finfo(np.float64).tiny)
            if not np.isfinite(err):
                return float("nan")
            worst = max(worst, err)
        return worst

    def truncation_error(self, reduce: str = "max") -> float:
        """``||M - M_r||_F / ||M||_F`` over the pairs (what any rank-r answer must leave out), max or mean."""
        vals = [tail / max(norm_M, np.finfo(np.float64).tiny) for _, norm_M, tail in self._best.values()]
        if reduce == "max":
            return max(vals)
        if reduce == "mean":
            return float(np.mean(vals))
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


def optimality_error(B, A, W, B_new, A_new, rank=None, layers: Sequence[int] = (0,), agents: Sequence[int] | None = None) -> float:
    """``max ||B_new[i] A_new[i] - M_r||_F / ||M_i||_F`` over ``agents`` (default all) x ``layers``.

    ``M_r`` is the float64 LAPACK truncated SVD of ``M_i = sum_j W_ij B_j A_j``; ``layers`` index the
    flattened batch dimensions.
    """
    agents = range(B.shape[0]) if agents is None else agents
    oracle = OptimalityOracle(B, A, W, rank, pairs=[(i, layer) for i in agents for layer in layers])
    return oracle.error(B_new, A_new)
