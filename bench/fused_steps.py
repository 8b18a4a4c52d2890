"""A round's local steps of N agents: one agent after another vs all in one forward/backward (``fused=True``),
side by side in one process.

The trainer's default loop loads each agent's factors into the shared model, runs its ``comm_every`` steps and
moves on; the fused loop (:meth:`decaf_lora.Trainer._fused_local_steps`) runs every agent's step as one pass over
their concatenated batches, padded to the longest row of all of them. Both are timed on the same trainer (the
built-in task, the demo's settings, N agents), alternating, and the padding each one computes is counted.

    python -m bench.fused_steps                        # 8, 16 and 32 agents, 3 rounds each way
    python -m bench.fused_steps --agents 8 --repeats 5 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from decaf_lora import TrainConfig, Trainer
from decaf_lora.batches import AgentSampler


def one_by_one(tr: Trainer) -> None:
    for slot in range(len(tr.local)):
        with tr._agent_rng(slot):
            tr._local_steps(slot)


def padding(tr: Trainer, steps: int = 40):
    """Token positions computed per real token by each loop, over ``steps`` draws of a fresh sampler like the
    trainer's: (one by one, fused)."""
    c = tr.config
    sampler = AgentSampler(tr.exp.parts, c.batch_size, seed=c.seed, lengths=tr.exp.train_tok.lengths,
                           length_grouping=c.length_grouping)
    lengths = tr.exp.train_tok.lengths
    real = own = fused = 0
    for _ in range(steps):
        batches = [sampler.next_batch(a) for a in tr.local]
        longest = max(int(lengths[i].max()) for i in batches)
        for i in batches:
            real += int(lengths[i].sum())
            own += len(i) * int(lengths[i].max())
            fused += len(i) * longest
    return own / real, fused / real


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="8,16,32", help="comma-separated numbers of agents (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per loop (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ap.add_argument("--wordnet-path", default=None, help="the WordNet noun file (default: the config's)")
    ap.add_argument("--out-dir", default="runs/fused_steps")
    args = ap.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.agents.split(",")]:
        cfg = TrainConfig(agents=n, rounds=1, checkpoint_every=0, out_dir=args.out_dir, progress=False,
                          partition="dirichlet", dirichlet_alpha=0.5, device=args.device,
                          **({"wordnet_path": args.wordnet_path} if args.wordnet_path else {}))
        tr = Trainer(cfg, log=lambda msg: print(msg, file=sys.stderr))
        tr.model.train()
        times = {"one by one": [], "fused": []}
        loops = (("one by one", lambda: one_by_one(tr)), ("fused", tr._fused_local_steps))
        for name, fn in loops:  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in loops:
                _sync(tr.device)
                t0 = time.perf_counter()
                fn()
                _sync(tr.device)
                times[name].append(time.perf_counter() - t0)
                print(f"{n} agents, {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
        pad = dict(zip(times, padding(tr)))
        base = statistics.median(times["one by one"])
        for name, ts in times.items():
            t = statistics.median(ts)
            rows.append((n, name, pad[name], t, t / n, base / t))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; the built-in task, "
          f"{cfg.comm_every} local steps of {cfg.batch_size} examples per agent per round; medians of "
          f"{args.repeats} rounds after one warm-up round each")
    print("| agents | loop | computed / real tokens | s per round | s per agent | speed-up |")
    print("|---|---|---|---|---|---|")
    for n, name, p, t, per, x in rows:
        print(f"| {n} | {name} | {p:.2f} | {t:.3f} | {per:.3f} | {x:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
