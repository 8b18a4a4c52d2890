"""The whole consensus_tsvd op on the kernels CUDA tensors use (Triton pair_gram + mix_lowrank), run on the CPU
under the Triton interpreter, against the float64 oracle. Kernel-level checks are in test_triton_kernels.py."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import optimality_error, oracle, ring, star_asymmetric

pytest.importorskip("triton", reason="Triton is not installed; its kernels cannot be checked here")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1: Triton kernels cannot run", allow_module_level=True)

import decaf_kernels as dk  # noqa: E402
from decaf_kernels import _backend  # noqa: E402
import decaf_kernels._triton as triton_kernels  # noqa: E402

if not triton_kernels.is_available() and triton_kernels.triton_too_old():  # a broken install fails instead
    pytest.skip(f"the Triton kernels cannot be checked: {triton_kernels.unavailable_reason()}", allow_module_level=True)


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 2e-6), (torch.float64, 1e-13)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("graph", ["ring", "star"])
def test_consensus_tsvd_on_triton_kernels(graph, dtype, bound):
    # bound: fp32 outputs carry fp32 rounding (~sqrt(r) eps32 relative on the product); fp64 Grams of fp64 data
    # cost a few eps over LAPACK (see test_consensus_tsvd.py)
    gen = torch.Generator().manual_seed(11)
    N, d, k, r = 4, 40, 33, 4
    B = torch.randn(N, 2, d, r, generator=gen, dtype=torch.float64).to(dtype)
    A = torch.randn(N, 2, r, k, generator=gen, dtype=torch.float64).to(dtype)
    W = ring(N) if graph == "ring" else star_asymmetric(N)
    with _backend.triton_on_cpu():
        B2, A2 = dk.consensus_tsvd(B, A, W, method="exact")
    M, Mr, _ = oracle(B, A, W, r)
    assert optimality_error(B2, A2, M, Mr) <= bound
    B3, A3 = dk.consensus_tsvd(B, A, W, method="exact")  # the CPU kernels' result
    torch.testing.assert_close(B2 @ A2, B3 @ A3, atol=5 * bound * float((B3 @ A3).abs().max()), rtol=0)


def test_traps_on_triton_kernels():
    gen = torch.Generator().manual_seed(5)
    N, d, k, r = 4, 32, 24, 4
    B = torch.randn(N, 1, d, r, generator=gen)
    A = torch.randn(N, 1, r, k, generator=gen)
    B[1] = B[0]
    A[1] = A[0]
    A[3].zero_()
    W = ring(N)
    with _backend.triton_on_cpu():
        B2, A2 = dk.consensus_tsvd(B, A, W)
    assert torch.isfinite(B2).all() and torch.isfinite(A2).all()
    M, Mr, _ = oracle(B, A, W, r)
    assert optimality_error(B2, A2, M, Mr) <= 2e-6
