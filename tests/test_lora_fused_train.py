"""Fused local steps (TrainConfig.fused): every agent of a process steps in one forward/backward. Without dropout the
run equals the one-agent-at-a-time loop to float rounding (losses, gradient clipping per agent, optimizer states,
communication, evaluation), for the mean-pooling head, AutoModelForSequenceClassification and a causal LM, with
trained and frozen A, and with partitions smaller than a batch. With dropout it draws from its own stream: other
numbers, the same on a rerun, the caller's RNG untouched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from decaf_lora import Trainer  # noqa: E402
from conftest import save_tiny_bert  # noqa: E402
from test_lora_tasks import _config, _tokenizer, cls_csv, lm_jsonl, tiny_bert, tiny_llama  # noqa: E402,F401


@pytest.fixture(scope="module")
def bert_no_dropout(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), _tokenizer(), dropout=0.0)


def _run(cfg):
    tr = Trainer(cfg, log=lambda *_: None)
    result = tr.run()
    return tr, result.history


def _stacks(tr):
    return [t for g in tr.stacks.groups for t in (g.B, g.A)] + list(tr.stacks.dense.values())


CASES = {
    "mean_pooling": lambda m: dict(model=m["bert"], data=m["cls"], head="mean_pooling"),
    "sequence_classification": lambda m: dict(model=m["llama"], data=m["cls"]),
    "causal_lm": lambda m: dict(model=m["llama"], data=m["lm"], task="causal_lm", prompt_column="prompt",
                                completion_column="completion"),
}


@pytest.fixture(scope="module")
def models(bert_no_dropout, tiny_llama, cls_csv, lm_jsonl):
    return {"bert": bert_no_dropout, "llama": tiny_llama, "cls": cls_csv, "lm": lm_jsonl}


RUNS = [(case, "decaf", "procrustes") for case in CASES] + [(case, "dlora_fa", "procrustes") for case in CASES] + \
    [("mean_pooling", "decaf", "reset")]


@pytest.mark.parametrize("case,algorithm,moments", RUNS)
def test_fused_steps_equal_one_agent_at_a_time(case, algorithm, moments, models, tmp_path):
    # max_grad_norm 0.05 clips most steps: the per-agent clipping is exercised
    kw = dict(CASES[case](models), algorithm=algorithm, moments=moments, max_grad_norm=0.05, rounds=2, comm_every=3)
    ref, h_ref = _run(_config(tmp_path=tmp_path / "ref", **kw))
    fused, h_fused = _run(_config(tmp_path=tmp_path / "fused", fused=True, **kw))
    for a, b in zip(h_ref, h_fused):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_acc"] == a["test_acc"]
        assert b["test_loss_mean"] == pytest.approx(a["test_loss_mean"], rel=1e-5)
        assert b["consensus_distance"] == pytest.approx(a["consensus_distance"], rel=1e-4, abs=1e-7)
    for x, y in zip(_stacks(ref), _stacks(fused)):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    for o_ref, o_fused in zip(ref.optimizers, fused.optimizers):  # the Adam moments too, as per-agent state
        s_ref, s_fused = o_ref.state_dict(), o_fused.state_dict()
        assert s_fused["param_groups"] == s_ref["param_groups"]
        assert sorted(s_fused["state"]) == sorted(s_ref["state"])
        for j, st in s_ref["state"].items():
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(s_fused["state"][j][k], st[k], rtol=1e-4, atol=1e-9)
            assert float(s_fused["state"][j]["step"]) == float(st["step"])
        if moments == "reset":  # the factors' moments were cleared at the last communication, the head's kept
            assert 0 not in s_ref["state"] and float(s_ref["state"][max(s_ref["state"])]["step"]) == 6
        else:
            assert float(s_ref["state"][0]["step"]) == 6


def test_fused_steps_pad_partitions_smaller_than_a_batch(models, tmp_path):
    # 64 examples over 4 agents (iid, test 20%): ~13 per agent, batches of 16 -> every agent's whole set, and the
    # sets differ in size, so the fused batch pads the smaller segments with rows that carry no loss
    kw = dict(CASES["mean_pooling"](models), batch_size=16, rounds=1)
    ref, h_ref = _run(_config(tmp_path=tmp_path / "ref", **kw))
    sizes = {len(p) for p in ref.exp.parts}
    assert len(sizes) > 1 and max(sizes) < 16, sizes
    fused, h_fused = _run(_config(tmp_path=tmp_path / "fused", fused=True, **kw))
    assert h_fused[0]["train_loss"] == pytest.approx(h_ref[0]["train_loss"], rel=1e-5)
    for x, y in zip(_stacks(ref), _stacks(fused)):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)


def test_a_fused_run_resumes_bit_for_bit(tiny_bert, cls_csv, tmp_path):
    # with dropout: the fused stream of each round is a function of the seed and the round, so a resumed run draws
    # what the uninterrupted one drew; the optimizer comes back from per-agent state
    kw = dict(model=tiny_bert, data=cls_csv, head="mean_pooling", lora_dropout=0.1, fused=True, checkpoint_every=1)
    full, h_full = _run(_config(tmp_path=tmp_path / "full", rounds=3, **kw))
    _run(_config(tmp_path=tmp_path / "cut", rounds=2, **kw))
    resumed = Trainer(_config(tmp_path=tmp_path / "cut", rounds=3, **kw), log=lambda *_: None)
    h_resumed = resumed.run(resume=True).history
    assert h_resumed[-1]["train_loss"] == h_full[-1]["train_loss"]
    for x, y in zip(_stacks(full), _stacks(resumed)):
        assert torch.equal(x, y)


def test_fused_steps_with_dropout_have_their_own_stream(tiny_bert, cls_csv, tmp_path):
    kw = dict(model=tiny_bert, data=cls_csv, head="mean_pooling", lora_dropout=0.1, rounds=1)
    torch.manual_seed(7)
    caller = torch.get_rng_state()
    _, h1 = _run(_config(tmp_path=tmp_path / "a", fused=True, **kw))
    assert torch.equal(torch.get_rng_state(), caller)
    _, h2 = _run(_config(tmp_path=tmp_path / "b", fused=True, **kw))
    _, h_ref = _run(_config(tmp_path=tmp_path / "c", **kw))
    assert h1[0]["train_loss"] == h2[0]["train_loss"]  # a rerun gives the same numbers
    assert h1[0]["train_loss"] != h_ref[0]["train_loss"]  # the dropout masks are not the per-agent streams'
    assert h1[0]["train_loss"] == pytest.approx(h_ref[0]["train_loss"], rel=0.2)


def test_fused_steps_refuse_a_loss_of_yours(models, tmp_path):
    cfg = _config(tmp_path=tmp_path, fused=True, **CASES["mean_pooling"](models))
    with pytest.raises(ValueError, match="fused=True .* loss function of yours"):
        Trainer(cfg, loss=lambda model, batch: model(**batch).sum(), log=lambda *_: None)


def test_stacked_adamw_is_n_adamws_and_keeps_per_agent_state():
    from decaf_lora.fused import StackedAdamW

    g = torch.Generator().manual_seed(0)
    n, shapes = 3, [(4, 2), (5,)]
    leaves = [torch.randn(n, *s, generator=g).requires_grad_() for s in shapes]
    params = [[torch.nn.Parameter(t[i].detach().clone()) for t in leaves] for i in range(n)]
    hyper = dict(lr=1e-2, weight_decay=0.1)
    stacked = StackedAdamW(leaves, **hyper)
    alone = [torch.optim.AdamW(p, **hyper) for p in params]
    for _ in range(3):
        grads = [torch.randn(t.shape, generator=g) for t in leaves]
        for t, gr in zip(leaves, grads):
            t.grad = gr.clone()
        stacked.step()
        for i, (p, opt) in enumerate(zip(params, alone)):
            for x, gr in zip(p, grads):
                x.grad = gr[i].clone()
            opt.step()
    for i in range(n):
        for t, x in zip(leaves, params[i]):
            torch.testing.assert_close(t[i], x, rtol=0, atol=1e-7)
        mine, theirs = stacked.agents[i].state_dict(), alone[i].state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for j in theirs["state"]:
            for k, v in theirs["state"][j].items():
                torch.testing.assert_close(mine["state"][j][k], v, rtol=0, atol=1e-7)
    # per-agent states load back into a fresh stacked optimizer; agents at different steps are refused
    fresh = StackedAdamW([t.detach().clone().requires_grad_() for t in leaves], **hyper)
    for i in range(n):
        fresh.agents[i].load_state_dict(alone[i].state_dict())
    for t, u in zip(leaves, fresh.leaves):
        torch.testing.assert_close(fresh.opt.state[u]["exp_avg"], stacked.opt.state[t]["exp_avg"], rtol=0, atol=0)
    behind = alone[1].state_dict()
    behind["state"][0]["step"] = torch.tensor(2.0)
    with pytest.raises(ValueError, match="different steps"):
        fresh.agents[1].load_state_dict(behind)
