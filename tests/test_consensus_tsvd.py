"""consensus_tsvd against a float64 LAPACK oracle: optimality, identities, traps.

Tolerances: the measure is Eckart-Young optimality ||B'A' - M_r||_F / ||M||_F. Its baseline is the same truncation
done by torch.linalg.svd on the dense M in the same dtype (``err_torch``); the kernel must be within 2x of it
(flash-attention's rule), with a floor for cases where the dense baseline happens to be near exact:
8 eps for fp32 data (whose Grams are exact in fp64, so only the fp32 rounding of the outputs is left), and for
fp64 data the backward-error bound of working from fp64 Grams, 64 m eps ||Bc||_F ||Ac||_F / ||M||_F
(``gram_bound``; m = deg r): a Gram squares the factors, so its rounding is relative to ||Bc||^2, not to ||M||.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from conftest import GRAPHS, complete, optimality_error, oracle, ring

import decaf_kernels as dk

EPS = {torch.float32: float(torch.finfo(torch.float32).eps), torch.float64: float(torch.finfo(torch.float64).eps)}



def gram_bound(B, A, W) -> float:
    """64 m eps64 ||Bc_i||_F ||Ac_i||_F summed in quadrature over agents and layers, over ||M||_F."""
    Bn = B.detach().double().numpy()
    An = A.detach().double().numpy()
    Wn = W.detach().double().numpy()
    total, m_max = 0.0, 1
    for i in range(Wn.shape[0]):
        nb = np.nonzero(Wn[i])[0]
        m_max = max(m_max, len(nb) * Bn.shape[-1])
        nbc = np.sqrt(sum(Wn[i, j] ** 2 * (Bn[j] ** 2).sum((-1, -2)) for j in nb))  # per layer
        nac = np.sqrt(sum((An[j] ** 2).sum((-1, -2)) for j in nb))
        total += float(((nbc * nac) ** 2).sum())
    M, _, _ = oracle(B, A, W, 1)
    return 64 * m_max * EPS[torch.float64] * np.sqrt(total) / max(np.linalg.norm(M), 1e-300)


def floor(B, A, W, dtype) -> float:
    return 8 * EPS[torch.float32] if dtype != torch.float64 else gram_bound(B, A, W)


def torch_dense_error(B, A, W, rank, dtype) -> float:
    """The baseline: dense M and torch.linalg.svd in `dtype`, truncated, measured against the float64 oracle."""
    M, Mr, _ = oracle(B, A, W, rank)
    Md = torch.from_numpy(M).to(dtype)
    U, S, Vh = torch.linalg.svd(Md, full_matrices=False)
    P = (U[..., :rank] * S[..., None, :rank]) @ Vh[..., :rank, :]
    return float(np.linalg.norm(P.double().numpy() - Mr) / max(np.linalg.norm(M), 1e-300))


def tol(B, A, W, rank, dtype) -> float:
    return max(2.0 * torch_dense_error(B, A, W, rank, dtype), floor(B, A, W, dtype))


def factors(gen, N, batch, d, k, r, dtype, scale=1.0):
    B = torch.randn((N, *batch, d, r), generator=gen, dtype=torch.float64) * scale / d**0.5
    A = torch.randn((N, *batch, r, k), generator=gen, dtype=torch.float64) * scale / k**0.5
    return B.to(dtype), A.to(dtype)


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Every test here runs on the CPU kernels and, where a GPU is present, on the CUDA kernels."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here; the GPU path is checked on a GPU machine (bench/gpu_check.sh)")
    return torch.device(request.param)


def run(device, B, A, W, *args, **kwargs):
    """consensus_tsvd on `device` (inputs made on the CPU are moved there); the outputs come back to the CPU."""
    out = dk.consensus_tsvd(B.to(device), A.to(device), W.to(device), *args, **kwargs)
    return tuple(o.cpu() for o in out)


CASES = [
    # id, N, batch, d, k, r, rank
    ("N4-b()-d37-k29-r4", 4, (), 37, 29, 4, 4),
    ("N5-b(3,)-d40-k33-r3-rank5", 5, (3,), 40, 33, 3, 5),
    ("N6-b(2,2)-d24-k50-r2", 6, (2, 2), 24, 50, 2, 2),
    ("N3-b(2,)-d16-k16-r8-rank2", 3, (2,), 16, 16, 8, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exact_is_optimal(case, graph, dtype, rng, device):
    _, N, batch, d, k, r, rank = case
    B, A = factors(rng, N, batch, d, k, r, dtype)
    W = GRAPHS[graph](N)
    B2, A2, S = run(device, B, A, W, rank, method="exact", return_singular_values=True)
    assert B2.shape == (N, *batch, d, rank) and A2.shape == (N, *batch, rank, k) and S.shape == (N, *batch, rank)
    assert B2.dtype == dtype and A2.dtype == dtype
    M, Mr, S_ref = oracle(B, A, W, rank)
    assert optimality_error(B2, A2, M, Mr) <= tol(B, A, W, rank, dtype)
    # singular values, relative to the largest (the accuracy a backward-stable method gives)
    s_err = np.abs(S.double().numpy() - S_ref[..., :rank]).max() / S_ref.max()
    assert s_err <= max(50 * EPS[dtype], 2 * tol(B, A, W, rank, dtype))


@pytest.mark.parametrize("split", ["balanced", "left", "right"])
def test_split(split, rng, device):
    N, d, k, r = 4, 30, 20, 3
    B, A = factors(rng, N, (2,), d, k, r, torch.float64)
    W = ring(N)
    B2, A2, S = run(device, B, A, W, split=split, return_singular_values=True)
    M, Mr, _ = oracle(B, A, W, r)
    assert optimality_error(B2, A2, M, Mr) < 1e-12
    alpha = {"balanced": 0.5, "left": 1.0, "right": 0.0}[split]
    GB = B2.mT @ B2  # = S^(2 alpha), diagonal
    GA = A2 @ A2.mT  # = S^(2 (1 - alpha))
    torch.testing.assert_close(GB, torch.diag_embed(S.pow(2 * alpha)), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(GA, torch.diag_embed(S.pow(2 * (1 - alpha))), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_full_rank_reproduces_the_mix(dtype, rng, device):
    """rank >= deg * r: nothing is truncated, B'A' = M_i exactly."""
    N, d, k, r = 5, 40, 36, 3
    B, A = factors(rng, N, (2,), d, k, r, dtype)
    W = ring(N)
    B2, A2 = run(device, B, A, W, rank=3 * r)
    M, _, _ = oracle(B, A, W, 3 * r)
    err = optimality_error(B2, A2, M, M)
    assert err <= max(2 * torch_dense_error(B, A, W, 3 * r, dtype), floor(B, A, W, dtype))


def test_identical_agents_are_a_fixed_point(rng, device):
    N, d, k, r = 6, 32, 24, 4
    B0, A0 = factors(rng, 1, (3,), d, k, r, torch.float64)
    B, A = B0.expand(N, -1, -1, -1).clone(), A0.expand(N, -1, -1, -1).clone()
    for W in (ring(N), complete(N)):
        B2, A2 = run(device, B, A, W)
        torch.testing.assert_close(B2 @ A2, B @ A, atol=1e-12, rtol=1e-12)


def test_complete_graph_agrees(rng, device):
    N, d, k, r = 5, 28, 30, 4
    B, A = factors(rng, N, (2,), d, k, r, torch.float32)
    B2, A2 = run(device, B, A, complete(N, torch.float32))
    P = (B2 @ A2).double()
    assert (P - P[:1]).abs().max() == 0  # agents with equal rows of W are solved once, so bit-identical
    assert float(dk.consensus_distance(B2, A2).max()) < 1e-6 * float(P.norm())


@pytest.mark.parametrize("power_iters", [1, 2])
def test_randomized_matches_exact_with_a_gap(power_iters, rng, device):
    """M_i = a rank-`rank` signal (singular values ~1) + noise 1e-3: the sketch finds the top subspace."""
    N, d, k, r, rank = 4, 60, 50, 8, 3
    W = complete(N)  # deg r = 32 > rank + oversample = 7: the sketch really is smaller than the exact core
    common_B = torch.randn(d, rank, generator=rng, dtype=torch.float64)
    common_A = torch.randn(rank, k, generator=rng, dtype=torch.float64)
    B = torch.randn(N, 2, d, r, generator=rng, dtype=torch.float64) * 1e-3
    A = torch.randn(N, 2, r, k, generator=rng, dtype=torch.float64) * 1e-3
    B[..., :rank] += common_B / d**0.25
    A[..., :rank, :] += common_A / k**0.25
    M, Mr, _ = oracle(B, A, W, rank)
    Be, Ae = run(device, B, A, W, rank, method="exact")
    Br, Ar = run(device, B, A, W, rank, method="randomized", oversample=4, power_iters=power_iters,
                               generator=torch.Generator().manual_seed(7))
    err_exact = optimality_error(Be, Ae, M, Mr)
    err_rand = optimality_error(Br, Ar, M, Mr)
    assert err_exact < 1e-12
    # Halko et al.: with q power iterations the error decays like (sigma_{l+1}/sigma_rank)^(2q+1) ~ (1e-3)^(2q+1)
    assert err_rand < 10 * (1e-3) ** (2 * power_iters + 1) * 10 ** (power_iters + 2)


def test_randomized_is_seeded(rng, device):
    N, d, k, r = 4, 30, 30, 6
    B, A = factors(rng, N, (), d, k, r, torch.float32)
    W = complete(N)
    runs = [run(device, B, A, W, 2, method="randomized", power_iters=0,
                              generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("N,d,r,spread", [(12, 768, 8, None), (16, 768, 8, None), (16, 256, 16, 1e-3)],
                         ids=["N12-d768-dense-rows", "N16-d768-dense-rows", "N16-d256-complete-drift"])
def test_auto_is_exact_where_exact_is_faster(N, d, r, spread, device):
    """Cases where the old cost model chose the sketch although exact was faster (5x and 3.4x measured on the CPU)
    and exact (8e-3 of ||M|| worse on the complete graph): the default must give the exact result."""
    gen = torch.Generator().manual_seed(N + d)
    if spread is None:  # every agent has a distinct dense row of W: the worst case for exact
        B, A = factors(gen, N, (2,), d, d, r, torch.float32)
        W = torch.rand(N, N, generator=gen, dtype=torch.float64) + 0.1
        W = W / W.sum(1, keepdim=True)
    else:
        B, A = near_consensus(gen, N, 2, d, d, r, spread, torch.float32)
        W = complete(N)
    auto = run(device, B, A, W)
    exact = run(device, B, A, W, method="exact")
    assert torch.equal(auto[0], exact[0]) and torch.equal(auto[1], exact[1])


def test_auto_rule_takes_the_sketch_only_with_a_wide_measured_margin():
    from decaf_kernels._consensus import AUTO_MARGIN, auto_method

    assert AUTO_MARGIN >= 4
    assert auto_method(768, 768, 16 * 8, 2, "cpu") == "exact"
    assert auto_method(768, 768, 128 * 8, 2, "cpu") == "randomized"  # a core of 1024: ~6x by the model
    assert auto_method(768, 768, 128 * 8, 2, "cuda") == "exact"  # not measured on a GPU: never the sketch


def test_auto_picks_exact_for_sparse_graphs(rng, device):
    N, d, k, r = 6, 64, 64, 4
    B, A = factors(rng, N, (), d, k, r, torch.float64)
    W = ring(N)
    torch.testing.assert_close(run(device, B, A, W)[0], run(device, B, A, W, method="exact")[0])


# ----------------------------------------------------------------------------------------------------------
# numerical traps (docs/design.md, "Numerics"): each checked for optimality against the float64 oracle
# ----------------------------------------------------------------------------------------------------------


def plain_cholesky_qr(B, A, W, rank):
    """What a first prototype does (and the reason we do not): Cholesky-QR of the neighbour Grams in fp32."""
    N = B.shape[0]
    out_B, out_A = [], []
    for i in range(N):
        nb = torch.nonzero(W[i]).flatten()
        Bc = torch.cat([W[i, j].to(B.dtype) * B[j] for j in nb], -1)
        Ac = torch.cat([A[j] for j in nb], -2)
        Lb = torch.linalg.cholesky(Bc.mT @ Bc)
        La = torch.linalg.cholesky(Ac @ Ac.mT)
        U, S, Vh = torch.linalg.svd(Lb.mT @ La)
        sq = S[..., :rank].sqrt()
        Xb = torch.linalg.solve_triangular(Lb.mT, U[..., :rank] * sq[..., None, :], upper=True)
        Xa = torch.linalg.solve_triangular(La.mT, (sq[..., :, None] * Vh[..., :rank, :]).mT, upper=True)
        out_B.append(Bc @ Xb)
        out_A.append((Ac.mT @ Xa).mT)
    return torch.stack(out_B), torch.stack(out_A)


def trap_inputs(name, gen):
    N, d, k, r = 4, 48, 40, 4
    B, A = factors(gen, N, (2,), d, k, r, torch.float64)
    if name == "all-zero-B":  # peft initialises B = 0
        B.zero_()
    elif name == "some-agents-zero":
        B[1].zero_()
        A[2].zero_()
    elif name == "duplicate-agents":
        B[1], A[1] = B[0], A[0]
        B[2], A[2] = B[0], A[0]
    elif name == "cond-1e6":  # each agent's factors and M_i have singular values spread over 1e6
        sv = torch.logspace(0, -6, r, dtype=torch.float64)
        for j in range(N):
            for layer in range(B.shape[1]):
                Ub = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0]
                Vb = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))[0]
                B[j, layer] = (Ub * sv) @ Vb
        W = ring(N)
        return B, A, W
    elif name == "huge-1e18":
        B, A = B * 1e18, A * 1e18
    elif name == "tiny-1e-20":
        B, A = B * 1e-20, A * 1e-20
    elif name == "mixed-magnitudes":
        B[0] *= 1e15
        B[1] *= 1e-15
    return B, A, ring(N)


TRAPS = ["all-zero-B", "some-agents-zero", "duplicate-agents", "cond-1e6", "huge-1e18", "tiny-1e-20",
         "mixed-magnitudes"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("trap", TRAPS)
def test_traps_stay_finite_and_optimal(trap, dtype, device):
    gen = torch.Generator().manual_seed(zlib.crc32(trap.encode()))
    B64, A64, W = trap_inputs(trap, gen)
    B, A = B64.to(dtype), A64.to(dtype)
    rank = B.shape[-1]
    B2, A2, S = run(device, B, A, W, rank, return_singular_values=True)
    assert torch.isfinite(B2).all() and torch.isfinite(A2).all() and torch.isfinite(S).all()
    M, Mr, _ = oracle(B, A, W, rank)  # the oracle sees exactly the (rounded) inputs the op saw
    if trap == "all-zero-B":
        assert (B2 == 0).all() and (A2 == 0).all() and (S == 0).all()
        return
    err = optimality_error(B2, A2, M, Mr)
    # Baseline: dense SVD in the same dtype. For huge-1e18 in fp32 the dense M overflows (entries ~1e36 x d), so
    # the dense baseline is not computable there; the factored op must still reach fp32 rounding level.
    base = torch_dense_error(B, A, W, rank, dtype)
    bound = 2 * base if np.isfinite(base) else 0.0
    lowest = 50 * EPS[torch.float32] if dtype != torch.float64 else gram_bound(B, A, W)
    if trap == "cond-1e6" and dtype == torch.float64:
        # fp64 data: the fp64 Gram squares cond(Bc) = 1e6, so the analysis only promises eps * cond
        # (the fp32 case has no such term: its Grams are exact in fp64)
        lowest = max(lowest, EPS[dtype] * 1e6)
    assert err <= max(bound, lowest), (err, base, lowest)


def test_plain_cholesky_qr_fails_the_traps_we_pass():
    """Why the op uses fp64 Grams + pivoted Cholesky: a plain fp32 Cholesky-QR breaks on these inputs."""
    failures = {}
    for trap in ("some-agents-zero", "duplicate-agents", "cond-1e6", "huge-1e18"):
        B64, A64, W = trap_inputs(trap, torch.Generator().manual_seed(zlib.crc32(trap.encode())))
        B, A = B64.float(), A64.float()
        M, Mr, _ = oracle(B, A, W, 4)
        try:
            Bp, Ap = plain_cholesky_qr(B, A, W.float(), 4)
            err = optimality_error(Bp, Ap, M, Mr) if torch.isfinite(Bp).all() and torch.isfinite(Ap).all() else np.inf
        except RuntimeError:  # torch.linalg.cholesky: "not positive-definite"
            err = np.inf
        ours = optimality_error(*dk.consensus_tsvd(B, A, W, 4), M, Mr)
        failures[trap] = (err, ours)
    for trap, (err, ours) in failures.items():
        assert ours < 1e-5, (trap, ours)
    # the plain version fails (error, non-finite output or an error far above ours) on most of them
    bad = [t for t, (err, ours) in failures.items() if not err < 100 * max(ours, 1e-7)]
    assert len(bad) >= 3, failures


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(dtype, rng, device):
    """Computed in fp32, returned in the input dtype: the error is that of rounding the optimal factors."""
    N, d, k, r = 4, 40, 32, 4
    B, A = factors(rng, N, (2,), d, k, r, torch.float32)
    B, A = B.to(dtype), A.to(dtype)
    W = ring(N)
    B2, A2 = run(device, B, A, W)
    assert B2.dtype == dtype and A2.dtype == dtype
    M, Mr, S = oracle(B, A, W, r)
    err = optimality_error(B2, A2, M, Mr)
    # baseline: the float64 optimal balanced factors, rounded to `dtype`
    Bo, Ao, _ = dk.reference.consensus_tsvd_ref(B.double(), A.double(), W, r)
    base = optimality_error(Bo.to(dtype), Ao.to(dtype), M, Mr)
    assert err <= 2 * base + 1e-6, (err, base)


def test_non_contiguous_inputs(rng, device):
    N, d, k, r = 4, 36, 28, 4
    Bt = torch.randn(N, 3, r, d, generator=rng, dtype=torch.float64).to(device)
    At = torch.randn(N, 3, k, r, generator=rng, dtype=torch.float64).to(device)
    B, A = Bt.mT, At.mT  # transposed views
    Bs = torch.randn(N, 6, d, r, generator=rng, dtype=torch.float64).to(device)[:, ::2]  # strided slice
    W = ring(N).to(device)
    for Bx, Ax in ((B, A), (Bs, A)):
        assert not Bx.is_contiguous()
        B2, A2 = dk.consensus_tsvd(Bx, Ax, W)
        M, Mr, _ = oracle(Bx, Ax, W, r)
        assert optimality_error(B2, A2, M, Mr) < 1e-12
        B3, A3 = dk.consensus_tsvd(Bx.contiguous(), Ax.contiguous(), W)
        # strided and contiguous layouts take kernel paths that sum in different orders: equal to rounding
        P2, P3 = B2 @ A2, B3 @ A3
        torch.testing.assert_close(P2, P3, atol=100 * EPS[torch.float64] * float(P3.abs().max()), rtol=0)


def test_inputs_are_not_modified(rng, device):
    B, A = factors(rng, 4, (2,), 20, 20, 3, torch.float32)
    B, A, W = B.to(device), A.to(device), ring(4).to(device)
    Bc, Ac, Wc = B.clone(), A.clone(), W.clone()
    dk.consensus_tsvd(B, A, W)
    dk.consensus_tsvd(B, A, W, method="randomized", generator=torch.Generator().manual_seed(0))
    assert torch.equal(B, Bc) and torch.equal(A, Ac) and torch.equal(W, Wc)


def test_rank_above_numerical_rank_gives_zero_directions(rng, device):
    N, d, k, r = 3, 20, 20, 2
    B, A = factors(rng, N, (), d, k, r, torch.float64)
    W = torch.eye(N, dtype=torch.float64)  # M_i = B_i A_i has rank 2
    B2, A2, S = run(device, B, A, W, rank=5, return_singular_values=True)
    assert (S[:, 2:] == 0).all() and (B2[..., 2:] == 0).all() and (A2[..., 2:, :] == 0).all()
    torch.testing.assert_close(B2 @ A2, B @ A, atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# randomized method: accuracy in fp32, determinism
# ----------------------------------------------------------------------------------------------------------


def near_consensus(gen, N, L, d, k, r, spread, dtype):
    """N agents whose factors are a common pair perturbed by a relative `spread` (agents close to consensus)."""
    B0 = torch.randn(d, r, generator=gen, dtype=torch.float64) / d**0.5
    A0 = torch.randn(r, k, generator=gen, dtype=torch.float64) / k**0.5
    B = B0 * (1 + spread * torch.randn(N, L, d, r, generator=gen, dtype=torch.float64))
    A = A0 * (1 + spread * torch.randn(N, L, r, k, generator=gen, dtype=torch.float64))
    return B.to(dtype), A.to(dtype)


def excess_residual(B2, A2, M, Mr) -> float:
    """(||B'A' - M|| - ||M - M_r||) / ||M||: how much worse than the optimal rank-r residual."""
    P = B2.detach().double().cpu().numpy() @ A2.detach().double().cpu().numpy()
    return float((np.linalg.norm(P - M) - np.linalg.norm(M - Mr)) / np.linalg.norm(M))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("oversample", [0, 2, 8, 16])
def test_randomized_is_near_optimal_for_every_oversampling(oversample, dtype, device):
    """8 agents of a complete graph, factors 0.1% apart: the sketch's basis must stay orthonormal in fp32 (a
    basis built through float64 Grams keeps directions below fp32 rounding unless they are cut and the rest
    re-orthogonalised), so more oversampling may not make the result worse."""
    gen = torch.Generator().manual_seed(9000 + oversample)
    N, d, k, r = 8, 128, 128, 8
    B, A = near_consensus(gen, N, 2, d, k, r, 1e-3, dtype)
    W = complete(N)
    M, Mr, _ = oracle(B, A, W, r)
    Be, Ae = run(device, B, A, W, method="exact")
    assert excess_residual(Be, Ae, M, Mr) <= 1e-5  # the precondition: exact is near optimal here
    Br, Ar = run(device, B, A, W, method="randomized", oversample=oversample,
                 generator=torch.Generator().manual_seed(oversample))
    bound = 1e-5 if dtype == torch.float32 else 1e-12
    assert excess_residual(Br, Ar, M, Mr) <= bound


@pytest.mark.parametrize("method", ["auto", "randomized"])
def test_calls_without_generator_are_deterministic_and_leave_the_global_rng(method, rng, device):
    N, d, k, r = 16, 64, 64, 4
    B, A = factors(rng, N, (2,), d, k, r, torch.float32)
    W = torch.rand(N, N, generator=rng, dtype=torch.float64) + 0.1  # dense, all rows distinct
    W = W / W.sum(1, keepdim=True)
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if device.type == "cuda" else None
    first = run(device, B, A, W, method=method)
    second = run(device, B, A, W, method=method)
    assert torch.equal(state, torch.get_rng_state())
    if cuda_state is not None:
        assert torch.equal(cuda_state, torch.cuda.get_rng_state())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ----------------------------------------------------------------------------------------------------------
# float64: LAPACK-level accuracy on wide spectra
# ----------------------------------------------------------------------------------------------------------


def cuda_float64_keeps_gram_route(request, device):
    """On CUDA, float64 still takes the Gram route (a LAPACK-accurate path there needs a non-Gram small-core kernel
    that does not synchronise; README, "How it works"): the accuracy tests below are expected to fail there (not
    strictly: a Gram-route error can land under the bound on some graphs; the GPU run's report lists XPASS/XFAIL)."""
    if device.type == "cuda":
        request.applymarker(pytest.mark.xfail(reason="CUDA float64 resolves only ~1e-8 s_1 (Gram route)"))


@pytest.mark.parametrize("ratio", [1e8, 1e10, 1e12])
def test_float64_keeps_directions_far_below_sqrt_eps(ratio, device, request):
    """One agent, W = I, rank = r = 2, one column of B `ratio` times the other: B'A' must equal BA to LAPACK's
    accuracy (a float64 Gram resolves directions only down to ~1e-8 s_1 and used to drop the weak one)."""
    cuda_float64_keeps_gram_route(request, device)
    gen = torch.Generator().manual_seed(int(np.log10(ratio)))
    B = torch.randn(1, 3, 50, 2, generator=gen, dtype=torch.float64)
    B[..., 0] *= ratio
    A = torch.randn(1, 3, 2, 40, generator=gen, dtype=torch.float64)
    W = torch.eye(1, dtype=torch.float64)
    B2, A2 = run(device, B, A, W, 2, method="exact")
    P = (B @ A).numpy()
    U, S, Vh = np.linalg.svd(P, full_matrices=False)
    lapack = np.linalg.norm((U[..., :2] * S[..., None, :2]) @ Vh[..., :2, :] - P) / np.linalg.norm(P)
    ours = np.linalg.norm((B2 @ A2).numpy() - P) / np.linalg.norm(P)
    assert ours <= 100 * max(lapack, EPS[torch.float64]), (ours, lapack)


@pytest.mark.parametrize("graph", ["ring", "complete", "star"])
def test_float64_on_spectra_spanning_1e12(graph, device, request):
    """Every agent's factors have singular values from 1 down to 1e-12 in random bases: the truncation of M_i
    (whose spectrum spans the same range) must be within 100x of LAPACK's on the dense M_i."""
    cuda_float64_keeps_gram_route(request, device)
    gen = torch.Generator().manual_seed(12 + len(graph))
    N, L, d, k, r = 4, 2, 40, 36, 6
    sv = torch.logspace(0, -12, r, dtype=torch.float64)
    B = torch.empty(N, L, d, r, dtype=torch.float64)
    A = torch.empty(N, L, r, k, dtype=torch.float64)
    for j in range(N):
        for layer in range(L):
            Ub = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0]
            Va = torch.linalg.qr(torch.randn(k, r, generator=gen, dtype=torch.float64))[0]
            B[j, layer] = Ub * sv
            A[j, layer] = Va.T
    W = GRAPHS[graph](N)
    for rank in (r, 2 * r):
        M, Mr, _ = oracle(B, A, W, rank)
        U, S, Vh = np.linalg.svd(M, full_matrices=False)
        lapack = np.linalg.norm((U[..., :rank] * S[..., None, :rank]) @ Vh[..., :rank, :] - Mr) / np.linalg.norm(M)
        B2, A2 = run(device, B, A, W, rank, method="exact")
        ours = optimality_error(B2, A2, M, Mr)
        # LAPACK's own error against the oracle is ~0 (it is the oracle), so compare with its rounding level
        assert ours <= 100 * max(lapack, 4 * EPS[torch.float64]), (rank, ours, lapack)


def test_exact_takes_cores_larger_than_the_kernels_workspace(device):
    """m = deg * r above the compiled small core's limit (1024 on the CPU) used to raise an internal ValueError;
    such cores now go to the float64 torch fallback and stay optimal."""
    gen = torch.Generator().manual_seed(1120)
    N, d, k, r = 70, 40, 36, 16  # complete graph: one core of m = 1120
    B, A = factors(gen, N, (), d, k, r, torch.float32)
    W = complete(N)
    B2, A2 = run(device, B, A, W, method="exact")
    M, Mr, _ = oracle(B[:, None], A[:, None], W, r)
    assert optimality_error(B2[:, None], A2[:, None], M, Mr) <= tol(B, A, W, r, torch.float32)
