"""Times the CUDA small-core solver (_C_cuda.small_core_block, one problem per thread block) against the PyTorch
fallback (reference.small_core_torch), and compares their singular values.

    python bench/small_core_timing.py [--reps 50] [--target float64]

Random Grams (Gb = Bc^T Bc, Ga = Ac Ac^T of Gaussian factors, rank r = m // 3), CUDA events, median of
`reps` timed launches after warm-up; prints one table row per (batch, m).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

CASES = [(2048, 48), (384, 24), (256, 64), (128, 128)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--target", default="float64", choices=["float64", "float32"])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--skip-torch", action="store_true", help="do not time the (slow) PyTorch fallback")
    ap.add_argument("--build", default="nvcc", choices=["nvcc", "nvrtc"],
                    help="the kernel built by nvcc (_C_cuda) or compiled at run time by NVRTC (CuPy)")
    ap.add_argument("--cases", default=None, help="comma list of batch x m, e.g. 2048x48,384x24 (default: all)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("small_core_timing: no CUDA device available (torch.cuda.is_available() is False); nothing to time.",
              file=sys.stderr)
        return 2
    try:
        import decaf_kernels  # noqa: F401
    except ImportError:  # run from a source checkout: python bench/small_core_timing.py
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from decaf_kernels import _backend
    from decaf_kernels.reference import small_core_torch

    os.environ["DECAF_CUDA_SMALL_CORE"] = args.build  # the op's own selection, which names what is missing
    try:
        C = _backend._cuda_small_core_block()
    except RuntimeError as err:
        print(f"small_core_timing: {err}", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)

    def timed(fn, reps=None) -> float:
        for _ in range(3 if reps is None else 1):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps if reps is None else reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)

    print(f"# {torch.cuda.get_device_name()}  build={args.build}  target={args.target}  alpha={args.alpha}  median of {args.reps} (torch: of 5) (ms)")
    print(f"{'batch':>6} {'m':>4} {'rank':>4} | {'block':>9} {'torch':>9} | {'torch/block':>11} | "
          f"{'max|S_blk-S_torch|/S1':>22}")
    cases = CASES if not args.cases else [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    for batch, m in cases:
        rank = max(1, m // 3)
        B = torch.randn(batch, 2 * m, m, dtype=torch.float64, device=dev, generator=gen)
        A = torch.randn(batch, m, 2 * m, dtype=torch.float64, device=dev, generator=gen)
        gb = (B.mT @ B).contiguous()
        ga = (A @ A.mT).contiguous()
        x = torch.empty(batch, m, rank, dtype=torch.float64, device=dev)
        y = torch.empty(batch, rank, m, dtype=torch.float64, device=dev)
        s = torch.empty(batch, rank, dtype=torch.float64, device=dev)
        info = torch.empty(batch, dtype=torch.int32, device=dev)
        wd = C.small_core_block_work_doubles(m)
        work = torch.empty(max(1, batch * wd), dtype=torch.float64, device=dev)
        stream = torch.cuda.current_stream().cuda_stream

        def block():
            C.small_core_block(gb.data_ptr(), ga.data_ptr(), batch, m, rank, args.alpha, x.data_ptr(), y.data_ptr(),
                               s.data_ptr(), info.data_ptr(), work.data_ptr() if wd else 0, args.target, stream)

        def fallback():
            return small_core_torch(gb, ga, rank, args.alpha)

        tb = timed(block)
        tr = float("nan") if args.skip_torch else timed(fallback, reps=min(args.reps, 5))  # the fallback is slow (eigh + svd); fewer repetitions
        diff = float("nan") if args.skip_torch else ((s - fallback()[2]).abs().max() / s.abs().max()).item()
        print(f"{batch:>6} {m:>4} {rank:>4} | {tb:>9.3f} {tr:>9.3f} | {tr / tb:>11.1f} | {diff:>22.2e} | "
              f"info: min {int(info.min())} mean {info.double().mean().item():.1f} max {int(info.max())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
