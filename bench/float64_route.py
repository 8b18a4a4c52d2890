"""float64 consensus: the Gram route vs Householder QR, time and accuracy side by side in one process.

    python -m bench.float64_route [--cases tiny,small] [--reps 5] [--out bench/out]

The Gram route squares the condition number (float64 Grams resolve directions of M_i down to ~1e-8 of the
largest); the QR route keeps LAPACK's accuracy. For each benchmark case (ring graph, float64 factors): the median
time of both routes (``decaf_kernels._consensus.consensus_exact`` with ``float64_qr`` False / True, everything
else shared), and, on a graded problem (each agent's B with singular values 1 ... 1e-12 in random bases, d = 64),
the error ||B'A' - M_r|| / ||M|| of both against a float64 LAPACK SVD of the dense M.
Results: a printed table and JSON rows with the run conditions in ``<out>/float64_route.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import decaf_kernels as dk
from decaf_kernels._consensus import consensus_exact
from decaf_kernels._plan import plan

from .auto_method import timed
from .cases import get_case, make_inputs, ring_mixing
from .compare import run_conditions


def graded_error(float64_qr: bool, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    N, d, k, r = 4, 64, 48, 6
    sv = torch.logspace(0, -12, r, dtype=torch.float64)
    B = torch.stack([torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))[0] * sv for _ in range(N)])
    A = torch.stack([torch.linalg.qr(torch.randn(k, r, generator=gen, dtype=torch.float64))[0].T for _ in range(N)])
    W = ring_mixing(N)
    Bn, An = consensus_exact(B[:, None], A[:, None], plan(W, torch.device("cpu"), r, 0.5), r, float64_qr=float64_qr)[:2]
    M = np.einsum("ij,jdr,jrk->idk", W.numpy(), B.numpy(), A.numpy())
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    Mr = (U[..., :r] * S[..., None, :r]) @ Vh[..., :r, :]
    return float(np.linalg.norm((Bn[:, 0] @ An[:, 0]).numpy() - Mr) / np.linalg.norm(M))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="tiny,small")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args(argv)
    cond = run_conditions(torch.device("cpu"), dk, None)
    cond["command"] = "python -m bench.float64_route " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{cond['device_name']}, torch {cond['torch']}, {cond['threads']} threads, float64, {cond['date']}")
    errs = {qr: graded_error(qr) for qr in (False, True)}
    print(f"graded spectrum 1..1e-12 (N4 d64 k48 r6 ring): error gram {errs[False]:.1e}, householder {errs[True]:.1e}")
    print(f"{'case':>8} {'gram ms':>10} {'householder ms':>15} {'ratio':>7}", flush=True)
    with open(out / "float64_route.jsonl", "a") as f:
        for name in args.cases.split(","):
            case = get_case(name)
            B, A, W = make_inputs(case, dtype=torch.float64)
            pl = plan(W, torch.device("cpu"), case.r, 0.5)
            t = {qr: 1e3 * timed(lambda: consensus_exact(B, A, pl, case.r, float64_qr=qr), torch.device("cpu"),
                                 args.reps, budget=float("inf"))[0] for qr in (False, True)}
            print(f"{name:>8} {t[False]:>10.1f} {t[True]:>15.1f} {t[True] / t[False]:>7.2f}", flush=True)
            f.write(json.dumps({"case": name, "gram_ms": t[False], "householder_ms": t[True],
                                "graded_error_gram": errs[False], "graded_error_householder": errs[True],
                                **cond}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
