"""Bad input: each failure is a ValueError/TypeError naming the argument, what was seen and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ring

import decaf_kernels as dk

N, d, r, k = 4, 12, 3, 10


def good():
    return torch.randn(N, 2, d, r), torch.randn(N, 2, r, k), ring(N, torch.float32)


def with_nan(x):
    x = x.clone()
    x.view(-1)[5] = float("nan")
    return x


BAD = [
    # id, builder -> (B, A, W, kwargs), exception, words the message must contain
    ("B-not-tensor", lambda B, A, W: ([1.0], A, W, {}), TypeError, ["B", "torch.Tensor"]),
    ("B-int-dtype", lambda B, A, W: (B.long(), A, W, {}), TypeError, ["B", "int64"]),
    ("dtype-mismatch", lambda B, A, W: (B.double(), A, W, {}), TypeError, ["B", "A", "float64", "float32"]),
    ("B-2d", lambda B, A, W: (B[0, 0], A, W, {}), ValueError, ["B", "at least 3"]),
    ("N-mismatch", lambda B, A, W: (B, A[:3], W, {}), ValueError, ["N = 4", "3"]),
    ("r-mismatch", lambda B, A, W: (B, torch.randn(N, 2, r + 1, k), W, {}), ValueError, ["r=3", "A"]),
    ("batch-mismatch", lambda B, A, W: (B, torch.randn(N, 3, r, k), W, {}), ValueError, ["batch", "(2,)", "(3,)"]),
    # W is (n_out, N): its columns must match B's agents, whatever its number of rows
    ("W-columns", lambda B, A, W: (B, A, W[:, :3], {}), ValueError,
     ["W has 3 columns", "B has N = 4 agents", "(4, 3)", "(4, 2, 12, 3)", "(n_out, 4)"]),
    ("W-wrong-N", lambda B, A, W: (B, A, ring(5), {}), ValueError, ["W has 5 columns", "N = 4", "(5, 5)"]),
    ("W-1d", lambda B, A, W: (B, A, W[0], {}), ValueError, ["W", "2-D", "(n_out, N)", "(4,)"]),
    ("W-3d", lambda B, A, W: (B, A, W[None], {}), ValueError, ["W", "2-D", "(1, 4, 4)"]),
    ("W-no-rows", lambda B, A, W: (B, A, W[:0], {}), ValueError, ["W has no rows", "(0, 4)", "n_out >= 1"]),
    ("W-rect-rows", lambda B, A, W: (B, A, W[:2] * 1.1, {}), ValueError, ["rows of W", "sum to 1", "row 0"]),
    ("W-rows", lambda B, A, W: (B, A, W * 1.1, {}), ValueError, ["rows of W", "sum to 1", "row 0"]),
    ("W-nan", lambda B, A, W: (B, A, with_nan(W), {}), ValueError, ["W", "finite", "nan"]),
    ("B-nan", lambda B, A, W: (with_nan(B), A, W, {}), ValueError, ["B", "finite"]),
    ("A-inf", lambda B, A, W: (B, A.clone().fill_(float("inf")), W, {}), ValueError, ["A", "finite", "inf"]),
    ("rank-0", lambda B, A, W: (B, A, W, {"rank": 0}), ValueError, ["rank", "1 <= rank", "10", "rank=0"]),
    ("rank-big", lambda B, A, W: (B, A, W, {"rank": 11}), ValueError, ["rank", "min(d, k) = 10", "rank=11"]),
    ("rank-float", lambda B, A, W: (B, A, W, {"rank": 2.0}), TypeError, ["rank", "float"]),
    ("method", lambda B, A, W: (B, A, W, {"method": "svd"}), ValueError, ["method", "'svd'", "exact"]),
    ("split", lambda B, A, W: (B, A, W, {"split": "middle"}), ValueError, ["split", "'middle'", "balanced"]),
    ("oversample", lambda B, A, W: (B, A, W, {"oversample": -1}), ValueError, ["oversample", "-1"]),
    # a float where an int is expected is a TypeError, as for rank
    ("power-iters", lambda B, A, W: (B, A, W, {"power_iters": 1.5}), TypeError, ["power_iters", "1.5"]),
    ("rank-bool", lambda B, A, W: (B, A, W, {"rank": True}), TypeError, ["rank", "bool"]),
    ("B-sparse", lambda B, A, W: (B.to_sparse(), A, W, {}), TypeError, ["B", "dense", "sparse_coo", "to_dense()"]),
    ("validate-str", lambda B, A, W: (B, A, W, {"validate": "no"}), TypeError, ["validate", "True or False", "'no'"]),
    ("return-sv-int", lambda B, A, W: (B, A, W, {"return_singular_values": 1}), TypeError,
     ["return_singular_values", "True or False"]),
    ("generator", lambda B, A, W: (B, A, W, {"generator": 3}), TypeError, ["generator", "int"]),
]


@pytest.mark.parametrize("build,exc,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_consensus_tsvd_rejects(build, exc, words):
    B, A, W = good()
    B, A, W, kwargs = build(B, A, W)
    with pytest.raises(exc) as info:
        dk.consensus_tsvd(B, A, W, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_validate_false_skips_value_checks():
    B, A, W = good()
    B2, A2 = dk.consensus_tsvd(B, A, W * 1.1, validate=False)  # a user's own (unnormalised) weights
    assert torch.isfinite(B2).all()


def test_row_sum_tolerance_accepts_rounding():
    B, A, _ = good()
    W = torch.full((N, N), 1.0 / 3.0, dtype=torch.float16)[:, :N] * 0.75  # 0.25 with fp16 rounding
    dk.consensus_tsvd(B, A, W)


def test_other_ops_validate():
    B, A, W = good()
    with pytest.raises(ValueError, match="W"):
        dk.mix_factors(B, ring(5))
    with pytest.raises(ValueError, match="rows of W"):
        dk.mix_factors(B, W * 2)
    with pytest.raises(ValueError, match="r=3"):
        dk.mix_products(B, torch.randn(N, 2, 2, k), W)
    with pytest.raises(TypeError, match="B and A must have the same dtype"):
        dk.consensus_distance(B, A.double())
    with pytest.raises(ValueError, match="W has 2 columns but B has N = 4 agents"):
        dk.interference(B, A, W[:, :2])
    with pytest.raises(ValueError, match="W has 5 columns but X has N = 4 agents"):
        dk.mix_factors(B, ring(5)[:2])


def test_error_leaves_inputs_untouched():
    B, A, W = good()
    Bc, Ac = B.clone(), A.clone()
    with pytest.raises(ValueError):
        dk.consensus_tsvd(B, A, W * 1.1)
    assert torch.equal(B, Bc) and torch.equal(A, Ac)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_non_finite_found_in_every_agent(method):
    """The exact method reads finiteness off its Grams; an agent no one listens to (a zero column of W) is not in
    any Gram block and must still be checked."""
    B, A, _ = good()
    W = torch.eye(N)
    W[3, 3], W[3, 0] = 0.0, 1.0  # column 3 is all zero
    for target, name in ((B, "B"), (A, "A")):
        saved = target[3, 1, 2, 0].item()
        target[3, 1, 2, 0] = float("nan")
        with pytest.raises(ValueError, match=rf"{name} must be finite, found nan at index \(3, 1, 2, 0\)"):
            dk.consensus_tsvd(B, A, W, method=method)
        target[3, 1, 2, 0] = saved
    for target, name in ((B, "B"), (A, "A")):  # and an agent that is in the Gram blocks
        target[1, 0, 0, 0] = float("-inf")
        with pytest.raises(ValueError, match=rf"{name} must be finite, found -inf at index \(1, 0, 0, 0\)"):
            dk.consensus_tsvd(B, A, W, method=method)
        target[1, 0, 0, 0] = 0.0


@pytest.mark.parametrize("value", [np.int64(2), np.int32(2), torch.tensor(2)], ids=["np.int64", "np.int32", "tensor"])
def test_integer_likes_are_accepted(value):
    B, A, W = good()
    ref = dk.consensus_tsvd(B, A, W, 2)
    out = dk.consensus_tsvd(B, A, W, value)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    ref = dk.consensus_tsvd(B, A, W, method="randomized", oversample=2, power_iters=1)
    out = dk.consensus_tsvd(B, A, W, method="randomized", oversample=value, power_iters=np.int64(1))
    assert torch.equal(ref[0], out[0])
    assert len(dk.consensus_tsvd_grouped([B], [A], W, value)[0][0].shape) == 4


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_w_is_accepted_by_every_op(layout):
    """A graph's W is naturally sparse; it is small, so the ops densify it (same results as the dense W)."""
    B, A, W = good()
    Ws = W.to_sparse() if layout == "coo" else W.to_sparse_csr()
    for op, args in ((dk.consensus_tsvd, (B, A)), (dk.mix_factors, (B,)), (dk.mix_products, (B, A)),
                     (dk.interference, (B, A))):
        ref, out = op(*args, W), op(*args, Ws)
        for x, y in zip(ref if isinstance(ref, tuple) else (ref,), out if isinstance(out, tuple) else (out,)):
            assert torch.equal(x, y), op.__name__


def test_empty_inputs():
    """No agents is an error that says so; empty matrices or layer dimensions give empty results."""
    with pytest.raises(ValueError, match=r"X has no agents: dimension 0 of X \(0, 3\) is 0"):
        dk.mix_factors(torch.ones(0, 3), torch.ones(0, 0))
    with pytest.raises(ValueError, match="non-zero N, d, r and k"):
        dk.consensus_tsvd(torch.ones(0, 4, 2), torch.ones(0, 2, 4), torch.ones(0, 0))
    W = ring(3, torch.float32)
    assert dk.mix_factors(torch.ones(3, 0, 4), W).shape == (3, 0, 4)
    Be, Ae = torch.ones(3, 0, 4, 2), torch.ones(3, 0, 2, 4)
    assert dk.mix_products(Be, Ae, W).shape == (3, 0, 4, 4)
    assert dk.interference(Be, Ae, W).shape == (3, 0)
    assert dk.consensus_distance(Be, Ae).shape == (0,)
    B2, A2 = dk.consensus_tsvd(Be, Ae, W)
    assert B2.shape == (3, 0, 4, 2) and A2.shape == (3, 0, 2, 4)
