"""Where the time of one consensus_tsvd call goes, kernel by kernel (torch.profiler).

    python -m bench.profile --case large [--dtype float32] [--method exact] [--calls 5] [--validate]

Runs the op ``--warmup`` times untimed, then ``--calls`` times under ``torch.profiler`` and prints one row per
kernel (or CPU op on a CPU-only machine): total time per call, number of launches per call and share, plus the
CUDA-event time of the whole call measured separately (median of ``--reps``). Use it to see which building block
(Gram, assembly, small core, reconstruction, glue) stands between a measured time and the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import decaf_kernels as dk
from .cases import factor_bytes, get_case, make_inputs

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _call(B, A, W, rank, args):
    return dk.consensus_tsvd(B, A, W, rank, method=args.method, validate=args.validate)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="small")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--method", default="exact", choices=["exact", "randomized", "auto"])
    p.add_argument("--validate", action="store_true")
    p.add_argument("--w-on-host", action="store_true", help="pass W as a CPU tensor (no device sync for the graph)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    case = get_case(args.case)
    dtype = _DTYPES[args.dtype]
    B, A, W = make_inputs(case, dtype=dtype, device=device)
    W = W.to(torch.float64)
    if args.w_on_host:
        W = W.cpu()
    rank = case.r
    for _ in range(args.warmup):
        _call(B, A, W, rank, args)
    cuda = device.type == "cuda"
    times = []
    for _ in range(args.reps):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            s.record()
            _call(B, A, W, rank, args)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            import time

            t0 = time.perf_counter()
            _call(B, A, W, rank, args)
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.calls):
            _call(B, A, W, rank, args)
        if cuda:
            torch.cuda.synchronize()
    nbytes = factor_bytes(case, dtype)
    print(f"# {case.name} {case.label} {args.dtype} method={args.method} validate={args.validate} on "
          f"{torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}")
    print(f"# whole call: median {med:.3f} ms of {args.reps} (min {min(times):.3f}); {nbytes / 1e6:.1f} MB must move")
    rows = []
    if cuda:
        # kernels only (DeviceType.CUDA events); the CPU ops that launched them would count their time twice
        agg: dict = {}
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                t, n = agg.get(ev.name, (0.0, 0))
                agg[ev.name] = (t + ev.device_time_total / 1e3, n + 1)
        rows = [(t / args.calls, n / args.calls, name) for name, (t, n) in agg.items()]
    else:
        for ev in prof.key_averages():
            if ev.self_cpu_time_total > 0:
                rows.append((ev.self_cpu_time_total / 1e3 / args.calls, ev.count / args.calls, ev.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows) if cuda else None
    print(f"{'ms/call':>9} {'calls':>6} {'share':>6}  kernel" if cuda else f"{'ms/call':>9} {'calls':>6}  op (self CPU)")
    for t, n, key in rows[: args.rows]:
        share = f"{100 * t / total:5.1f}%" if total else ""
        print(f"{t:9.3f} {n:6.1f} {share:>6}  {key[:110]}")
    if cuda:
        print(f"{total:9.3f}        sum of device time per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
