"""Every consensus-TSVD method side by side, in one process, on the same inputs.

    python -m bench.compare --cases tiny,small [--device cpu|cuda] [--dtype float32] [--reps N]
                            [--budget 10] [--out bench/out]

For each case: one set of inputs (``bench.cases.make_inputs``), one float64 optimality oracle, then
every method in turn: warm-up, then the median and inter-quartile range of many timed repetitions
(``time.perf_counter`` on CPU; ``torch.cuda.Event`` pairs on CUDA, with the L2 cache flushed before
each repetition). A method whose full run does not fit ``--budget`` seconds times ``--min-reps``
repetitions runs on the first ``l`` layers only and is scaled by ``L / l`` ("extrapolated").

Prints one table per case, appends one JSON row per (case, method) to ``<out>/results.jsonl`` and
draws ``<out>/compare_<device>_<dtype>.png`` when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import baselines as bl
from .cases import CASES, Case, factor_bytes, get_case, make_inputs

EXACT = "consensus_tsvd exact"
GRAPHED = "consensus_tsvd exact (CUDA graph)"


# --------------------------------------------------------------------------------------------------
# run conditions


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_dirty() -> Optional[bool]:
    try:
        out = subprocess.run(["git", "status", "--porcelain"],
                             cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def run_conditions(device: torch.device, dk, dk_error: Optional[str]) -> dict:
    """Everything a number needs next to it: device, versions, commit, threads, date, command."""
    info = {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "decaf_kernels": (getattr(dk, "__version__", None) or _version("decaf-kernels")) if dk is not None else None,
        "decaf_kernels_error": dk_error,
        "git_sha": _git_sha(),
        "git_dirty": _git_dirty(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "bench.compare", *sys.argv[1:]]),
        "hostname": platform.node(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
                                                 "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    if dk is not None:
        try:
            backend = dk.backend_info()
            side = "cuda" if device.type == "cuda" else "cpu"
            info["decaf_backend"] = backend.get(side, backend)
            info["decaf_extension"] = backend.get("extension")
        except Exception as exc:  # a diagnostic must not stop the benchmark
            info["decaf_backend"] = f"backend_info() failed: {exc!r}"
    return info


# --------------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _CacheFlusher:
    """Overwrites a buffer larger than the GPU's L2 before each repetition, so every repetition reads
    its inputs from device memory like a training step does (a no-op on CPU)."""

    def __init__(self, device: torch.device, nbytes: int = 256 << 20):
        self.buf = torch.empty(nbytes // 4, dtype=torch.float32, device=device) if device.type == "cuda" else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.zero_()


@dataclass
class Timing:
    times_ms: list  # one entry per repetition, for the timed layer subset
    layers: int  # layers actually run
    probe_ms: float

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        if len(self.times_ms) < 2:
            return 0.0
        q = np.percentile(self.times_ms, [25, 75])
        return float(q[1] - q[0])


def _time_once(fn: Callable, args: tuple, device: torch.device, flush: _CacheFlusher):
    """One repetition: (milliseconds, output)."""
    if device.type == "cuda":
        flush()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end), out
    t0 = time.perf_counter()
    out = fn(*args)
    return (time.perf_counter() - t0) * 1e3, out


def time_method(fn: Callable, B, A, W, rank: int, device: torch.device, *, budget_s: float, min_reps: int,
                max_reps: int, warmup: int, min_layers: int, flush: _CacheFlusher):
    """Median-of-many timing of ``fn(B, A, W, rank)``, on a layer subset when the budget demands it.

    1. probe: one untimed call on ``min_layers`` layers (warm-up: kernels compile, buffers allocate),
       then the fastest of up to three timed calls estimates the cost per layer;
    2. choose ``l`` layers: all of them when ``warmup + min_reps`` full runs fit the budget, else as
       many as fit (at least ``min_layers``). A small probe overestimates the cost per layer of fast
       methods (fixed overhead), so the estimate is refined by probing again at the chosen size (up
       to three times) while that says more layers fit. When even ``min_layers`` layers do not fit,
       skip the warm-up (the probe was one) and take ``max(3, budget / probe)`` repetitions at most
       ``min_reps``;
    3. ``warmup`` untimed calls, then repetitions until ``max_reps`` or until the budget is spent and
       the minimum is reached. If that ran on a subset but its median says the full run fits the
       budget after all (the probes hit a busy moment), it is redone on all layers.

    Returns ``(Timing, (B_new, A_new))`` with the outputs of the last repetition (on ``l`` layers).
    """
    L = B.shape[1]
    calls = min_reps + warmup

    def probe(n: int) -> float:
        # min of up to 3 timed calls: one scheduling hiccup must not push a method onto a layer subset
        Bp, Ap = B[:, :n].contiguous(), A[:, :n].contiguous()
        fn(Bp, Ap, W, rank)
        _sync(device)
        best, spent = math.inf, 0.0
        for _ in range(3):
            ms = _time_once(fn, (Bp, Ap, W, rank), device, flush)[0]
            best, spent = min(best, ms), spent + ms / 1e3
            if spent > budget_s / 4:
                break
        return best

    def fitting_layers(per_layer_s: float) -> int:
        if per_layer_s * L * calls <= budget_s:
            return L
        return max(min(min_layers, L), min(L, int(budget_s / (calls * per_layer_s))))

    probed = min(min_layers, L)
    probe_ms = probe(probed)
    per_layer_s = probe_ms / 1e3 / probed
    layers = fitting_layers(per_layer_s)
    for _ in range(3):
        if layers <= probed or probed == L:
            break
        probed = layers
        probe_ms = probe(probed)
        per_layer_s = probe_ms / 1e3 / probed
        layers = fitting_layers(per_layer_s)
    if per_layer_s * layers * calls > budget_s:
        warmup = 0
        min_reps = max(1, min(min_reps, max(3, int(budget_s / (per_layer_s * layers)))))
    timing, out = _repeat(fn, B, A, W, rank, device, layers, warmup, min_reps, max_reps, budget_s, flush, probe_ms)
    if layers < L and timing.median_ms / 1e3 * (L / layers) * (min_reps + warmup) <= budget_s:
        # the probes were unlucky (a busy machine): the measured median says the full run fits after all
        del out
        timing, out = _repeat(fn, B, A, W, rank, device, L, warmup, min_reps, max_reps, budget_s, flush, probe_ms)
    return timing, out


def _repeat(fn, B, A, W, rank, device, layers, warmup, min_reps, max_reps, budget_s, flush, probe_ms):
    if layers == B.shape[1]:
        Bs, As = B, A
    else:
        Bs, As = B[:, :layers].contiguous(), A[:, :layers].contiguous()
    for _ in range(warmup):
        fn(Bs, As, W, rank)
    _sync(device)
    times = []
    out = None
    t_start = time.perf_counter()
    while len(times) < max_reps:
        ms, out = _time_once(fn, (Bs, As, W, rank), device, flush)
        times.append(ms)
        if len(times) >= min_reps and time.perf_counter() - t_start >= budget_s:
            break
    return Timing(times, layers, probe_ms), out


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, reps: int = 10) -> float:
    """Bytes per second of a large same-device copy (read + write counted), median of ``reps``."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    flush = _CacheFlusher(device)
    for _ in range(2):
        dst.copy_(src)
    _sync(device)
    times = [_time_once(dst.copy_, (src,), device, flush)[0] for _ in range(reps)]
    return 2 * n * 4 / (statistics.median(times) / 1e3)


# --------------------------------------------------------------------------------------------------
# the methods


@dataclass
class Method:
    name: str
    fn: Optional[Callable]  # fn(B, A, W, rank) -> (B_new, A_new); None = unavailable
    source: str  # "decaf_kernels" | "torch"
    notes: str = ""
    unavailable: str = ""


class _HostW:
    """W copied to the host once per tensor: the library ops read W's structure on the host, and a CPU W
    spares them a device-to-host copy (a synchronisation) on every call, as a training loop would."""

    def __init__(self):
        self._key, self._val = None, None

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        if W.device.type == "cpu":
            return W
        key = (id(W), W.data_ptr(), W._version)
        if key != self._key:
            self._key, self._val = key, W.cpu()
        return self._val


class _Graphed:
    """consensus_tsvd exact replayed from a CUDA graph (decaf_kernels.CapturedConsensus), captured once per input
    tensors (the first, untimed call on new tensors captures; later calls replay)."""

    def __init__(self, dk, host_w):
        self.dk, self.host_w = dk, host_w
        self._key, self._step = None, None

    def __call__(self, B, A, W, rank):
        key = (B.data_ptr(), A.data_ptr(), tuple(B.shape), rank, id(W))
        if key != self._key:
            self._step = None
            torch.cuda.empty_cache()
            self._step = self.dk.CapturedConsensus(B, A, self.host_w(W), rank, validate=False)
            self._key = key
        return self._step.replay()


def methods_for(dk, dk_error: Optional[str], seed: int, validate: bool, device: torch.device = torch.device("cpu")) -> list:
    out = []
    val = f"validate={validate}"
    if dk is not None and hasattr(dk, "consensus_tsvd"):
        gen = torch.Generator().manual_seed(seed)  # CPU generator: the op draws one seed from it per call
        host_w = _HostW()

        def exact(B, A, W, rank):
            return dk.consensus_tsvd(B, A, host_w(W), rank, method="exact", validate=validate)

        def randomized(B, A, W, rank):
            return dk.consensus_tsvd(B, A, host_w(W), rank, method="randomized", generator=gen, validate=validate)

        def mix(B, A, W, rank):
            return dk.mix_factors(B, W, validate=validate), dk.mix_factors(A, W, validate=validate)

        out += [
            Method(EXACT, exact, "decaf_kernels", f"{val}; W on the host"),
            Method("consensus_tsvd randomized", randomized, "decaf_kernels",
                   f"oversample=8, power_iters=2, seeded; {val}"),
        ]
        if device.type == "cuda" and hasattr(dk, "CapturedConsensus"):
            out.append(Method(GRAPHED, _Graphed(dk, host_w), "decaf_kernels",
                              "exact, replayed from a CUDA graph (CapturedConsensus); no value checks"))
        tail = [Method("mix_factors (DLoRA)", mix, "decaf_kernels", f"not a TSVD: B and A mixed separately; {val}")]
    else:
        why = dk_error or "decaf_kernels has no consensus_tsvd"
        out += [Method(EXACT, None, "decaf_kernels", unavailable=why),
                Method("consensus_tsvd randomized", None, "decaf_kernels", unavailable=why)]
        tail = [Method("mix_factors (DLoRA)", None, "decaf_kernels", unavailable=why)]
    out += [
        Method("factored_cholesky", bl.factored_cholesky, "torch", "Cholesky-QR of Grams + linalg.svd of core"),
        Method("factored_householder", bl.factored_householder, "torch", "linalg.qr + linalg.svd of core"),
        Method("dense_svd_lowrank", bl.dense_svd_lowrank, "torch", "dense M, svd_lowrank(q=r+8, niter=2)"),
        Method("dense_svd", bl.dense_svd, "torch", "dense M, linalg.svd"),
    ]
    out += tail
    out.append(Method("dlora_mix (torch)", bl.dlora_mix, "torch", "not a TSVD: tensordot of W with B and A"))
    return out


# --------------------------------------------------------------------------------------------------
# one case


@dataclass
class Row:
    case: str
    method: str
    source: str
    time_ms: Optional[float] = None
    iqr_ms: Optional[float] = None
    min_ms: Optional[float] = None
    reps: int = 0
    layers_timed: int = 0
    extrapolated: bool = False
    speedup_of_exact: Optional[float] = None
    opt_error: Optional[float] = None
    gb_per_s: Optional[float] = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


def oracle_pairs(case: Case, n_layers: int) -> list:
    """All agents (N <= 8) or four spread ones, times the first ``n_layers`` layers."""
    agents = list(range(case.N)) if case.N <= 8 else sorted({0, case.N // 3, (2 * case.N) // 3, case.N - 1})
    layers = list(range(max(1, min(n_layers, case.L))))
    return [(i, layer) for layer in layers for i in agents]


def run_case(case: Case, methods: list, args, device: torch.device, dtype: torch.dtype, bandwidth: float,
             flush: _CacheFlusher) -> list:
    B, A, W = make_inputs(case, dtype, device, args.seed)
    t0 = time.perf_counter()
    oracle = bl.OptimalityOracle(B, A, W, case.r, pairs=oracle_pairs(case, args.oracle_layers))
    oracle_s = time.perf_counter() - t0
    nbytes = factor_bytes(case, dtype)
    rows = []
    for m in methods:
        row = Row(case.name, m.name, m.source, notes=m.notes)
        if m.fn is None:
            row.notes = f"unavailable: {m.unavailable}"
            rows.append(row)
            continue
        try:
            with torch.inference_mode():
                timing, out = time_method(m.fn, B, A, W, case.r, device, budget_s=args.budget,
                                          min_reps=args.min_reps, max_reps=args.reps, warmup=args.warmup,
                                          min_layers=args.min_layers, flush=flush)
            scale = case.L / timing.layers
            row.time_ms = timing.median_ms * scale
            row.iqr_ms = timing.iqr_ms * scale
            row.min_ms = min(timing.times_ms) * scale
            row.reps = len(timing.times_ms)
            row.layers_timed = timing.layers
            row.extrapolated = timing.layers < case.L
            row.gb_per_s = nbytes / (row.time_ms / 1e3) / 1e9
            if row.extrapolated:
                row.notes = f"extrapolated from {timing.layers}/{case.L} layers; " + row.notes
            try:
                row.opt_error = oracle.error(*out)
            except Exception as exc:
                row.notes += f"; no optimality error: {type(exc).__name__}: {exc}"
            del out
        except Exception as exc:  # one broken method must not hide the others' numbers
            row.notes = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        # one line per method as soon as it is measured: a run stopped midway still leaves its numbers in the log
        print(f"  [{case.name}] {row.method}: {_fmt(row.time_ms, '.4g')} ms{'*' if row.extrapolated else ''}, "
              f"opt err {_fmt(row.opt_error, '.2e')}{'; ' + row.notes if row.notes.startswith(('error', 'unavail')) else ''}",
              flush=True)
    floor = Row(case.name, "floor", "measured", time_ms=nbytes / bandwidth * 1e3, gb_per_s=bandwidth / 1e9,
                notes=f"{nbytes / 1e6:.1f} MB / {bandwidth / 1e9:.1f} GB/s copy bandwidth")
    rows.append(floor)
    exact = next((r for r in rows if r.method == EXACT and r.time_ms), None)
    for r in rows:
        if exact is not None and r.time_ms:
            r.speedup_of_exact = r.time_ms / exact.time_ms
    for r in rows:
        r.extra = {"oracle_pairs": len(oracle.pairs), "oracle_svd": oracle.svd, "oracle_s": round(oracle_s, 2),
                   "truncation_error": oracle.truncation_error(), "bytes": nbytes}
    return rows


def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(case: Case, rows: list, dtype_name: str, device_label: str) -> None:
    nbytes = rows[0].extra.get("bytes", 0)
    print(f"\n== {case.name}: N={case.N} L={case.L} d={case.d} k={case.k} r={case.r} {case.graph} graph, "
          f"{dtype_name} on {device_label}; {nbytes / 1e6:.1f} MB of factors in + out; "
          f"rank-{case.r} truncation drops {rows[0].extra.get('truncation_error', float('nan')):.3f} of ||M||")
    header = f"{'method':<34}{'time ms':>11}{'IQR ms':>10}{'exact x':>9}{'opt err':>10}{'GB/s':>8}  notes"
    print(header)
    print("-" * len(header))
    for r in rows:
        t = _fmt(r.time_ms, ".3f" if (r.time_ms or 0) < 10 else ".1f")
        if r.extrapolated:
            t += "*"
        print(f"{r.method:<34}{t:>11}{_fmt(r.iqr_ms, '.3f'):>10}{_fmt(r.speedup_of_exact, '.2f'):>9}"
              f"{_fmt(r.opt_error, '.1e'):>10}{_fmt(r.gb_per_s, '.2f'):>8}  "
              f"{'' if r.method == 'floor' or not r.reps else f'{r.reps} reps; '}{r.notes}")
    print("  * extrapolated from a layer subset. 'exact x' = this method's time / consensus_tsvd exact's "
          "(> 1: exact is faster).")


def write_plot(all_rows: list, case_names: list, path: Path, title: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: no plot written (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = list(dict.fromkeys(r.method for r in all_rows))
    xs = {name: i for i, name in enumerate(case_names)}
    for m in methods:
        pts = [(xs[r.case], r.time_ms, r.extrapolated) for r in all_rows if r.method == m and r.time_ms]
        if not pts:
            continue
        style = dict(linestyle="--", color="black") if m == "floor" else {}
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m, **style)
        ext = [p for p in pts if p[2]]
        if ext:
            ax.plot([p[0] for p in ext], [p[1] for p in ext], linestyle="none", marker="o", markersize=11,
                    markerfacecolor="none", color=line.get_color())
    ax.set_yscale("log")
    ax.set_xticks(range(len(case_names)))
    ax.set_xticklabels(case_names)
    ax.set_xlabel("case")
    ax.set_ylabel("median time per consensus step (ms, log)")
    ax.set_title(title + "\n(hollow ring: extrapolated from a layer subset)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------------
# main

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


_SLOW = {"dense_svd", "factored_householder"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="tiny,small", help=f"comma list from {','.join(CASES)} (default tiny,small)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--reps", type=int, default=200, help="most timed repetitions per method (default 200)")
    p.add_argument("--min-reps", type=int, default=5, help="fewest timed repetitions per method (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds of timed repetitions per method and case (default 10)")
    p.add_argument("--min-layers", type=int, default=1,
                   help="fewest layers a subset run keeps (default 1)")
    p.add_argument("--oracle-layers", type=int, default=2,
                   help="layers (from the first) whose (agent, layer) pairs the float64 oracle checks (default 2)")
    p.add_argument("--methods", default=None, help="comma list of method names to run (default: all); consensus_tsvd exact always "
                        "runs, it is the reference of the speed-up column")
    p.add_argument("--skip-slow-above", default=None, metavar="CASE",
                   help=f"do not run {', '.join(sorted(_SLOW))} on cases larger than CASE (they take seconds per call)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validate", action="store_true", help="time the library ops with validate=True")
    p.add_argument("--out", default="bench/out", help="folder for results.jsonl and the plot")
    args = p.parse_args(argv)
    if args.reps < 1 or args.min_reps < 1 or args.min_reps > args.reps:
        p.error("need 1 <= --min-reps <= --reps")
    if args.min_layers < 1 or args.oracle_layers < 1:
        p.error("--min-layers and --oracle-layers must be >= 1")
    if args.skip_slow_above is not None and args.skip_slow_above not in CASES:
        p.error(f"--skip-slow-above: unknown case {args.skip_slow_above!r}; expected one of {sorted(CASES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cases = [get_case(c.strip()) for c in args.cases.split(",") if c.strip()]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    dtype = _DTYPES[args.dtype]
    dtype_name = str(dtype).replace("torch.", "")
    try:
        import decaf_kernels as dk

        dk_error = None if hasattr(dk, "consensus_tsvd") else "decaf_kernels has no consensus_tsvd yet"
    except Exception as exc:
        dk, dk_error = None, f"import decaf_kernels failed: {type(exc).__name__}: {exc}"
    env = run_conditions(device, dk, dk_error)
    methods = methods_for(dk, dk_error, args.seed, args.validate, device)
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")}
        unknown = wanted - {m.name for m in methods}
        if unknown:
            print(f"unknown methods {sorted(unknown)}; known: {[m.name for m in methods]}", file=sys.stderr)
            return 2
        methods = [m for m in methods if m.name in wanted or m.name == EXACT]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    bandwidth = copy_bandwidth(device)
    flush = _CacheFlusher(device)
    label = f"{env['device_name']} ({device.type}, {env['threads']} threads)"
    print(f"bench.compare on {label}; torch {env['torch']}, triton {env['triton']}, numpy {env['numpy']}, "
          f"decaf_kernels {env['decaf_kernels']} (git {env['git_sha'] or 'unknown'}), {env['date']}")
    if dk_error:
        print(f"decaf_kernels methods unavailable: {dk_error}")
    elif isinstance(env.get("decaf_backend"), dict):
        print("decaf_kernels backend: consensus_tsvd small core = "
              f"{env['decaf_backend'].get('consensus_tsvd.small_core', '?')}")
    print(f"copy bandwidth (floor): {bandwidth / 1e9:.1f} GB/s; budget {args.budget:g} s per method, "
          f"{args.min_reps}..{args.reps} reps, {'CUDA events, L2 flushed' if device.type == 'cuda' else 'perf_counter'}")
    if load_before and load_before[0] > 0.5 * os.cpu_count():
        print(f"note: load average {load_before[0]:.2f} on {os.cpu_count()} CPUs before the run: other processes "
              "compete for the cores, CPU timings will be noisy")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    all_rows = []
    wall0 = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        case_methods = methods
        if args.skip_slow_above is not None and list(CASES).index(case.name) > list(CASES).index(args.skip_slow_above):
            case_methods = [m if m.name not in _SLOW else Method(m.name, None, m.source, unavailable=(
                f"not run above '{args.skip_slow_above}' (--skip-slow-above): seconds per call")) for m in methods]
        rows = run_case(case, case_methods, args, device, dtype, bandwidth, flush)
        all_rows += rows
        print_table(case, rows, dtype_name, label)
        print(f"  ({time.perf_counter() - t0:.1f} s for this case, oracle: {rows[0].extra['oracle_pairs']} "
              f"(agent, layer) pairs, {rows[0].extra['oracle_svd']} float64 SVD)")
        with results.open("a") as f:
            for r in rows:
                rec = {**{k: v for k, v in asdict(r).items() if k != "extra"}, **r.extra,
                       "N": case.N, "L": case.L, "d": case.d, "k": case.k, "r": case.r, "graph": case.graph,
                       "dtype": dtype_name, "seed": args.seed, "budget_s": args.budget,
                       "copy_bandwidth_gb_s": bandwidth / 1e9, "load_avg_before": load_before[0] if load_before else None,
                       **env}
                f.write(json.dumps(rec) + "\n")
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\nwrote {len(all_rows)} rows to {results}; total {time.perf_counter() - wall0:.1f} s"
          + (f"; load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}" if load_before else ""))
    png = out_dir / f"compare_{device.type}_{dtype_name}.png"
    missing = write_plot(all_rows, [c.name for c in cases], png,
                         f"consensus TSVD, {dtype_name}, {env['device_name']} ({env['date'][:10]})")
    print(missing or f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
