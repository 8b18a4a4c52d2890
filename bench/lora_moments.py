"""Optimizer state across DeCAF's re-factorisation: procrustes vs reset vs keep, side by side in one process.

DeCAF replaces every agent's (B, A) by the balanced factors of a truncated SVD each round, so Adam's moments
(kept per coordinate) refer to a basis that no longer exists. The three policies of
``decaf_lora.algorithms.MOMENT_POLICIES`` are trained on the same data, graph, initialisation and seed; the table
gives the final accuracy, the train loss and the consensus distance.

    python -m bench.lora_moments                      # the built-in task, 20 rounds
    python -m bench.lora_moments --rounds 10 --algorithm exact_avg
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from decaf_lora import TrainConfig, Trainer
from decaf_lora.algorithms import MOMENT_POLICIES
from decaf_lora.trainer import Experiment


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--algorithm", default="decaf", choices=["decaf", "exact_avg"])
    ap.add_argument("--out-dir", default="runs/moments")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    base = TrainConfig(algorithm=args.algorithm, rounds=args.rounds, eval_every=args.rounds, checkpoint_every=0,
                       out_dir=args.out_dir, seed=args.seed, progress=False)
    exp = Experiment(base)
    rows = []
    for policy in MOMENT_POLICIES:
        cfg = base.replace(moments=policy, out_dir=f"{args.out_dir}/{policy}")
        t0 = time.perf_counter()
        res = Trainer(cfg, exp).run(overwrite=True)
        last = res.history[-1]
        rows.append({"moments": policy, "test_acc_mean": last["test_acc_mean"], "test_acc_min": last["test_acc_min"],
                     "test_acc_avg_model": last["test_acc_avg_model"], "train_loss_last5":
                     sum(h["train_loss"] for h in res.history[-5:]) / min(5, len(res.history)),
                     "consensus_distance_rel": last["consensus_distance_rel"], "seconds": time.perf_counter() - t0})
        print(f"{policy:<10} acc mean {last['test_acc_mean']:.3f}  min {last['test_acc_min']:.3f}  avg-model "
              f"{last['test_acc_avg_model']:.3f}  train loss (last 5 rounds) {rows[-1]['train_loss_last5']:.3f}  "
              f"consensus dist {last['consensus_distance_rel']:.3e}", flush=True)
    meta = {"algorithm": args.algorithm, "rounds": args.rounds, "seed": args.seed, "torch": torch.__version__,
            "machine": platform.machine(), "threads": torch.get_num_threads()}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
