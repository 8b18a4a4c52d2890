"""DeCAF in the user's own training loop: DecentralizedLoRA (one agent per process) and the Hugging Face Trainer's
DecafCallback, alone and on 2 processes (torchrun, gloo over 127.0.0.1).

The multi-process cases share one torchrun (starting 2 processes that import transformers takes ~15 s of the 2
CI cores): a worker runs the scenarios in turn and writes each one's results per rank; the tests read them. The
hung-peer scenario runs last, since it ends the job. The launch is bounded in time and killed with its whole process
group if it overruns or the test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="decaf_lora needs the [lora] extra (transformers, peft)")
pytest.importorskip("peft", reason="decaf_lora needs the [lora] extra (transformers, peft)")
if not torch.distributed.is_available():  # pragma: no cover - every supported build has it
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _torchrun import torchrun  # noqa: E402
from decaf_lora.peer import DecentralizedLoRA, frozen_digest  # noqa: E402
from decaf_lora.topology import Topology  # noqa: E402

HANG_TIMEOUT = 5.0  # seconds: the hung-peer scenario's DecentralizedLoRA timeout

# Shared by this process and the worker: a 2-layer BERT (hidden size 32) classifier with LoRA on query and value,
# built from a config under a fixed seed (no download, the same base model on every process).
COMMON = r'''
import torch
from transformers import BertConfig, BertForSequenceClassification
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer


def tiny_model(freeze_A=False, seed=0, head_seed=None):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, num_labels=3)
    base = BertForSequenceClassification(cfg)
    if head_seed is not None:  # a head initialised differently (as from_pretrained + an unseeded new head)
        torch.manual_seed(head_seed)
        base.classifier.reset_parameters()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                            task_type="SEQ_CLS"))
    if freeze_A:
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    return model


def factors(model):
    """{layer: (B, A)} and {dense trainable name: value}, detached copies."""
    lora = {n: (m.lora_B["default"].weight.detach().clone(), m.lora_A["default"].weight.detach().clone())
            for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    dense = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    return lora, dense


def batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 64, (n, 8), generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}
'''
exec(COMMON)  # tiny_model, factors, batch in this module too

WORKER = COMMON + r'''
import json, os, sys, time, traceback
from decaf_lora.peer import DecentralizedLoRA
from decaf_lora.processes import PeerError

OUT = sys.argv[1]
RANK = int(os.environ["RANK"])


def save(name, obj):
    torch.save(obj, f"{OUT}/{name}-rank{RANK}.pt")


def scenario(fn):
    try:
        save(fn.__name__, fn())
    except Exception:
        save(fn.__name__, {"crashed": traceback.format_exc()})
    return fn


@scenario
def mismatch():  # rank 1 started with another algorithm
    try:
        DecentralizedLoRA(tiny_model(), "complete", "dlora" if RANK == 1 else "decaf", timeout=30)
    except PeerError as exc:
        return {"error": str(exc)}
    return {"error": None}


@scenario
def unseeded():  # rank 1 built its base model under another seed
    try:
        DecentralizedLoRA(tiny_model(seed=RANK), "complete", "decaf", timeout=30)
    except PeerError as exc:
        return {"error": str(exc)}
    return {"error": None}


def one_round(moments):
    model = tiny_model()
    torch.manual_seed(100 + RANK)  # each agent its own adapters
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**batch(RANK)).loss.backward()
    opt.step()
    opt.zero_grad()
    names = {id(p): n for n, p in model.named_parameters()}
    moments_of = lambda: {names[id(p)]: s["exp_avg"].clone() for p, s in opt.state.items()}
    dec = DecentralizedLoRA(model, "complete", "decaf", opt, moments=moments, timeout=30)
    before, m_before = factors(model), moments_of()
    rec = dec.communicate()
    return {"before": before, "after": factors(model), "moments_before": m_before, "moments_after": moments_of(),
            "record": rec.as_dict(), "bytes_total": dec.bytes_sent, "round": dec.round}


@scenario
def procrustes():
    return one_round("procrustes")


@scenario
def reset():
    return one_round("reset")


def dataset(seed, n=20):
    b = batch(seed, n)
    return [{"input_ids": b["input_ids"][i], "labels": b["labels"][i]} for i in range(n)]


@scenario
def refused():  # plain TrainingArguments under torchrun: the data-parallel set-up the callback must refuse
    from transformers import Trainer, TrainingArguments
    from decaf_lora.callback import DecafCallback

    model = tiny_model()
    dec = DecentralizedLoRA(model, "complete", "decaf", timeout=30)
    args = TrainingArguments(output_dir=f"{OUT}/plain", use_cpu=True, report_to="none", max_steps=2)
    try:
        Trainer(model=model, args=args, train_dataset=dataset(RANK), callbacks=[DecafCallback(dec, 2)])
    except RuntimeError as exc:
        return {"error": str(exc), "world_size": args.world_size}
    return {"error": None, "world_size": args.world_size}


@scenario
def trainer():
    from transformers import Trainer, TrainerCallback
    from decaf_lora.callback import DecafCallback, agent_training_arguments

    class Snap(TrainerCallback):
        def __init__(self):
            self.steps, self.batches = {}, None

        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
            self.batches = len(train_dataloader)

        def on_step_end(self, args, state, control, model=None, **kw):
            self.steps[state.global_step] = factors(model)

    args = agent_training_arguments(f"{OUT}/hf", max_steps=5, per_device_train_batch_size=4, learning_rate=1e-2,
                                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True)
    model = tiny_model()
    dec = DecentralizedLoRA(model, "complete", "decaf", timeout=30)
    pre, post = Snap(), Snap()
    tr = Trainer(model=model, args=args, train_dataset=dataset(RANK), callbacks=[pre, DecafCallback(dec, 2), post])
    tr.train()
    return {"pre": pre.steps, "post": post.steps, "batches": pre.batches, "world_size": args.world_size,
            "parallel_mode": str(args.parallel_mode), "wrapped": type(tr.model_wrapped).__name__,
            "distributed_type": str(tr.accelerator.distributed_type), "output_dir": args.output_dir,
            "log_history": tr.state.log_history, "round": dec.round, "bytes_total": dec.bytes_sent}


dec = DecentralizedLoRA(tiny_model(), "complete", "decaf", timeout=float(sys.argv[2]))
dec.communicate()  # both ranks: the first round (and its check that the ranks are at the same round) passes
if RANK == 1:
    time.sleep(60)  # a hung peer: never calls communicate (torchrun ends it once rank 0 fails)
t0 = time.perf_counter()
try:
    dec.communicate()
    save("hang", {"error": None, "seconds": time.perf_counter() - t0})
except PeerError as exc:
    save("hang", {"error": str(exc), "seconds": time.perf_counter() - t0})
    raise  # the process must still exit (no hang in the process group's teardown): torchrun ends rank 1
'''

SCENARIOS = ("mismatch", "unseeded", "procrustes", "reset", "refused", "trainer", "hang")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Runs the worker on 2 processes; returns {scenario: [rank 0's result, rank 1's result]} and the output."""
    root = tmp_path_factory.mktemp("peer")
    (root / "worker.py").write_text(WORKER)
    _, out = torchrun(2, [root / "worker.py", root, HANG_TIMEOUT], cwd=root, timeout=150)
    results = {}
    for name in SCENARIOS:
        ranks = [root / f"{name}-rank{r}.pt" for r in (0, 1)]
        results[name] = [torch.load(p, weights_only=False) if p.exists() else {"crashed": f"no {p.name}"}
                         for p in ranks]
    results["output"] = out
    return results


def _ok(results, name, ranks=(0, 1)):
    got = [results[name][r] for r in ranks]
    for r, g in zip(ranks, got):
        assert "crashed" not in g, f"rank {r} of scenario {name!r}:\n{g['crashed']}\n{results['output'][-3000:]}"
    return got


def _best_rank_r(products, r):
    """float64 LAPACK truncated SVD of the mean of the agents' products (the complete graph's consensus)."""
    mean = np.mean([P.double().numpy() for P in products], axis=0)
    U, S, Vh = np.linalg.svd(mean, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r], float(np.linalg.norm(mean))


def _assert_consensus(before, after):
    """Both ranks' products equal TSVD_r of the mean product; the dense trainables equal the mean."""
    for layer in before[0][0]:
        products = [B.double() @ A.double() for B, A in (before[0][0][layer], before[1][0][layer])]
        best, scale = _best_rank_r(products, before[0][0][layer][0].shape[1])
        assert scale > 0
        for r in (0, 1):
            B, A = after[r][0][layer]
            err = float(np.abs((B.double() @ A.double()).numpy() - best).max())
            assert err <= 1e-5 * scale, (layer, r, err, scale)
    for name in before[0][1]:
        mean = (before[0][1][name].double() + before[1][1][name].double()) / 2
        for r in (0, 1):
            assert torch.allclose(after[r][1][name].double(), mean, rtol=0, atol=1e-6 * float(mean.abs().max()))


def _payload_bytes(state) -> int:
    lora, dense = state
    return sum(t.numel() * t.element_size() for pair in lora.values() for t in pair) + \
        sum(t.numel() * t.element_size() for t in dense.values())


# ------------------------------------------------------------------------------------------------ one process


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_process_alone_counts_rounds_and_changes_nothing():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(**batch(0)).loss.backward()
    opt.step()
    before, state = _params(model), {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    dec = DecentralizedLoRA(model, "ring", "decaf", opt, moments="reset")
    assert (dec.n_agents, dec.group.world, dec.rank) == (1, 1, 0)
    for i in range(3):
        rec = dec.communicate()
        assert (rec.round, rec.communicated, rec.bytes_sent) == (i, False, 0)
    assert dec.round == 3 and dec.bytes_sent == 0
    assert _same(before, _params(model))
    assert all(torch.equal(opt.state[p][k], v) for p in opt.state for k, v in state[id(p)].items())
    saved = dec.state_dict()
    other = DecentralizedLoRA(model, torch.ones(1, 1, dtype=torch.float64), "decaf")
    other.load_state_dict(saved)
    assert other.round == 3 and other.communicate().round == 3 and other.round == 4
    with pytest.raises(ValueError, match="algorithm 'decaf', this is 'dlora'"):
        DecentralizedLoRA(model, "ring", "dlora").load_state_dict(saved)
    assert not torch.distributed.is_initialized()  # one process alone needs no process group


def _frozen_A_model():
    return tiny_model(freeze_A=True)


BAD = {
    "topology of 2 agents": (lambda: (tiny_model(), torch.full((2, 2), 0.5, dtype=torch.float64)), {},
                             ValueError, r"2 agents but this process runs alone .*torchrun --nproc-per-node 2"),
    "Topology of 4 agents": (lambda: (tiny_model(), Topology.build("ring", 4)), {},
                             ValueError, r"4 agents but this process runs alone"),
    "not a peft model": (lambda: (torch.nn.Sequential(torch.nn.Linear(4, 4)), "ring"), {},
                         ValueError, r"no LoRA layer with adapter 'default'"),
    "not a module": (lambda: ("bert", "ring"), {}, TypeError, r"model must be a torch.nn.Module"),
    "unknown algorithm": (lambda: (tiny_model(), "ring"), {"algorithm": "gossip"},
                          ValueError, r"unknown algorithm 'gossip'"),
    "dlora_fa with trainable A": (lambda: (tiny_model(), "ring"), {"algorithm": "dlora_fa"},
                                  ValueError, r"dlora_fa keeps lora_A frozen .* 4 layer\(s\) have a trainable lora_A"),
    "unknown graph": (lambda: (tiny_model(), "hypercube"), {}, ValueError, r"unknown graph 'hypercube'"),
    "W not doubly stochastic": (lambda: (tiny_model(), torch.tensor([[0.9]], dtype=torch.float64)), {},
                                ValueError, r"doubly stochastic"),
    "wire dtype": (lambda: (tiny_model(), "ring"), {"wire_dtype": torch.float16}, ValueError, r"wire_dtype must be"),
    "moments": (lambda: (tiny_model(), "ring"), {"moments": "zero"}, ValueError, r"unknown moments policy 'zero'"),
    "timeout": (lambda: (tiny_model(), "ring"), {"timeout": 0}, ValueError, r"timeout must be > 0"),
    "another model's optimizer": (lambda: (tiny_model(), "ring"),
                                  {"optimizer": torch.optim.SGD(tiny_model().parameters(), lr=0.1)},
                                  ValueError, r"optimizer does not hold 8 trainable LoRA parameter"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_anything_changes(case):
    make, kw, error, message = BAD[case]
    model, topology = make()
    before = _params(model) if isinstance(model, torch.nn.Module) else None
    with pytest.raises(error, match=message):
        DecentralizedLoRA(model, topology, **kw)
    if before is not None:
        assert _same(before, _params(model))
    assert not torch.distributed.is_initialized()


def test_dlora_fa_accepts_a_frozen_A():
    dec = DecentralizedLoRA(_frozen_A_model(), "ring", "dlora_fa")
    assert dec.algorithm.name == "dlora_fa" and not dec.algorithm.trains_A


def test_import_stays_light():
    script = ("import sys, decaf_lora\nassert decaf_lora.DecentralizedLoRA\n"
              "print('transformers' in sys.modules, 'decaf_lora.callback' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_callback_resumes_the_round_counter_from_a_checkpoint(tmp_path):
    from transformers import Trainer

    from decaf_lora.callback import STATE_FILE, DecafCallback, agent_training_arguments

    data = [{"input_ids": x, "labels": y} for x, y in zip(*batch(3, 16).values())]

    def run(comm_every, resume=None):
        args = agent_training_arguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, save_steps=2,
                                        report_to="none", disable_tqdm=True, logging_steps=2)
        model = tiny_model()
        dec = DecentralizedLoRA(model, "complete", "decaf")
        cb = DecafCallback(dec, comm_every)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
        if resume:
            cb.on_train_begin = _spy(cb.on_train_begin, lambda: starts.append(dec.round))
        trainer.train(resume_from_checkpoint=resume)
        return dec, trainer, args

    starts = []
    dec, trainer, args = run(2)
    assert args.output_dir == str(tmp_path / "agent-0") and args.world_size == 1
    assert dec.round == 2
    assert json.loads((tmp_path / "agent-0" / "checkpoint-2" / STATE_FILE).read_text())["round"] == 1
    assert [h["decaf_round"] for h in trainer.state.log_history if "loss" in h] == [1, 2]
    dec, _, _ = run(2, resume=str(tmp_path / "agent-0" / "checkpoint-2"))
    assert starts == [1] and dec.round == 2
    with pytest.raises(ValueError, match=r"says round 1 at step 2, but comm_every=1 gives round 2"):
        run(1, resume=str(tmp_path / "agent-0" / "checkpoint-2"))


def _spy(method, hook):
    def wrapped(*a, **kw):
        out = method(*a, **kw)
        hook()
        return out
    return wrapped


# ------------------------------------------------------------------------------------------------ two processes


def test_mismatched_settings_stop_every_rank(two_processes):
    for r, got in enumerate(_ok(two_processes, "mismatch")):
        assert got["error"] is not None, f"rank {r} did not stop"
        assert "different DeCAF settings" in got["error"]
        assert "algorithm: rank 0 'decaf', rank 1 'dlora'" in got["error"]


def test_a_base_model_built_differently_stops_every_rank(two_processes):
    for got in _ok(two_processes, "unseeded"):
        assert got["error"] is not None and "frozen_weights: rank 0 '" in got["error"]
        assert "algorithm" not in got["error"]  # only the differing setting is named


def test_frozen_digest_sees_the_base_model_not_the_unused_head_copy():
    reference = frozen_digest(tiny_model())
    assert frozen_digest(tiny_model(head_seed=5)) == reference  # the trained head is averaged, its frozen copy unused
    assert frozen_digest(tiny_model(seed=1)) != reference
    assert frozen_digest(tiny_model(freeze_A=True)) != reference  # dlora_fa: A must be the same everywhere


def test_decaf_on_two_processes_is_the_oracle_consensus_and_keeps_moments(two_processes):
    got = _ok(two_processes, "procrustes")
    _assert_consensus([g["before"] for g in got], [g["after"] for g in got])
    for g in got:
        assert g["round"] == 1 and g["record"]["communicated"]
        assert g["moments_after"].keys() == g["moments_before"].keys() and len(g["moments_before"]) == 10
        assert all(torch.equal(g["moments_after"][k], v) for k, v in g["moments_before"].items())


def test_reset_clears_only_the_factor_moments(two_processes):
    got = _ok(two_processes, "reset")
    _assert_consensus([g["before"] for g in got], [g["after"] for g in got])
    for g in got:
        kept = {k for k in g["moments_before"] if "lora_" not in k}
        assert kept and set(g["moments_after"]) == kept
        assert all(torch.equal(g["moments_after"][k], g["moments_before"][k]) for k in kept)


def test_bytes_sent_are_the_packed_payload(two_processes):
    for g in _ok(two_processes, "procrustes") + _ok(two_processes, "reset"):
        payload = _payload_bytes(g["before"])  # one peer: one buffer of every factor and the head, fp32
        assert payload == (4 * (32 * 4 + 4 * 32) + 3 * 32 + 3) * 4  # 4 adapted layers, the head
        assert g["record"]["bytes_sent"] == payload and g["bytes_total"] == payload
        assert g["record"]["bytes_diagnostic"] == 0
        assert g["record"]["interference"] > 0


def test_trainer_refuses_data_parallel_arguments(two_processes):
    for g in _ok(two_processes, "refused"):
        assert g["world_size"] == 2  # what plain TrainingArguments make of torchrun's environment
        assert g["error"] is not None and "DistributedDataParallel" in g["error"]
        assert "agent_training_arguments" in g["error"]


def test_trainer_agents_train_apart_and_agree_after_communication(two_processes):
    got = _ok(two_processes, "trainer")
    for r, g in enumerate(got):
        assert (g["world_size"], g["distributed_type"]) == (1, "DistributedType.NO")
        assert g["wrapped"] == "PeftModelForSequenceClassification"  # not DistributedDataParallel
        assert g["batches"] == 5  # the rank's 20 examples, unsharded, in batches of 4
        assert g["output_dir"].endswith(f"agent-{r}")
        assert g["round"] == 2 and g["bytes_total"] == 2 * _payload_bytes(g["pre"][1])
        logged = [h for h in g["log_history"] if "loss" in h]
        assert [h["decaf_round"] for h in logged] == [0, 1, 1, 2, 2]
        assert [h["decaf_bytes_sent"] for h in logged][-1] == g["bytes_total"]
    pre = [g["pre"] for g in got]
    post = [g["post"] for g in got]
    # the same initialisation (seeded) and different data: no gradient averaging means different adapters
    for step in (1, 3):
        for layer in pre[0][step][0]:
            P0, P1 = (p[step][0][layer][0] @ p[step][0][layer][1] for p in pre)
            assert float((P0 - P1).abs().max()) > 1e-3 * float(P0.abs().max()), (step, layer)
            for r in (0, 1):  # no communication at odd steps
                assert all(torch.equal(a, b) for a, b in zip(post[r][step][0][layer], pre[r][step][0][layer]))
    for step in (2, 4):
        _assert_consensus([p[step] for p in pre], [p[step] for p in post])


def test_a_hung_peer_raises_peer_error_within_the_timeout(two_processes):
    (got,) = _ok(two_processes, "hang", ranks=(0,))
    assert got["error"] is not None, "rank 0 communicated with a peer that never called communicate"
    assert "timed out after 5 s" in got["error"] and "process(es) [1]" in got["error"]
    assert HANG_TIMEOUT - 0.5 <= got["seconds"] <= HANG_TIMEOUT + 5
    assert "PeerError" in two_processes["output"]  # rank 0 exited with it; torchrun then ended rank 1



def test_the_example_runs_on_two_processes(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_decaf.py"
    assert len(example.read_text().splitlines()) < 40
    _, out = torchrun(2, [example], cwd=tmp_path, timeout=120)
    done = re.findall(r"rank (\d): last logged loss ([\d.]+), 12 DeCAF rounds, 52320 bytes sent", out)
    assert sorted(r for r, _ in done) == ["0", "1"], out[-3000:]
    assert all(float(loss) < 0.6 for _, loss in done), done  # it learns: ln 2 = 0.693 is chance
    assert (tmp_path / "runs" / "hf_decaf" / "agent-1").is_dir()
