"""decaf_lora's training loop: algorithm identities, optimizer-state policies, determinism, resume, export, the CLI
and bad input. Most tests use a tiny BERT built from a config (no download) and a small synthetic CSV task."""

from __future__ import annotations

import csv
import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="decaf_lora needs the [lora] extra (transformers, peft)")
pytest.importorskip("peft", reason="decaf_lora needs the [lora] extra (transformers, peft)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import save_tiny_bert  # noqa: E402
from decaf_lora import TrainConfig, Trainer, algorithms as ALG  # noqa: E402
from decaf_lora import cli  # noqa: E402
from decaf_lora.adapters import AgentStacks  # noqa: E402
from decaf_lora.graphs import Topology, mixing_matrix  # noqa: E402
from decaf_lora.exports import load_exported  # noqa: E402
from decaf_lora.models import BUILTIN_MODEL, build_lora_classifier, load_tokenizer  # noqa: E402
from decaf_lora.trainer import Experiment, compare  # noqa: E402

WORDNET = Path("/usr/share/wordnet/data.noun")

CLASSES = {
    "animal": ["dog", "cat", "horse", "bird", "fish", "mouse", "tiger", "sheep"],
    "food": ["bread", "cheese", "apple", "soup", "rice", "cake", "butter", "salad"],
    "tool": ["hammer", "saw", "drill", "wrench", "knife", "spade", "chisel", "axe"],
    "place": ["city", "river", "valley", "island", "forest", "harbour", "desert", "village"],
}
FILLER = ["a", "the", "some", "kind", "of", "small", "large", "old", "common", "used", "found", "in", "with"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 32 and the MiniLM tokenizer, saved like any local transformers model."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), load_tokenizer(BUILTIN_MODEL))


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> str:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("data") / "train.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _ in range(40):
            for label, words in CLASSES.items():
                text = " ".join(rng.sample(FILLER, 3) + rng.sample(words, 2) + rng.sample(FILLER, 2))
                w.writerow([text, label])
    return str(path)


def tiny_config(tiny_model, tiny_csv, tmp_path, **kw) -> TrainConfig:
    base = dict(model=tiny_model, data=tiny_csv, agents=4, graph="ring", rank=4, lora_alpha=8.0, rounds=3,
                comm_every=2, batch_size=8, lr=5e-3, eval_every=1, max_length=16, partition="dirichlet",
                dirichlet_alpha=0.5, out_dir=str(tmp_path / "runs"), progress=False, checkpoint_every=0,
                target_modules=["query", "value", "dense"], head="mean_pooling")
    base.update(kw)
    return TrainConfig(**base)


def _products(stacks: AgentStacks) -> list[torch.Tensor]:
    return [sB @ A for sB, A in stacks.scaled()]


def _randomise(stacks: AgentStacks, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for grp in stacks.groups:
            grp.B.copy_(torch.randn(grp.B.shape, generator=g))
            grp.A.copy_(torch.randn(grp.A.shape, generator=g))
        for t in stacks.dense.values():
            t.copy_(torch.randn(t.shape, generator=g))


@pytest.fixture()
def stacks(tiny_model):
    model = build_lora_classifier(tiny_model, 4, rank=4, lora_alpha=8.0, target_modules=["query", "value", "dense"])
    st = AgentStacks(model, 4)
    _randomise(st)
    return st


# ------------------------------------------------------------------------------------------------ structure


def test_stacks_group_layers_by_shape_and_copy_init(tiny_model):
    model = build_lora_classifier(tiny_model, 3, rank=4, lora_alpha=8.0, target_modules=["query", "value", "dense"])
    st = AgentStacks(model, 5)
    shapes = sorted((g.d, g.r, g.k, len(g.names)) for g in st.groups)
    # 32x32: query, value, attention-output dense (2 blocks each) and the pooler's dense; intermediate dense 64x32;
    # output dense 32x64
    assert shapes == [(32, 4, 32, 7), (32, 4, 64, 2), (64, 4, 32, 2)]
    assert st.num_layers == 11
    for g in st.groups:
        assert torch.equal(g.B[0], g.B[4]) and torch.equal(g.A[1], g.A[3])
        assert float(g.B.abs().max()) == 0.0  # peft's init: B = 0
        assert float(g.A.abs().max()) > 0.0
        assert torch.allclose(g.scaling, torch.full_like(g.scaling, 8.0 / 4))
    assert any("classifier" in n for n in st.dense)


def test_rslora_scaling_is_alpha_over_sqrt_r(tiny_model):
    model = build_lora_classifier(tiny_model, 3, rank=4, lora_alpha=8.0, target_modules=["query"], use_rslora=True)
    st = AgentStacks(model, 2)
    assert torch.allclose(st.groups[0].scaling, torch.full((2,), 8.0 / 2.0, dtype=torch.float64))


def test_load_agent_and_gather_grads_roundtrip(stacks):
    stacks.load_agent(2)
    g = stacks.groups[0]
    lora_A, lora_B = g.modules[1]
    assert torch.equal(lora_B.weight, g.B[2, 1]) and torch.equal(lora_A.weight, g.A[2, 1])
    params = stacks.agent_parameters(2)
    assert params[0].data_ptr() == g.B[2].data_ptr()  # aliases: an optimizer step updates the stack itself
    x = {"input_ids": torch.randint(0, 1000, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    stacks.model(**x).sum().backward()
    expected = lora_B.weight.grad.clone()
    stacks.gather_grads(params)
    assert torch.equal(params[0].grad[1], expected)
    assert lora_B.weight.grad is None  # the model's grads were handed over


def test_rank_above_layer_size_is_rejected(tiny_model):
    model = build_lora_classifier(tiny_model, 3, rank=40, lora_alpha=8.0, target_modules=["query"])
    with pytest.raises(ValueError, match=r"rank r=40 is above the size of layer .*32 x 32"):
        AgentStacks(model, 2)


# ------------------------------------------------------------------------------------------------ algorithm identities


def test_complete_graph_decaf_equals_exact_server_average(stacks):
    W = Topology.build("complete", 4).matrix(0)
    assert torch.equal(W, torch.full((4, 4), 0.25, dtype=torch.float64))
    before = stacks.state_dict()
    ALG.make_algorithm("decaf").communicate(stacks, W)
    decaf = _products(stacks)
    stacks.load_state_dict(before)
    alg = ALG.make_algorithm("exact_avg")
    alg.communicate(stacks, alg.mixing(Topology.build("ring", 4), 0))
    exact = _products(stacks)
    # and both are the best rank-r approximation of the mean product, agreed on by every agent
    stacks.load_state_dict(before)
    for P_decaf, P_exact, (sB, A) in zip(decaf, exact, stacks.scaled()):
        mean = (sB @ A).mean(0)
        U, S, Vh = torch.linalg.svd(mean)
        r = sB.shape[-1]
        best = (U[..., :r] * S[..., None, :r]) @ Vh[..., :r, :]
        scale = float(mean.norm())
        assert float((P_decaf - P_exact).abs().max()) <= 1e-5 * scale
        assert float((P_decaf - best.unsqueeze(0)).abs().max()) <= 1e-5 * scale


def test_dlora_fa_gossip_is_exact_and_keeps_A(stacks):
    with torch.no_grad():
        for g in stacks.groups:
            g.A.copy_(g.A[:1].expand_as(g.A))  # DLoRA-FA: A shared by all agents
    W = mixing_matrix(Topology.build("ring", 4).adjacency)
    mixed_products = [torch.einsum("ij,jlmn->ilmn", W, P) for P in _products(stacks)]
    A_before = [g.A.clone() for g in stacks.groups]
    alg = ALG.make_algorithm("dlora_fa")
    alg.communicate(stacks, W)
    for P, target in zip(_products(stacks), mixed_products):
        assert float((P - target).abs().max()) <= 1e-5 * float(target.abs().max())
    for g, A0 in zip(stacks.groups, A_before):
        assert torch.equal(g.A, A0)
    full = stacks.payload_bytes()
    assert alg.bytes_sent(stacks, W) == 8 * stacks.payload_bytes(include_A=False) < 8 * full


def test_dlora_mixes_each_factor(stacks):
    W = mixing_matrix(Topology.build("star", 4).adjacency)
    B0 = [g.B.clone() for g in stacks.groups]
    A0 = [g.A.clone() for g in stacks.groups]
    ALG.make_algorithm("dlora").communicate(stacks, W)
    for g, B, A in zip(stacks.groups, B0, A0):
        assert torch.allclose(g.B, torch.einsum("ij,j...->i...", W.float(), B), atol=1e-6)
        assert torch.allclose(g.A, torch.einsum("ij,j...->i...", W.float(), A), atol=1e-6)


def test_fedavg_makes_every_agent_the_factor_mean(stacks):
    alg = ALG.make_algorithm("fedavg")
    W = alg.mixing(Topology.build("ring", 4), 3)
    means = [(g.B.mean(0), g.A.mean(0)) for g in stacks.groups]
    dense_mean = {n: t.mean(0) for n, t in stacks.dense.items()}
    alg.communicate(stacks, W)
    for g, (Bm, Am) in zip(stacks.groups, means):
        assert torch.allclose(g.B, Bm.expand_as(g.B), atol=1e-6) and torch.allclose(g.A, Am.expand_as(g.A), atol=1e-6)
    for n, t in stacks.dense.items():
        assert torch.allclose(t, dense_mean[n].expand_as(t), atol=1e-6)
    assert alg.bytes_sent(stacks, W) == 2 * 4 * stacks.payload_bytes()


def test_local_never_communicates(stacks):
    alg = ALG.make_algorithm("local")
    assert alg.mixing(Topology.build("ring", 4), 0) is None
    before = stacks.state_dict()
    alg.communicate(stacks, None)
    after = stacks.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(before["B"] + before["A"], after["B"] + after["A"]))
    assert alg.bytes_sent(stacks, None) == 0


def test_decaf_removes_interference_dlora_keeps_it(stacks):
    W = mixing_matrix(Topology.build("ring", 4).adjacency)
    target = [torch.einsum("ij,jlmn->ilmn", W, P) for P in _products(stacks)]
    before = stacks.state_dict()
    ALG.make_algorithm("dlora").communicate(stacks, W)
    err_dlora = max(float((P - T).norm() / T.norm()) for P, T in zip(_products(stacks), target))
    stacks.load_state_dict(before)
    ALG.make_algorithm("decaf").communicate(stacks, W)
    # DeCAF's B'A' is the best rank-r approximation of the mix; with random factors of 3 neighbours the mix has
    # rank 3r, so compare against the truncation, not the mix itself
    for P, T in zip(_products(stacks), target):
        U, S, Vh = torch.linalg.svd(T)
        r = 4
        best = (U[..., :r] * S[..., None, :r]) @ Vh[..., :r, :]
        assert float((P - best).norm() / best.norm()) <= 1e-5
    assert err_dlora > 0.1  # random factors: DLoRA's product of means is far from the mean of products


def test_procrustes_alignment_keeps_products_and_recovers_rotations():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(3, 2, 20, 4, generator=g, dtype=torch.float64)
    A = torch.randn(3, 2, 4, 15, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64))
    B2, A2 = ALG.align_factors(B @ Q, Q.mT @ A, B, A)
    assert torch.allclose(B2, B, atol=1e-12) and torch.allclose(A2, A, atol=1e-12)
    # a generic re-factorisation: the product is unchanged and the factors move no further than before
    Bn = torch.randn(3, 2, 20, 4, generator=g, dtype=torch.float64)
    An = torch.randn(3, 2, 4, 15, generator=g, dtype=torch.float64)
    Ba, Aa = ALG.align_factors(Bn, An, B, A)
    assert torch.allclose(Ba @ Aa, Bn @ An, atol=1e-10)

    def dist(X, Y):
        return (X - B).pow(2).sum((-1, -2)) + (Y - A).pow(2).sum((-1, -2))

    assert bool((dist(Ba, Aa) <= dist(Bn, An) + 1e-9).all())


def test_null_directions_are_revived_without_changing_products():
    B_new = torch.randn(2, 1, 6, 3)
    A_new = torch.randn(2, 1, 3, 5)
    B_new[0, 0, :, 2] = 0
    A_new[0, 0, 2, :] = 0
    A_old = torch.randn(2, 1, 3, 5)
    A_fixed = ALG.revive_null_directions(B_new, A_new, A_old)
    assert torch.equal(A_fixed[0, 0, 2], A_old[0, 0, 2])
    assert torch.equal(A_fixed[1], A_new[1]) and torch.equal(A_fixed[0, 0, :2], A_new[0, 0, :2])
    assert torch.equal(B_new @ A_fixed, B_new @ A_new)


def test_first_decaf_round_from_peft_init_keeps_adapters_trainable(tiny_model, tiny_csv, tmp_path):
    """peft starts B at 0; if an agent's product is still 0 at a consensus, its factors must not all die."""
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1, lr=1e-30)
    tr = Trainer(cfg, log=lambda *_: None)
    tr.run()
    for g in tr.stacks.groups:
        assert float(g.A.abs().max()) > 0  # the A rows came back from before the consensus


# ------------------------------------------------------------------------------------------------ optimizer state


def test_reset_policy_clears_factor_moments_only(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1, moments="reset")
    tr = Trainer(cfg, log=lambda *_: None)
    tr.run()
    n_factor = 2 * len(tr.stacks.groups)
    for opt, params in zip(tr.optimizers, tr.params):
        assert all(p not in opt.state for p in params[:n_factor])
        assert all(p in opt.state for p in params[n_factor:])  # the head's basis does not change: moments kept


def test_procrustes_policy_keeps_moments(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1, moments="procrustes")
    tr = Trainer(cfg, log=lambda *_: None)
    tr.run()
    assert all(p in opt.state for opt, params in zip(tr.optimizers, tr.params) for p in params)


# ------------------------------------------------------------------------------------------------ runs


def _final_state(tr: Trainer):
    return [t.clone() for g in tr.stacks.groups for t in (g.B, g.A)] + [t.clone() for t in tr.stacks.dense.values()]


def _strip_time(history):
    """The history without what the clock and the process measured (wall_time, the per-round time split, peak
    memory)."""
    return [{k: v for k, v in h.items() if k != "wall_time" and not k.startswith(("time_", "peak_"))}
            for h in history]


def test_runs_are_deterministic_under_a_seed(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", lora_dropout=0.1)
    a = Trainer(cfg.replace(out_dir=str(tmp_path / "a")), log=lambda *_: None)
    ra = a.run()
    b = Trainer(cfg.replace(out_dir=str(tmp_path / "b")), log=lambda *_: None)
    rb = b.run()
    assert _strip_time(ra.history) == _strip_time(rb.history)
    assert all(torch.equal(x, y) for x, y in zip(_final_state(a), _final_state(b)))
    c = Trainer(cfg.replace(out_dir=str(tmp_path / "c"), seed=1), log=lambda *_: None)
    c.run()
    assert not all(torch.equal(x, y) for x, y in zip(_final_state(a), _final_state(c)))


@pytest.mark.parametrize("algorithm", ["decaf", "dlora"])
def test_resume_reproduces_the_uninterrupted_run(tiny_model, tiny_csv, tmp_path, algorithm):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm=algorithm, rounds=4, checkpoint_every=2,
                      lora_dropout=0.1, time_varying="matching", graph="complete")
    full = Trainer(cfg.replace(out_dir=str(tmp_path / "full")), log=lambda *_: None)
    r_full = full.run()
    part_cfg = cfg.replace(out_dir=str(tmp_path / "part"))
    Trainer(part_cfg.replace(rounds=2), log=lambda *_: None).run()
    resumed = Trainer(part_cfg, log=lambda *_: None)
    r_res = resumed.run(resume=True)
    assert all(torch.equal(x, y) for x, y in zip(_final_state(full), _final_state(resumed)))
    assert _strip_time(r_res.history) == _strip_time(r_full.history)
    lines = [json.loads(x) for x in (Path(part_cfg.out_dir) / algorithm / "log.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines if x["event"] == "round"] == [1, 2, 3, 4]


def test_checkpoint_of_another_config_is_refused_before_training(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1, checkpoint_every=1)
    Trainer(cfg, log=lambda *_: None).run()
    ckpt = Path(cfg.out_dir) / "decaf" / "checkpoint.pt"
    saved = ckpt.read_bytes()
    other = Trainer(cfg.replace(lr=1e-3, rounds=2), log=lambda *_: None)
    with pytest.raises(ValueError, match=r"another configuration \(lr: checkpoint 0.005, now 0.001\)"):
        other.run(resume=True)
    assert other.round == 0 and ckpt.read_bytes() == saved
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg, log=lambda *_: None).run()  # a forgotten --resume never overwrites a run
    assert ckpt.read_bytes() == saved


def test_checkpoint_write_is_atomic(tiny_model, tiny_csv, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora", rounds=1, checkpoint_every=1)
    tr = Trainer(cfg, log=lambda *_: None)
    tr.run()
    ckpt = Path(cfg.out_dir) / "dlora" / "checkpoint.pt"
    saved = ckpt.read_bytes()

    def torn_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint(ckpt)
    assert ckpt.read_bytes() == saved
    assert [p.name for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_metrics_logged_every_round(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, rounds=3, eval_every=2)
    results = compare(cfg, ["decaf", "dlora", "local", "fedavg"], log=lambda *_: None)
    by = {r.algorithm: r for r in results}
    for r in results:
        assert [h["round"] for h in r.history] == [1, 2, 3]
        assert [h["test_acc_mean"] is not None for h in r.history] == [False, True, True]
        ev = r.history[-1]
        assert 0 <= ev["test_acc_min"] <= ev["test_acc_mean"] <= ev["test_acc_max"] <= 1
        assert len(ev["test_acc"]) == 4
        assert all(h["train_loss"] > 0 for h in r.history)
    assert by["local"].history[-1]["bytes_total"] == 0 and by["local"].history[-1]["interference_rel"] is None
    assert by["fedavg"].history[-1]["consensus_distance"] <= 1e-6 * max(by["local"].history[-1]["consensus_distance"], 1)
    assert by["local"].history[-1]["consensus_distance"] > 0
    ring_msgs = 8  # 4 agents on a ring: 8 directed messages per round
    per_round = by["dlora"].history[0]["bytes"]
    assert per_round == by["decaf"].history[0]["bytes"] and per_round % ring_msgs == 0
    assert by["dlora"].history[-1]["bytes_total"] == 3 * per_round


def test_dlora_fa_never_changes_A_during_training(tiny_model, tiny_csv, tmp_path):
    tr = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora_fa", rounds=2), log=lambda *_: None)
    A0 = [g.A.clone() for g in tr.stacks.groups]
    tr.run()
    assert all(torch.equal(g.A, a) for g, a in zip(tr.stacks.groups, A0))
    assert any(float(g.B.abs().max()) > 0 for g in tr.stacks.groups)


def test_complete_graph_training_decaf_matches_exact_avg(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, graph="complete", rounds=2)
    res = {r.algorithm: r for r in compare(cfg, ["decaf", "exact_avg"], log=lambda *_: None)}
    for hd, he in zip(res["decaf"].history, res["exact_avg"].history):
        assert hd["train_loss"] == pytest.approx(he["train_loss"], rel=1e-4)
        assert hd["test_acc_mean"] == pytest.approx(he["test_acc_mean"], abs=1e-9)
    # the same products; only the bill differs (N(N-1) messages vs 2N through a server)
    assert res["decaf"].history[0]["bytes"] * 2 == res["exact_avg"].history[0]["bytes"] * 3


def test_export_loads_back_with_peft(tiny_model, tiny_csv, tmp_path):
    tr = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1), log=lambda *_: None)
    tr.run()
    batch = tr.exp.test_tok.batch(torch.arange(6))
    for agent in (2, "average"):
        path = tr.export(tmp_path / f"export-{agent}", agent=agent)
        if agent == "average":
            tr.stacks.load_factors(*tr.averaged_adapter())
        else:
            tr.stacks.load_agent(agent)
        tr.model.eval()
        with torch.no_grad():
            expected = tr.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        model, info = load_exported(path)
        with torch.no_grad():
            got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert info["agent"] == agent and info["label_names"] == tr.exp.label_names
        assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="agent must be"):
        tr.export(tmp_path / "bad", agent=9)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_configs_fail_before_training(tiny_model, tiny_csv, tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm 'fedprox'"):
        tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="fedprox")
    with pytest.raises(ValueError, match="unknown algorithm 'x'"):
        tiny_config(tiny_model, tiny_csv, tmp_path, algorithms=["decaf", "x"])
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        tiny_config(tiny_model, tiny_csv, tmp_path, rounds=0)
    adj = tmp_path / "two_islands.txt"
    adj.write_text("0 1 0 0\n1 0 0 0\n0 0 0 1\n0 0 1 0\n")
    with pytest.raises(ValueError, match="not connected"):
        Experiment(tiny_config(tiny_model, tiny_csv, tmp_path, graph="custom", adjacency=str(adj)), log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        Experiment(tiny_config(tiny_model, tiny_csv, tmp_path, data=str(tmp_path / "missing.csv")), log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        Experiment(tiny_config(tiny_model, tiny_csv, tmp_path, data="wordnet", wordnet_path=str(tmp_path / "none")),
                   log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, model=str(tmp_path / "nomodel")), log=lambda *_: None)
    with pytest.raises(ValueError, match="rank r=64 is above"):
        Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, rank=64), log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # nothing was written


# ------------------------------------------------------------------------------------------------ command line


def test_cli_train_and_compare(tiny_model, tiny_csv, tmp_path, capsys):
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps({"model": tiny_model, "data": tiny_csv, "agents": 4, "rank": 4, "rounds": 2,
                                    "comm-every": 1, "batch_size": 8, "max_length": 16, "eval_every": 1,
                                    "target_modules": ["query", "value"], "out_dir": str(tmp_path / "out")}))
    assert cli.main(["train", "--config", str(cfg_file), "--algorithm", "dlora", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dlora" in out and "acc mean" in out
    for name in ("summary.csv", "plot.png", "dlora/log.jsonl", "dlora/checkpoint.pt", "dlora/adapter/decaf_export.json"):
        assert (tmp_path / "out" / name).exists(), name
    # a second run into the same folder needs --resume or --overwrite
    assert cli.main(["train", "--config", str(cfg_file), "--algorithm", "dlora", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(cfg_file), "--algorithm", "dlora", "--no-progress", "--resume",
                     "--rounds", "3"]) == 0
    lines = (tmp_path / "out" / "dlora" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x).get("round") for x in lines] == [None, 1, 2, 3]
    assert cli.main(["compare", "--config", str(cfg_file), "--algorithms", "decaf,local", "--no-progress",
                     "--graph", "star"]) == 0
    table = capsys.readouterr().out
    assert "decaf" in table and "local" in table
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [r["algorithm"] for r in rows] == ["decaf", "local"]


def test_cli_reports_bad_input(tmp_path, capsys):
    assert cli.main(["train", "--algorithm", "nope", "--no-progress"]) == 2
    assert "unknown algorithm 'nope'" in capsys.readouterr().err
    bad = tmp_path / "c.yaml"
    bad.write_text("agents: 4\nlearning_rate: 0.1\n")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err
    assert cli.main(["graph", "--graph", "ring", "--agents", "6"]) == 0
    out = capsys.readouterr().out
    assert '"spectral_gap"' in out and len(out.strip().splitlines()[-1].split()) == 6


# ------------------------------------------------------------------------------------------------ built-in default


@pytest.mark.skipif(not WORDNET.exists(), reason="Debian's wordnet-base is not installed (make test installs it as root)")
def test_builtin_default_smoke(tmp_path):
    """The built-in task end to end (real WordNet glosses, the real all-MiniLM-L6-v2) on a few examples."""
    cfg = TrainConfig(train_size=64, test_size=26, rounds=1, comm_every=1, batch_size=8, agents=4, eval_every=1,
                      out_dir=str(tmp_path / "runs"), progress=False, checkpoint_every=1)
    assert cfg.model == BUILTIN_MODEL and cfg.data == "wordnet" and cfg.partition == "dirichlet"
    messages = []
    res = compare(cfg, ["decaf", "dlora"], log=messages.append)
    assert "WordNet noun supersenses" in messages[0] and "26 classes" in messages[0]
    for r in res:
        h = r.history[-1]
        assert h["test_acc_mean"] is not None and 0 <= h["test_acc_mean"] <= 1
        assert h["consensus_distance"] > 0 and h["bytes"] > 0
    assert res[0].history[-1]["consensus_distance"] != res[1].history[-1]["consensus_distance"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu_consensus(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="decaf", rounds=1, device="cuda")
    tr = Trainer(cfg, log=lambda *_: None)
    res = tr.run()
    assert res.history[-1]["test_acc_mean"] is not None
    assert all(g.B.is_cuda for g in tr.stacks.groups)


def test_hugging_face_datasets_through_experiment(tiny_model, tiny_csv, tmp_path):
    from decaf_lora.data import from_hf, load_text_file

    class FakeHF:  # the part of datasets.Dataset that from_hf reads
        def __init__(self, rows):
            self.rows = rows
            self.column_names = ["text", "label"]

        def __len__(self):
            return len(self.rows["text"])

        def __getitem__(self, col):
            return self.rows[col]

    ds = load_text_file(tiny_csv)
    rows = {"text": ds.texts, "label": [ds.label_names[i] for i in ds.labels.tolist()]}
    train, test = from_hf(FakeHF(rows)), from_hf(FakeHF({k: v[:40] for k, v in rows.items()}))
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, data="ignored-when-datasets-are-given", rounds=1)
    exp = Experiment(cfg, train=train, test=test, log=lambda *_: None)
    assert len(exp.test) == 40 and exp.label_names == sorted(CLASSES)
    res = compare(cfg, ["dlora"], experiment=exp, log=lambda *_: None)
    assert res[0].history[-1]["test_acc_mean"] is not None
    # a datasets object goes in as it is, read with the config's columns; without test, test_fraction is held out
    alone = Experiment(cfg.replace(test_fraction=0.25), train=FakeHF(rows), log=lambda *_: None)
    assert (len(alone.train), len(alone.test)) == (len(ds) - round(0.25 * len(ds)), round(0.25 * len(ds)))
    assert alone.label_names == exp.label_names
    # a networkx graph (or a Topology) as the graph; config.weights makes W
    nx = pytest.importorskip("networkx")
    from decaf_lora import Topology

    ring = Experiment(cfg.replace(graph="complete"), train=train, test=test, graph=nx.cycle_graph(cfg.agents),
                      log=lambda *_: None)
    assert torch.equal(ring.topology.W, Topology.build("ring", cfg.agents, weights=cfg.weights).W)
    star = Topology.build("star", cfg.agents)
    assert Experiment(cfg, train=train, test=test, graph=star, log=lambda *_: None).topology is star
    with pytest.raises(ValueError, match="does not match the networkx graph"):
        Experiment(cfg, train=train, test=test, graph=nx.cycle_graph(cfg.agents + 1), log=lambda *_: None)
    with pytest.raises(ValueError, match="test was given without train"):
        Experiment(cfg, test=test, log=lambda *_: None)
    with pytest.raises(TypeError, match="train must be a TextDataset"):
        Experiment(cfg, train=rows, log=lambda *_: None)


def test_cli_flags_override_the_config_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("agents: 6\ntime_varying: matching\nlr: 0.01\nmax_grad_norm: 2.0\n")
    parser = cli.build_parser()
    cfg = cli._config_from_args(parser.parse_args(["train", "--config", str(cfg_file), "--lr", "0.02"]))
    assert (cfg.agents, cfg.time_varying, cfg.lr, cfg.max_grad_norm) == (6, "matching", 0.02, 2.0)
    cfg = cli._config_from_args(parser.parse_args(["train", "--config", str(cfg_file), "--time-varying", "none",
                                                   "--max-grad-norm", "none", "--target-modules", "query,key"]))
    assert cfg.time_varying is None and cfg.max_grad_norm is None and cfg.target_modules == ["query", "key"]
    assert cli._config_from_args(parser.parse_args(["compare"])) == TrainConfig()


def test_independent_A_gives_each_agent_its_own_draw_by_its_index(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, a_init="independent", rounds=1, algorithm="dlora")
    shared = Trainer(cfg.replace(a_init="shared"), log=lambda *_: None)
    a = Trainer(cfg, log=lambda *_: None)
    for g, g0 in zip(a.stacks.groups, shared.stacks.groups):
        assert torch.equal(g.B, g0.B) and not g.B.any()  # B starts at 0 either way
        bound = 1.0 / g.k ** 0.5
        assert g.A.abs().max() <= bound and g.A.std() == pytest.approx(bound / 3 ** 0.5, rel=0.1)
        assert all(not torch.equal(g.A[i], g.A[j]) for i in range(4) for j in range(i))
        assert torch.equal(g0.A[0], g0.A[3])  # shared: everyone starts from the model's A
    # a function of the seed and the agent's index alone: the same with 6 agents, another with another seed
    six = Trainer(cfg.replace(agents=6), log=lambda *_: None)
    other = Trainer(cfg.replace(seed=1), log=lambda *_: None)
    for g, g6, go in zip(a.stacks.groups, six.stacks.groups, other.stacks.groups):
        assert torch.equal(g.A, g6.A[:4]) and not torch.equal(g.A, go.A)
    assert cfg.run_hash() != cfg.replace(a_init="shared").run_hash()
    last = a.run().history[-1]
    assert math.isfinite(last["train_loss"]) and last["interference_rel"] > 0
    with pytest.raises(ValueError, match="a_init"):
        cfg.replace(a_init="random")
