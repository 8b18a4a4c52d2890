"""decaf_lora.fused: every agent's forward pass in one pass over the shared model equals the per-agent passes
(the model loaded with each agent's adapter in turn), for the mean-pooling head, AutoModelForSequenceClassification
and a causal LM; the trainer's evaluation, which uses it, equals evaluating the agents one by one."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from decaf_lora import Trainer  # noqa: E402
from decaf_lora.fused import StackedAgents, repeat_batch  # noqa: E402
from decaf_lora.tasks import add_sums  # noqa: E402
from test_lora_tasks import _config, _logits, cls_csv, lm_jsonl, tiny_bert, tiny_llama  # noqa: E402,F401


def _spread(tr, seed=0):
    """Give every agent different factors and head (the stacks start equal, B = 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for grp in tr.stacks.groups:
            grp.B.add_(0.05 * torch.randn(grp.B.shape, generator=g))
            grp.A.add_(0.05 * torch.randn(grp.A.shape, generator=g))
        for t in tr.stacks.dense.values():
            t.add_(0.05 * torch.randn(t.shape, generator=g))


def _one_by_one(tr, batch):
    out = []
    for slot in range(len(tr.local)):
        tr.stacks.load_agent(slot)
        out.append(_logits(tr.model, batch))
    return out


CASES = {
    "mean_pooling": lambda m: dict(model=m["bert"], data=m["cls"], head="mean_pooling"),
    "sequence_classification": lambda m: dict(model=m["llama"], data=m["cls"]),
    "causal_lm": lambda m: dict(model=m["llama"], data=m["lm"], task="causal_lm", prompt_column="prompt",
                                completion_column="completion"),
}


@pytest.fixture
def models(tiny_bert, tiny_llama, cls_csv, lm_jsonl):
    return {"bert": tiny_bert, "llama": tiny_llama, "cls": cls_csv, "lm": lm_jsonl}


@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_gives_every_agents_logits(case, models, tmp_path):
    tr = Trainer(_config(**CASES[case](models), tmp_path=tmp_path, agents=3), log=lambda *_: None)
    _spread(tr)
    batch = tr.exp.test_tok.batch(torch.arange(5))
    expected = _one_by_one(tr, batch)
    assert not torch.allclose(expected[0], expected[1])  # the agents differ
    tr.stacks.load_agent(0)
    with StackedAgents(tr.stacks, [(g.B, g.A) for g in tr.stacks.groups], tr.stacks.dense):
        fused = _logits(tr.model, repeat_batch(batch, 3))
    for i, seg in enumerate(fused.chunk(3)):
        torch.testing.assert_close(seg, expected[i], atol=2e-5, rtol=2e-5)
    # the hooks are gone and peft's own LoRA is back: agent 0's model as before
    torch.testing.assert_close(_logits(tr.model, batch), expected[0], atol=0, rtol=0)


@pytest.mark.parametrize("per_pass", [16, 2])
def test_trainer_evaluation_equals_evaluating_agents_one_by_one(per_pass, models, tmp_path, monkeypatch):
    import decaf_lora.trainer as T

    monkeypatch.setattr(T, "EVAL_AGENTS_PER_PASS", per_pass)  # 2: the 4 agents and the average in 3 passes
    tr = Trainer(_config(models["bert"], models["cls"], tmp_path, head="mean_pooling", agents=4, eval_batch_size=7),
                 log=lambda *_: None)
    _spread(tr, seed=1)
    everyone = tr.all_agents(to_main=True)
    got = tr._evaluate_local(everyone)
    assert tr.model.training  # evaluation puts the model back into training mode
    tr.model.eval()
    seq = []
    for slot in range(len(tr.local)):
        tr.stacks.load_agent(slot)
        seq.append(_metrics(tr))
    tr.stacks.load_factors(*tr.averaged_adapter(everyone))
    avg = _metrics(tr)
    assert got["acc"] == [m["acc"] for m in seq] and got["avg"]["acc"] == avg["acc"]
    assert got["loss"] == pytest.approx([m["loss"] for m in seq], rel=1e-5)
    assert got["avg"]["loss"] == pytest.approx(avg["loss"], rel=1e-5)


def _metrics(tr):
    sums = {}
    for idx in tr.exp.test_batches:
        add_sums(sums, tr.task.eval_sums(tr.model, tr.exp.test_tok.batch(idx)))
    return tr.task.metrics(sums)


def test_bad_use_is_refused_and_leaves_the_model_as_it_was(models, tmp_path):
    tr = Trainer(_config(models["bert"], models["cls"], tmp_path, head="mean_pooling", agents=2), log=lambda *_: None)
    batch = tr.exp.test_tok.batch(torch.arange(3))
    before = _logits(tr.model, batch)
    factors = [(g.B, g.A) for g in tr.stacks.groups]
    with pytest.raises(ValueError, match="cannot be cut into 2 equal agent segments"):
        with StackedAgents(tr.stacks, factors, tr.stacks.dense):
            _logits(tr.model, batch)  # 3 rows for 2 agents
    with pytest.raises(ValueError, match="met the model in training mode"):
        with StackedAgents(tr.stacks, factors, tr.stacks.dense):
            tr.model.train()
            tr.model(input_ids=batch["input_ids"].repeat(2, 1), attention_mask=batch["attention_mask"].repeat(2, 1))
    with pytest.raises(ValueError, match="do not fit the group"):
        StackedAgents(tr.stacks, [(B[:, :1], A) for B, A in factors], tr.stacks.dense)
    with pytest.raises(ValueError, match="dense must hold"):
        StackedAgents(tr.stacks, factors, {})
    torch.testing.assert_close(_logits(tr.model, batch), before, atol=0, rtol=0)
