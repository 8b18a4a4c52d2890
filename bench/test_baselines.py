"""Correctness of the comparison set (``pytest bench/test_baselines.py``; skipped by --benchmark-only).

A wrong baseline makes every speed-up in the tables meaningless, so each one is checked against the
float64 LAPACK oracle on the tiny case and on shapes that exercise its code paths: extra batch
dimensions, rank < r, N = 2 (ring degenerates to one edge), the gather strategy, an irregular graph.
Tolerances: float64 results must match the oracle to 1e-10 relative (all methods are exact in exact
arithmetic, except the randomized dense_svd_lowrank which is checked only for its shape and for
staying within 5% of ||M||); float32 to 1e-4, measured ~2e-5 for Cholesky-QR on the Gram (the
Gram squares the condition number) and ~2e-6 for the others.
"""

from __future__ import annotations

import pytest
import torch

from . import baselines as bl
from .cases import CASES, factor_bytes, get_case, make_inputs, ring_mixing

EXACT = [bl.dense_svd, bl.factored_householder, bl.factored_cholesky]


@pytest.fixture(scope="module")
def tiny64():
    B, A, W = make_inputs(get_case("tiny"), torch.float64)
    return B, A, W, bl.OptimalityOracle(B, A, W, 8)


def test_ring_mixing_is_doubly_stochastic():
    for N in range(1, 9):
        W = ring_mixing(N)
        assert torch.allclose(W.sum(0), torch.ones(N, dtype=W.dtype))
        assert torch.allclose(W.sum(1), torch.ones(N, dtype=W.dtype))
        assert torch.equal(W, W.T)
    assert torch.equal(ring_mixing(2), torch.full((2, 2), 0.5, dtype=torch.float64))
    assert int((ring_mixing(5) > 0).sum(1).max()) == 3


def test_cases_table():
    assert [(c.N, c.L, c.d, c.k, c.r) for c in CASES.values()] == [
        (4, 4, 256, 256, 8), (8, 48, 768, 768, 8), (8, 16, 4096, 4096, 16), (16, 128, 4096, 4096, 16)]
    B, A, W = make_inputs(get_case("tiny"), torch.float32, seed=3)
    B2, A2, _ = make_inputs(get_case("tiny"), torch.float32, seed=3, layers=2)
    assert torch.equal(B[:, :2], B2) and torch.equal(A[:, :2], A2)
    assert factor_bytes(get_case("tiny"), torch.float32) == 2 * 4 * 4 * 8 * 512 * 4


@pytest.mark.parametrize("method", EXACT, ids=lambda f: f.__name__)
def test_exact_methods_fp64(tiny64, method):
    B, A, W, oracle = tiny64
    B_new, A_new = method(B, A, W, 8)
    assert B_new.shape == B.shape and A_new.shape == A.shape and B_new.dtype == torch.float64
    assert oracle.error(B_new, A_new) < 1e-10


@pytest.mark.parametrize("method", EXACT, ids=lambda f: f.__name__)
def test_exact_methods_fp32(tiny64, method):
    B, A, W, oracle = tiny64
    B_new, A_new = method(B.float(), A.float(), W.float(), 8)
    assert B_new.dtype == torch.float32
    assert oracle.error(B_new, A_new) < 1e-4


@pytest.mark.parametrize("strategy", ["layer", "gather"])
def test_cholesky_strategies(tiny64, strategy):
    B, A, W, oracle = tiny64
    assert oracle.error(*bl.factored_cholesky(B, A, W, 8, strategy=strategy)) < 1e-10


@pytest.mark.parametrize("method", EXACT, ids=lambda f: f.__name__)
def test_batch_dims_and_lower_rank(tiny64, method):
    B, A, W, _ = tiny64
    B5, A5 = B.reshape(4, 2, 2, 256, 8), A.reshape(4, 2, 2, 8, 256)
    B_new, A_new = method(B5, A5, W, 5)
    assert B_new.shape == (4, 2, 2, 256, 5) and A_new.shape == (4, 2, 2, 5, 256)
    assert bl.optimality_error(B5, A5, W, B_new, A_new, 5, layers=(0, 3)) < 1e-10


@pytest.mark.parametrize("method", EXACT, ids=lambda f: f.__name__)
def test_two_agents(tiny64, method):
    B, A, _, _ = tiny64
    W2 = ring_mixing(2)
    B_new, A_new = method(B[:2], A[:2], W2, 8)
    assert bl.optimality_error(B[:2], A[:2], W2, B_new, A_new, 8, layers=(0, 3)) < 1e-10


def test_irregular_graph(tiny64):
    B, A, _, _ = tiny64
    W = torch.tensor([[.5, .5, 0, 0], [.25, .25, .25, .25], [0, .5, .5, 0], [0, .5, 0, .5]], dtype=torch.float64)
    B_new, A_new = bl.factored_householder(B, A, W, 8)
    assert bl.optimality_error(B, A, W, B_new, A_new, 8, layers=(0, 2)) < 1e-10
    with pytest.raises(ValueError, match="same number of non-zeros"):
        bl.factored_cholesky(B, A, W, 8)


def test_lowrank_and_dlora(tiny64):
    B, A, W, oracle = tiny64
    B_new, A_new = bl.dense_svd_lowrank(B, A, W, 8)
    assert B_new.shape == B.shape and oracle.error(B_new, A_new) < 5e-2
    B_mix, A_mix = bl.dlora_mix(B, A, W)
    assert torch.allclose(B_mix[1], (B[0] + B[1] + B[2]) / 3)
    assert torch.allclose(A_mix[0], (A[3] + A[0] + A[1]) / 3)
    assert oracle.error(B_mix, A_mix) > 0.1  # DLoRA is not a consensus TSVD


def test_oracle_dense_equals_factored(tiny64):
    B, A, W, _ = tiny64
    pairs = [(0, 0), (3, 2)]
    dense = bl.OptimalityOracle(B, A, W, 8, pairs=pairs, svd="dense")
    fact = bl.OptimalityOracle(B, A, W, 8, pairs=pairs, svd="factored")
    out = bl.factored_householder(B, A, W, 8)
    assert dense.error(*out) < 1e-10 and fact.error(*out) < 1e-10
    assert abs(dense.truncation_error() - fact.truncation_error()) < 1e-12
    # a subset run (first layer only) is judged on the pairs it covers
    assert fact.error(out[0][:, :1], out[1][:, :1]) < 1e-10
