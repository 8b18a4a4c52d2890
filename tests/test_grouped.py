"""consensus_tsvd_grouped: layers of different shapes in one call, equal to one consensus_tsvd per entry."""

from __future__ import annotations

import pytest
import torch
from conftest import ring

import decaf_kernels as dk


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here; the GPU path is checked on a GPU machine (bench/gpu_check.sh)")
    return torch.device(request.param)


def stacks(gen, N, specs, dtype, device):
    Bs, As = [], []
    for batch, d, r, k in specs:
        Bs.append((torch.randn((N, *batch, d, r), generator=gen, dtype=torch.float64) / d**0.5).to(device, dtype))
        As.append((torch.randn((N, *batch, r, k), generator=gen, dtype=torch.float64) / k**0.5).to(device, dtype))
    return Bs, As


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_grouped_equals_one_call_per_entry(dtype, rng, device):
    N = 5
    # two entries of one shape (q/k-like, different batch shapes), one MLP-like, one of another rank
    specs = [((3,), 32, 4, 32), ((2, 2), 32, 4, 32), ((2,), 64, 4, 24), ((), 32, 2, 32)]
    Bs, As = stacks(rng, N, specs, dtype, device)
    W = ring(N).to(device)
    got = dk.consensus_tsvd_grouped(Bs, As, W)
    assert len(got) == len(specs)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for (B, A), (B2, A2) in zip(zip(Bs, As), got):
        B1, A1 = dk.consensus_tsvd(B, A, W)
        assert B2.shape == B1.shape and A2.shape == A1.shape and B2.dtype == dtype
        P1, P2 = (B1 @ A1).double(), (B2 @ A2).double()
        # the same algorithm on the same data: only the summation order inside larger launches may differ
        assert float((P1 - P2).norm() / P1.norm()) < tol


def test_grouped_passes_options(rng, device):
    N = 4
    Bs, As = stacks(rng, N, [((2,), 24, 3, 20), ((1,), 24, 3, 20)], torch.float64, device)
    W = ring(N).to(device)
    got = dk.consensus_tsvd_grouped(Bs, As, W, rank=2, split="left")
    for (B, A), (B2, A2) in zip(zip(Bs, As), got):
        assert B2.shape[-1] == 2 and A2.shape[-2] == 2
        B1, A1 = dk.consensus_tsvd(B, A, W, 2, split="left")
        torch.testing.assert_close(B2, B1, atol=1e-12, rtol=1e-10)


def test_grouped_bad_input(rng):
    N = 4
    Bs, As = stacks(rng, N, [((2,), 24, 3, 20), ((1,), 16, 3, 20)], torch.float32, "cpu")
    W = ring(N)
    with pytest.raises(ValueError, match="entries but As has"):
        dk.consensus_tsvd_grouped(Bs, As[:1], W)
    with pytest.raises(ValueError, match="empty"):
        dk.consensus_tsvd_grouped([], [], W)
    with pytest.raises(TypeError, match="sequences"):
        dk.consensus_tsvd_grouped(Bs[0], As[0], W)
    with pytest.raises(ValueError, match="entry 1"):
        dk.consensus_tsvd_grouped(Bs, [As[0], As[1][..., :2, :]], W)
    with pytest.raises(ValueError, match="rank must satisfy.*entry 1"):
        dk.consensus_tsvd_grouped(Bs, As, W, rank=17)
    with pytest.raises(TypeError, match="return_singular_values"):
        dk.consensus_tsvd_grouped(Bs, As, W, return_singular_values=True)
    Bx, Ax = stacks(rng, 3, [((1,), 24, 3, 20)], torch.float32, "cpu")
    with pytest.raises(ValueError, match="agents"):
        dk.consensus_tsvd_grouped([Bs[0], Bx[0]], [As[0], Ax[0]], W)
