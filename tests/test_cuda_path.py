"""The CUDA path end to end: no host synchronisation, CUDA-graph capture, W on the host, the kernels in use.

Correctness against the float64 oracle on CUDA is in test_consensus_tsvd.py (every test there also runs on
CUDA); the kernels on their own are in test_cuda_small_core.py and test_triton_kernels.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import optimality_error, oracle, ring

import decaf_kernels as dk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device here; run on a GPU machine (bench/gpu_check.sh)")


def inputs(N=6, L=3, d=96, k=80, r=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(N, L, d, r, generator=g) / d**0.5
    A = torch.randn(N, L, r, k, generator=g) / k**0.5
    return B.to("cuda", dtype), A.to("cuda", dtype), ring(N)


def test_cuda_kernels_are_in_use():
    """The GPU machine builds _C_cuda; with DECAF_CUDA_SMALL_CORE=nvrtc (gpu_check.sh's second pass) the same
    tests run on the NVRTC build instead."""
    info = dk.backend_info()
    core = info["cuda"]["consensus_tsvd.small_core"]
    assert "Triton" in info["cuda"]["consensus_tsvd.gram"]
    if os.environ.get("DECAF_CUDA_SMALL_CORE", "").strip().lower() == "nvrtc":
        assert "NVRTC" in core and info["extension"]["nvrtc"].startswith("available"), (core, info["extension"])
    else:
        assert info["extension"]["_C_cuda"] == "loaded", info["extension"]
        assert "built by nvcc" in core, core


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_no_host_synchronisation(dtype):
    """validate=False with W on the host: nothing in the call may wait for the GPU."""
    B, A, W = inputs(dtype=dtype)
    dk.consensus_tsvd(B, A, W, validate=False)  # first call: kernels compile and autotune (they may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        B2, A2 = dk.consensus_tsvd(B, A, W, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    M, Mr, _ = oracle(B, A, W, B.shape[-1])
    assert optimality_error(B2, A2, M, Mr) < (1e-12 if dtype == torch.float64 else 1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_w_on_host_equals_w_on_device():
    B, A, W = inputs()
    Bh, Ah = dk.consensus_tsvd(B, A, W)
    Bd, Ad = dk.consensus_tsvd(B, A, W.cuda())
    assert torch.equal(Bh, Bd) and torch.equal(Ah, Ad)


def test_captured_consensus_replays_on_new_values():
    B, A, W = inputs(seed=1)
    step = dk.CapturedConsensus(B, A, W)
    B2, A2 = step.replay()
    Be, Ae = dk.consensus_tsvd(B, A, W)
    torch.testing.assert_close(B2 @ A2, Be @ Ae, atol=1e-6, rtol=1e-5)
    # new values in the same tensors: the replay follows them
    Bn, An, _ = inputs(seed=2)
    B.copy_(Bn)
    A.copy_(An)
    B3, A3 = step.replay()
    assert B3.data_ptr() == B2.data_ptr()
    M, Mr, _ = oracle(B, A, W, B.shape[-1])
    assert optimality_error(B3, A3, M, Mr) < 1e-6


def _error_inside_capture(fn):
    """Run fn inside a CUDA-graph capture and return the exception it raised (or None). The exception is caught
    inside the capture, and the capture records one real kernel, so ending the capture cannot raise an error of
    its own that would replace the one under test."""
    g = torch.cuda.CUDAGraph()
    scratch = torch.zeros(4, device="cuda")
    err = None
    with torch.cuda.graph(g):
        try:
            fn()
        except (ValueError, RuntimeError) as exc:
            err = exc
        scratch.add_(1.0)
    return err


def test_capture_errors_are_clear():
    B, A, W = inputs()
    dk.consensus_tsvd(B, A, W, method="exact", validate=False)
    err = _error_inside_capture(lambda: dk.consensus_tsvd(B, A, W.cuda(), method="exact", validate=False))
    assert isinstance(err, ValueError) and "CPU tensor" in str(err), err
    err = _error_inside_capture(lambda: dk.consensus_tsvd(B, A, W, method="exact"))
    assert isinstance(err, ValueError) and "validate=False" in str(err), err
    err = _error_inside_capture(lambda: dk.consensus_tsvd(B, A, W, validate=False))  # method="auto"
    assert isinstance(err, ValueError) and "method='exact'" in str(err), err


def test_large_batch_of_cores_matches_cpu():
    """Hundreds of cores in one launch (the benchmark's regime), against the CPU kernels on the same data."""
    B, A, W = inputs(N=8, L=40, d=256, k=192, r=8, seed=3)
    Bg, Ag = dk.consensus_tsvd(B, A, W)
    Bc, Ac = dk.consensus_tsvd(B.cpu(), A.cpu(), W)
    Pg, Pc = (Bg @ Ag).double().cpu(), (Bc @ Ac).double()
    assert float((Pg - Pc).norm() / Pc.norm()) < 1e-6


def test_capture_without_warmup_is_refused():
    B, A, _ = inputs(N=7, seed=4)
    W = ring(7) * 0.5 + torch.eye(7, dtype=torch.float64) * 0.5  # a W no earlier test used
    err = _error_inside_capture(lambda: dk.consensus_tsvd(B, A, W, method="exact", validate=False))
    assert isinstance(err, RuntimeError) and "eagerly first" in str(err), err
