"""Rectangular mixing matrices W (n_out, N): output o mixes the N input agents with row o of W.

Every op is checked against float64 formulas on fresh random inputs (consensus_tsvd against
``reference.consensus_tsvd_ref``, torch.linalg.svd of the dense mixed products, within the tolerances of
test_consensus_tsvd.py), then the row-block property a process hosting some agents relies on, autograd, the fakes,
and bad inputs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import optimality_error, oracle, ring, star_asymmetric
from test_consensus_tsvd import EPS, tol

import decaf_kernels as dk
from decaf_kernels import _backend
from decaf_kernels.reference import consensus_tsvd_ref

ALPHA = {"balanced": 0.5, "left": 1.0, "right": 0.0}


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here; the GPU path is checked on a GPU machine (bench/gpu_check.sh)")
    return torch.device(request.param)


def stochastic(gen, n_out, n_in, density=0.6):
    """A random (n_out, n_in) row-stochastic W with zeros (every row keeps at least one entry)."""
    keep = torch.rand(n_out, n_in, generator=gen) < density
    keep[torch.arange(n_out), torch.randint(0, n_in, (n_out,), generator=gen)] = True
    W = torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) * keep
    return W / W.sum(1, keepdim=True)


def rect_w(name, gen):
    """The rectangular shapes under test: (W, N)."""
    if name == "fewer-outputs":  # 2 outputs from 5 inputs
        return stochastic(gen, 2, 5), 5
    if name == "more-outputs":  # 6 outputs from 3 inputs, rows repeating
        W = stochastic(gen, 3, 3)
        return W[[0, 1, 2, 2, 0, 1]], 3
    if name == "one-output":
        return stochastic(gen, 1, 4, density=1.0), 4
    if name == "identical-rows":
        return stochastic(gen, 1, 4)[[0, 0, 0]], 4
    if name == "zero-column":  # input agent 2 is used by nobody
        return with_zero_column(stochastic(gen, 3, 3), 2), 4
    raise KeyError(name)


def with_zero_column(W, j):
    """W with an all-zero column inserted before column j: an input agent no output uses."""
    return torch.cat([W[:, :j], torch.zeros(W.shape[0], 1, dtype=W.dtype), W[:, j:]], 1)


W_CASES = ["fewer-outputs", "more-outputs", "one-output", "identical-rows", "zero-column"]


def factors(gen, N, batch, d, k, r, dtype):
    B = torch.randn((N, *batch, d, r), generator=gen, dtype=torch.float64) / d**0.5
    A = torch.randn((N, *batch, r, k), generator=gen, dtype=torch.float64) / k**0.5
    return B.to(dtype), A.to(dtype)


def run(device, B, A, W, *args, **kwargs):
    out = dk.consensus_tsvd(B.to(device), A.to(device), W.to(device), *args, **kwargs)
    return tuple(o.cpu() for o in out)


def seed_of(*parts) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate("/".join(map(str, parts))))


# ---------------------------------------------------------------------------------------------- consensus_tsvd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("split", list(ALPHA))
@pytest.mark.parametrize("case", W_CASES)
def test_exact_matches_the_float64_oracle(case, split, dtype, device):
    gen = torch.Generator().manual_seed(seed_of(case, split, dtype))
    W, N = rect_w(case, gen)
    d, k, r, rank = 21, 17, 3, 4
    B, A = factors(gen, N, (2,), d, k, r, dtype)
    B2, A2, S = run(device, B, A, W, rank, method="exact", split=split, return_singular_values=True)
    n_out = W.shape[0]
    assert B2.shape == (n_out, 2, d, rank) and A2.shape == (n_out, 2, rank, k) and S.shape == (n_out, 2, rank)
    assert B2.dtype == dtype and A2.dtype == dtype
    Bo, Ao, So = consensus_tsvd_ref(B, A, W, rank, ALPHA[split])
    M, Mr, _ = oracle(B, A, W, rank)
    err = optimality_error(B2, A2, M, Mr)
    s_err = float((S.double() - So).abs().max() / So.max())
    if dtype == torch.bfloat16:
        # computed in fp32, returned in bf16: the baseline is the optimal float64 factors rounded to bf16; S stays
        # fp32 and sees the bf16 inputs exactly
        assert err <= 2 * optimality_error(Bo.to(dtype), Ao.to(dtype), M, Mr) + 1e-6, err
        assert s_err <= 50 * EPS[torch.float32], s_err
    else:
        bound = tol(B, A, W, rank, dtype)
        assert err <= bound, (err, bound)
        assert s_err <= max(50 * EPS[dtype], 2 * bound), s_err
    if dtype == torch.float64:  # the split: B'^T B' = S^(2 alpha), A' A'^T = S^(2 (1 - alpha)), both diagonal
        a = ALPHA[split]
        live = S > 0  # null directions are zero in every split (S^0 would say 1)
        GB, GA = (torch.where(live, S.pow(e), torch.zeros_like(S)) for e in (2 * a, 2 * (1 - a)))
        torch.testing.assert_close(B2.mT @ B2, torch.diag_embed(GB), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(A2 @ A2.mT, torch.diag_embed(GA), atol=1e-10, rtol=1e-10)
    if case == "identical-rows":  # solved once: every output is the same tensor
        assert all(torch.equal(x[0], x[i]) for x in (B2, A2, S) for i in range(1, n_out))


@pytest.mark.parametrize("shape", [(3, 5), (7, 4)], ids=["fewer-outputs", "more-outputs"])
def test_randomized_with_a_spectral_gap(shape, device):
    """M_o = a rank-`rank` signal + noise 1e-3: the sketch finds the top subspace of every output's product."""
    n_out, N = shape
    gen = torch.Generator().manual_seed(n_out * 10 + N)
    d, k, r, rank = 48, 40, 8, 3
    W = stochastic(gen, n_out, N, density=1.0)  # dense rows: m = N r > rank + oversample, a real sketch
    B = torch.randn(N, 2, d, r, generator=gen, dtype=torch.float64) * 1e-3
    A = torch.randn(N, 2, r, k, generator=gen, dtype=torch.float64) * 1e-3
    B[..., :rank] += torch.randn(d, rank, generator=gen, dtype=torch.float64) / d**0.25
    A[..., :rank, :] += torch.randn(rank, k, generator=gen, dtype=torch.float64) / k**0.25
    M, Mr, _ = oracle(B, A, W, rank)
    for dtype, bound in ((torch.float64, 1e-5), (torch.float32, 1e-5)):
        # one power iteration: error ~ (sigma_{l+1} / sigma_rank)^3 ~ 1e-9, times a margin (as test_consensus_tsvd)
        Br, Ar = run(device, B.to(dtype), A.to(dtype), W, rank, method="randomized", oversample=4, power_iters=1,
                     generator=torch.Generator().manual_seed(3))
        assert Br.shape == (n_out, 2, d, rank) and Ar.shape == (n_out, 2, rank, k)
        assert optimality_error(Br, Ar, M, Mr) < bound


def test_a_row_selecting_one_agent_is_that_agents_tsvd(device):
    """W row o = e_j: output o is the rank-`rank` truncation of B_j A_j alone."""
    gen = torch.Generator().manual_seed(41)
    N, d, k, r, rank = 4, 19, 23, 4, 2
    B, A = factors(gen, N, (3,), d, k, r, torch.float32)
    W = torch.zeros(2, N, dtype=torch.float64)
    W[0, 2] = W[1, 0] = 1.0
    B2, A2, S = run(device, B, A, W, rank, return_singular_values=True)
    Bj, Aj, I2 = B[[2, 0]], A[[2, 0]], torch.eye(2, dtype=torch.float64)  # output o = agent j's own product
    M, Mr, s = oracle(Bj, Aj, I2, rank)
    assert optimality_error(B2, A2, M, Mr) <= tol(Bj, Aj, I2, rank, torch.float32)
    assert float(np.abs(S.double().numpy() - s[..., :rank]).max() / s.max()) <= 50 * EPS[torch.float32]
    if device.type == "cpu":  # the same call on that agent alone (a 1 x 1 W): the same kernels on the same data
        for o, j in ((0, 2), (1, 0)):
            one = run(device, B[j:j + 1], A[j:j + 1], torch.ones(1, 1), rank, return_singular_values=True)
            assert all(torch.equal(x[o], y[0]) for x, y in zip((B2, A2, S), one))


def test_zero_and_rank_deficient_inputs(device):
    """Output 0 mixes two copies of one agent (rank r), output 1 only a zero agent, output 2 an agent whose B is
    zero and one whose A is: rank 2r asks for directions that do not exist, which come back as zeros."""
    gen = torch.Generator().manual_seed(5)
    N, d, k, r = 5, 24, 20, 3
    B, A = factors(gen, N, (2,), d, k, r, torch.float64)
    B[1], A[1] = B[0], A[0]
    B[2].zero_()
    A[2].zero_()
    B[3].zero_()
    A[4].zero_()
    W = torch.tensor([[0.3, 0.7, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 0.5, 0.5]], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        B2, A2, S = run(device, B.to(dtype), A.to(dtype), W, 2 * r, return_singular_values=True)
        assert torch.isfinite(B2).all() and torch.isfinite(A2).all()
        assert (S[0, :, r:] == 0).all() and (B2[0, ..., r:] == 0).all() and (A2[0, ..., r:, :] == 0).all()
        assert (S[1:] == 0).all() and (B2[1:] == 0).all() and (A2[1:] == 0).all()
        P = B[0].to(dtype).double() @ A[0].to(dtype).double()
        atol = 8 * EPS[dtype] * float(P.abs().max())
        torch.testing.assert_close((B2[0] @ A2[0]).double(), P, atol=atol, rtol=0)


def test_non_contiguous_inputs_and_several_batch_dimensions(device):
    gen = torch.Generator().manual_seed(17)
    N, d, k, r = 5, 26, 18, 3
    W, _ = rect_w("fewer-outputs", gen)
    Bt = torch.randn(N, 2, 3, r, d, generator=gen, dtype=torch.float64)
    At = torch.randn(N, 2, 3, k, r, generator=gen, dtype=torch.float64)
    B, A = Bt.mT, At.mT  # transposed views, batch (2, 3)
    Bs = torch.randn(N, 2, 6, d, r, generator=gen, dtype=torch.float64)[:, :, ::2]  # a strided slice
    for Bx, Ax in ((B, A), (Bs, A)):
        assert not Bx.is_contiguous()
        B2, A2 = run(device, Bx, Ax, W)
        assert B2.shape == (2, 2, 3, d, r) and A2.shape == (2, 2, 3, r, k)
        M, Mr, _ = oracle(Bx, Ax, W, r)
        assert optimality_error(B2, A2, M, Mr) <= tol(Bx, Ax, W, r, torch.float64)


def test_empty_layer_dimension(device):
    W = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    B2, A2, S = run(device, torch.ones(3, 0, 4, 2), torch.ones(3, 0, 2, 5), W, return_singular_values=True)
    assert B2.shape == (2, 0, 4, 2) and A2.shape == (2, 0, 2, 5) and S.shape == (2, 0, 2)


# ----------------------------------------------------------------------------------------------------- row blocks


def block_of(W, rows):
    """A process's view: its rows of W, restricted to the (sorted) agents those rows use."""
    cols = torch.nonzero(W[rows].abs().sum(0)).flatten()
    return W[rows][:, cols], cols


def sparse_random(n):
    gen = torch.Generator().manual_seed(n)
    W = stochastic(gen, n, n, density=0.3) + torch.eye(n, dtype=torch.float64)
    return W / W.sum(1, keepdim=True)


@pytest.mark.parametrize("graph,rows", [("ring", [1, 2]), ("ring", [4]), ("star", [2, 4]), ("random", [0, 5])],
                         ids=["ring-rows12", "ring-row4", "star-leaves", "irregular-random"])
def test_a_block_of_rows_gives_the_full_calls_rows(graph, rows, device):
    """consensus_tsvd(B[cols], A[cols], W[rows][:, cols]) = consensus_tsvd(B, A, W)[rows], signs included:
    bitwise for fp32 and bf16 on the CPU kernels (every output is computed from its own neighbours only, in
    column order). float64 on the CPU goes through LAPACK (MKL), whose rounding depends on the batch's memory
    layout, so there it agrees to rounding; where the two calls pad their cores to different widths (star, random)
    LAPACK may pick the other sign for a singular pair, so there the factors are compared up to that sign."""
    gen = torch.Generator().manual_seed(seed_of(graph, rows))
    N, d, k, r = 6, 33, 27, 4
    W = {"ring": ring, "star": star_asymmetric, "random": sparse_random}[graph](N)
    Wb, cols = block_of(W, rows)
    assert Wb.shape[1] < N  # the block really leaves agents out
    same_width = int((W != 0).sum(1).max()) == int((Wb != 0).sum(1).max())
    assert same_width == (graph == "ring")
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        B, A = factors(gen, N, (3,), d, k, r, dtype)
        full = run(device, B, A, W, method="exact", return_singular_values=True)
        part = run(device, B[cols], A[cols], Wb, method="exact", return_singular_values=True)
        full = tuple(x[rows] for x in full)
        assert all(y.shape == x.shape for x, y in zip(full, part))
        if dtype != torch.float64 and device.type == "cpu":
            for x, y in zip(full, part):
                assert torch.equal(y, x), (dtype, float((y.double() - x.double()).abs().max()))
            continue
        # float64, or any dtype on CUDA (not bitwise there: the GPU Gram pass groups the pairs per call)
        (B1, A1, S1), (B2, A2, S2) = full, part
        if not same_width or device.type == "cuda":
            sign = torch.where((B1.double() * B2.double()).sum(-2) < 0, -1.0, 1.0).to(dtype)  # per singular pair
            B2, A2 = B2 * sign[..., None, :], A2 * sign[..., :, None]
        rel = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
        for x, y in ((B1, B2), (A1, A2), (S1, S2)):
            torch.testing.assert_close(y, x, atol=rel * float(x.abs().max()), rtol=0)


def test_columns_in_another_order_give_the_same_products(device):
    """The factors' signs follow the order of the stacked agents; the products do not depend on it."""
    gen = torch.Generator().manual_seed(8)
    N, d, k, r = 6, 30, 25, 4
    W = ring(N)
    B, A = factors(gen, N, (2,), d, k, r, torch.float64)
    Wb, cols = block_of(W, [1, 2])
    perm = torch.tensor([3, 1, 0, 2])
    B1, A1 = run(device, B[cols], A[cols], Wb)
    B2, A2 = run(device, B[cols][perm], A[cols][perm], Wb[:, perm])
    torch.testing.assert_close(B2 @ A2, B1 @ A1, atol=1e-13 * float((B1 @ A1).abs().max()), rtol=0)


def test_same_bytes_different_shapes_get_different_plans(device):
    """The plan cache is keyed by W's values and its shape: (2, 6) and (3, 4) views of one buffer must not
    share neighbour tables (validate=False: both cannot have rows summing to 1)."""
    gen = torch.Generator().manual_seed(2)
    flat = torch.rand(12, generator=gen, dtype=torch.float64)
    flat[[1, 7]] = 0.0
    d, k, r = 10, 9, 2
    for shape in ((2, 6), (3, 4), (2, 6)):
        W = flat.reshape(shape)
        B, A = factors(gen, shape[1], (), d, k, r, torch.float64)
        B2, A2 = run(device, B, A, W, validate=False)
        M, Mr, _ = oracle(B, A, W, r)
        assert B2.shape == (shape[0], d, r) and optimality_error(B2, A2, M, Mr) <= tol(B, A, W, r, torch.float64)


# ----------------------------------------------------------------------------------------- the other ops


@pytest.mark.parametrize("case", ["fewer-outputs", "more-outputs", "zero-column"])
def test_mix_ops_and_interference_match_dense_float64(case, device):
    gen = torch.Generator().manual_seed(seed_of("mix", case))
    W, N = rect_w(case, gen)
    n_out = W.shape[0]
    B, A = factors(gen, N, (2,), 13, 11, 3, torch.float64)
    Wn = W.numpy()
    Wd = W.to(device)
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        Bd, Ad = B.to(device, dtype), A.to(device, dtype)
        Bn, An = (x.to(dtype).double().numpy() for x in (B, A))  # the inputs the op sees
        M = np.einsum("ij,j...dr,j...rk->i...dk", Wn, Bn, An)
        Bbar, Abar = np.einsum("ij,j...->i...", Wn, Bn), np.einsum("ij,j...->i...", Wn, An)
        interf = np.linalg.norm(M - Bbar @ Abar, axis=(-2, -1))
        out = dk.mix_factors(Bd, Wd).cpu()
        assert out.shape == (n_out, 2, 13, 3) and out.dtype == dtype
        np.testing.assert_allclose(out.double().numpy(), Bbar, rtol=0, atol=rtol * np.abs(Bbar).max())
        out = dk.mix_products(Bd, Ad, Wd).cpu()
        assert out.shape == (n_out, 2, 13, 11)
        np.testing.assert_allclose(out.double().numpy(), M, rtol=0, atol=rtol * np.abs(M).max())
        norm_M = np.linalg.norm(M, axis=(-2, -1))
        for relative, ref, scale in ((False, interf, norm_M), (True, interf / norm_M, 1.0)):
            out = dk.interference(Bd, Ad, Wd, relative=relative).cpu()
            assert out.shape == (n_out, 2)
            # float64 Grams resolve the difference only down to sqrt(eps64) ||M_o|| (a row with one agent has
            # no interference at all; its result is that square root of a cancellation)
            floor = 4 * EPS[torch.float64] ** 0.5 * scale
            assert (np.abs(out.double().numpy() - ref) <= 10 * rtol * ref + floor).all(), (out, ref)


def test_grouped_takes_a_rectangular_w(device):
    gen = torch.Generator().manual_seed(23)
    W, N = rect_w("more-outputs", gen)
    shapes = [((2,), 16, 3, 12), ((1, 2), 16, 3, 12), ((), 20, 2, 9)]
    Bs, As = zip(*(factors(gen, N, batch, d, k, r, torch.float32) for batch, d, r, k in shapes))
    Bs, As = [b.to(device) for b in Bs], [a.to(device) for a in As]
    got = dk.consensus_tsvd_grouped(Bs, As, W.to(device))
    for (batch, d, r, k), B, A, (B2, A2) in zip(shapes, Bs, As, got):
        assert B2.shape == (6, *batch, d, r) and A2.shape == (6, *batch, r, k)
        M, Mr, _ = oracle(B, A, W, r)
        assert optimality_error(B2, A2, M, Mr) <= tol(B.cpu(), A.cpu(), W, r, torch.float32)


# ---------------------------------------------------------------------------------------- autograd, fakes, compile


def _gc(f, inputs):
    return torch.autograd.gradcheck(f, inputs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3), (4, 3)], ids=["fewer-outputs", "more-outputs"])
def test_gradcheck_consensus_tsvd(shape):
    """Gradients of B'A' and S in B, A (N inputs) and W (n_out, N), zero entries of W included."""
    gen = torch.Generator().manual_seed(shape[0])
    n_out, N = shape
    B = torch.randn(N, 1, 5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(N, 1, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    W = stochastic(gen, n_out, N, density=0.7)
    if n_out > N:
        W = W[[0, 1, 0, 2]]  # a repeated row: solved once in the forward, expanded in the backward
    W.requires_grad_()
    assert (W == 0).any()

    def f(B, A, W):
        B2, A2, S = dk.consensus_tsvd(B, A, W, 2, method="exact", validate=False, return_singular_values=True)
        return B2 @ A2, S

    assert _gc(f, (B, A, W))


def test_gradcheck_mix_ops():
    gen = torch.Generator().manual_seed(9)
    X = torch.randn(3, 2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    for n_out in (2, 5):
        W = stochastic(gen, n_out, 3).requires_grad_()
        assert _gc(lambda X, W: dk.mix_factors(X, W, validate=False), (X, W))
        assert _gc(lambda B, A, W: dk.mix_products(B, A, W, validate=False), (B, A, W))


@pytest.mark.parametrize("op", ["consensus_tsvd", "mix_factors", "mix_products", "interference"])
def test_opcheck_with_a_rectangular_w(op):
    """The fakes (output shapes from W.shape[0]), schema and autograd registration, as test_ops.test_opcheck."""
    gen = torch.Generator().manual_seed(4)
    B = torch.randn(3, 2, 8, 2, generator=gen, dtype=torch.float64)
    A = torch.randn(3, 2, 2, 6, generator=gen, dtype=torch.float64)
    W = stochastic(gen, 5, 3)
    arguments = {
        "consensus_tsvd": (B.requires_grad_(), A.requires_grad_(), W, 2, "exact", 8, 2, 0, "balanced", True),
        "mix_factors": (B.requires_grad_(), W.requires_grad_(), True),
        "mix_products": (B.requires_grad_(), A.requires_grad_(), W, True),
        "interference": (B.detach(), A.detach(), W.detach(), True),
    }[op]
    result = torch.library.opcheck(getattr(torch.ops.decaf_kernels, op).default, arguments)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_fullgraph_with_a_rectangular_w():
    gen = torch.Generator().manual_seed(6)
    B = torch.randn(4, 3, 16, 4, generator=gen)
    A = torch.randn(4, 3, 4, 12, generator=gen)
    W = stochastic(gen, 2, 4).float()

    def step(B, A, W):
        B2, A2 = dk.consensus_tsvd(B, A, W)
        return (B2 @ A2).square().sum(), dk.mix_factors(B, W)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c, mix_c = compiled(B, A, W)
    loss_e, mix_e = step(B, A, W)
    assert mix_c.shape == (2, 3, 16, 4)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(mix_c, mix_e)
    Bg = B.clone().requires_grad_()
    compiled(Bg, A, W)[0].backward()
    Bh = B.clone().requires_grad_()
    step(Bh, A, W)[0].backward()
    assert Bg.grad.shape == B.shape
    torch.testing.assert_close(Bg.grad, Bh.grad)


# --------------------------------------------------------------------------------------------------- bad inputs


def _ops(B, A, W):
    return {
        "consensus_tsvd": lambda: dk.consensus_tsvd(B, A, W),
        "mix_factors": lambda: dk.mix_factors(B, W),
        "mix_products": lambda: dk.mix_products(B, A, W),
        "interference": lambda: dk.interference(B, A, W),
    }


BAD_W = [
    # id, W from a good (2, 4) W, the message's words
    ("wrong-columns", lambda W: torch.full((2, 5), 0.2), ["W has 5 columns", "N = 4 agents (dimension 0)",
                                                           "(2, 5)", "(4, 2, 12, 3)"]),
    ("1-d", lambda W: W[0], ["W must be a 2-D (n_out, N) mixing matrix", "(4,)"]),
    ("no-rows", lambda W: W[:0], ["W has no rows", "(0, 4)"]),
    ("no-columns", lambda W: W[:, :0], ["W has 0 columns", "(2, 0)"]),
]


@pytest.mark.parametrize("make,words", [b[1:] for b in BAD_W], ids=[b[0] for b in BAD_W])
def test_bad_w_is_rejected_before_anything_runs(make, words, monkeypatch):
    from decaf_kernels import _consensus

    def no_plan(*args, **kwargs):
        raise AssertionError("the plan was built before the arguments were checked")

    from decaf_kernels import _diagnostics, ops

    monkeypatch.setattr(_consensus, "plan", no_plan)
    monkeypatch.setattr(ops, "_mix_dense", no_plan)
    monkeypatch.setattr(_diagnostics, "interference", no_plan)
    gen = torch.Generator().manual_seed(0)
    B, A = factors(gen, 4, (2,), 12, 10, 3, torch.float32)
    W = make(stochastic(gen, 2, 4))
    for name, call in _ops(B, A, W).items():
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value).replace("X has", "B has").replace("X (", "B (")  # mix_factors names its X
        for word in words:
            assert word in message, (name, word, str(info.value))


def test_rows_must_sum_to_one_when_validating(monkeypatch):
    from decaf_kernels import _consensus, ops

    gen = torch.Generator().manual_seed(1)
    B, A = factors(gen, 4, (2,), 12, 10, 3, torch.float32)
    W = stochastic(gen, 3, 4)
    W[1] *= 1.5
    with monkeypatch.context() as m:
        for module, name in ((_consensus, "plan"), (ops, "_mix_dense")):
            m.setattr(module, name, lambda *a, **k: pytest.fail("work started before the value checks"))
        for call in (lambda: dk.consensus_tsvd(B, A, W), lambda: dk.mix_factors(B, W),
                     lambda: dk.mix_products(B, A, W)):
            with pytest.raises(ValueError, match="rows of W must sum to 1.*row 1 sums to 1.5"):
                call()
    assert dk.consensus_tsvd(B, A, W, validate=False)[0].shape == (3, 2, 12, 3)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_an_unused_agent_is_still_checked_for_finiteness(method):
    """validate=True checks every input: an agent no row of W uses is in no Gram block and is scanned on its own."""
    gen = torch.Generator().manual_seed(3)
    B, A = factors(gen, 4, (2,), 12, 10, 3, torch.float32)
    W = with_zero_column(stochastic(gen, 2, 3), 1)
    for target, name in ((B, "B"), (A, "A")):
        target[1, 1, 2, 0] = float("nan")
        with pytest.raises(ValueError, match=rf"{name} must be finite, found nan at index \(1, 1, 2, 0\)"):
            dk.consensus_tsvd(B, A, W, method=method)
        target[1, 1, 2, 0] = 0.0
    assert dk.consensus_tsvd(B, A, W, method=method)[0].shape == (2, 2, 12, 3)


# ------------------------------------------------------------------------------------- Triton kernels on the CPU


def _triton_interpreter_ready() -> bool:
    try:
        import decaf_kernels._triton as tk
    except ImportError:
        return False
    return tk.is_available() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.skipif(not _triton_interpreter_ready(), reason="the Triton kernels cannot run here (see test_triton_path)")
def test_rectangular_w_on_the_triton_kernels():
    """The plan path on the kernels CUDA tensors use (Triton pair_gram + mix_lowrank, under the interpreter)."""
    gen = torch.Generator().manual_seed(12)
    N, d, k, r = 5, 24, 20, 3
    W = with_zero_column(stochastic(gen, 3, N - 1), 4)  # input 4 is used by nobody
    B, A = factors(gen, N, (2,), d, k, r, torch.float32)
    with _backend.triton_on_cpu():
        B2, A2 = dk.consensus_tsvd(B, A, W, method="exact")
    assert B2.shape == (3, 2, d, r)
    M, Mr, _ = oracle(B, A, W, r)
    assert optimality_error(B2, A2, M, Mr) <= tol(B, A, W, r, torch.float32)
