"""Tests of the C++ CPU kernels in decaf_kernels._C against numpy / LAPACK float64.

The module is a raw-pointer pybind11 extension, so these tests drive it with numpy arrays
(``arr.ctypes.data``) and need no torch. Every kernel runs on each instruction-set path this CPU
supports ("baseline" is the plain-loop code).

Tolerances are derived, not tuned; each comes with its reasoning next to it.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import zlib

import numpy as np
import pytest


def _load_extension():
    try:
        return importlib.import_module("decaf_kernels._C")
    except ImportError:
        pass
    # The package itself may be mid-edit; the built module does not depend on it.
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "decaf_kernels")
    found = sorted(glob.glob(os.path.join(root, "_C.*so")) + glob.glob(os.path.join(root, "_C.*pyd")))
    if not found:
        return None
    spec = importlib.util.spec_from_file_location("decaf_kernels._C", found[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_C = _load_extension()
pytestmark = pytest.mark.skipif(_C is None, reason="decaf_kernels._C is not built (pip install -e .)")

EPS64 = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)
ISAS = ["baseline"] + {"baseline": [], "avx2": ["avx2"], "avx512": ["avx2", "avx512"]}[_C.cpu_isa()] if _C else []


def rng_for(request) -> np.random.Generator:
    """A generator seeded by the test id, so every case has its own fixed data."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def change_id(change) -> str:
    """Test id of a bad-argument case: the change (a dict of argument values) or its name."""
    return change if isinstance(change, str) else "-".join(f"{k}={change[k]}" for k in change)


def assert_rejected(fn, make_args, change, needle, misaligned):
    """fn(**args) must raise ValueError matching `needle`, args being the valid arguments of make_args()
    updated by `change`, or, for change == misaligned[0], with pointer argument misaligned[1] moved by
    misaligned[2] bytes. make_args() returns (arrays to keep alive, args)."""
    keep, args = make_args()
    tag, name, offset = misaligned
    if change == tag:
        args[name] += offset
    else:
        args.update(change)
    with pytest.raises(ValueError, match=needle):
        fn(**args)
    del keep


def assert_bad_index_rejected(fn, make_args, at, value, needle):
    """As assert_rejected, with entry `at` of the index array (the second one kept) set to `value`."""
    keep, args = make_args()
    keep[1][at] = value
    with pytest.raises(ValueError, match=needle):
        fn(**args)


# ----------------------------------------------------------------------------------------------
# small_core
# ----------------------------------------------------------------------------------------------


TARGETS = ["float64", "float32"]


def small_core(Gb, Ga, rank, alpha=0.5, isa="auto", target="float64"):
    Gb = np.ascontiguousarray(Gb, dtype=np.float64)
    Ga = np.ascontiguousarray(Ga, dtype=np.float64)
    batch, m, _ = Gb.shape
    X = np.full((batch, m, rank), -7.0)  # sentinels: every entry must be written
    Y = np.full((batch, rank, m), -7.0)
    S = np.full((batch, rank), -7.0)
    info = np.full(batch, -99, dtype=np.int32)
    _C.small_core(Gb.ctypes.data, Ga.ctypes.data, batch, m, rank, alpha, X.ctypes.data, Y.ctypes.data,
                  S.ctypes.data, info.ctypes.data, isa=isa, target=target)
    return X, Y, S, info


def grams(Bc, Ac):
    return Bc.T @ Bc, Ac @ Ac.T


def gram_route_tol(Bc, Ac, M):
    """Error budget of the Gram route, relative to ||M||_F.

    Pivoted Cholesky and one-sided Jacobi are backward stable, so the computed factors are exact for
    Grams perturbed by O(m eps) relative (plus the rounding of forming them, O(eps) per entry with
    BLAS blocking), i.e. for Bc, Ac perturbed by O(m eps) of their norms: the product then moves by
    about m eps ||Bc||_2 ||Ac||_2. The constant 64 covers the O(1) factors of those bounds; measured
    errors sit 10-100x below this, at the level of numpy's own reconstruction error of M from its SVD.
    The ratio ||Bc|| ||Ac|| / ||M|| is what a Gram-based method cannot avoid: it cannot resolve M
    more finely than its factors.
    """
    m = Bc.shape[1]
    return 64 * m * EPS64 * np.linalg.norm(Bc, 2) * np.linalg.norm(Ac, 2) / np.linalg.norm(M)


def squared_cut(s, m):
    """target="float32" keeps direction j only when s_j > sqrt(max(m, 2) eps) s_1 (see below)."""
    return np.sqrt(max(m, 2) * EPS64) * s[0]


def squared_route_budget(s, rank, m):
    """Extra error budget of target="float32" (the squared core; header comment of small_core.h).

    K = Cw^T Cw is formed and diagonalised with a backward error |E| <~ m eps s_1^2 (dot products of
    length <= m; Householder and QL are backward stable). Direction j reaches the product B'A' through
    the residual (K v_j - lambda_j v_j) / s_j, an error of m eps s_1^2 / s_j; its singular value, the
    norm of Cw v_j, is off by ~eps s_1. Directions with s_j <= cut = sqrt(max(m, 2) eps) s_1 are not
    resolved by K and come out as exact zeros, losing s_j each. The computed s_j sit far closer to the
    exact ones than a factor 2, so only directions within a factor 2 of the cut may go either way:
    they are counted in both terms. Returns (budget for ||B'A' - M_r||, budget for |S_j - s_j|), both
    absolute (s is numpy's spectrum of M).
    """
    cut = squared_cut(s, m)
    sr = s[:rank]
    kept = sr >= cut / 2
    dropped = sr <= 2 * cut
    product = m * EPS64 * s[0] ** 2 * np.sum(1.0 / sr[kept]) + np.sqrt(np.sum(sr[dropped] ** 2))
    values = np.where(dropped, sr, 0.0) + m * EPS64 * s[0]
    return product, values


def check_small_core(Bc, Ac, rank, alpha=0.5, isa="auto", tol_scale=1.0, target="float64"):
    """Solve from the Grams and check every promised property against numpy's SVD of the dense M."""
    Gb, Ga = grams(Bc, Ac)
    X, Y, S, info = small_core(Gb[None], Ga[None], rank, alpha, isa, target)
    X, Y, S, info = X[0], Y[0], S[0], int(info[0])
    assert info >= 0, f"info = {info}"
    M = Bc @ Ac
    U, s, Vt = np.linalg.svd(M)
    Mr = (U[:, :rank] * s[:rank]) @ Vt[:rank]
    Bp, Ap = Bc @ X, Y @ Ac
    nM = np.linalg.norm(M)
    m = Bc.shape[1]
    tol = gram_route_tol(Bc, Ac, M) * tol_scale
    extra, sv_extra = squared_route_budget(s, rank, m) if target == "float32" else (0.0, 0.0)

    # Eckart-Young: B'A' is the best rank-`rank` approximation (M_r is unique when s_r > s_{r+1},
    # true with probability one for these random matrices).
    err = np.linalg.norm(Bp @ Ap - Mr) / nM
    bound = tol + extra / nM
    assert err <= bound, f"||B'A' - M_r|| / ||M|| = {err:.2e} > {bound:.2e}"
    # Singular values: Weyl bounds their error by the perturbation of M.
    sv_dev = np.abs(S - s[:rank]) / (tol * nM + sv_extra)
    assert np.all(sv_dev <= 1.0), f"singular values off: worst ratio {sv_dev.max():.2f}"
    assert np.all(np.diff(S) <= 0), "S must be descending"

    # The split: B'^T B' = S^(2 alpha), A' A'^T = S^(2 (1 - alpha)) on the non-null part. Column j of
    # B' is Qb C v_j s_j^(alpha - 1), whose error is the absolute error of C v_j (tol ||M||) over s_j:
    # entry (j, k) may be off by tol s_1 (1/s_j + 1/s_k) relative to s_j^alpha s_k^alpha. The squared
    # path adds the eigen-residual: one Gram of the pair is S^(a-1) V^T K V S^(a-1), the other
    # S^(-1-a) V^T K^2 V S^(-1-a) (which is which depends on the orientation of the core), with
    # off-diagonal entries |E| and (s_j^2 + s_k^2) |E|: relative to s_j^a s_k^a, at most
    # m eps s_1^2 (1/s_j^2 + 1/s_k^2).
    k = int(np.sum(S > 0))
    Sk = S[:k]
    inv2 = 1.0 / Sk[:, None] ** 2 + 1.0 / Sk[None, :] ** 2
    for G, e in ((Bp[:, :k].T @ Bp[:, :k], alpha), (Ap[:k] @ Ap[:k].T, 1.0 - alpha)):
        scale = np.outer(Sk**e, Sk**e)
        allowed = 4 * tol * nM * (1.0 / Sk[:, None] + 1.0 / Sk[None, :]) * scale + 1e-300
        if target == "float32":
            allowed += 4 * m * EPS64 * s[0] ** 2 * inv2 * scale
        dev = np.abs(G - np.diag(Sk ** (2 * e)))
        assert np.all(dev <= allowed), f"split off: worst ratio {np.max(dev / allowed):.2f}"
    if target == "float32":
        # The null rule of the squared path: nothing below the cut survives, nothing clearly above
        # it is dropped.
        cut = squared_cut(s, m)
        assert np.all(S[S > 0] > cut / 2) and np.all(S[s[:rank] > 2 * cut] > 0)
    return dict(X=X, Y=Y, S=S, info=info, M=M, s=s, Bp=Bp, Ap=Ap, tol=tol, bound=bound)


def random_factors(rng, d, m, k):
    return rng.standard_normal((d, m)), rng.standard_normal((m, k))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "d,m,k,rank,alpha",
    [
        pytest.param(768, 24, 768, 8, 0.5, id="d768-m24-r8-balanced"),
        pytest.param(300, 24, 200, 24, 0.5, id="d300-m24-r24-full"),
        pytest.param(200, 48, 256, 16, 1.0, id="d200-m48-r16-left"),
        pytest.param(120, 13, 90, 5, 0.0, id="d120-m13-r5-right"),
        pytest.param(64, 7, 50, 3, 0.3, id="d64-m7-r3-alpha0.3"),
        pytest.param(10, 24, 300, 6, 0.5, id="d10-m24-r6-Bc-rank10"),  # kb < ka: the transposed core
        pytest.param(300, 24, 9, 6, 0.5, id="d300-m24-k9-r6-Ac-rank9"),  # ka < kb
        pytest.param(5, 1, 7, 1, 0.5, id="m1"),
        pytest.param(400, 100, 300, 10, 0.5, id="d400-m100-r10"),  # no fixed-size Jacobi kernel
        pytest.param(40, 6, 30, 6, 0.5, id="rank-equals-m"),
    ],
)
def test_small_core_random(request, d, m, k, rank, alpha, isa, target):
    rng = rng_for(request)
    Bc, Ac = random_factors(rng, d, m, k)
    check_small_core(Bc, Ac, rank, alpha, isa, target=target)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("isa", ISAS)
def test_small_core_reproduces_M_when_rank_covers_it(request, isa, target):
    """rank >= rank(M): B'A' = M, and the surplus directions are exact zeros."""
    rng = rng_for(request)
    d, m, k, true_rank, rank = 200, 24, 150, 7, 12
    Bc = rng.standard_normal((d, true_rank)) @ rng.standard_normal((true_rank, m))
    Ac = rng.standard_normal((m, k))
    out = check_small_core(Bc, Ac, rank, 0.5, isa, target=target)
    M = out["M"]
    err = np.linalg.norm(out["Bp"] @ out["Ap"] - M) / np.linalg.norm(M)
    assert err <= out["bound"]
    # rank(Gb) = 7 exactly, so the core has 7 columns and directions 7.. must be exactly zero.
    assert np.all(out["S"][true_rank:] == 0.0)
    assert np.all(out["X"][:, true_rank:] == 0.0)
    assert np.all(out["Y"][true_rank:, :] == 0.0)
    assert np.all(out["S"][:true_rank] > 0.0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("which", ["Bc", "Ac", "both"])
def test_small_core_zero_factor_gives_zeros(request, which, target):
    rng = rng_for(request)
    Bc = rng.standard_normal((50, 9))
    Ac = rng.standard_normal((9, 40))
    if which in ("Bc", "both"):
        Bc[:] = 0.0  # peft initialises B = 0
    if which in ("Ac", "both"):
        Ac[:] = 0.0
    X, Y, S, info = small_core(*(g[None] for g in grams(Bc, Ac)), rank=4, target=target)
    assert info[0] == 0
    assert np.all(X == 0.0) and np.all(Y == 0.0) and np.all(S == 0.0)


@pytest.mark.parametrize("target", TARGETS)
def test_small_core_orthogonal_factors_give_zeros(target):
    """Gb, Ga non-zero but M = Bc Ac = 0 (column space of Bc orthogonal to row space of Ac)."""
    Bc = np.zeros((6, 4))
    Bc[:, :2] = np.arange(12.0).reshape(6, 2) + 1.0
    Ac = np.zeros((4, 5))
    Ac[2:, :] = np.arange(10.0).reshape(2, 5) + 1.0
    X, Y, S, info = small_core(*(g[None] for g in grams(Bc, Ac)), rank=3, target=target)
    assert info[0] >= 0
    np.testing.assert_array_equal(S, 0.0)
    np.testing.assert_array_equal(X, 0.0)
    np.testing.assert_array_equal(Y, 0.0)


@pytest.mark.parametrize(
    "case",
    ["zero-agent-block", "duplicate-agent-scaled", "duplicate-agent-exact"],
)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rank", [8, 16, 24])
def test_small_core_rank_deficient_agents(request, case, rank, target):
    """Ring neighbourhood of 3 agents x r = 8: one agent has B = 0, or two agents are identical."""
    rng = rng_for(request)
    d, k, r = 300, 250, 8
    B1, B3 = rng.standard_normal((d, r)), rng.standard_normal((d, r))
    B2 = {"zero-agent-block": 0.0 * B1, "duplicate-agent-scaled": 0.5 * B1, "duplicate-agent-exact": B1}[case]
    Bc = np.hstack([B1, B2, B3]) / 3.0
    Ac = rng.standard_normal((3 * r, k))
    out = check_small_core(Bc, Ac, rank, target=target)
    # rank(Bc) = 16 exactly: the pivoted Cholesky must see it, leaving exact zeros beyond 16.
    assert np.all(out["S"][16:] == 0.0)
    assert np.all(out["S"][: min(rank, 16)] > 0.0)
    if rank >= 16:
        err = np.linalg.norm(out["Bp"] @ out["Ap"] - out["M"]) / np.linalg.norm(out["M"])
        assert err <= out["bound"]


def spectrum_factors(rng, d, m, k, log10_cond):
    """Bc = Ub diag(sb) W^T, Ac = W diag(sa) Va^T with sb = sa = logspace(0, -c/2): kappa(M) = 10^c,
    kappa(Bc) = kappa(Ac) = 10^(c/2), so kappa(Gb) = kappa(Ga) = 10^c as well."""

    def orth(n, p):
        return np.linalg.qr(rng.standard_normal((n, p)))[0]

    sv = np.logspace(0, -log10_cond / 2, m)
    W = orth(m, m)
    return orth(d, m) @ np.diag(sv) @ W.T, W @ np.diag(sv) @ orth(k, m).T


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("log10_cond", [6, 10], ids=["cond1e6", "cond1e10"])
@pytest.mark.parametrize("rank", [8, 24])
def test_small_core_ill_conditioned(request, log10_cond, rank, target):
    """Condition numbers 1e6 and 1e10 of M (and of the Grams).

    The budget of gram_route_tol still applies: it is relative to ||Bc|| ||Ac||, which equals ||M||_2
    here, and pivoted Cholesky keeps every direction of these Grams (their smallest eigenvalue,
    1e-10 of the largest, is above the m eps stopping threshold). Measured errors: ~1e-14.

    target="float32" resolves what K = C^T C resolves: with s_j = logspace(0, -c, 24), cond 1e6
    keeps all 24 directions (the weakest, 1e-6 s_1, costs ~m eps s_1^2 / s_j = 5e-9 of ||M|| at most
    by the budget; measured ~1e-11), and at rank 8 cond 1e10 does too (s_8 = 1e-3 s_1). At rank 24,
    cond 1e10 has 7 directions below the cut sqrt(24 eps) s_1 = 7.3e-8 s_1: they are exact zeros,
    and the error is their tail, ~4e-8 of ||M|| (the budget: tail + m eps s_1^2 / s_j of the weakest
    kept ones near the cut, ~3e-7).
    """
    rng = rng_for(request)
    m = 24
    Bc, Ac = spectrum_factors(rng, 300, m, 280, log10_cond)
    out = check_small_core(Bc, Ac, rank, target=target)
    S, s = out["S"], out["s"][:rank]
    if target == "float64" or s[-1] > 2 * squared_cut(s, m):
        assert np.all(S > 0.0)
    else:
        cut = squared_cut(s, m)
        assert np.all(S[s < cut / 2] == 0.0) and np.all(S[s > 2 * cut] > 0.0)
        assert np.sum(S == 0.0) >= 1


@pytest.mark.parametrize(
    "cb,ca",
    [(1e150, 1e150), (1e-150, 1e-150), (1e150, 1e-150), (1e-150, 1e150)],
    ids=["Bc1e150-Ac1e150", "Bc1e-150-Ac1e-150", "Bc1e150-Ac1e-150", "Bc1e-150-Ac1e150"],
)
@pytest.mark.parametrize("target", TARGETS)
def test_small_core_extreme_scales(request, cb, ca, target):
    """Gram diagonals near 1e300 and 1e-300: nothing may overflow or underflow in between.

    Checked in unscaled units (M itself would overflow numpy's norm): X scales like cb^(alpha-1)
    ca^alpha, etc., so B'A' / (cb ca) must match the unscaled problem with the unscaled tolerance.
    """
    rng = rng_for(request)
    Bc0, Ac0 = rng.standard_normal((200, 24)), rng.standard_normal((24, 150))
    rank, alpha = 8, 0.5
    X, Y, S, info = small_core(*(g[None] for g in grams(cb * Bc0, ca * Ac0)), rank, alpha, target=target)
    assert info[0] >= 0
    assert np.all(np.isfinite(X)) and np.all(np.isfinite(Y)) and np.all(np.isfinite(S))
    M0 = Bc0 @ Ac0
    U, s, Vt = np.linalg.svd(M0)
    Mr = (U[:, :rank] * s[:rank]) @ Vt[:rank]
    Bp, Ap = (cb * Bc0) @ X[0], Y[0] @ (ca * Ac0)  # each ~ sqrt(cb ca): representable
    tol = gram_route_tol(Bc0, Ac0, M0)
    extra, sv_extra = squared_route_budget(s, rank, 24) if target == "float32" else (0.0, 0.0)
    err = np.linalg.norm((Bp / np.sqrt(cb * ca)) @ (Ap / np.sqrt(cb * ca)) - Mr) / np.linalg.norm(M0)
    assert err <= tol + extra / np.linalg.norm(M0)
    assert np.all(np.abs(S[0] / (cb * ca) - s[:rank]) <= tol * np.linalg.norm(M0) + sv_extra)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bad", ["nan-in-Gb", "inf-in-Ga", "-inf-offdiag-Gb"])
def test_small_core_non_finite_input(request, bad, target):
    """info = -1 and NaN outputs for the bad problem; its neighbours in the batch are unaffected."""
    rng = rng_for(request)
    m, rank = 10, 4
    Bc, Ac = rng.standard_normal((3, 40, m)), rng.standard_normal((3, m, 30))
    Gb = np.einsum("bdi,bdj->bij", Bc, Bc)
    Ga = np.einsum("bik,bjk->bij", Ac, Ac)
    if bad == "nan-in-Gb":
        Gb[1, 3, 3] = np.nan
    elif bad == "inf-in-Ga":
        Ga[1, 0, 5] = np.inf
    else:
        Gb[1, 2, 7] = -np.inf
    X, Y, S, info = small_core(Gb, Ga, rank, target=target)
    assert info[1] == _C.INFO_NON_FINITE == -1
    assert np.all(np.isnan(X[1])) and np.all(np.isnan(Y[1])) and np.all(np.isnan(S[1]))
    X0, Y0, S0, _ = small_core(Gb[[0, 2]], Ga[[0, 2]], rank, target=target)
    np.testing.assert_array_equal(X[[0, 2]], X0)
    np.testing.assert_array_equal(Y[[0, 2]], Y0)
    np.testing.assert_array_equal(S[[0, 2]], S0)


@pytest.mark.parametrize("target", TARGETS)
def test_small_core_only_symmetric_part_is_read(request, target):
    """(G + G^T) / 2 is what counts: an antisymmetric perturbation changes nothing."""
    rng = rng_for(request)
    Bc, Ac = rng.standard_normal((60, 9)), rng.standard_normal((9, 50))
    Gb, Ga = grams(Bc, Ac)
    K = rng.standard_normal((9, 9))
    K = 1e-3 * (K - K.T)
    ref = small_core(Gb[None], Ga[None], 5, target=target)
    got = small_core((Gb + K)[None], (Ga - K)[None], 5, target=target)
    for a, b in zip(ref[:3], got[:3]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * np.abs(a).max())


@pytest.mark.parametrize("target", TARGETS)
def test_small_core_batch_is_independent_and_deterministic(request, target):
    """A problem's result does not depend on its batch-mates or the thread that solved it.

    target="float32" interleaves the QL iterations of groups of problems; each still runs exactly
    the same arithmetic, whatever its group and its place in it.
    """
    rng = rng_for(request)
    b, m, rank = 37, 16, 6
    Bc, Ac = rng.standard_normal((b, 80, m)), rng.standard_normal((b, m, 70))
    Gb = np.einsum("bdi,bdj->bij", Bc, Bc)
    Ga = np.einsum("bik,bjk->bij", Ac, Ac)
    full = small_core(Gb, Ga, rank, target=target)
    again = small_core(Gb, Ga, rank, target=target)
    for a, c in zip(full, again):
        np.testing.assert_array_equal(a, c)
    for i in (0, 17, 34, 36):
        one = small_core(Gb[i : i + 1], Ga[i : i + 1], rank, target=target)
        for a, c in zip(full, one):
            np.testing.assert_array_equal(a[i], c[0])
    shifted = small_core(Gb[1:], Ga[1:], rank, target=target)  # every problem in another group slot
    for a, c in zip(full, shifted):
        np.testing.assert_array_equal(a[1:], c)


@pytest.mark.parametrize("target", TARGETS)
def test_small_core_isa_paths_agree(request, target):
    """Every instruction-set path solves the same problems to within the common error budget."""
    rng = rng_for(request)
    Bc, Ac = rng.standard_normal((300, 24)), rng.standard_normal((24, 300))
    Gb, Ga = grams(Bc, Ac)
    M = Bc @ Ac
    s = np.linalg.svd(M, compute_uv=False)
    extra = squared_route_budget(s, 8, 24)[0] / np.linalg.norm(M) if target == "float32" else 0.0
    tol = gram_route_tol(Bc, Ac, M) + extra
    ref = small_core(Gb[None], Ga[None], 8, isa="baseline", target=target)
    for isa in ISAS[1:]:
        got = small_core(Gb[None], Ga[None], 8, isa=isa, target=target)
        M_ref = (Bc @ ref[0][0]) @ (ref[1][0] @ Ac)
        M_got = (Bc @ got[0][0]) @ (got[1][0] @ Ac)
        assert np.linalg.norm(M_ref - M_got) / np.linalg.norm(Bc @ Ac) <= 2 * tol
        np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=2 * tol * np.linalg.norm(Bc @ Ac))


def test_small_core_default_target_is_float64(request):
    """target="float64" is the default, bit for bit (and the float32 target is a different solver)."""
    rng = rng_for(request)
    Bc, Ac = rng.standard_normal((3, 60, 12)), rng.standard_normal((3, 12, 50))
    Gb = np.einsum("bdi,bdj->bij", Bc, Bc)
    Ga = np.einsum("bik,bjk->bij", Ac, Ac)
    X, Y, S, info = (np.full(sh, -7.0) for sh in ((3, 12, 5), (3, 5, 12), (3, 5), (3,)))
    info = info.astype(np.int32)
    _C.small_core(Gb.ctypes.data, Ga.ctypes.data, 3, 12, 5, 0.5, X.ctypes.data, Y.ctypes.data, S.ctypes.data,
                  info.ctypes.data)
    ref = small_core(Gb, Ga, 5, target="float64")
    for a, b in zip((X, Y, S, info), ref):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(small_core(Gb, Ga, 5, target="float32")[1], ref[1])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rank", [3, 5, 8])
def test_small_core_repeated_singular_values(request, rank, target):
    """Exactly repeated singular values (3, 3, 3, 2, 2, 1, 1, 1, ... in exact arithmetic), as identical
    agents produce: the eigenvalues of K come in clusters (the tridiagonal splits), and any basis of a
    cluster is right. The ranks cut between clusters, where M_r is unique."""
    rng = rng_for(request)
    m = 24
    sv = np.sqrt(np.concatenate([[3.0] * 3, [2.0] * 2, [1.0] * 3, np.linspace(0.5, 0.1, m - 8)]))
    W = np.linalg.qr(rng.standard_normal((m, m)))[0]
    Bc = np.linalg.qr(rng.standard_normal((200, m)))[0] @ np.diag(sv) @ W.T
    Ac = W @ np.diag(sv) @ np.linalg.qr(rng.standard_normal((150, m)))[0].T
    out = check_small_core(Bc, Ac, rank, target=target)
    np.testing.assert_allclose(out["S"][:3], 3.0, rtol=1e-13)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spread", [1e-2, 1e-4, 1e-6])
def test_small_core_rank_deficient_core(request, spread, target):
    """Full-rank-looking pieces, rank-deficient core: Bc spans directions 0-9 of the agents' space,
    Ac 0-3 and 10-19 (in a random basis Q), so kb = 10, ka = 14 but C = Rb Ra^T has rank 4 (the
    shared directions, whose singular values span `spread`). The other core directions are
    numerically null and must come out as exact zeros, whatever the solver: a null direction kept by
    mistake would double-count a real one.

    For target="float32" this is what the null rule on the eigenvalues of K is for: a null
    eigenvector of K leaks ~|E| / lambda_4 towards direction 4, so |C v| ~ eps s_1^2 / s_4, far above
    the max(m, 2) eps s_1 of the Jacobi rule once s_4 / s_1 <~ 1e-3. Measured with that rule instead:
    errors of 1e-3 to 4e-2 of ||M|| at spread 1e-4, 1e-4 at spread 1e-6."""
    rng = rng_for(request)
    m = 24
    Q = np.linalg.qr(rng.standard_normal((m, m)))[0]
    shared = np.logspace(0, np.log10(spread) / 2, 4)  # M's singular values: their squares, roughly
    Bc = np.zeros((120, m))
    Bc[:, :10] = rng.standard_normal((120, 10)) @ np.diag(np.r_[shared, np.ones(6)])
    Ac = np.zeros((m, 100))
    Ac[[0, 1, 2, 3] + list(range(10, 20))] = np.diag(np.r_[shared, np.ones(10)]) @ rng.standard_normal((14, 100))
    Bc, Ac = Bc @ Q, Q.T @ Ac
    out = check_small_core(Bc, Ac, 10, target=target)
    assert np.all(out["S"][:4] > 0.0)
    if target == "float32":
        assert np.all(out["S"][4:] == 0.0)
        assert np.all(out["X"][:, 4:] == 0.0) and np.all(out["Y"][4:] == 0.0)
    # (The Jacobi path may keep such a direction at its noise level, ~6e-15 s_1 here against its
    # 24 eps s_1 rule; check_small_core bounds its S by Weyl, and its orthogonal columns keep it
    # from double counting.)
    err = np.linalg.norm(out["Bp"] @ out["Ap"] - out["M"]) / np.linalg.norm(out["M"])
    assert err <= out["bound"]


@pytest.mark.parametrize("m,rank", [(256, 8), (1024, 16)])
def test_small_core_float32_large_m(request, m, rank):
    """The squared path up to SMALL_CORE_MAX_M (one problem per work item beyond m = 128)."""
    rng = rng_for(request)
    Bc, Ac = random_factors(rng, 2 * m, m, 2 * m)
    out = check_small_core(Bc, Ac, rank, target="float32")
    assert 0 < out["info"] <= _C.SMALL_CORE_MAX_QL_ITERATIONS * m


def test_small_core_float32_info_counts_ql_iterations(request):
    """info is the QL iteration count: 0 when there is nothing to iterate (a 1 x 1 core), about 2.2
    per eigenvalue for random cores, within the cap."""
    rng = rng_for(request)
    Bc, Ac = random_factors(rng, 40, 1, 30)
    assert small_core(*(g[None] for g in grams(Bc, Ac)), 1, target="float32")[3][0] == 0
    Bc, Ac = rng.standard_normal((8, 80, 24)), rng.standard_normal((8, 24, 70))
    info = small_core(np.einsum("bdi,bdj->bij", Bc, Bc), np.einsum("bik,bjk->bij", Ac, Ac), 8,
                      target="float32")[3]
    assert np.all(info >= 24) and np.all(info <= 4 * 24)


@pytest.mark.parametrize("limit", [0, 2, 40, 600, 1500])
def test_small_core_float32_rotation_log_fallback(request, monkeypatch, limit):
    """The QL rotations go to a log (replayed onto the wanted eigenvectors only); when it is full the
    rest is accumulated into an explicit matrix. Real problems essentially never fill it (1.5 m^2
    rotations; random cores use ~1.25 nc^2), so the test caps it through the driver's testing hook
    (in doubles; a 24 x 24 core logs ~1600): every split point gives the same answer to rounding."""
    rng = rng_for(request)
    m, rank = 24, 8
    Bc, Ac = rng.standard_normal((5, 100, m)), rng.standard_normal((5, m, 90))
    Gb = np.einsum("bdi,bdj->bij", Bc, Bc)
    Ga = np.einsum("bik,bjk->bij", Ac, Ac)
    ref = small_core(Gb, Ga, rank, target="float32")
    monkeypatch.setenv("DECAF_SMALL_CORE_QL_LOG_LIMIT", str(limit))
    got = small_core(Gb, Ga, rank, target="float32")
    np.testing.assert_array_equal(got[3], ref[3])
    for b in range(5):
        M = Bc[b] @ Ac[b]
        tol = gram_route_tol(Bc[b], Ac[b], M)
        # Both are the same rotations applied in another order: equal to rounding (the common budget).
        Pr = (Bc[b] @ ref[0][b]) @ (ref[1][b] @ Ac[b])
        Pg = (Bc[b] @ got[0][b]) @ (got[1][b] @ Ac[b])
        assert np.linalg.norm(Pg - Pr) / np.linalg.norm(M) <= 2 * tol
        np.testing.assert_allclose(got[2][b], ref[2][b], rtol=0, atol=2 * tol * np.linalg.norm(M))


def _ptr_args(batch=2, m=4, rank=2):
    arrs = [np.eye(m)[None].repeat(batch, 0) for _ in range(2)]
    X, Y, S = np.empty((batch, m, rank)), np.empty((batch, rank, m)), np.empty((batch, rank))
    info = np.empty(batch, np.int32)
    keep = arrs + [X, Y, S, info]
    return keep, dict(gb_ptr=arrs[0].ctypes.data, ga_ptr=arrs[1].ctypes.data, batch=batch, m=m, rank=rank, alpha=0.5,
                      x_ptr=X.ctypes.data, y_ptr=Y.ctypes.data, s_ptr=S.ctypes.data, info_ptr=info.ctypes.data)


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(batch=0), "batch"),
        (dict(m=0), "m must"),
        (dict(m=5000), "m must"),
        (dict(rank=0), "rank"),
        (dict(rank=5), "rank"),
        (dict(alpha=-0.1), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(gb_ptr=0), "gb_ptr"),
        (dict(y_ptr=0), "y_ptr"),
        (dict(info_ptr=-8), "info_ptr"),
        ("misaligned-x", "x_ptr"),
        (dict(isa="sse9"), "isa"),
        (dict(target="float16"), "target"),
        (dict(target="fp32"), "target"),
        (dict(target=""), "target"),
    ],
    ids=change_id,
)
def test_small_core_rejects_bad_arguments(change, needle):
    assert_rejected(_C.small_core, _ptr_args, change, needle, ("misaligned-x", "x_ptr", 4))


# ----------------------------------------------------------------------------------------------
# pair_gram
# ----------------------------------------------------------------------------------------------


def make_x(rng, N, L, P, Q, layout, dtype):
    """An (N, L, P, Q) array with the requested memory layout, as a numpy view."""
    if layout == "rows":  # sQ == 1 (B-like)
        return rng.standard_normal((N, L, P, Q)).astype(dtype)
    if layout == "cols":  # sP == 1 (A^T-like: stored (N, L, Q, P))
        return rng.standard_normal((N, L, Q, P)).astype(dtype).transpose(0, 1, 3, 2)
    if layout == "strided":  # neither: every stride > 1, P and Q strides interleaved
        base = rng.standard_normal((L, 2 * Q, N, 3 * P)).astype(dtype)
        return base[:, ::2, :, ::3].transpose(2, 0, 3, 1)
    raise ValueError(layout)


def elem_strides(a):
    return [s // a.itemsize for s in a.strides]


def pair_gram(X, pairs, isa="auto", n_agents=None):
    N, L, P, Q = X.shape
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    out = np.full((L, len(pairs), Q, Q), np.nan)
    _C.pair_gram(X.ctypes.data, X.dtype.name, L, P, Q, *elem_strides(X), pairs.ctypes.data, len(pairs), out.ctypes.data,
                 n_agents=N if n_agents is None else n_agents, isa=isa)
    return out


def pair_gram_oracle(X, pairs):
    X64 = X.astype(np.float64)
    ref = np.einsum("tlpa,tlpb->ltab", X64[pairs[:, 0]], X64[pairs[:, 1]])
    # Both sides multiply exactly the same float64 numbers (float32 widens exactly) and sum in float64
    # in different orders: each may be off by P eps sum_p |x_pa x_pb| (the dot-product bound).
    bound = np.einsum("tlpa,tlpb->ltab", np.abs(X64[pairs[:, 0]]), np.abs(X64[pairs[:, 1]]))
    return ref, 2 * X.shape[2] * EPS64 * bound


RING8 = np.array([(j, (j + s) % 8) for j in range(8) for s in (0, 1, 2)])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["rows", "cols", "strided"])
@pytest.mark.parametrize("P,Q", [(63, 5), (64, 8), (37, 4), (50, 16), (9, 1), (1, 3)], ids=lambda v: str(v))
def test_pair_gram_matches_einsum(request, P, Q, layout, dtype, isa):
    rng = rng_for(request)
    N, L = 6, 3
    X = make_x(rng, N, L, P, Q, layout, dtype)
    pairs = np.array([(0, 0), (0, 1), (5, 2), (3, 3), (4, 0)])
    got = pair_gram(X, pairs, isa=isa)
    ref, bound = pair_gram_oracle(X, pairs)
    assert np.all(np.abs(got - ref) <= bound)


def test_pair_gram_ring_case(request):
    """The benchmark shape (N=8, L=48, P=768, Q=8) with the ring's pairs, both layouts."""
    rng = rng_for(request)
    for layout in ("rows", "cols"):
        X = make_x(rng, 8, 48, 768, 8, layout, "float32")
        got = pair_gram(X, RING8)
        ref, bound = pair_gram_oracle(X, RING8)
        assert np.all(np.abs(got - ref) <= bound)


@pytest.mark.parametrize("layout", ["rows", "cols", "strided"])
def test_pair_gram_float32_products_are_exact(request, layout):
    """Integer-valued float32 data: exact in float64 (|sum| < 2^53) but not in float32 (> 2^24).

    A kernel that multiplied or summed in float32 would fail this bit-exact comparison.
    """
    rng = rng_for(request)
    N, L, P, Q = 4, 2, 257, 8
    ints = rng.integers(-(2**12), 2**12, size=(N, L, P, Q))
    X = make_x(rng, N, L, P, Q, layout, "float32")
    X[...] = ints.astype(np.float32)
    pairs = np.array([(0, 1), (2, 2), (3, 0)])
    got = pair_gram(X, pairs)
    exact = np.einsum("tlpa,tlpb->ltab", ints[pairs[:, 0]], ints[pairs[:, 1]])
    assert np.abs(exact).max() > 2**24
    np.testing.assert_array_equal(got, exact.astype(np.float64))


def test_pair_gram_broadcast_strides(request):
    """Zero strides are legal: a layer broadcast over L (sL = 0)."""
    rng = rng_for(request)
    base = rng.standard_normal((3, 1, 20, 4))
    X = np.broadcast_to(base, (3, 5, 20, 4))
    got = pair_gram(X, np.array([(0, 2), (1, 1)]))
    ref, bound = pair_gram_oracle(np.ascontiguousarray(X), np.array([(0, 2), (1, 1)]))
    assert np.all(np.abs(got - ref) <= bound)


def _pg_args():
    X = np.zeros((3, 2, 5, 4), np.float32)
    pairs = np.array([[0, 1], [2, 2]], np.int64)
    out = np.empty((2, 2, 4, 4))
    keep = (X, pairs, out)
    return keep, dict(x_ptr=X.ctypes.data, dtype="float32", L=2, P=5, Q=4, sN=40, sL=20, sP=4, sQ=1,
                      pairs_ptr=pairs.ctypes.data, npairs=2, out_ptr=out.ctypes.data, n_agents=3)


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(dtype="float16"), "dtype"),
        (dict(dtype="torch.float32"), "dtype"),
        (dict(L=0), "L must"),
        (dict(P=-1), "P must"),
        (dict(Q=0), "Q must"),
        (dict(npairs=0), "npairs"),
        (dict(sP=-4), "sP"),
        (dict(x_ptr=0), "x_ptr"),
        (dict(out_ptr=0), "out_ptr"),
        (dict(n_agents=2), r"pairs\[1, 0\]"),
        (dict(n_agents=0), "n_agents"),
        ("misaligned-x", "x_ptr"),
        (dict(isa="neon"), "isa"),
    ],
    ids=change_id,
)
def test_pair_gram_rejects_bad_arguments(change, needle):
    assert_rejected(_C.pair_gram, _pg_args, change, needle, ("misaligned-x", "x_ptr", 2))


def test_pair_gram_rejects_negative_agent_index():
    assert_bad_index_rejected(_C.pair_gram, _pg_args, (0, 1), -1, r"pairs\[0, 1\].*got -1")


# ----------------------------------------------------------------------------------------------
# mix_lowrank
# ----------------------------------------------------------------------------------------------


def mix_lowrank(X, idx, T, out_layout, isa="auto"):
    """Run the kernel into a sentinel-filled buffer; returns (the out view, the whole buffer)."""
    N, L, P, Q = X.shape
    n_out, D = idx.shape
    R = T.shape[-1]
    dtype = X.dtype
    if out_layout == "rows":  # (n_out, L, P, R) contiguous: oR == 1
        buf = np.full((n_out, L, P, R), np.nan, dtype)
        out = buf
    elif out_layout == "cols":  # (n_out, L, R, P) storage, P contiguous: oP == 1 (A' = R x k rows)
        buf = np.full((n_out, L, R, P), np.nan, dtype)
        out = buf.transpose(0, 1, 3, 2)
    else:  # a strided window into a bigger buffer: nothing outside it may be written
        buf = np.full((n_out, L, P + 3, 2 * R), np.nan, dtype)
        out = buf[:, :, 1 : P + 1, ::2]
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    T = np.ascontiguousarray(T, dtype=dtype)
    _C.mix_lowrank(X.ctypes.data, dtype.name, L, P, Q, *elem_strides(X), idx.ctypes.data, n_out, D, T.ctypes.data, R,
                   out.ctypes.data, *elem_strides(out), n_agents=N, isa=isa)
    return out, buf


def mix_oracle(X, idx, T):
    X64, T64 = X.astype(np.float64), T.astype(np.float64)
    n_out, D = idx.shape
    ref = np.zeros((n_out,) + X.shape[1:3] + (T.shape[-1],))
    bound = np.zeros_like(ref)
    for i in range(n_out):
        for s in range(D):
            j = idx[i, s]
            if j >= 0:
                ref[i] += X64[j] @ T64[i, :, s]
                bound[i] += np.abs(X64[j]) @ np.abs(T64[i, :, s])
    # The kernel sums n = D Q products in the data type: float64 sums are off by at most n eps64
    # times the sum of |products| (and numpy's by as much again); float32 adds the rounding of each
    # product and partial sum, (n + 1) eps32 of the same sum.
    n = idx.shape[1] * X.shape[3]
    eps = EPS32 if X.dtype == np.float32 else EPS64
    return ref, (n + 1) * eps * bound + 2 * n * EPS64 * bound


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "x_layout,out_layout",
    [("rows", "rows"), ("cols", "cols"), ("rows", "cols"), ("cols", "rows"), ("strided", "strided")],
    ids=lambda v: v,
)
@pytest.mark.parametrize("P,Q,R", [(63, 5, 4), (64, 8, 8), (37, 8, 16), (33, 3, 13), (1, 2, 1)], ids=lambda v: str(v))
def test_mix_lowrank_matches_einsum(request, P, Q, R, x_layout, out_layout, dtype, isa):
    rng = rng_for(request)
    N, L, D, n_out = 5, 3, 3, 4
    X = make_x(rng, N, L, P, Q, x_layout, dtype)
    idx = np.array([[0, 1, 4], [1, -1, 2], [-1, -1, -1], [3, 3, 0]])  # empty slots and a repeat
    T = rng.standard_normal((n_out, L, D, Q, R)).astype(dtype)
    out, buf = mix_lowrank(X, idx, T, out_layout, isa=isa)
    ref, bound = mix_oracle(X, idx, T)
    assert np.all(np.abs(out.astype(np.float64) - ref) <= bound)
    assert np.all(out[2] == 0.0), "an output with no neighbours must be zeros"
    # Exactly the view was written: the NaN sentinels outside it survive, none inside it does.
    assert np.count_nonzero(~np.isnan(buf)) == out.size


def test_mix_lowrank_benchmark_shapes(request):
    """n_out = 8, L = 48, P = 768, Q = 8, D = 3, R = 8 in float32, B-like and A^T-like layouts."""
    rng = rng_for(request)
    N, L, P, Q, D, R = 8, 48, 768, 8, 3, 8
    idx = np.array([[(i - 1) % N, i, (i + 1) % N] for i in range(N)])
    T = rng.standard_normal((N, L, D, Q, R)).astype(np.float32)
    for x_layout, out_layout in (("rows", "rows"), ("cols", "cols")):
        X = make_x(rng, N, L, P, Q, x_layout, "float32")
        out, _ = mix_lowrank(X, idx, T, out_layout)
        ref, bound = mix_oracle(X, idx, T)
        assert np.all(np.abs(out.astype(np.float64) - ref) <= bound)


def _mix_args():
    X = np.zeros((3, 2, 5, 4), np.float32)
    idx = np.array([[0, 1], [2, -1]], np.int64)
    T = np.zeros((2, 2, 2, 4, 3), np.float32)
    out = np.empty((2, 2, 5, 3), np.float32)
    keep = (X, idx, T, out)
    return keep, dict(x_ptr=X.ctypes.data, dtype="float32", L=2, P=5, Q=4, sN=40, sL=20, sP=4, sQ=1,
                      idx_ptr=idx.ctypes.data, n_out=2, D=2, t_ptr=T.ctypes.data, R=3, out_ptr=out.ctypes.data,
                      oN=30, oL=15, oP=3, oR=1, n_agents=3)


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(dtype="bfloat16"), "dtype"),
        (dict(L=0), "L must"),
        (dict(n_out=0), "n_out"),
        (dict(D=0), "D must"),
        (dict(D=65), "D must"),
        (dict(R=0), "R must"),
        (dict(oP=-1), "oP"),
        (dict(oR=0), "out strides"),  # a broadcast output would be written by several threads
        (dict(oP=1, oR=1), "out strides"),
        (dict(sQ=-1), "sQ"),
        (dict(t_ptr=0), "t_ptr"),
        (dict(idx_ptr=0), "idx_ptr"),
        (dict(n_agents=2), r"idx\[1, 0\]"),
        ("misaligned-out", "out_ptr"),
        (dict(isa="avx1024"), "isa"),
    ],
    ids=change_id,
)
def test_mix_lowrank_rejects_bad_arguments(change, needle):
    assert_rejected(_C.mix_lowrank, _mix_args, change, needle, ("misaligned-out", "out_ptr", 1))


def test_mix_lowrank_rejects_index_below_minus_one():
    assert_bad_index_rejected(_C.mix_lowrank, _mix_args, (1, 1), -2, r"idx\[1, 1\].*got -2")


def test_module_reports_its_configuration():
    assert _C.cpu_isa() in ("baseline", "avx2", "avx512")
    assert _C.max_threads() >= 1
    assert _C.SMALL_CORE_MAX_M >= 256
    assert _C.INFO_NO_CONVERGENCE == -2
    from decaf_kernels import _backend

    assert _backend._INFO_NO_CONVERGENCE == _C.INFO_NO_CONVERGENCE  # the CUDA path's copy of the status code
