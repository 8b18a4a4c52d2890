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


@pytest.mark.parametrize("algorithm", ["decaf", "dlora_fa"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_steps_equal_one_agent_at_a_time(case, algorithm, models, tmp_path):
    # max_grad_norm 0.05 clips most steps: the per-agent clipping is exercised
    kw = dict(CASES[case](models), algorithm=algorithm, max_grad_norm=0.05, rounds=2, comm_every=3)
    ref, h_ref = _run(_config(tmp_path=tmp_path / "ref", **kw))
    fused, h_fused = _run(_config(tmp_path=tmp_path / "fused", fused=True, **kw))
    for a, b in zip(h_ref, h_fused):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_acc"] == a["test_acc"]
        assert b["test_loss_mean"] == pytest.approx(a["test_loss_mean"], rel=1e-5)
        assert b["consensus_distance"] == pytest.approx(a["consensus_distance"], rel=1e-4, abs=1e-7)
    for x, y in zip(_stacks(ref), _stacks(fused)):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6)
    for o_ref, o_fused in zip(ref.optimizers, fused.optimizers):  # the Adam moments too
        for s_ref, s_fused in zip(o_ref.state.values(), o_fused.state.values()):
            torch.testing.assert_close(s_fused["exp_avg"], s_ref["exp_avg"], rtol=1e-4, atol=1e-7)
            assert float(s_fused["step"]) == float(s_ref["step"]) == 6


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
