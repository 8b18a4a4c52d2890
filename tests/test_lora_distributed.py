"""The reference loop across processes: torchrun + gloo over 127.0.0.1 gives the single-process results, resumes
after a killed process, and stops with a clear error on mismatched settings or a hung peer.

Every torchrun is bounded in time and killed with its whole process group if it overruns or the test fails.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="decaf_lora needs the [lora] extra (transformers, peft)")
pytest.importorskip("peft", reason="decaf_lora needs the [lora] extra (transformers, peft)")
if not torch.distributed.is_available():  # pragma: no cover - every supported build has it
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import save_tiny_bert  # noqa: E402
from _torchrun import finish, torchrun  # noqa: E402
from decaf_lora import TrainConfig  # noqa: E402
from decaf_lora.checkpoints import read_agents  # noqa: E402
from decaf_lora.exchange import routes  # noqa: E402
from decaf_lora.models import BUILTIN_MODEL, load_tokenizer  # noqa: E402
from decaf_lora.processes import Placement  # noqa: E402
from decaf_lora.runfiles import read_checkpoint  # noqa: E402
from decaf_lora.topology import Topology  # noqa: E402
from decaf_lora.trainer import Trainer, compare  # noqa: E402

ALL = ["local", "dlora", "dlora_fa", "decaf", "fedavg", "exact_avg"]
CLOCK = ("wall_time", "time_local", "time_wait", "time_comm", "time_consensus", "time_eval", "bytes_wire", "bytes_wire_total",
         "bytes_diagnostic", "processes", "peak_rss_bytes", "peak_cuda_bytes")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 2-layer BERT (hidden 32) with the MiniLM tokenizer, and a 4-class CSV task."""
    root = tmp_path_factory.mktemp("dist-task")
    save_tiny_bert(root / "tiny", load_tokenizer(BUILTIN_MODEL))
    save_tiny_bert(root / "tiny-no-dropout", load_tokenizer(BUILTIN_MODEL), dropout=0.0)
    rng = random.Random(7)
    words = {"animal": ["dog", "cat", "horse", "bird"], "food": ["bread", "cheese", "apple", "soup"],
             "tool": ["hammer", "saw", "drill", "axe"], "place": ["city", "river", "valley", "island"]}
    filler = ["a", "the", "some", "kind", "of", "small", "large", "old"]
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _ in range(40):
            for label, ws in words.items():
                w.writerow([" ".join(rng.sample(filler, 3) + [rng.choice(ws)]), label])
    return root


def _flags(task: Path, **kw) -> list:
    base = dict(model=task / "tiny", data=task / "train.csv", agents=4, rounds=3, eval_every=1, batch_size=8,
                max_length=16, eval_batch_size=64, target_modules="query,value", rank=4, lora_dropout=0.1,
                checkpoint_every=2, dist_timeout=60)
    base.update(kw)
    out = []
    for k, v in base.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out + ["--no-progress"]


def _config(task: Path, **kw) -> TrainConfig:
    base = dict(model=str(task / "tiny"), data=str(task / "train.csv"), agents=4, rounds=3, eval_every=1,
                batch_size=8, max_length=16, eval_batch_size=64, target_modules=["query", "value"], rank=4,
                lora_dropout=0.1, checkpoint_every=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _rounds(out_dir: Path, algorithm: str) -> list:
    lines = [json.loads(x) for x in (out_dir / algorithm / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if x["event"] == "round"]


def _strip(rounds: list) -> list:
    return [{k: v for k, v in r.items() if k not in CLOCK} for r in rounds]


def _agents(out_dir: Path, algorithm: str) -> dict:
    path = out_dir / algorithm / "checkpoint.pt"
    return read_agents(path, read_checkpoint(path))


# ------------------------------------------------------------------------------------------------ routing


def test_placement_refuses_uneven_blocks_and_routes_follow_W():
    with pytest.raises(ValueError, match=r"3 agents cannot be spread over 2 processes.*--nproc-per-node 1, 3"):
        Placement(3, 2, 0)
    W = Topology.build("ring", 4).matrix(0)
    rt = routes(W, Placement(4, 2, 0))  # agents 0, 1 here; 2, 3 on rank 1
    assert rt.rows == [0, 1] and rt.cols == [0, 1, 2, 3]
    assert rt.send == {1: [0, 1]} and rt.recv == {1: [2, 3]}
    assert torch.equal(rt.W_rows, W[:2])
    # a directed graph: rank 0 needs only what its rows use, and sends only what rank 1's rows use
    W = Topology.build("ring", 8, time_varying="one_peer_exp").matrix(0)  # i takes from i + 1
    rt = routes(W, Placement(8, 4, 1))  # agents 2, 3
    assert rt.cols == [2, 3, 4] and rt.recv == {2: [4]} and rt.send == {0: [2]}
    assert torch.equal(rt.W_rows, W[2:4][:, [2, 3, 4]])


# ------------------------------------------------------------------------------------------------ equality

CASES = {
    "2-per-process-static-ring": dict(nproc=2, agents=4, graph="ring"),
    "2-per-process-matching": dict(nproc=2, agents=4, graph="complete", time_varying="matching"),
    "1-per-process-static": dict(nproc=2, agents=2, graph="ring"),
    "1-per-process-one-peer-exp": dict(nproc=4, agents=4, graph="ring", time_varying="one_peer_exp"),
}


def _same_round(a: dict, b: dict) -> None:
    """Two runs' records of a round agree: accuracies equal, the rest to fp32 summation order."""
    where = (a["algorithm"], a["round"])
    assert a["test_acc"] == b["test_acc"] and a["test_acc_avg_model"] == b["test_acc_avg_model"], where
    for key in ("train_loss", "consensus_distance"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-12), (where, key)
    if a["interference_rel"] is not None:  # from float64 Grams: resolved to ~1e-8 of the products
        assert b["interference_rel"] == pytest.approx(a["interference_rel"], rel=1e-5, abs=1e-7), where
    assert a["bytes"] == b["bytes"], where


@pytest.mark.parametrize("case", list(CASES))
def test_processes_give_the_single_process_results(task, tmp_path, case):
    spec = dict(CASES[case])
    nproc = spec.pop("nproc")
    rc, out = torchrun(nproc, ["-m", "decaf_lora", "compare", "--algorithms", ",".join(ALL),
                                *_flags(task, out_dir=tmp_path / "dist", **spec)], timeout=120)
    assert rc == 0, out[-3000:]
    compare(_config(task, out_dir=str(tmp_path / "one"), **spec), ALL, log=lambda *_: None)
    payload = None
    for alg in ALL:
        one, dist = _rounds(tmp_path / "one", alg), _rounds(tmp_path / "dist", alg)
        assert [r["processes"] for r in dist] == [nproc] * 3
        for a, b in zip(one, dist):
            _same_round(a, b)
        fa, fb = _agents(tmp_path / "one", alg), _agents(tmp_path / "dist", alg)
        assert sorted(fa) == sorted(fb) == list(range(spec["agents"]))
        for agent in fa:
            for x, y in zip(fa[agent]["B"] + fa[agent]["A"], fb[agent]["B"] + fb[agent]["A"]):
                assert float((x - y).norm()) <= 1e-5 * float(x.norm()) + 1e-12, (alg, agent)
        if case == "2-per-process-static-ring" and alg == "dlora":
            payload = dist[0]["bytes"] // 8  # 8 directed ring edges, one agent's payload each
    if case == "2-per-process-static-ring":
        # checkpoints hold per-agent state: one process resumes what two wrote, and continues like the one
        for where in ("one", "dist"):
            Trainer(_config(task, out_dir=str(tmp_path / where), algorithm="decaf", rounds=4, **spec),
                    log=lambda *_: None).run(resume=True)
        _same_round(_rounds(tmp_path / "one", "decaf")[3], _rounds(tmp_path / "dist", "decaf")[3])
    if payload is not None:
        # measured: each process sends its 2 agents to the other once per round, in one buffer
        assert [r["bytes_wire"] for r in _rounds(tmp_path / "dist", "dlora")] == [4 * payload] * 3
        assert [r["bytes_wire"] for r in _rounds(tmp_path / "dist", "local")] == [0] * 3


def test_fused_steps_on_two_processes_give_the_one_process_loop(task, tmp_path):
    # without dropout the fused steps (each process steps its block of 2 agents in one pass) draw nothing: the
    # run equals one process stepping its agents one after another
    spec = dict(model=task / "tiny-no-dropout", lora_dropout=0.0, max_grad_norm=0.05)
    rc, out = torchrun(2, ["-m", "decaf_lora", "compare", "--algorithms", "decaf,dlora", "--fused",
                           *_flags(task, out_dir=tmp_path / "dist", **spec)], timeout=120)
    assert rc == 0, out[-3000:]
    compare(_config(task, out_dir=str(tmp_path / "one"), **dict(spec, model=str(spec["model"]))), ["decaf", "dlora"],
            log=lambda *_: None)
    for alg in ("decaf", "dlora"):
        for a, b in zip(_rounds(tmp_path / "one", alg), _rounds(tmp_path / "dist", alg)):
            _same_round(a, b)


# ------------------------------------------------------------------------------------------------ faults


def _workers(parent: int) -> dict:
    """rank -> pid of torchrun's worker processes (children of its agent process)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            rank = next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                found[int(rank)] = int(d.name)
    return found


def test_a_killed_process_resumes_through_torchrun_restart(task, tmp_path):
    flags = _flags(task, out_dir=tmp_path / "killed", algorithm="decaf", rounds=40, checkpoint_every=4,
                   eval_every=4)
    proc = torchrun(2, ["-m", "decaf_lora", "train", "--export", "none", *flags], timeout=0,
                     extra=("--max-restarts", "1"), wait=False)
    try:
        log = tmp_path / "killed" / "decaf" / "log.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # past the first committed checkpoint, well before the end
            if log.is_file() and len(_rounds(tmp_path / "killed", "decaf")) >= 6:
                break
            time.sleep(0.02)
        workers = _workers(proc.pid)
        assert 1 in workers, f"no rank-1 worker under torchrun {proc.pid}"
        os.kill(workers[1], signal.SIGKILL)
        killed_at = len(_rounds(tmp_path / "killed", "decaf"))
        assert killed_at < 40, "the run ended before the kill: make it longer"
    finally:
        rc, out = finish(proc, 120)
    assert rc == 0, out[-3000:]
    assert re.search(r"decaf: resumed from \S+checkpoint.pt at round (4|8|12|16|20)\b", out), out[-3000:]
    rc, ref_out = torchrun(2, ["-m", "decaf_lora", "train", "--export", "none",
                                *_flags(task, out_dir=tmp_path / "whole", algorithm="decaf", rounds=40,
                                        checkpoint_every=4, eval_every=4)], timeout=120)
    assert rc == 0, ref_out[-3000:]
    assert _strip(_rounds(tmp_path / "killed", "decaf")) == _strip(_rounds(tmp_path / "whole", "decaf"))
    shards = sorted(p.name for p in (tmp_path / "killed" / "decaf" / "checkpoint.shards").iterdir())
    assert shards == ["round-000040-rank-0-of-2.pt", "round-000040-rank-1-of-2.pt"]


WRAPPER = """
import os, sys, time
from decaf_lora import cli, trainer
rank = int(os.environ["RANK"])
args = sys.argv[1:]
if rank == 1 and "--mismatch" in args:
    args += ["--lr", "0.01"]
if rank == 1 and "--hang" in args:
    trainer.Trainer._round = lambda self: time.sleep(600)
sys.exit(cli.main([a for a in args if a not in ("--mismatch", "--hang")]))
"""


def test_mismatched_settings_stop_every_rank_before_training(task, tmp_path):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    rc, out = torchrun(2, [str(script), "train", "--mismatch", *_flags(task, out_dir=tmp_path / "m")], timeout=90)
    assert rc != 0
    msg = "the processes of this run were started with different settings (lr: rank 0 0.005, rank 1 0.01)"
    assert out.count(msg) == 2, out[-3000:]
    assert not (tmp_path / "m" / "decaf" / "log.jsonl").exists()
    rc, out = torchrun(2, ["-m", "decaf_lora", "train", *_flags(task, out_dir=tmp_path / "u", agents=3)],
                        timeout=90)
    assert rc != 0 and out.count("3 agents cannot be spread over 2 processes") == 2, out[-3000:]


def test_a_hung_peer_stops_the_run_within_the_timeout(task, tmp_path):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    t0 = time.monotonic()
    rc, out = torchrun(2, [str(script), "train", "--hang", *_flags(task, out_dir=tmp_path / "h", dist_timeout=4)],
                        timeout=90)
    assert rc != 0
    assert "decaf: error: rank 0: waiting for every process's local steps with a peer process failed or timed out " \
           "after 4 s" in out, out[-3000:]
    assert time.monotonic() - t0 < 60
