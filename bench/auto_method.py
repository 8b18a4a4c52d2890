"""Exact vs randomized consensus_tsvd side by side: the measurements behind method="auto".

    python -m bench.auto_method [--device cpu|cuda] [--dtype float32] [--reps 5] [--budget 20]
                                [--out bench/out]

The exact method's cost grows with m = deg * r (its core is m x m); the randomized one sketches with
rank + oversample columns. The worst case for exact is a dense W whose rows all differ (every agent has all N
agents as neighbours and no two agents share a core), so the grid uses such a W (random positive weights, rows
normalised) for N agents at several d = k and r. Each row: median time of both methods in the same process on
the same inputs, their ratio, and the excess over the optimal rank-r residual relative to ||M|| (float64 oracle
on the first layer and up to 4 agents, computed factored), so the speed-up randomized buys is shown next to the
accuracy it costs.
Results: a printed table and JSON rows (with device, versions, commit) in ``<out>/auto_method.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import decaf_kernels as dk
from decaf_kernels._consensus import auto_method  # the rule these numbers are set against

from .compare import run_conditions

GRID = [  # (N, L, d, r)
    (8, 2, 768, 8), (12, 2, 768, 8), (16, 2, 768, 8), (24, 2, 768, 8), (32, 1, 768, 8), (48, 1, 768, 8),
    (64, 1, 768, 8), (80, 1, 768, 8),
    (8, 2, 768, 16), (16, 1, 768, 16), (24, 1, 768, 16), (32, 1, 768, 16), (48, 1, 768, 16), (64, 1, 768, 16),
    (8, 1, 4096, 16), (16, 1, 4096, 16), (32, 1, 4096, 16),
    (24, 2, 256, 8), (16, 2, 256, 16), (24, 1, 256, 16), (32, 1, 256, 16),
]


def dense_distinct_w(N: int, gen: torch.Generator) -> torch.Tensor:
    W = torch.rand(N, N, generator=gen, dtype=torch.float64) + 0.1
    return W / W.sum(1, keepdim=True)


def excess(B2, A2, B, A, W, rank: int, agents: int = 4) -> float:
    """max over the first `agents` agents of (||B'A' - M|| - ||M - M_r||) / ||M|| on layer 0, in float64 and
    factored: M = Bc Ac = Qb C Qa^T (Householder QR of the stacked factors), and B'A' lies in the same spans, so
    ||B'A' - M|| = ||Qb^T B' A' Qa - C|| with no d x k matrix and no cancellation."""
    worst = 0.0
    for i in range(min(agents, B.shape[0])):
        nb = torch.nonzero(W[i]).flatten()
        Bc = torch.cat([W[i, j] * B[j, 0].double().cpu() for j in nb], 1)
        Ac = torch.cat([A[j, 0].double().cpu() for j in nb], 0)
        Qb, Rb = torch.linalg.qr(Bc)
        Qa, Ra = torch.linalg.qr(Ac.T)
        C = Rb @ Ra.T
        s = torch.linalg.svdvals(C)
        P = (Qb.T @ B2[i, 0].double().cpu()) @ (A2[i, 0].double().cpu() @ Qa)
        nM = float(s.norm())
        worst = max(worst, (float((P - C).norm()) - float(s[rank:].norm())) / nM)
    return worst


def timed(fn, device, reps: int, budget: float):
    fn()  # warm-up (compilation, caches)
    ts = []
    start = time.perf_counter()
    while len(ts) < reps and (len(ts) < 2 or time.perf_counter() - start < budget):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per method and row (at least 2 reps)")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--d", type=int, default=0, help="only the grid rows with this d = k (0: all)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default); 1 keeps timings stable on a shared machine "
                         "(set OMP_NUM_THREADS=1 too, for the C++ kernels)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cond = run_conditions(device, dk, None)
    cond["command"] = "python -m bench.auto_method " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cond['device_name']}, torch {cond['torch']}, {cond['threads']} threads, {args.dtype}, {cond['date']}",
          flush=True)
    hdr = f"{'N':>3} {'L':>2} {'d=k':>5} {'r':>3} {'m':>5} {'exact ms':>10} {'rand ms':>10} {'exact/rand':>10} " \
          f"{'exact excess':>12} {'rand excess':>12} {'auto':>10}"
    print(hdr, flush=True)
    with open(out / "auto_method.jsonl", "a") as f:
        for N, L, d, r in GRID:
            if args.d and d != args.d:
                continue
            gen = torch.Generator().manual_seed(N * 1000 + d + r)
            B = (torch.randn(N, L, d, r, generator=gen) / d**0.5).to(device, dtype)
            A = (torch.randn(N, L, r, d, generator=gen) / d**0.5).to(device, dtype)
            W = dense_distinct_w(N, gen)
            te, (Be, Ae) = timed(lambda: dk.consensus_tsvd(B, A, W, method="exact"), device, args.reps, args.budget)
            tr, (Br, Ar) = timed(lambda: dk.consensus_tsvd(B, A, W, method="randomized"), device, args.reps,
                                 args.budget)
            ee, er = excess(Be, Ae, B, A, W, r), excess(Br, Ar, B, A, W, r)
            pick = auto_method(d, d, N * r, 2, device.type)
            print(f"{N:>3} {L:>2} {d:>5} {r:>3} {N * r:>5} {te * 1e3:>10.1f} {tr * 1e3:>10.1f} {te / tr:>10.2f} "
                  f"{ee:>12.1e} {er:>12.1e} {pick:>10}", flush=True)
            f.write(json.dumps({"N": N, "L": L, "d": d, "k": d, "r": r, "m": N * r, "dtype": args.dtype,
                                "exact_ms": te * 1e3, "randomized_ms": tr * 1e3, "exact_excess": ee,
                                "randomized_excess": er, "auto": pick, **cond}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
