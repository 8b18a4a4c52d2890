"""``python -m bench.distributed``: the reference loop over P processes, and the neighbour exchange alone.

Two parts, each bounded in time; every process is started over 127.0.0.1 (gloo, ``GLOO_SOCKET_IFNAME=lo``, a c10d
rendezvous on a free local port) in its own session and killed with its session on a timeout or an interrupt.

``train``     ``decaf train`` of each ``--algorithms`` on the built-in task (8 agents, ring) with P = ``--procs``
              processes (P = 1: plain ``python -m decaf_lora train``; P > 1: ``torchrun``), ``--rounds`` rounds
              with one evaluation at the last. Per P: the medians over rounds of the log's ``time_local``,
              ``time_wait``, ``time_comm``, ``time_consensus`` (max over processes) and of the round's wall time,
              the bytes per round (modelled: one message per nonzero off-diagonal W_ij; measured ``bytes_wire``; the metrics'
              ``bytes_diagnostic``), and the wire bytes and messages that the routing of
              :func:`decaf_lora.exchange.routes` predicts for this W and placement (checked against the log).
``exchange``  2 processes under torchrun (this module with ``--worker``) exchange one payload per repetition:
              :meth:`decaf_lora.exchange.Exchange.neighbours` (the library path: routes, pack, one
              ``batch_isend_irecv`` per peer, unpack), the same bytes as one raw gloo message, and split into
              ``--tensors`` messages; for payloads ``--sizes``; then the demo model's adapter (12 LoRA layers
              d = k = 384, r = 8, and the 26 x 384 head: 26 tensors, 334,952 bytes per agent) for 1 and 2 agents
              per message, packed vs one message per tensor (in one batch, or one after another). Each variant:
              ``--warmup`` untimed calls, then ``--reps`` timed ones, each after a barrier; a repetition's time is
              the slower of the two processes; reported: the median (and the fastest) and payload per direction /
              median.

Tables (markdown) go to stdout, progress to stderr; ``--log FILE`` also appends everything, with the raw per-round
records, to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = "1K,4K,16K,64K,256K,1M,4M,16M,64M"
# the demo model's adapter (builtin:all-MiniLM-L6-v2, query and value of 6 blocks, r = 8, WordNet's 26 classes)
DEMO_LAYERS, DEMO_D, DEMO_R, DEMO_CLASSES = 12, 384, 8, 26
_LOG = None  # open --log file


# ---------------------------------------------------------------------------------------------------- output
def progress(msg: str) -> None:
    print(f"[distributed] {msg}", file=sys.stderr, flush=True)
    if _LOG:
        _LOG.write(f"[progress] {msg}\n")
        _LOG.flush()


def emit(text: str = "") -> None:
    print(text, flush=True)
    if _LOG:
        _LOG.write(text + "\n")
        _LOG.flush()


def raw(text: str) -> None:
    """Only in the log file (per-round records, tails of outputs)."""
    if _LOG:
        _LOG.write(text.rstrip("\n") + "\n")
        _LOG.flush()


def human(n: float) -> str:
    for unit, f in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= f:
            v = n / f
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{int(n)} B"


def rate(mb_s: float) -> str:
    return f"{mb_s:,.0f}" if mb_s >= 100 else f"{mb_s:.3g}"


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read the size {text!r} (examples: 1024, 4K, 16M)")
    return int(m.group(1)) * {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}[m.group(2).upper()]


def table(header: List[str], rows: List[list], right_from: int = 1) -> str:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: List[str]) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *args]


def run_bounded(cmd: List[str], env: dict, timeout: float, what: str) -> str:
    """Run ``cmd`` in its own session; kill the session on timeout or interrupt. Returns stdout + stderr."""
    raw("$ " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raw(out[-4000:])
        raise RuntimeError(f"{what} did not finish within {timeout:g} s and was killed (raise --run-timeout); "
                           f"the end of its output:\n{out[-2000:]}") from None
    finally:
        if proc.poll() is None:  # interrupted while waiting
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raw(out[-4000:])
        raise RuntimeError(f"{what} failed (exit status {proc.returncode}); the end of its output:\n{out[-2000:]}")
    return out


def child_env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo",
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ---------------------------------------------------------------------------------------------------- part 1: train
def expected_traffic(agents: int, procs: int, graph: str, seed: int = 0):
    """(messages, agent payloads, nonzero off-diagonal W_ij) per round: what the routing sends over all processes
    for this placement, and what the modelled bytes count."""
    from decaf_lora.exchange import routes
    from decaf_lora.processes import Placement
    from decaf_lora.topology import Topology

    W = Topology.build(graph, agents, seed=seed).matrix(0)
    msgs = payloads = 0
    for rank in range(procs):
        rt = routes(W, Placement(agents, procs, rank))
        msgs += len(rt.send)
        payloads += sum(len(v) for v in rt.send.values())
    off = W.clone()
    off.fill_diagonal_(0)
    return msgs, payloads, int((off != 0).sum())


def train_one(args, algorithm: str, P: int, out_dir: Path) -> dict:
    flags = ["train", "--algorithm", algorithm, "--agents", str(args.agents), "--graph", args.graph,
             "--rounds", str(args.rounds), "--eval-every", str(args.rounds), "--comm-every", str(args.comm_every),
             "--test-size", str(args.test_size), "--checkpoint-every", "0", "--no-progress", "--export", "none",
             "--dist-timeout", "120", "--out-dir", str(out_dir), "--overwrite"]
    threads = args.p1_threads if P == 1 else 1
    cmd = [sys.executable, "-m", "decaf_lora", *flags] if P == 1 else torchrun(P, ["-m", "decaf_lora", *flags])
    t0 = time.perf_counter()
    run_bounded(cmd, child_env(threads), args.run_timeout, f"{algorithm} with P={P}")
    elapsed = time.perf_counter() - t0
    log = out_dir / algorithm / "log.jsonl"
    if not log.exists():
        raise RuntimeError(f"{algorithm} with P={P} finished without writing {log}")
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rounds = [r for r in recs if r.get("event") == "round"]
    raw(f"# {algorithm} P={P}: {len(rounds)} round records from {log}")
    keep = ("round", "processes", "bytes", "bytes_wire", "bytes_diagnostic", "time_local", "time_wait", "time_comm",
            "time_consensus", "time_eval", "wall_time", "train_loss", "test_acc_mean")
    for r in rounds:
        raw(json.dumps({k: r.get(k) for k in keep}))
    if len(rounds) != args.rounds or any(r.get("processes") != P for r in rounds):
        raise RuntimeError(f"{log}: expected {args.rounds} rounds run by {P} processes, found "
                           f"{[(r.get('round'), r.get('processes')) for r in rounds]}")
    walls = [r["wall_time"] for r in rounds]
    per_round = [b - a for a, b in zip([0.0] + walls[:-1], walls)]
    med = lambda k: statistics.median(r[k] for r in rounds)  # noqa: E731
    return {"algorithm": algorithm, "P": P, "threads": threads, "elapsed": elapsed,
            "local": med("time_local"), "wait": med("time_wait"), "comm": med("time_comm"),
            "consensus": med("time_consensus"),
            "round": statistics.median(per_round), "eval_last": rounds[-1]["time_eval"],
            "bytes": med("bytes"), "wire": med("bytes_wire"), "diag": med("bytes_diagnostic"),
            "wire_set": sorted({r["bytes_wire"] for r in rounds}), "acc": rounds[-1].get("test_acc_mean")}


def part_train(args) -> None:
    progress(f"train: {','.join(args.algorithms)} x P={args.procs}, {args.agents} agents, {args.graph}, "
             f"{args.rounds} rounds x {args.comm_every} steps, test size {args.test_size}; load {load()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="decaf-bench-dist-") as tmp:
        for algorithm in args.algorithms:
            for P in args.procs:
                progress(f"train: {algorithm}, P={P} ...")
                res = train_one(args, algorithm, P, Path(args.out_dir or tmp) / f"{algorithm}-p{P}")
                msgs, payloads, edges = expected_traffic(args.agents, P, args.graph)
                payload = res["bytes"] / edges
                res.update(msgs=msgs, expected_wire=payloads * payload, payload=payload)
                ok = res["wire_set"] == [int(round(res["expected_wire"]))]
                res["check"] = "yes" if ok else f"NO: {res['wire_set']}"
                progress(f"train: {algorithm}, P={P}: round {res['round']:.2f} s, comm {1e3 * res['comm']:.1f} ms, "
                         f"wire {res['wire']:.0f} B (routing predicts {res['expected_wire']:.0f}: {res['check']}), "
                         f"{res['elapsed']:.0f} s in all; load {load()}")
                rows.append(res)
    emit(f"\n### Per round, medians over {args.rounds} rounds ({args.agents} agents, {args.graph}, "
         f"{args.comm_every} local steps per agent per round; the last round evaluates)\n")
    emit(table(["algorithm", "P", "agents / process", "threads / process", "local (s)", "wait (ms)", "comm (ms)",
                "consensus (ms)", "round (s)", "eval, last round (s)", "bytes (modelled)", "bytes_wire (measured)",
                "messages (routing)", "wire = routing?", "bytes_diagnostic"],
               [[r["algorithm"], r["P"], args.agents // r["P"], r["threads"], f"{r['local']:.2f}",
                 f"{1e3 * r['wait']:.1f}", f"{1e3 * r['comm']:.1f}", f"{1e3 * r['consensus']:.1f}", f"{r['round']:.2f}", f"{r['eval_last']:.1f}",
                 f"{r['bytes']:,.0f}", f"{r['wire']:,.0f}", r["msgs"], r["check"], f"{r['diag']:,.0f}"]
                for r in rows], right_from=1))
    if rows:
        pay = rows[0]["payload"]
        emit(f"\nOne agent's payload: {pay:,.0f} bytes (bytes (modelled) / nonzero off-diagonal W_ij). Wall time "
             "of each run (start-up, model load and the last evaluation included): " +
             ", ".join(f"{r['algorithm']} P={r['P']} {r['elapsed']:.0f} s" for r in rows) + ".")


# ---------------------------------------------------------------------------------------------------- part 2: worker
def worker(args) -> int:
    """One of the 2 processes of the exchange measurement (started by torchrun)."""
    import torch
    import torch.distributed as dist

    from decaf_lora.exchange import Exchange
    from decaf_lora.processes import Placement, join

    torch.set_num_threads(1)
    group = join("cpu", timeout=args.dist_timeout, backend="gloo")
    rank, world = group.rank, group.world
    if world != 2:
        raise SystemExit(f"the exchange worker needs exactly 2 processes, got {world}")
    peer = 1 - rank
    results = {}  # name -> list of this process's times (s)

    def timed(name: str, fn) -> None:
        for _ in range(args.warmup):
            group.barrier("warm-up")
            fn()
        ts = []
        for _ in range(args.reps):
            group.barrier("repetition")
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        results[name] = ts

    def raw_p2p(sends: List[torch.Tensor], recvs: List[torch.Tensor], batched: bool = True):
        def fn():
            if batched:
                ops = [dist.P2POp(dist.isend, s, peer, group=group.pg) for s in sends]
                ops += [dist.P2POp(dist.irecv, r, peer, group=group.pg) for r in recvs]
                group.wait(dist.batch_isend_irecv(ops), "raw exchange")
            else:
                for s, r in zip(sends, recvs):
                    group.wait(dist.batch_isend_irecv([dist.P2POp(dist.isend, s, peer, group=group.pg),
                                                       dist.P2POp(dist.irecv, r, peer, group=group.pg)]), "raw")
        return fn

    def split(n: int, k: int) -> List[int]:
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    # payload sweep: one tensor per agent, 2 agents on 2 processes (each sends its agent to the other)
    ex2 = Exchange(group, Placement(2, 2, rank))
    W2 = torch.full((2, 2), 0.5, dtype=torch.float64)
    for size in args.sizes:
        n = size // 4
        t = torch.rand(1, n)
        if rank == 0:
            progress(f"exchange: {human(size)} ...")
        got = ex2.neighbours([t], W2)
        assert got.bytes_sent == 4 * n, (got.bytes_sent, n)
        timed(f"neighbours/{size}", lambda: ex2.neighbours([t], W2))
        timed(f"packed/{size}", raw_p2p([t.view(-1)], [torch.empty(n)]))
        parts = [s for s in split(n, args.tensors) if s > 0]
        timed(f"split/{size}", raw_p2p([torch.rand(s) for s in parts], [torch.empty(s) for s in parts]))
    # the demo adapter: the trainer's stacks (B, A of 12 layers, head weight and bias) for m agents per message
    shapes = ([(DEMO_D, DEMO_R)] * DEMO_LAYERS + [(DEMO_R, DEMO_D)] * DEMO_LAYERS
              + [(DEMO_CLASSES, DEMO_D), (DEMO_CLASSES,)])
    for m in (1, 2):
        N = 2 * m  # a ring of 2m agents over 2 processes: each process sends its m agents to the other
        ex = Exchange(group, Placement(N, 2, rank))
        W = torch.zeros(N, N, dtype=torch.float64)
        for i in range(N):
            for j in (i - 1, i, i + 1):
                W[i, j % N] = 1.0 / 3 if N > 2 else 0.5
        stacks = [torch.rand(m, DEMO_LAYERS, DEMO_D, DEMO_R), torch.rand(m, DEMO_LAYERS, DEMO_R, DEMO_D),
                  torch.rand(m, DEMO_CLASSES, DEMO_D), torch.rand(m, DEMO_CLASSES)]
        if rank == 0:
            progress(f"exchange: demo adapter, {m} agent(s) per message ...")
        sent = ex.neighbours(stacks, W).bytes_sent
        tensors = [torch.rand(*s) for _ in range(m) for s in shapes]
        assert sent == sum(4 * x.numel() for x in tensors), (sent, m)
        results[f"demo{m}/bytes"] = [sent]
        timed(f"demo{m}/neighbours", lambda: ex.neighbours(stacks, W))
        timed(f"demo{m}/packed", raw_p2p([torch.rand(sent // 4)], [torch.empty(sent // 4)]))
        timed(f"demo{m}/batched", raw_p2p(tensors, [torch.empty_like(x) for x in tensors]))
        timed(f"demo{m}/sequential", raw_p2p(tensors, [torch.empty_like(x) for x in tensors], batched=False))
    everyone = group.all_gather_object(results, "gathering the timings")
    if rank == 0:
        merged = {k: ([max(a, b) for a, b in zip(everyone[0][k], everyone[1][k])] if "/bytes" not in k
                      else everyone[0][k]) for k in results}
        Path(args.result).write_text(json.dumps(merged))
    group.barrier("the end")
    group.close()
    return 0


def part_exchange(args) -> None:
    progress(f"exchange: 2 processes, sizes {','.join(human(s) for s in args.sizes)}, {args.warmup} warm-up + "
             f"{args.reps} reps, {args.tensors} messages in the split variant; load {load()}")
    with tempfile.TemporaryDirectory(prefix="decaf-bench-xchg-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = torchrun(2, ["-m", "bench.distributed", "--worker", "--result", str(result),
                           "--sizes", ",".join(str(s) for s in args.sizes), "--reps", str(args.reps),
                           "--warmup", str(args.warmup), "--tensors", str(args.tensors)])
        t0 = time.perf_counter()
        out = run_bounded(cmd, child_env(1), args.run_timeout, "the exchange measurement (2 processes)")
        raw(out[-3000:])
        if not result.exists():
            raise RuntimeError("the exchange workers finished without writing their result; output:\n" + out[-2000:])
        res = json.loads(result.read_text())
    progress(f"exchange: done in {time.perf_counter() - t0:.0f} s; load {load()}")
    raw("# exchange, per repetition (s, the slower process): " + json.dumps(res))
    med = {k: statistics.median(v) for k, v in res.items()}
    ms = lambda k: f"{1e3 * med[k]:.3f} ({1e3 * min(res[k]):.3f})"  # noqa: E731
    mbs = lambda b, k: rate(b / med[k] / 1e6)  # noqa: E731
    emit(f"\n### Exchange between 2 processes (gloo, 127.0.0.1): ms as median (fastest) of {args.reps} repetitions "
         "of the slower process; MB/s = payload per direction / median\n")
    emit(table(["payload per direction", "neighbours() (ms)", "one raw message (ms)",
                f"{args.tensors} messages (ms)", "neighbours() MB/s", "raw message MB/s", f"{args.tensors} msgs MB/s"],
               [[human(s), ms(f"neighbours/{s}"), ms(f"packed/{s}"), ms(f"split/{s}"), mbs(s, f"neighbours/{s}"),
                 mbs(s, f"packed/{s}"), mbs(s, f"split/{s}")] for s in args.sizes]))
    emit("\n### The demo model's adapter (12 LoRA layers d=k=384 r=8, head 26x384 + 26: 26 tensors per agent)\n")
    rows = []
    for m in (1, 2):
        b = int(res[f"demo{m}/bytes"][0])
        rows.append([m, f"{b:,}", ms(f"demo{m}/neighbours"), ms(f"demo{m}/packed"), ms(f"demo{m}/batched"),
                     ms(f"demo{m}/sequential"),
                     f"{med[f'demo{m}/sequential'] / med[f'demo{m}/packed']:.1f}x"])
    emit(table(["agents per message", "bytes per direction", "neighbours(): one packed buffer (ms)",
                "one raw message (ms)", "one message per tensor, one batch (ms)",
                "one message per tensor, one after another (ms)", "one after another / packed"], rows))


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--parts", default="train,exchange", help="train, exchange or both (default: %(default)s)")
    g = p.add_argument_group("train")
    g.add_argument("--algorithms", default="decaf,dlora", help="decentralised algorithms (default: %(default)s)")
    g.add_argument("--procs", default="1,2,4",
                   help="process counts P; each must divide --agents (default: %(default)s)")
    g.add_argument("--agents", type=int, default=8, help="agents N (default: %(default)s)")
    g.add_argument("--graph", default="ring", help="graph (default: %(default)s)")
    g.add_argument("--rounds", type=int, default=4, help="rounds; one evaluation, at the last (default: %(default)s)")
    g.add_argument("--comm-every", type=int, default=2, help="local steps per round (default: %(default)s)")
    g.add_argument("--test-size", type=int, default=52,
                   help="test examples of the built-in task (default %(default)s, 2 per class: the evaluation at "
                        "the last round is not what is measured; the demo uses 260)")
    g.add_argument("--p1-threads", type=int, default=1,
                   help="OMP threads of the P=1 run (P>1: 1 per process) (default: %(default)s)")
    g.add_argument("--out-dir", default=None, help="keep the runs' folders here (default: a temporary folder)")
    g = p.add_argument_group("exchange")
    g.add_argument("--sizes", default=DEFAULT_SIZES, help="payload sizes (default: %(default)s)")
    g.add_argument("--reps", type=int, default=20, help="timed repetitions per variant (default: %(default)s)")
    g.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default: %(default)s)")
    g.add_argument("--tensors", type=int, default=26,
                   help="messages the payload is split into in the per-tensor variant (default: %(default)s, the "
                        "demo adapter's 2 x 12 factors + head weight and bias)")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per launched run (default: %(default)s)")
    p.add_argument("--log", default=None, help="also append everything, with raw per-round records, to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dist-timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if not args.parts or set(args.parts) - {"train", "exchange"}:
        parser.error(f"--parts must be train, exchange or train,exchange, got {','.join(args.parts)!r}")
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        args.procs = [int(x) for x in args.procs.split(",") if x.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    if not args.sizes or any(s < 4 or s % 4 for s in args.sizes):
        parser.error("--sizes: every size must be a positive multiple of 4 bytes (float32 payloads)")
    for name in ("agents", "rounds", "comm_every", "test_size", "p1_threads", "reps", "tensors"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.run_timeout <= 0:
        parser.error("--warmup must be >= 0 and --run-timeout > 0")
    if not args.procs or any(P < 1 or args.agents % P for P in args.procs):
        parser.error(f"--procs {','.join(map(str, args.procs))}: every P must be >= 1 and divide --agents "
                     f"{args.agents} (the agents are spread in equal blocks)")
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [a for a in args.algorithms if a not in ("decaf", "dlora", "dlora_fa")]
    if not args.algorithms or bad:
        parser.error(f"--algorithms: only the neighbour-exchange algorithms decaf, dlora, dlora_fa, got {bad}")
    if args.worker and not args.result:
        parser.error("--worker needs --result")
    return args


def banner(argv: List[str]) -> None:
    import peft
    import torch
    import transformers

    import decaf_kernels

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    emit(f"# bench.distributed, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    emit(f"command: python -m bench.distributed {' '.join(shlex.quote(a) for a in argv)}")
    emit(f"machine: {cpu}, {os.cpu_count()} cores, load average {load()}; host {platform.node()}")
    emit(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
         f"decaf_kernels {decaf_kernels.__version__}, Python {platform.python_version()}, git {sha.strip()}")


def main(argv: Optional[List[str]] = None) -> int:
    global _LOG
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        _LOG = open(args.log, "a")
    t0 = time.perf_counter()
    try:
        banner(argv)
        if "train" in args.parts:
            part_train(args)
        if "exchange" in args.parts:
            part_exchange(args)
    except RuntimeError as exc:
        print(f"bench.distributed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.distributed: interrupted (launched processes were killed)", file=sys.stderr)
        return 130
    finally:
        emit(f"\ntotal time: {time.perf_counter() - t0:.0f} s")
        if _LOG:
            _LOG.close()
            _LOG = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
