"""GPU checks of the one-problem-per-block CUDA small-core kernel, ``_C_cuda.small_core_block`` and its NVRTC build.

Every case builds explicit factors Bc (d x m) and Ac (m x k) with d = k = 2m in float64, hands only the Grams
Gb = Bc^T Bc, Ga = Ac Ac^T to the kernel, and checks the result three ways:

* against the float64 LAPACK oracle: (Bc X)(Y Ac) equals the rank-R truncation of M = Bc Ac, and S its
  singular values;
* against the CPU kernel ``_C.small_core`` on the same Grams: the same exact zeros (null directions), S and
  the products to rounding;
* structurally: every output element is written (outputs are poisoned with NaN first), null directions are
  exact zeros in S, X and Y.

Tolerances (relative to ||M||_F, or to s_1 for singular values):

* target float64: 1e-12. The solver is backward stable on the Grams (pivoted Cholesky + one-sided Jacobi),
  so the product is right to a small multiple of m eps ||M|| (the CPU kernel measures ~1e-14); 1e-12 leaves
  a margin of ~100x for m = 128 and for the different rounding order of the parallel reductions.
* target float32: 1e-8, plus the tail the float32 null rule drops on purpose (directions with
  s <= sqrt(max(m, 2) eps) s_1, exactly as the CPU's float32 target drops them). The looser Jacobi tolerance
  (2^-34) leaves off-diagonal couplings of ~6e-11 s_1; the results are rounded to fp32 (6e-8) by the caller.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from decaf_kernels import _backend, _ext, _nvrtc

if not torch.cuda.is_available():
    pytest.skip("no CUDA device available: the CUDA small-core kernel cannot run here", allow_module_level=True)
# Every test runs on each build of the kernel present: nvcc's _C_cuda, and the same source compiled by NVRTC
# (decaf_kernels._nvrtc, with CuPy). The module-level name _C_cuda is the build under test.
BUILDS = {name: build for name, build in (("nvcc", _backend._nvcc_small_core()),
                                          ("nvrtc", _nvrtc.small_core_module())) if build is not None}
if not BUILDS:
    pytest.skip(f"no build of the CUDA small core: _C_cuda {_ext.status('_C_cuda')}; NVRTC {_nvrtc.status()}",
                allow_module_level=True)
_C_cuda = None
_C = _ext.cpu_ext()


@pytest.fixture(autouse=True, params=sorted(BUILDS))
def build(request):
    global _C_cuda
    _C_cuda = BUILDS[request.param]
    yield request.param
    _C_cuda = None

EPS = np.finfo(np.float64).eps
DEV = torch.device("cuda")
TOL = {"float64": 1e-12, "float32": 1e-8}
STOL = {"float64": 1e-12, "float32": 1e-10}  # |S - s_true| / s_1 (Jacobi gives s to ~m eps s_1 either way)


def null_rel(m: int, target: str) -> float:
    r = max(m, 2) * EPS
    return math.sqrt(r) if target == "float32" else r


# ---- problem generators (numpy float64) ----

def make_factors(rng: np.random.Generator, m: int, kind: str):
    d = k = 2 * m
    Bc = rng.standard_normal((d, m))
    Ac = rng.standard_normal((m, k))
    if kind == "zero_agent":  # a block of zero columns of Bc / rows of Ac (an agent with zero factors)
        z = max(1, m // 4)
        Bc[:, :z] = 0.0
        Ac[m - z:] = 0.0
    elif kind == "dup":  # duplicated agents: rank-deficient Grams
        h = m // 2
        Bc[:, h:2 * h] = Bc[:, :h]
        Ac[h:2 * h] = Ac[:h]
    elif kind in ("ill6", "ill12"):  # singular values of M spanning 1e-6..1 or 1e-12..1
        lo = 1e-6 if kind == "ill6" else 1e-12
        U, _ = np.linalg.qr(rng.standard_normal((d, m)))
        V, _ = np.linalg.qr(rng.standard_normal((k, m)))
        s = np.logspace(0.0, math.log10(lo), m)
        Bc = U * np.sqrt(s)
        Ac = np.sqrt(s)[:, None] * V.T
    elif kind == "zeroB":
        Bc[:] = 0.0
    elif kind == "zeroA":
        Ac[:] = 0.0
    elif kind != "rand":
        raise ValueError(kind)
    return Bc, Ac


def grams(Bc, Ac, scale=1.0):
    gb = Bc.T @ Bc
    ga = Ac @ Ac.T
    return gb * scale, ga * scale


def batch_grams(fac, scale=1.0):
    """(batch, m, m) arrays Gb, Ga of the factor pairs in `fac`."""
    gb, ga = zip(*(grams(*f, scale=scale) for f in fac))
    return np.stack(gb), np.stack(ga)


# ---- kernel drivers ----

def run_block(gb, ga, rank, alpha, target="float64", stream=None):
    """Runs _C_cuda.small_core_block on (batch, m, m) numpy/torch Grams; outputs poisoned with NaN first."""
    gb = torch.as_tensor(gb, dtype=torch.float64).to(DEV).contiguous()
    ga = torch.as_tensor(ga, dtype=torch.float64).to(DEV).contiguous()
    batch, m, _ = gb.shape
    x = torch.full((batch, m, rank), float("nan"), dtype=torch.float64, device=DEV)
    y = torch.full((batch, rank, m), float("nan"), dtype=torch.float64, device=DEV)
    s = torch.full((batch, rank), float("nan"), dtype=torch.float64, device=DEV)
    info = torch.full((batch,), -12345, dtype=torch.int32, device=DEV)
    wd = _C_cuda.small_core_block_work_doubles(m)
    work = torch.full((batch * wd,), float("nan"), dtype=torch.float64, device=DEV) if wd else None
    st = stream if stream is not None else torch.cuda.current_stream()
    with torch.cuda.stream(st):
        _C_cuda.small_core_block(gb.data_ptr(), ga.data_ptr(), batch, m, rank, alpha, x.data_ptr(), y.data_ptr(),
                                 s.data_ptr(), info.data_ptr(), work.data_ptr() if work is not None else 0, target,
                                 st.cuda_stream)
    st.synchronize()
    return x.cpu().numpy(), y.cpu().numpy(), s.cpu().numpy(), info.cpu().numpy()


def run_cpu(gb, ga, rank, alpha, target="float64"):
    gb = np.ascontiguousarray(gb, dtype=np.float64)
    ga = np.ascontiguousarray(ga, dtype=np.float64)
    batch, m, _ = gb.shape
    x = np.empty((batch, m, rank))
    y = np.empty((batch, rank, m))
    s = np.empty((batch, rank))
    info = np.empty(batch, dtype=np.int32)
    _C.small_core(gb.ctypes.data, ga.ctypes.data, batch, m, rank, alpha, x.ctypes.data, y.ctypes.data,
                  s.ctypes.data, info.ctypes.data, "auto", target)
    return x, y, s, info


def run_and_check(fac, rank, alpha, target):
    """Runs the GPU and the CPU kernel on the Grams of the factor pairs in `fac` and checks every problem against
    the oracle and the CPU result; returns the GPU outputs (X, Y, S, info)."""
    gb, ga = batch_grams(fac)
    X, Y, S, info = run_block(gb, ga, rank, alpha, target)
    Xc, Yc, Sc, _ = run_cpu(gb, ga, rank, alpha, target)
    for b, (Bc, Ac) in enumerate(fac):
        check_problem(Bc, Ac, X[b], Y[b], S[b], info[b], rank, target, cpu=(Xc[b], Yc[b], Sc[b]))
    return X, Y, S, info


def oracle_svd(M):
    """Thin float64 SVD; LAPACK's gesdd occasionally fails to converge on the graded test spectra, then gesvd."""
    try:
        return np.linalg.svd(M, full_matrices=False)
    except np.linalg.LinAlgError:
        U, s, Vh = torch.linalg.svd(torch.from_numpy(M).to(DEV), full_matrices=False, driver="gesvd")
        return U.cpu().numpy(), s.cpu().numpy(), Vh.cpu().numpy()


def check_problem(Bc, Ac, X, Y, S, info, rank, target, cpu=None, scale=1.0):
    """One problem against the LAPACK oracle (and the CPU kernel's result `cpu` = (X, Y, S) if given).

    `scale`: the Grams were multiplied by it, i.e. the factors by sqrt(scale); then S / scale and
    (Bc X)(Y Ac) (with the unscaled factors) are what compare with the unscaled oracle."""
    m = Bc.shape[1]
    assert np.isfinite(X).all() and np.isfinite(Y).all() and np.isfinite(S).all(), "unwritten or non-finite output"
    assert info >= 0, f"info = {info}"
    M = Bc @ Ac
    U, s_true, Vh = oracle_svd(M)
    R = min(rank, len(s_true))
    Mr = (U[:, :R] * s_true[:R]) @ Vh[:R]
    nrm = np.linalg.norm(M)
    P = (Bc @ X) @ (Y @ Ac)
    null = S == 0.0
    # exact zeros go together
    assert (X[:, null] == 0.0).all() and (Y[null] == 0.0).all()
    if nrm == 0.0:
        assert (S == 0).all() and (X == 0).all() and (Y == 0).all()
        return
    s1 = s_true[0]
    S_true = np.zeros(rank)
    S_true[:R] = s_true[:R]
    # descending
    assert (np.diff(S) <= 0).all(), S
    # a direction is null only where the true spectrum is at the null threshold (with slack for the
    # Gram-level perturbation ~ sqrt(m eps) s_1 ... here: 2x the threshold + m eps)
    thr = null_rel(m, target)
    assert (S_true[null] <= (2 * thr + 4 * m * EPS) * s1).all(), (S_true[null] / s1)
    dropped = math.sqrt(float(np.sum(S_true[null] ** 2)))
    tol = TOL[target]
    err = np.linalg.norm(P - Mr)
    assert err <= tol * nrm + dropped, f"product error {err / nrm:.3e} (dropped {dropped / nrm:.3e})"
    live = ~null
    serr = np.abs(S[live] / scale - S_true[live]).max(initial=0.0)
    assert serr <= STOL[target] * s1, serr / s1
    if cpu is not None:
        Xc, Yc, Sc = cpu
        # same null rule and thresholds: the same exact zeros
        assert np.array_equal(Sc == 0.0, null), (S, Sc)
        assert np.abs(Sc - S).max() <= 1e-12 * S.max() * (100 if target == "float32" else 1)
        Pc = (Bc @ Xc) @ (Yc @ Ac)
        assert np.linalg.norm(P - Pc) <= 2 * tol * nrm + dropped


KINDS = ["rand", "zero_agent", "dup", "ill6", "ill12", "zeroB", "zeroA"]


@pytest.mark.parametrize("m", [1, 2, 3, 16, 24, 47, 48, 64, 96, 128])
@pytest.mark.parametrize("target", ["float64", "float32"])
def test_random_against_oracle_and_cpu(m, target):
    rng = np.random.default_rng(1000 + m)
    r = max(1, m // 3)
    for rank in sorted({1, r, m}):
        for alpha in (0.0, 0.5, 1.0):
            batch = 3
            fac = [make_factors(rng, m, "rand") for _ in range(batch)]
            info = run_and_check(fac, rank, alpha, target)[3]
            if m >= 2 and target == "float64":
                assert (info >= 1).all()  # Jacobi sweeps used


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("m", [3, 16, 24, 48, 64, 128])
@pytest.mark.parametrize("target", ["float64", "float32"])
def test_traps(kind, m, target):
    rng = np.random.default_rng(zlib.crc32(f"{kind}-{m}-{target}".encode()))
    for seed_round in range(2):
        for rank in sorted({1, max(1, m // 3), m}):
            alpha = (0.0, 0.5, 1.0)[(seed_round + rank) % 3]
            fac = [make_factors(rng, m, kind) for _ in range(2)]
            X, Y, S, info = run_and_check(fac, rank, alpha, target)
            if kind in ("zeroB", "zeroA"):
                assert (S == 0).all() and (X == 0).all() and (Y == 0).all() and (info == 0).all()
            if kind in ("zero_agent", "dup") and rank == m:
                # the Grams are rank deficient: the trailing directions must be exact zeros
                assert (S[:, -1] == 0).all()


@pytest.mark.parametrize("m", [16, 48, 128])
@pytest.mark.parametrize("scale", [1e280, 1e-280])
def test_extreme_magnitudes(m, scale):
    rng = np.random.default_rng(7 + m)
    fac = [make_factors(rng, m, k) for k in ("rand", "dup", "ill6")]
    gb, ga = batch_grams(fac, scale)
    for alpha in (0.0, 0.5, 1.0):
        rank = m
        X, Y, S, info = run_block(gb, ga, rank, alpha)
        Xc, Yc, Sc, _ = run_cpu(gb, ga, rank, alpha)
        for b, (Bc, Ac) in enumerate(fac):
            # Factors are sqrt(scale) Bc, sqrt(scale) Ac: (Bc X)(Y Ac) = M_r and S = scale s.
            check_problem(Bc, Ac, X[b], Y[b], S[b], info[b], rank, "float64", scale=scale)
            assert np.array_equal(S[b] == 0, Sc[b] == 0)
            assert np.abs(S[b] - Sc[b]).max() <= 1e-12 * S[b].max()


def test_nonfinite_input():
    rng = np.random.default_rng(3)
    m = 24
    fac = [make_factors(rng, m, "rand") for _ in range(3)]
    gb, ga = batch_grams(fac)
    gb[1, 3, 5] = np.nan
    ga[2, 0, 0] = np.inf
    X, Y, S, info = run_block(gb, ga, 8, 0.5)
    _, _, _, info_c = run_cpu(gb, ga, 8, 0.5)
    # sweep counts of the finite problem may differ by one between CPU and GPU (rounding); the codes agree
    assert list(info[1:]) == list(info_c[1:]) == [-1, -1] and info[0] >= 1 and info_c[0] >= 1
    assert np.isnan(X[1:]).all() and np.isnan(Y[1:]).all() and np.isnan(S[1:]).all()
    check_problem(*fac[0], X[0], Y[0], S[0], info[0], 8, "float64")


def test_mixed_batch_and_batch_sizes():
    rng = np.random.default_rng(11)
    m, rank = 24, 8
    kinds = KINDS * 3
    fac = [make_factors(rng, m, kinds[i]) for i in range(len(kinds))]
    for target in ("float64", "float32"):
        run_and_check(fac, rank, 0.5, target)
    gb, ga = batch_grams(fac)
    # batch of 1 and a large batch (more blocks than fit on the GPU at once)
    X1, Y1, S1, i1 = run_block(gb[:1], ga[:1], rank, 0.5)
    check_problem(*fac[0], X1[0], Y1[0], S1[0], i1[0], rank, "float64")
    big = 3000
    Bs = rng.standard_normal((big, 2 * m, m))
    As = rng.standard_normal((big, m, 2 * m))
    gbb = np.einsum("bdi,bdj->bij", Bs, Bs)
    gab = np.einsum("bik,bjk->bij", As, As)
    X, Y, S, info = run_block(gbb, gab, rank, 0.5)
    assert np.isfinite(X).all() and np.isfinite(Y).all() and np.isfinite(S).all() and (info >= 1).all()
    M = Bs @ As
    U, s, Vh = np.linalg.svd(M)
    Mr = (U[..., :rank] * s[:, None, :rank]) @ Vh[..., :rank, :]
    P = (Bs @ X) @ (Y @ As)
    err = np.linalg.norm(P - Mr, axis=(1, 2)) / np.linalg.norm(M, axis=(1, 2))
    assert err.max() <= TOL["float64"], err.max()
    assert np.abs(S - s[:, :rank]).max() <= 1e-12 * s[:, 0].max()


@pytest.mark.parametrize("m", [24, 48, 64])
def test_layouts_agree(m, monkeypatch):
    """The global-workspace layouts (forced by pretending to have less shared memory) give bit-identical results."""
    rng = np.random.default_rng(5)
    fac = [make_factors(rng, m, k) for k in ("rand", "dup", "zero_agent", "ill12")]
    gb, ga = batch_grams(fac)
    ref = run_block(gb, ga, m // 2, 0.5)
    ld = m | 1
    small = (4 * ld + 32) * 8 + 5 * ld * 4
    seen = set()
    for nmat in (2, 1, 0):  # matrices in shared memory: W and V; W; none
        monkeypatch.setenv("DECAF_SMALL_CORE_BLOCK_SMEM", str(nmat * m * ld * 8 + small))
        wd = _C_cuda.small_core_block_work_doubles(m)
        assert wd == (4 - nmat) * m * ld
        seen.add(wd)
        out = run_block(gb, ga, m // 2, 0.5)
        for a, b in zip(ref, out):
            assert np.array_equal(a, b, equal_nan=True)
    assert len(seen) == 3


def test_non_default_stream_and_cuda_graph():
    rng = np.random.default_rng(21)
    m, rank, batch = 48, 16, 64
    fac = [make_factors(rng, m, "rand") for _ in range(batch)]
    gb, ga = (torch.tensor(g, device=DEV) for g in batch_grams(fac))
    ref = run_block(gb, ga, rank, 0.5)
    side = torch.cuda.Stream()
    out = run_block(gb, ga, rank, 0.5, stream=side)
    for a, b in zip(ref, out):
        assert np.array_equal(a, b)

    # capture one launch in a CUDA graph, then replay it on new inputs
    wd = _C_cuda.small_core_block_work_doubles(m)
    sgb, sga = gb.clone(), ga.clone()
    x = torch.full((batch, m, rank), float("nan"), dtype=torch.float64, device=DEV)
    y = torch.full((batch, rank, m), float("nan"), dtype=torch.float64, device=DEV)
    s = torch.full((batch, rank), float("nan"), dtype=torch.float64, device=DEV)
    info = torch.full((batch,), -12345, dtype=torch.int32, device=DEV)
    work = torch.empty(max(batch * wd, 1), dtype=torch.float64, device=DEV)

    def launch():
        _C_cuda.small_core_block(sgb.data_ptr(), sga.data_ptr(), batch, m, rank, 0.5, x.data_ptr(), y.data_ptr(),
                                 s.data_ptr(), info.data_ptr(), work.data_ptr() if wd else 0, "float64",
                                 torch.cuda.current_stream().cuda_stream)

    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        launch()
    torch.cuda.synchronize()
    assert torch.isnan(x).all()  # captured, not run
    fac2 = [make_factors(rng, m, "rand") for _ in range(batch)]
    gb2, ga2 = batch_grams(fac2)
    sgb.copy_(torch.tensor(gb2))
    sga.copy_(torch.tensor(ga2))
    g.replay()
    torch.cuda.synchronize()
    direct = run_block(gb2, ga2, rank, 0.5)
    for a, b in zip(direct, (x.cpu().numpy(), y.cpu().numpy(), s.cpu().numpy(), info.cpu().numpy())):
        assert np.array_equal(a, b)
    for b in range(0, batch, 7):
        check_problem(*fac2[b], direct[0][b], direct[1][b], direct[2][b], direct[3][b], rank, "float64")


def test_argument_checks():
    with pytest.raises(ValueError):
        _C_cuda.small_core_block_work_doubles(0)
    with pytest.raises(ValueError):
        _C_cuda.small_core_block(1, 1, 1, 4, 5, 0.5, 1, 1, 1, 1, 0, "float64", 0)  # rank > m
    with pytest.raises(ValueError):
        _C_cuda.small_core_block(8, 8, 1, 4, 2, 0.5, 8, 8, 8, 8, 0, "float16", 0)
