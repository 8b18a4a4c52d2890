"""mix_factors, mix_products, consensus_distance, interference vs numpy float64; autograd; opcheck; compile."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import complete, ring, star_asymmetric

import decaf_kernels as dk


def _np(x):
    return x.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-13), (torch.bfloat16, 1e-2)],
                         ids=["fp32", "fp64", "bf16"])
def test_mix_factors(dtype, tol, rng):
    X = torch.randn(5, 3, 17, 6, generator=rng).to(dtype)
    W = star_asymmetric(5)
    out = dk.mix_factors(X, W)
    assert out.dtype == dtype and out.shape == X.shape
    ref = np.einsum("ij,j...->i...", _np(W), _np(X))
    assert np.abs(_np(out) - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-13)], ids=["fp32", "fp64"])
def test_mix_products(dtype, tol, rng):
    B = torch.randn(4, 2, 9, 3, generator=rng).to(dtype)
    A = torch.randn(4, 2, 3, 7, generator=rng).to(dtype)
    W = ring(4)
    out = dk.mix_products(B, A, W)
    ref = np.einsum("ij,j...dr,j...rk->i...dk", _np(W), _np(B), _np(A))
    assert out.shape == (4, 2, 9, 7)
    assert np.abs(_np(out) - ref).max() <= tol * np.abs(ref).max()


def test_consensus_distance(rng):
    B = torch.randn(5, 3, 20, 4, generator=rng, dtype=torch.float64)
    A = torch.randn(5, 3, 4, 16, generator=rng, dtype=torch.float64)
    P = _np(B) @ _np(A)
    ref = np.sqrt(((P - P.mean(0)) ** 2).sum((-1, -2)).mean(0))
    out = dk.consensus_distance(B, A)
    assert out.shape == (3,)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-10)
    same = dk.consensus_distance(B[:1].expand(5, -1, -1, -1), A[:1].expand(5, -1, -1, -1))
    assert float(same.max()) <= 1e-7 * np.linalg.norm(P[0])


@pytest.mark.parametrize("relative", [False, True])
def test_interference(relative, rng):
    B = torch.randn(4, 2, 15, 3, generator=rng, dtype=torch.float32)
    A = torch.randn(4, 2, 3, 11, generator=rng, dtype=torch.float32)
    W = ring(4)
    Wn, Bn, An = _np(W), _np(B), _np(A)
    M = np.einsum("ij,j...dr,j...rk->i...dk", Wn, Bn, An)
    PM = np.einsum("ij,j...->i...", Wn, Bn) @ np.einsum("ij,j...->i...", Wn, An)
    ref = np.linalg.norm(M - PM, axis=(-2, -1))
    if relative:
        ref = ref / np.linalg.norm(M, axis=(-2, -1))
    out = dk.interference(B, A, W, relative=relative)
    assert out.shape == (4, 2)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-5)
    # DeCAF's output has no interference with itself on a complete graph: every agent holds the same product
    Bc, Ac = dk.consensus_tsvd(B, A, complete(4))
    assert float(dk.interference(Bc, Ac, complete(4), relative=True).max()) < 1e-5


# ---------------------------------------------------------------------------------------------------------- autograd

def _gc(f, inputs):
    return torch.autograd.gradcheck(f, inputs, atol=1e-6, rtol=1e-5)


def test_mix_gradcheck(rng):
    X = torch.randn(3, 2, 5, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 2, 5, 2, generator=rng, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 2, 2, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    W = star_asymmetric(3).requires_grad_()
    assert _gc(lambda X, W: dk.mix_factors(X, W, validate=False), (X, W))
    assert _gc(lambda B, A, W: dk.mix_products(B, A, W, validate=False), (B, A, W))


@pytest.mark.parametrize("split", ["balanced", "left", "right"])
@pytest.mark.parametrize("graph", ["ring", "star"])
def test_consensus_tsvd_gradcheck(split, graph, rng):
    """Gradient of B'A' (basis-independent) and of S, in B, A and W (W's zero entries included)."""
    N = 4
    B = torch.randn(N, 2, 7, 2, generator=rng, dtype=torch.float64, requires_grad=True)
    A = torch.randn(N, 2, 2, 6, generator=rng, dtype=torch.float64, requires_grad=True)
    W = (ring(N) if graph == "ring" else star_asymmetric(N)).requires_grad_()

    def f(B, A, W):
        B2, A2, S = dk.consensus_tsvd(B, A, W, 2, split=split, validate=False, return_singular_values=True,
                                      method="exact")
        return B2 @ A2, S

    assert _gc(f, (B, A, W))


def test_consensus_tsvd_gradient_of_factors(rng):
    """A loss on the factors themselves (sign-invariant: B'^T B' and A' A'^T) is differentiated consistently."""
    B = torch.randn(3, 8, 3, generator=rng, dtype=torch.float64, requires_grad=True)
    A = torch.randn(3, 3, 9, generator=rng, dtype=torch.float64, requires_grad=True)
    W = ring(3)

    def f(B, A):
        B2, A2 = dk.consensus_tsvd(B, A, W, 2, validate=False)
        return B2 @ B2.mT, A2.mT @ A2

    assert _gc(f, (B, A))


def _with_spectrum(sv, d, k, gen):
    """One agent whose product B A has exactly the singular values sv (orthonormal U, V scaled)."""
    U = torch.linalg.qr(torch.randn(d, len(sv), generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(k, len(sv), generator=gen, dtype=torch.float64))[0]
    s = torch.tensor(sv, dtype=torch.float64)
    return (U * s.sqrt()).unsqueeze(0), (s.sqrt()[:, None] * V.T).unsqueeze(0)


def test_gradient_with_equal_kept_singular_values(rng):
    """sigma = (1, 1) at rank = r = 2, W = I: B'A' = BA, so the gradient of <G, B'A'> is (G A^T, B^T G), though the
    factors themselves are not differentiable there (any rotation of the tied pair is an SVD)."""
    B0, A0 = _with_spectrum([1.0, 1.0], 6, 5, rng)
    B, A = B0.clone().requires_grad_(), A0.clone().requires_grad_()
    G = torch.randn(1, 6, 5, generator=rng, dtype=torch.float64)
    for split in ("balanced", "left", "right"):
        B.grad = A.grad = None
        B2, A2 = dk.consensus_tsvd(B, A, torch.eye(1, dtype=torch.float64), 2, split=split, method="exact")
        ((B2 @ A2) * G).sum().backward()
        torch.testing.assert_close(B.grad, G @ A0.mT, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(A.grad, B0.mT @ G, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("sv,rank", [([2.0, 1.0, 1.0], 3), ([1.0, 1.0, 0.3, 0.1], 2), ([1.5, 1.5, 1.5, 0.2], 3)],
                         ids=["211-rank3", "1-1-tail-rank2", "triple-tie-rank3"])
def test_gradcheck_with_ties_inside_the_kept_block(sv, rank, rng):
    """B'A' is smooth wherever sigma_rank > sigma_rank+1, ties among the kept values included (with truncation
    too); W enters the check as well. (S itself is not differentiable at a tie: the tied values split.)"""
    B0, A0 = _with_spectrum(sv, 7, 6, rng)
    B, A = B0.requires_grad_(), A0.requires_grad_()
    W = torch.eye(1, dtype=torch.float64).requires_grad_()

    def f(B, A, W):
        B2, A2 = dk.consensus_tsvd(B, A, W, rank, method="exact", validate=False)
        return B2 @ A2

    assert _gc(f, (B, A, W))


@pytest.mark.parametrize("op,args", [
    ("consensus_tsvd", "tsvd"), ("mix_factors", "mix"), ("mix_products", "prod"),
    ("consensus_distance", "dist"), ("interference", "intf"),
])
def test_opcheck(op, args, rng):
    B = torch.randn(3, 2, 8, 2, generator=rng, dtype=torch.float64)
    A = torch.randn(3, 2, 2, 6, generator=rng, dtype=torch.float64)
    W = ring(3)
    arguments = {
        "tsvd": (B.requires_grad_(), A.requires_grad_(), W, 2, "exact", 8, 2, 0, "balanced", True),
        "mix": (B.requires_grad_(), W.requires_grad_(), True),
        "prod": (B.requires_grad_(), A.requires_grad_(), W, True),
        "dist": (B.detach(), A.detach()),  # diagnostics are not differentiable
        "intf": (B.detach(), A.detach(), W.detach(), True),
    }[args]
    result = torch.library.opcheck(getattr(torch.ops.decaf_kernels, op).default, arguments)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_fullgraph(rng):
    B = torch.randn(4, 3, 16, 4, generator=rng)
    A = torch.randn(4, 3, 4, 12, generator=rng)
    W = ring(4, torch.float32)

    def step(B, A, W):
        B2, A2 = dk.consensus_tsvd(B, A, W)
        return (B2 @ A2).square().sum(), dk.mix_factors(B, W)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c, mix_c = compiled(B, A, W)
    loss_e, mix_e = step(B, A, W)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(mix_c, mix_e)
    Bg = B.clone().requires_grad_()
    compiled(Bg, A, W)[0].backward()
    Bh = B.clone().requires_grad_()
    step(Bh, A, W)[0].backward()
    torch.testing.assert_close(Bg.grad, Bh.grad)


# ---------------------------------------------------------------------------------------------------------- backends

def test_backend_info_names_every_op():
    info = dk.backend_info()
    for device in ("cpu", "cuda"):
        for key in ("consensus_tsvd.gram", "consensus_tsvd.small_core", "consensus_tsvd.reconstruct", "mix_factors",
                    "mix_products", "consensus_distance", "interference"):
            assert isinstance(info[device][key], str) and info[device][key]
    assert set(info["extension"]) == {"_C", "_C_cuda", "nvrtc"}


def test_missing_extension_falls_back_with_one_warning():
    """If _C cannot be loaded the package still imports, warns once, and computes the same result."""
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["decaf_kernels._C"] = None   # makes `import decaf_kernels._C` raise ImportError
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            import torch, decaf_kernels as dk
            W = torch.full((3, 3), 1 / 3)
            for _ in range(3):
                out = dk.consensus_tsvd(torch.randn(3, 10, 2), torch.randn(3, 2, 8), W)
        msgs = [str(w.message) for w in caught if "decaf_kernels._C" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "pure PyTorch" in dk.backend_info()["cpu"]["consensus_tsvd.small_core"]
        print("ok", out[0].shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_small_core_non_convergence_is_reported(monkeypatch):
    """If the C++ solver reports hitting its iteration limit (seen once, on the AVX2 path, for one 64 x 64 core),
    the user gets a warning rather than silence."""
    import ctypes

    from decaf_kernels import _backend, _ext

    real = _ext.cpu_ext()
    if real is None:
        pytest.skip("the C++ extension is not built here: nothing reports iteration counts")

    class Stuck:
        INFO_NO_CONVERGENCE = real.INFO_NO_CONVERGENCE

        def __getattr__(self, name):
            return getattr(real, name)

        def small_core(self, *args, **kwargs):
            real.small_core(*args, **kwargs)
            info_ptr = args[9]
            info = torch.frombuffer((ctypes.c_int32 * 1).from_address(info_ptr), dtype=torch.int32)
            info[0] = real.INFO_NO_CONVERGENCE

    monkeypatch.setattr(_ext, "cpu_ext", lambda: Stuck())
    G = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    with pytest.warns(RuntimeWarning, match="iteration limit on 1 of 3 problems"):
        _backend.small_core(G, G, 2, 0.5)
