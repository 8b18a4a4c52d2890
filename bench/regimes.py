"""The regime study: where DeCAF's exact product consensus beats DLoRA's factor averaging, over several seeds.

DLoRA's error against the exact mix of products is the weighted covariance of the neighbours' factors,
``sum_j w_j B_j A_j - B_bar A_bar = sum_j w_j (B_j - B_bar)(A_j - A_bar)``: it grows with how far apart the
agents' factors drift. This study varies one factor at a time from the demo's settings (the built-in task,
8 agents on a ring, Dirichlet(0.5), rank 8, 2 local steps x 20 rounds, A shared) and runs decaf and dlora
(and dlora_fa, fedavg, local as references) with several seeds each:

====================  =====================================================================================
factor                levels (everything else as the demo)
====================  =====================================================================================
``local_steps``       2 x 32 rounds, 8 x 8, 32 x 2: the same 64 local steps per agent, communicated more or
                      less often
``heterogeneity``     Dirichlet alpha 0.1, 0.5 (the demo), 10
``graph``             16 agents on a ring vs on the complete graph (local and fedavg ignore the graph: run
                      once)
``a_init``            A shared (the demo) vs drawn independently per agent
``rank``              4, 8 (the demo), 16, with lora_alpha = 2 r (the demo's scale) so only the rank changes
``fused``             not a regime: the one-agent-at-a-time loop vs the fused local steps, whose dropout comes
                      from another stream (same distribution expected)
====================  =====================================================================================

Each (setting, seed, algorithm) is one run, evaluated at its last round only, whose summary is written to
``<results>/runs/<setting>__s<seed>__<algorithm>.json``: the study resumes where it stopped, skips what is done
(a file of another configuration is refused), and can be split over processes (``--shard 0/2``, ``--shard 1/2``
with ``--threads 1`` each). ``--report`` turns the files into a markdown table per factor (mean +- std over
seeds; the decaf - dlora difference paired by seed) and a plot per factor.

    python -m bench.regimes                              # every factor, seeds 0,1,2 (hours on 2 CPU cores)
    python -m bench.regimes --factors rank --seeds 0 --algorithms decaf,dlora
    python -m bench.regimes --report                     # tables on stdout, plots next to the results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

BASE = dict(rounds=20, comm_every=2, agents=8, graph="ring", partition="dirichlet", dirichlet_alpha=0.5,
            rank=8, lora_alpha=16.0, a_init="shared")

# factor -> [(level label, changes to BASE)]; the first element of each level names its setting
FACTORS: Dict[str, List[Tuple[str, dict]]] = {
    "local_steps": [("2", dict(comm_every=2, rounds=32)), ("8", dict(comm_every=8, rounds=8)),
                    ("32", dict(comm_every=32, rounds=2))],
    "heterogeneity": [("0.1", dict(dirichlet_alpha=0.1)), ("0.5", {}), ("10", dict(dirichlet_alpha=10.0))],
    "graph": [("ring-16", dict(agents=16, graph="ring")), ("complete-16", dict(agents=16, graph="complete"))],
    "a_init": [("shared", {}), ("independent", dict(a_init="independent"))],
    "rank": [("4", dict(rank=4, lora_alpha=8.0)), ("8", {}), ("16", dict(rank=16, lora_alpha=32.0))],
    # not a regime: the fused local steps draw dropout from another stream; do the results agree in distribution?
    "fused": [("off", {}), ("on", dict(fused=True))],
}
ALGORITHMS = ["decaf", "dlora", "dlora_fa", "fedavg", "local"]
ONLY = {"fused": ("decaf", "dlora")}  # factors that need only some algorithms
# these never read the graph (no communication, or a server that sees everyone)
GRAPH_FREE = {"local", "fedavg"}
METRICS = [("test_acc_mean", "acc mean"), ("test_acc_min", "acc min"), ("test_acc_avg_model", "acc avg-model"),
           ("consensus_distance_rel", "consensus dist (rel)"), ("interference_mean", "interference (rel)")]
RESULTS = Path("bench/results/regimes")


def setting_name(changes: dict) -> str:
    """A file-name-safe name of the changes from BASE ("base" for none), in a fixed order."""
    if not changes:
        return "base"
    return "_".join(f"{k}-{v}" for k, v in sorted(changes.items()))


def effective_changes(changes: dict, algorithm: str) -> dict:
    """The changes that matter to ``algorithm``: the graph is dropped for those that never read it."""
    if algorithm in GRAPH_FREE:
        return {k: v for k, v in changes.items() if k != "graph"}
    return dict(changes)


def jobs(factors: List[str], seeds: List[int], algorithms: List[str]) -> List[Tuple[dict, int, str]]:
    """Every distinct (changes, seed, algorithm), decaf and dlora first, then by seed, so that a study cut short
    has the main comparison on as many seeds as possible."""
    out, seen = [], set()
    main = [a for a in algorithms if a in ("decaf", "dlora")]
    for group in (main, [a for a in algorithms if a not in main]):
        for seed in seeds:
            for f in factors:
                for _, changes in FACTORS[f]:
                    for alg in (a for a in group if a in ONLY.get(f, group)):
                        eff = effective_changes(changes, alg)
                        key = (setting_name(eff), seed, alg)
                        if key not in seen:
                            seen.add(key)
                            out.append((eff, seed, alg))
    return out


def result_path(results: Path, changes: dict, seed: int, algorithm: str) -> Path:
    return results / "runs" / f"{setting_name(changes)}__s{seed}__{algorithm}.json"


def config_for(changes: dict, seed: int, algorithm: str, out_dir: str, wordnet_path: str | None):
    from decaf_lora import TrainConfig

    values = dict(BASE, **changes)
    extra = {"wordnet_path": wordnet_path} if wordnet_path else {}
    return TrainConfig(algorithm=algorithm, seed=seed, eval_every=values["rounds"], checkpoint_every=0,
                       progress=False, report_to=["none"], out_dir=out_dir, **values, **extra)


def run_one(changes: dict, seed: int, algorithm: str, args) -> dict:
    """Train one run and return its record (summary, per-round consensus and interference, environment)."""
    import torch

    from decaf_lora import Trainer

    cfg = config_for(changes, seed, algorithm, str(Path(args.work_dir) / setting_name(changes) / f"s{seed}"),
                     args.wordnet_path)
    t0 = time.perf_counter()
    result = Trainer(cfg, log=lambda msg: None).run(overwrite=True)
    interf = [h["interference_rel"] for h in result.history if h.get("interference_rel") is not None]
    return {"setting": setting_name(changes), "changes": changes, "seed": seed, "algorithm": algorithm,
            "run_hash": cfg.run_hash(), "config": cfg.to_dict(), "summary": result.summary,
            "interference_mean": sum(interf) / len(interf) if interf else None,
            "rounds": [{k: h.get(k) for k in ("round", "train_loss", "consensus_distance_rel", "interference_rel")}
                       for h in result.history],
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "versions": _versions(), "date": time.strftime("%Y-%m-%d")}


def _versions() -> dict:
    import peft
    import torch
    import transformers

    import decaf_kernels

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "decaf_kernels": decaf_kernels.__version__}


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def run_study(args) -> int:
    factors = _names(args.factors, FACTORS, "factor")
    algorithms = _names(args.algorithms, ALGORITHMS, "algorithm")
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = jobs(factors, seeds, algorithms)
    k, n = args.shard
    todo = todo[k::n]
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    done = 0
    t_start = time.perf_counter()
    for i, (changes, seed, alg) in enumerate(todo):
        path = result_path(results, changes, seed, alg)
        cfg = config_for(changes, seed, alg, "unused", args.wordnet_path)
        if path.exists():
            diff = cfg.differences(json.loads(path.read_text())["config"])
            if diff:
                detail = "; ".join(f"{k}: there {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
                raise SystemExit(f"error: {path} holds a run of another configuration ({detail}); move it away "
                                 "to rerun")
            continue
        record = run_one(changes, seed, alg, args)
        write_json(path, record)
        done += 1
        s = record["summary"]
        per_run = (time.perf_counter() - t_start) / done
        left = sum(1 for c, sd, a in todo[i + 1:] if not result_path(results, c, sd, a).exists())
        print(f"[{i + 1}/{len(todo)}] {setting_name(changes)} seed {seed} {alg}: acc {s['test_acc_mean']:.3f} "
              f"avg-model {s['test_acc_avg_model']:.3f} consensus {s['consensus_distance_rel']:.3f} "
              f"({record['seconds']:.0f} s; ~{left * per_run / 60:.0f} min left)", file=sys.stderr, flush=True)
    print(f"done: {done} runs in {(time.perf_counter() - t_start) / 60:.1f} min; "
          f"{len(todo) - done} were there already", file=sys.stderr)
    return 0


def _names(text: str, allowed, what: str) -> List[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in allowed]
    if bad or not names:
        raise SystemExit(f"error: unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return names


def _shard(text: str) -> Tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, got {text!r}")
    return k, n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factors", default=",".join(FACTORS), help="comma-separated factors (default: all)")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    ap.add_argument("--results", default=str(RESULTS), help="where the per-run summaries go (default: %(default)s)")
    ap.add_argument("--work-dir", default="runs/regimes", help="the runs' own folders (default: %(default)s)")
    ap.add_argument("--wordnet-path", default=None, help="the WordNet noun file (default: the config's)")
    ap.add_argument("--shard", type=_shard, default=(0, 1), help="K/N: run every N-th job from the K-th")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--report", action="store_true", help="summarise the results instead of running")
    args = ap.parse_args(argv)
    if args.report:
        from bench.regimes_report import report
        return report(Path(args.results), _names(args.factors, FACTORS, "factor"))
    return run_study(args)


if __name__ == "__main__":
    sys.exit(main())
