"""The factored consensus truncated SVD (docs/design.md, "The consensus step without d x k matrices").

W is (n_out, N): output i mixes the N input agents with row i (square W: the usual gossip step). For output i
with neighbours j_1..j_D (W[i, j] != 0, ascending) let Bc = [W_ij B_j]_j (d x m) and Ac = [A_j]_j (m x k), m = D r,
so that M_i = Bc Ac. The exact method never forms M_i:

1. Gram blocks ``B_j^T B_k`` and ``A_j A_k^T`` for every pair of agents that are neighbours of a common agent
   (one pass over the factors, float64 accumulation), assembled into Gb = Bc^T Bc and Ga = Ac Ac^T.
2. The small core (m x m) gives X, Y with Bc X = U_r S_r^alpha and Y Ac = S_r^(1-alpha) V_r^T.
3. Reconstruction: B_new = sum_s W_ij_s B_j_s X_s and A_new = sum_s Y_s A_j_s, a batched low-rank product
   mixing that reads only agent i's neighbours.

The randomized method sketches M_i in factored form (Halko, Martinsson & Tropp 2011): Y = Bc (Ac Omega) with
oversampling and power iterations, orthonormalised through float64 Grams, then the same small core on the
projected problem.
"""

from __future__ import annotations

import torch

from . import _backend
from . import _validation as V
from ._plan import Plan, outer_coef, plan, slot_coefs


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pow2_scale(x: torch.Tensor) -> torch.Tensor:
    """Per (agent, layer) power of two near max |x|, 1 where x is all zero. x: (N, L, P, Q) -> (N, L) float64."""
    amax = x.detach().abs().amax(dim=(-2, -1)).to(torch.float64)
    e = torch.where(amax > 0, torch.floor(torch.log2(amax)), torch.zeros_like(amax))
    return torch.exp2(e)


def _assemble(G: torch.Tensor, index: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
    """Gram of the stacked neighbour factors from the pair blocks.

    G: (L, T, r, r) pair blocks; index: ``_graph.assembly_index``; outer: (L or 1, Nu, D r, D r) from
    ``_plan.outer_coef`` of the per-slot scalars (weight x scale; 0 for empty slots). Returns (L, Nu, D r, D r)
    with block (s, t) = coef_s coef_t G(j_s, j_t).
    """
    L = G.shape[0]
    return G.reshape(L, -1)[:, index] * outer  # one gather, one product


def _check_finite_from_grams(GB: torch.Tensor, GA: torch.Tensor, pl, Bf: torch.Tensor, Af: torch.Tensor,
                             report) -> None:
    """The Gram diagonals are float64 sums of squares: finite exactly when the factors are (fp32 data squared
    in fp64 cannot overflow; fp64 data is scaled first). So finiteness costs nothing extra here; the
    element-wise scan only runs to name the culprit, or for agents no Gram block covers."""
    for name, G in (("B", GB), ("A", GA)):
        diag = G[:, pl.same].diagonal(dim1=-2, dim2=-1)
        if not bool(torch.isfinite(diag).all()):
            report(name)
    if pl.uncovered.numel():
        _scan_finite(Bf[pl.uncovered], Af[pl.uncovered], report)


def _scan_finite(Bx: torch.Tensor, Ax: torch.Tensor, report) -> None:
    """report("B") / report("A") when that tensor holds a non-finite value."""
    for name, X in (("B", Bx), ("A", Ax)):
        if not V.all_finite(X):
            report(name)


# Elements of the stacked neighbour factors gathered at once by _householder_core (bounds its extra memory).
_QR_CHUNK_ELEMS = 1 << 23


def _householder_core(Bs: torch.Tensor, As: torch.Tensor, slot: torch.Tensor, wb: torch.Tensor, wa: torch.Tensor,
                      rank: int, alpha: float):
    """The small core of float64 data from Householder QR of the stacked neighbour factors instead of Grams.

    A Gram squares the condition number: float64 Grams resolve directions of M_i only down to ~1e-8 s_1, which is
    below fp32 rounding but far above float64's. Householder QR (Bc = Qb Rb, Ac^T = Qa Ra) and a LAPACK SVD of
    the core C = Rb Ra^T = Uc s Vc^T keep LAPACK's accuracy; X = Ra^T Vc s^(alpha-1) and Y = s^-alpha Uc^T Rb
    satisfy the small-core contract (Bc X = U s^alpha, Y Ac = s^(1-alpha) V^T), so the reconstruction is shared.

    Bs: (N, L, d, r), As: (N, L, r, k); slot: (Nu, D) neighbour agents (empty slots point anywhere); wb, wa:
    (L or 1, Nu, D) per-slot coefficients of Bc = [wb_s B_js] and Ac = [wa_s A_js] (0 for empty slots).
    Returns X (L, Nu, m, rank), Y (L, Nu, rank, m), S (L, Nu, rank), float64; null directions are zeros.
    """
    N, L, d, r = Bs.shape
    k = As.shape[-1]
    Nu, D = slot.shape
    m = D * r
    X = torch.zeros((L, Nu, m, rank), dtype=torch.float64, device=Bs.device)
    Y = torch.zeros((L, Nu, rank, m), dtype=torch.float64, device=Bs.device)
    S = torch.zeros((L, Nu, rank), dtype=torch.float64, device=Bs.device)
    step = max(1, _QR_CHUNK_ELEMS // max(1, Nu * m * max(d, k)))
    Bt, At = Bs.mT.transpose(0, 1), As.transpose(0, 1)  # (L, N, r, d), (L, N, r, k) views

    def r_factor(Xt, coef, ls):
        """R of [coef_s X_js]_s (n x m): Householder QR is column-wise backward stable, so the slot coefficients
        scale R's columns afterwards instead of the data (one gather, no extra pass)."""
        nl, n = ls.stop - ls.start, Xt.shape[-1]
        c = coef[ls] if coef.shape[0] == L else coef.expand(nl, Nu, D)
        R = torch.linalg.qr(Xt[ls][:, slot].reshape(nl, Nu, m, n).mT, mode="r")[1]  # (l, Nu, min(n, m), m)
        return R * c.repeat_interleave(r, dim=-1)[:, :, None, :]

    for l0 in range(0, L, step):
        ls = slice(l0, min(L, l0 + step))
        Rb, Ra = r_factor(Bt, wb, ls), r_factor(At, wa, ls)
        Uc, s, Vch = torch.linalg.svd(Rb @ Ra.mT, full_matrices=False)
        q = min(rank, s.shape[-1])
        Uc, s, Vc = Uc[..., :q], s[..., :q], Vch[..., :q, :].mT
        live = s > max(m, 2) * torch.finfo(torch.float64).eps * s[..., :1]
        s_safe = torch.where(live, s, torch.ones_like(s))
        xs = torch.where(live, s_safe.pow(alpha - 1.0), torch.zeros_like(s))
        ys = torch.where(live, s_safe.pow(-alpha), torch.zeros_like(s))
        X[ls, ..., :q] = (Ra.mT @ Vc) * xs[..., None, :]
        Y[ls, ..., :q, :] = ys[..., None] * (Uc.mT @ Rb)
        S[ls, ..., :q] = torch.where(live, s, torch.zeros_like(s))
    return X, Y, S


def consensus_exact(Bf: torch.Tensor, Af: torch.Tensor, pl: Plan, rank: int, report_non_finite=None,
                    out_dtype=None, float64_qr=None):
    """Exact factored consensus TSVD. Bf: (N, L, d, r), Af: (N, L, r, k): the input agents; pl: the plan of W
    (n_out, N) for (device, r, split).

    report_non_finite: None (no check) or a callable taking "B" or "A", called when that factor has a non-finite
    value (it raises, naming the element in the caller's coordinates). The check reads two booleans on the host;
    with None nothing in this function waits for the device.
    out_dtype: dtype of B_new and A_new (default: the compute dtype); the reconstruction writes it directly.
    float64_qr: float64 data through Householder QR (see _householder_core) instead of Grams; None = on the CPU.
    (bench/float64_route.py times both routes side by side.)

    Returns (B_new (Nu, L, d, rank), A_new (Nu, L, rank, k), S (Nu, L, rank)) per distinct row of W; S in the
    compute dtype (float32, or float64 for float64 input).
    """
    N, L, d, r = Bf.shape
    k = Af.shape[-1]
    Nu, D = pl.idx.shape
    cd = compute_dtype(Bf.dtype)
    dev = Bf.device
    alpha = pl.alpha
    active, slot, w = pl.active, pl.slot, pl.weights

    if Bf.dtype == torch.float64:
        # A float64 Gram overflows past |x| ~ 1e150 (and loses tiny values): work on factors scaled by per-agent
        # powers of two, and put the scales back exactly in the weights. Float32 data squared in float64 cannot
        # over- or underflow, so lower precisions skip this pass.
        cb, ca = _pow2_scale(Bf), _pow2_scale(Af)  # (N, L)
        Bs = Bf / cb[:, :, None, None].to(Bf.dtype)
        As = Af / ca[:, :, None, None].to(Af.dtype)
        cb_slot = cb[slot].permute(2, 0, 1)  # (L, Nu, D); the weights are 0 on empty slots
        ca_slot = ca[slot].permute(2, 0, 1) * active
        coefs, outer = slot_coefs(w[None] * cb_slot, ca_slot, alpha), None
    else:
        # no per-layer scales: every coefficient depends on W alone, so the plan holds them
        Bs, As = Bf, Af
        coefs, outer = pl.coefs, pl.outer
    coef_b, coef_a, gb, ga, s_scale = coefs

    if float64_qr is None:
        float64_qr = dev.type == "cpu"
    if Bf.dtype == torch.float64 and float64_qr:
        if report_non_finite is not None:
            _scan_finite(Bf, Af, report_non_finite)
        X, Y, S = _householder_core(Bs, As, slot, coef_b, coef_a, rank, alpha)
    else:
        GB = _backend.pair_gram(Bs, pl.pairs, pl.groups)  # (L, T, r, r) float64
        GA = _backend.pair_gram(As.mT, pl.pairs, pl.groups)
        if report_non_finite is not None:
            _check_finite_from_grams(GB, GA, pl, Bf, Af, report_non_finite)
        outer_b, outer_a = outer if outer is not None else (outer_coef(coef_b, r), outer_coef(coef_a, r))
        Gb = _assemble(GB, pl.index, outer_b)
        Ga = _assemble(GA, pl.index, outer_a)
        X, Y, S = _backend.small_core(Gb, Ga, rank, alpha, cd,
                                      check_convergence=report_non_finite is not None or dev.type == "cpu")
    # (L, Nu, m, R), (L, Nu, R, m), (L, Nu, R)

    S = S * s_scale  # undo the normalisation (see _plan.slot_coefs)
    R = X.shape[-1]
    T_B = (X.reshape(L, Nu, D, r, R) * gb[..., None, None]).to(cd).permute(1, 0, 2, 3, 4)
    T_A = (Y.reshape(L, Nu, R, D, r) * ga[:, :, None, :, None]).to(cd).permute(1, 0, 3, 4, 2)
    od = cd if out_dtype is None else out_dtype
    B_new = torch.empty((Nu, L, d, R), dtype=od, device=dev)
    A_new = torch.empty((Nu, L, R, k), dtype=od, device=dev)
    _backend.mix_lowrank(Bs, pl.idx, T_B, B_new)
    _backend.mix_lowrank(As.mT, pl.idx, T_A, A_new.mT)
    return B_new, A_new, S.permute(1, 0, 2).to(cd)


def _gram64(Y: torch.Tensor) -> torch.Tensor:
    Y64 = Y.to(torch.float64)
    return Y64.mT @ Y64


def _orth(Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of range(Y) for Y: (..., n, l), via float64 Grams and the small core, in two passes.

    With Ac = I, the core returns X such that Y X = U (left singular vectors). Y X is formed in Y's dtype, so its
    columns are orthonormal only to about eps(Y) * s_1 / s_j: directions of Y below eps(Y) * l * s_1 are rounding
    noise of Y itself and are dropped (zero columns, so a rank-deficient sketch only shrinks the subspace), and a
    second pass re-orthogonalises what is kept (CholeskyQR2), leaving Q orthonormal to about eps(Y).
    """
    l = Y.shape[-1]
    eye = torch.eye(l, dtype=torch.float64, device=Y.device).expand(*Y.shape[:-2], l, l)
    cut = l * torch.finfo(Y.dtype).eps
    Q = Y
    for _ in range(2):
        X, _, S = _backend.small_core(_gram64(Q), eye, l, 0.0, Y.dtype)
        X = X * (S > cut * S[..., :1])[..., None, :]
        Q = Q @ X.to(Y.dtype)
    return Q


def consensus_randomized(Bf: torch.Tensor, Af: torch.Tensor, pl: Plan, rank: int, oversample: int,
                         power_iters: int, seed: int):
    """Randomized factored consensus TSVD; same shapes and dtype as :func:`consensus_exact`."""
    N, L, d, r = Bf.shape
    k = Af.shape[-1]
    Nu, D = pl.idx.shape
    alpha = pl.alpha
    m = D * r
    cd = compute_dtype(Bf.dtype)
    dev = Bf.device
    ell = max(rank, min(rank + oversample, m, d, k))
    # One global power of two per layer keeps the sketch Y = M Omega (which squares magnitudes) in range.
    cb = _pow2_scale(Bf.transpose(0, 1).reshape(L, 1, -1, 1)).reshape(L)
    ca = _pow2_scale(Af.transpose(0, 1).reshape(L, 1, -1, 1)).reshape(L)
    Bs = (Bf.to(cd) / cb[None, :, None, None].to(cd))
    As = (Af.to(cd) / ca[None, :, None, None].to(cd))

    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    omega = torch.randn((L, k, ell), generator=gen, dtype=cd, device=dev)
    idx, slot = pl.idx, pl.slot
    wm = pl.weights.to(cd)  # (Nu, D), 0 on empty slots

    def apply_M(Z_k: torch.Tensor) -> torch.Tensor:
        """M_i Z_i for Z_i: (Nu, L, k, ell) -> (Nu, L, d, ell), through the factors."""
        AZ = torch.einsum("uslrk,ulke->uslre", As[slot], Z_k)  # (Nu, D, L, r, ell)
        T = (AZ * wm[:, :, None, None, None]).permute(0, 2, 1, 3, 4).contiguous()  # (Nu, L, D, r, ell)
        out = torch.empty((Nu, L, d, ell), dtype=cd, device=dev)
        return _backend.mix_lowrank(Bs, idx, T, out)

    def apply_Mt(Q_d: torch.Tensor) -> torch.Tensor:
        """M_i^T Q_i for Q_i: (Nu, L, d, ell) -> (Nu, L, k, ell)."""
        H = torch.einsum("usldr,ulde->uslre", Bs[slot], Q_d)  # (Nu, D, L, r, ell)
        T = (H * wm[:, :, None, None, None]).permute(0, 2, 1, 3, 4).contiguous()
        out = torch.empty((Nu, L, k, ell), dtype=cd, device=dev)
        return _backend.mix_lowrank(As.mT, idx, T, out)

    Y = apply_M(omega.unsqueeze(0).expand(Nu, L, k, ell))
    for _ in range(power_iters):
        Z = _orth(apply_Mt(_orth(Y)))
        Y = apply_M(Z)
    Q = _orth(Y)  # (Nu, L, d, ell)
    Ht = apply_Mt(Q)  # (Nu, L, k, ell) = (Q^T M)^T
    # SVD of Q (Q^T M): Bc' = Q (Gram ~ identity on its non-null part), Ac' = Q^T M.
    Gq = _gram64(Q)
    Gh = _gram64(Ht)  # (Q^T M)(Q^T M)^T
    X, Yc, S = _backend.small_core(Gq, Gh, rank, alpha, cd)  # (Nu, L, ell, R), (Nu, L, R, ell)
    B_new = Q @ X.to(cd)
    A_new = Yc.to(cd) @ Ht.mT
    scale = cb.to(torch.float64) * ca.to(torch.float64)  # (L,)
    B_new = B_new * (cb.pow(alpha) * ca.pow(alpha)).to(cd)[None, :, None, None]
    A_new = A_new * (cb.pow(1.0 - alpha) * ca.pow(1.0 - alpha)).to(cd)[None, :, None, None]
    S = S * scale[None, :, None]
    return B_new, A_new, S.to(cd)


# method="auto" takes the randomized sketch only where it is measured faster by a wide margin: it is exact only for
# spectra with a gap (on random dense factors it leaves ~5e-3 of ||M|| that exact does not), so exact stays the
# default until the sketch is predicted AUTO_MARGIN times faster. The prediction is a fit to `python -m
# bench.auto_method --threads 1` on the CPU (bench/RESULTS.md: fp32, dense W, m from 64 to 1024, d = k = 256, 768
# and 4096): time(exact) / time(randomized) ~ (m / 159)^1.5 * (1536 / (d + k))^q, q = 0.5 below d + k = 1536 and
# 1.27 above, at the default sketch (2 power iterations; more cost the sketch proportionally more passes). It errs
# low: no measured point it sends to the sketch was less than 4x faster there.
AUTO_MARGIN = 4.0
_AUTO_M1 = 159.0


def auto_method(d: int, k: int, m: int, power_iters: int, device_type: str = "cpu") -> str:
    """The method behind method="auto" for cores of size m = deg * r (documented in consensus_tsvd's docstring).

    Per agent and layer: both methods scale alike in the number of agents and layers. On CUDA the randomized
    method has not been measured against exact, so auto is always exact there.
    """
    if device_type != "cpu":
        return "exact"
    width = 1536.0 / (d + k)
    ratio = (m / _AUTO_M1) ** 1.5 * width ** (0.5 if width > 1 else 1.27) * 6.0 / (2 * power_iters + 2)
    return "randomized" if ratio >= AUTO_MARGIN else "exact"


def flatten_layers(B: torch.Tensor, A: torch.Tensor):
    """(N, *batch, d, r), (N, *batch, r, k) -> (N, L, d, r), (N, L, r, k) views or copies, L = prod(batch)."""
    N, d, r, k = B.shape[0], B.shape[-2], B.shape[-1], A.shape[-1]
    return B.reshape(N, -1, d, r), A.reshape(N, -1, r, k)


def consensus_forward(B: torch.Tensor, A: torch.Tensor, W: torch.Tensor, rank: int, method: str, oversample: int,
                      power_iters: int, seed: int, alpha: float, validate: bool):
    """The body of the consensus_tsvd op (arguments checked by ops.consensus_tsvd): (B', A', S) for each of the
    n_out = W.shape[0] outputs, from the N = B.shape[0] input agents."""
    if validate:
        V.check_mixing_values(W)  # B and A: the exact method reads finiteness off its Grams
    n_out, batch, d, r, k = W.shape[0], tuple(B.shape[1:-2]), B.shape[-2], B.shape[-1], A.shape[-1]
    cd = compute_dtype(B.dtype)
    Bf, Af = flatten_layers(B, A)
    if Bf.shape[1] == 0:
        return (B.new_empty((n_out, *batch, d, rank)), A.new_empty((n_out, *batch, rank, k)),
                B.new_empty((n_out, *batch, rank), dtype=cd))
    if B.dtype in (torch.float16, torch.bfloat16) and B.device.type == "cpu":
        Bf, Af = Bf.float(), Af.float()  # the CPU kernels compute in fp32; Triton reads half types directly
    pl = plan(W, B.device, r, alpha)
    if method == "auto":
        method = auto_method(d, k, pl.nb.degree * r, power_iters, B.device.type)
    if method == "exact":
        report = (lambda name: V.raise_non_finite(name, B if name == "B" else A)) if validate else None
        Bu, Au, Su = consensus_exact(Bf, Af, pl, rank, report_non_finite=report, out_dtype=B.dtype)
    else:
        if validate:
            V.check_finite("B", B)
            V.check_finite("A", A)
        Bu, Au, Su = consensus_randomized(Bf, Af, pl, rank, oversample, power_iters, seed)
    if pl.shared_rows:
        Bu, Au, Su = Bu[pl.inverse], Au[pl.inverse], Su[pl.inverse]
    return (Bu.reshape(n_out, *batch, d, rank).to(B.dtype).contiguous(),
            Au.reshape(n_out, *batch, rank, k).to(A.dtype).contiguous(),
            Su.reshape(n_out, *batch, rank).to(cd).contiguous())
