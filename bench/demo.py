"""DLoRA vs DeCAF gossip on the built-in cases: ``python -m bench.demo [--cases tiny,small] [--rounds 20]``.

What is shown. N agents on a ring each hold LoRA factors (B_i, A_i) for L layers; the agents have
DIFFERENT adapters (a shared component plus per-agent noise of comparable size), as after a few local
training steps. One gossip round of DLoRA mixes B and A separately, so agent i ends up with
(sum_j W_ij B_j)(sum_j W_ij A_j), which is not the mixed product M_i = sum_j W_ij B_j A_j: the gap,
relative to ||M_i||, is DLoRA's "consensus interference". DeCAF (decaf_kernels.consensus_tsvd) replaces
the factors by the best rank-r approximation of M_i, so its gap is the rank-r truncation error, the
smallest any rank-r factorisation can reach (it is compared with a float64 LAPACK truncated SVD in the
"optimality error" column, which should sit at float32 rounding). Communication is the same for both
(each agent sends its r-column factors). The table per case gives, for one round: the gap, the
optimality error, the consensus distance of the products before and after (RMS over agents of
||B_i A_i - mean_j B_j A_j||, mean over layers, decaf_kernels.consensus_distance) and the time of a
round. Then ~20 rounds of pure gossip (no training) of each method, printing the consensus distance
and how far the agents' mean product has drifted from the initial mean product; both methods contract,
the numbers are what this run measured.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from . import baselines as bl
from .cases import Case, get_case, mixing_matrix

SHARED_WEIGHT = 1.0  # the common adapter every agent starts from
NOISE_WEIGHT = 0.8  # the per-agent part, same scale as the shared one: the adapters really differ


def heterogeneous_inputs(case: Case, seed: int = 0, dtype=torch.float32):
    """``B_i = B0 + 0.8 E_i``, ``A_i = A0 + 0.8 F_i``: one shared adapter plus a different one per agent.

    Entries are Gaussian, scaled by ``1/sqrt(d)`` (B) and ``1/sqrt(k)`` (A); B's columns decay as
    ``0.7**c`` so every product has a spread of singular values.
    """
    gen = torch.Generator().manual_seed(seed)
    N, L, d, k, r = case.N, case.L, case.d, case.k, case.r
    decay = 0.7 ** torch.arange(r, dtype=torch.float32)
    B0 = torch.randn(1, L, d, r, generator=gen)
    A0 = torch.randn(1, L, r, k, generator=gen)
    B = SHARED_WEIGHT * B0 + NOISE_WEIGHT * torch.randn(N, L, d, r, generator=gen)
    A = SHARED_WEIGHT * A0 + NOISE_WEIGHT * torch.randn(N, L, r, k, generator=gen)
    B = B * decay / math.sqrt(d)
    A = A / math.sqrt(k)
    W = mixing_matrix(case.graph, N, dtype=torch.float64)
    return B.to(dtype), A.to(dtype), W.to(dtype)


def product_gap(B, A, W, B_new, A_new, dk, layers) -> float:
    """Mean over agents and ``layers`` of ``||M_i - B'_i A'_i||_F / ||M_i||_F`` (dense, one layer at a time)."""
    vals = []
    for layer in layers:
        M = dk.mix_products(B[:, layer:layer + 1], A[:, layer:layer + 1], W).double()
        P = (B_new[:, layer:layer + 1].double() @ A_new[:, layer:layer + 1].double())
        num = torch.linalg.matrix_norm(M - P).flatten()
        den = torch.linalg.matrix_norm(M).flatten()
        vals += (num / den).tolist()
    return statistics.fmean(vals)


def mean_product_drift(B, A, P0_mean) -> float:
    """``||mean_i B_i A_i - P0||_F / ||P0||_F`` over all layers (dense, layer by layer)."""
    num = den = 0.0
    for layer in range(B.shape[1]):
        P = (B[:, layer].double() @ A[:, layer].double()).mean(0)
        num += float(torch.linalg.matrix_norm(P - P0_mean[layer]) ** 2)
        den += float(torch.linalg.matrix_norm(P0_mean[layer]) ** 2)
    return math.sqrt(num / den)


def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_case(case: Case, dk, rounds: int, every: int, seed: int, metric_layers: int) -> None:
    t_case = time.perf_counter()
    B, A, W = heterogeneous_inputs(case, seed)
    r = case.r
    layers = range(min(metric_layers, case.L))
    cd0 = float(dk.consensus_distance(B, A).mean())
    norm_P = statistics.fmean(torch.linalg.matrix_norm((B[:, layer].double() @ A[:, layer].double())).mean().item()
                              for layer in layers)

    def dlora(B, A):
        return dk.mix_factors(B, W), dk.mix_factors(A, W)

    def decaf(B, A):
        return dk.consensus_tsvd(B, A, W, r, method="exact")

    print(f"\n=== case {case.name}: N={case.N} agents on a {case.graph}, L={case.L} layers of "
          f"{case.d}x{case.k}, rank r={r}, float32, CPU ({torch.get_num_threads()} threads)")
    print(f"    mean ||B_i A_i||_F = {norm_P:.3f}; gap and optimality measured on layers 0..{len(layers) - 1} "
          f"(all {case.N} agents), consensus distance on all layers")
    oracle = bl.OptimalityOracle(B, A, W, r, pairs=[(i, layer) for layer in layers for i in range(case.N)])
    best = oracle.truncation_error(reduce="mean")
    reps = 7
    header = (f"    {'method':<22}{'gap ||M-B`A`||/||M||':>22}{'optimality err':>16}"
              f"{'consensus dist before -> after':>33}{'ms / round':>12}")
    print(header)
    print("    " + "-" * (len(header) - 4))
    with torch.inference_mode():
        for name, step in (("DLoRA (mix_factors)", dlora), ("DeCAF (consensus_tsvd)", decaf)):
            B1, A1 = step(B, A)
            gap = product_gap(B, A, W, B1, A1, dk, layers)
            opt = oracle.error(B1, A1)
            cd1 = float(dk.consensus_distance(B1, A1).mean())
            ms = median_time(lambda: step(B, A), reps)
            print(f"    {name:<22}{gap:>22.4f}{opt:>16.2e}{cd0:>18.4f} -> {cd1:<12.4f}{ms:>12.2f}")
        print(f"    {'best rank-r (float64)':<22}{best:>22.4f}{0.0:>16.2e}{'':>33}{'':>12}")
        interf = dk.interference(B, A, W, relative=True)[:, : len(layers)]
        print(f"    (cross-check: decaf_kernels.interference(relative=True) for DLoRA = {float(interf.mean()):.4f})")

        # Repeated gossip without training: both contract towards consensus; report what happens.
        P0_mean = [(B[:, layer].double() @ A[:, layer].double()).mean(0) for layer in range(case.L)]
        print(f"\n    {rounds} gossip rounds (no training). dist = consensus distance (mean over layers); "
              f"drift = ||mean_i B_i A_i - initial mean product|| / ||initial mean product||")
        print(f"    {'round':>7}{'DLoRA dist':>14}{'DLoRA drift':>14}{'DeCAF dist':>14}{'DeCAF drift':>14}")
        state = {"DLoRA": (B, A), "DeCAF": (B, A)}
        shown = sorted({0, 1, rounds, *range(every, rounds + 1, every)})
        for t in range(rounds + 1):
            if t > 0:
                state["DLoRA"] = dlora(*state["DLoRA"])
                state["DeCAF"] = decaf(*state["DeCAF"])
            if t in shown:
                cols = []
                for key in ("DLoRA", "DeCAF"):
                    Bt, At = state[key]
                    cols += [float(dk.consensus_distance(Bt, At).mean()), mean_product_drift(Bt, At, P0_mean)]
                print(f"    {t:>7}{cols[0]:>14.2e}{cols[1]:>14.4f}{cols[2]:>14.2e}{cols[3]:>14.4f}")
    print(f"    ({time.perf_counter() - t_case:.1f} s for this case)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo", description="DLoRA vs DeCAF gossip, side by side.")
    p.add_argument("--cases", default="tiny,small")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--every", type=int, default=4, help="print the gossip table every this many rounds")
    p.add_argument("--metric-layers", type=int, default=4,
                   help="layers on which the dense gap and the float64 oracle are computed (default 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        cases = [get_case(c.strip()) for c in args.cases.split(",") if c.strip()]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        import decaf_kernels as dk

        dk.consensus_tsvd  # noqa: B018  (fail here, with a clear message, if the op is not there yet)
    except Exception as exc:
        print(f"decaf_kernels is not usable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    print(__doc__.split("\n\n", 1)[1].strip())
    info = dk.backend_info()
    cpu = info.get("cpu", {})
    print(f"\ndecaf_kernels {getattr(dk, '__version__', '?')}, torch {torch.__version__}; backend on CPU: "
          f"consensus_tsvd small core = {cpu.get('consensus_tsvd.small_core', '?')}; "
          f"gram = {cpu.get('consensus_tsvd.gram', '?')}; triton: {info.get('triton', '?')}")
    for case in cases:
        run_case(case, dk, args.rounds, args.every, args.seed, args.metric_layers)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
