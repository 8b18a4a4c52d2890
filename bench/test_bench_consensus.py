"""pytest-benchmark microbenchmarks of the consensus step (``pytest bench/ --benchmark-only``).

Times ``decaf_kernels.consensus_tsvd`` (exact, randomized), the factored PyTorch baselines and DLoRA's
``mix_factors`` on the tiny and small cases on CPU, and on tiny / small / medium / large on CUDA when a device
is present (large and bf16: the library ops and the Cholesky baseline only). Ids read ``<case>-<method>-<dtype>[-cuda]``, e.g. ``small-exact-fp32``. Nothing here
asserts on speed; each test checks that the timed call returned finite factors of the right shape.
The side-by-side table with extrapolation, optimality errors and the bandwidth floor is
``python -m bench.compare``; this file is for tracking one method over time (``--benchmark-autosave``,
``--benchmark-compare``).
"""

from __future__ import annotations

import pytest
import torch

from . import baselines as bl
from .cases import get_case, make_inputs

try:
    import decaf_kernels as dk

    _DK_MISSING = None if hasattr(dk, "consensus_tsvd") else "decaf_kernels has no consensus_tsvd yet"
except Exception as exc:  # the baselines stay measurable while the library is broken or absent
    dk, _DK_MISSING = None, f"import decaf_kernels failed: {type(exc).__name__}: {exc}"

_CUDA_MISSING = None if torch.cuda.is_available() else "no CUDA device on this machine"
_DTYPE_IDS = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16"}


def _exact(B, A, W, rank):
    return dk.consensus_tsvd(B, A, W, rank, method="exact", validate=False)


def _randomized(B, A, W, rank, _gen=torch.Generator().manual_seed(0)):
    return dk.consensus_tsvd(B, A, W, rank, method="randomized", generator=_gen, validate=False)


# the library ops get W on the host (see consensus_tsvd's docs): no device-to-host copy of W per call
_ON_HOST = {"exact", "randomized"}


def _mix_factors(B, A, W, rank):
    return dk.mix_factors(B, W, validate=False), dk.mix_factors(A, W, validate=False)


# name -> (callable, needs decaf_kernels)
METHODS = {
    "exact": (_exact, True),
    "randomized": (_randomized, True),
    "cholesky": (bl.factored_cholesky, False),
    "householder": (bl.factored_householder, False),
    "mix_factors": (_mix_factors, True),
}

CPU_CASES = ("tiny", "small")
CUDA_CASES = ("tiny", "small", "medium", "large")
_LARGE_METHODS = ("exact", "mix_factors", "cholesky")  # the others take seconds per call on large


def _params():
    out = []
    for device, case_names in (("cpu", CPU_CASES), ("cuda", CUDA_CASES)):
        for case_name in case_names:
            for method, (_, needs_dk) in METHODS.items():
                if case_name == "large" and method not in _LARGE_METHODS:
                    continue
                dtypes = (torch.float32, torch.bfloat16) if device == "cuda" and method == "exact" else (torch.float32,)
                for dtype in dtypes:
                    marks = []
                    if device == "cuda":
                        marks.append(pytest.mark.skipif(_CUDA_MISSING is not None, reason=str(_CUDA_MISSING)))
                    if needs_dk:
                        marks.append(pytest.mark.skipif(_DK_MISSING is not None, reason=str(_DK_MISSING)))
                    suffix = "-cuda" if device == "cuda" else ""
                    out.append(pytest.param(case_name, method, dtype, device, marks=marks,
                                            id=f"{case_name}-{method}-{_DTYPE_IDS[dtype]}{suffix}"))
    return out


@pytest.mark.parametrize("case_name, method, dtype, device", _params())
def test_consensus_step(benchmark, case_name, method, dtype, device):
    case = get_case(case_name)
    B, A, W = make_inputs(case, dtype, device, seed=0)
    if method in _ON_HOST:
        W = W.cpu()
    fn = METHODS[method][0]
    benchmark.group = f"{case_name}-{_DTYPE_IDS[dtype]}-{device}"
    benchmark.extra_info.update(case=case_name, method=method, device=device, N=case.N, L=case.L, d=case.d,
                                k=case.k, r=case.r, threads=torch.get_num_threads())

    if device == "cuda":
        # pytest-benchmark reads a host clock: wait for the device so the time covers the kernels.
        def step():
            out = fn(B, A, W, case.r)
            torch.cuda.synchronize()
            return out
    else:
        def step():
            return fn(B, A, W, case.r)

    with torch.inference_mode():
        B_new, A_new = benchmark(step)
    assert B_new.shape == (case.N, case.L, case.d, case.r)
    assert A_new.shape == (case.N, case.L, case.r, case.k)
    assert torch.isfinite(B_new).all() and torch.isfinite(A_new).all()
