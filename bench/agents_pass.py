"""Evaluating N agents and their averaged model: one after another vs all in one pass, side by side in one process.

The trainer evaluates every agent and the averaged model on the shared test set each evaluated round. The old way
loads each adapter into the model in turn and runs the test set N + 1 times; ``decaf_lora.fused.StackedAgents`` runs
each test batch once for all of them (the base sees N + 1 copies; each copy gets its own LoRA deltas and head).
Both are timed here on the same trainer (the built-in task, the demo's settings, agents made to differ), alternating,
for each evaluation batch size (test examples per batch and agent; the test set is sorted by length, so smaller
batches pad less), and their metrics are compared.

    python -m bench.agents_pass                       # 8 agents, batches of 128, 32 and 16, 3 repeats
    python -m bench.agents_pass --agents 8,16 --eval-batch-sizes 128,16 --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from decaf_lora import TrainConfig, Trainer
from decaf_lora.tasks import add_sums


def one_by_one(tr: Trainer, everyone) -> dict:
    """The per-agent evaluation: each adapter loaded into the model, the test set run once per adapter."""
    tr.model.eval()
    out: dict = {}

    def metrics():
        sums: dict = {}
        for idx in tr.exp.test_batches:
            add_sums(sums, tr.task.eval_sums(tr.model, tr.exp.test_tok.batch(idx)))
        return tr.task.metrics(sums)

    for slot in range(len(tr.local)):
        tr.stacks.load_agent(slot)
        for k, v in metrics().items():
            out.setdefault(k, []).append(v)
    tr.stacks.load_factors(*tr.averaged_adapter(everyone))
    out["avg"] = metrics()
    tr.model.train()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="8", help="comma-separated numbers of agents (default: 8)")
    ap.add_argument("--eval-batch-sizes", default="128,32,16",
                    help="comma-separated test examples per batch (default: 128,32,16; the demo's is 128)")
    ap.add_argument("--repeats", type=int, default=3, help="timed evaluations per method (default: 3)")
    ap.add_argument("--out-dir", default="runs/agents_pass")
    args = ap.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.agents.split(",")]:
        cfg = TrainConfig(agents=n, rounds=1, checkpoint_every=0, out_dir=args.out_dir, progress=False,
                          partition="dirichlet", dirichlet_alpha=0.5)
        tr = Trainer(cfg, log=lambda msg: print(msg, file=sys.stderr))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # agents that differ, as after training
            for grp in tr.stacks.groups:
                grp.B.add_(0.02 * torch.randn(grp.B.shape, generator=g))
            for t in tr.stacks.dense.values():
                t.add_(0.02 * torch.randn(t.shape, generator=g))
        everyone = tr.all_agents(to_main=True)
        order = torch.argsort(tr.exp.test_tok.lengths, stable=True)
        reference = None  # the demo's way: one by one, in the first batch size
        for bs in [int(x) for x in args.eval_batch_sizes.split(",")]:
            tr.exp.test_batches = list(torch.split(order, bs))
            padded = sum(len(i) * int(tr.exp.test_tok.lengths[i].max()) for i in tr.exp.test_batches)
            times = {"one by one": [], "one pass": []}
            results = {}
            for _ in range(args.repeats):
                for name, fn in (("one by one", lambda: one_by_one(tr, everyone)),
                                 ("one pass", lambda: tr._evaluate_local(everyone))):
                    t0 = time.perf_counter()
                    results[name] = fn()
                    times[name].append(time.perf_counter() - t0)
                    print(f"{n} agents, batches of {bs}, {name}: {times[name][-1]:.2f} s", file=sys.stderr,
                          flush=True)
            if reference is None:
                reference = (results["one by one"], statistics.median(times["one by one"]))
            for name in times:
                a, b = reference[0], results[name]
                same_acc = a["acc"] == b["acc"] and a["avg"]["acc"] == b["avg"]["acc"]
                loss_diff = max(abs(x - y) / abs(x) for x, y in zip(a["loss"] + [a["avg"]["loss"]],
                                                                   b["loss"] + [b["avg"]["loss"]]))
                t = statistics.median(times[name])
                rows.append((n, bs, padded / int(tr.exp.test_tok.lengths.sum()), name, t, reference[1] / t,
                             same_acc, loss_diff))
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeats}; the built-in task's 260 test examples; speed-up and differences against the first "
          "row of each agent count (one by one, the first batch size)")
    print("| agents | eval batch | padded / real tokens | evaluation | time (s) | speed-up | same accuracies | "
          "max rel. loss diff |")
    print("|---|---|---|---|---|---|---|---|")
    for n, bs, pad, name, t, x, same, diff in rows:
        print(f"| {n} | {bs} | {pad:.2f} | {name} | {t:.2f} | {x:.2f}x | {'yes' if same else 'NO'} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
