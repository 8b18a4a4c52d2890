"""decaf_lora's random streams: evaluation, reporting and export never change what training computes, and a run
neither reads nor moves torch's global RNG. Nine agents, because from N = 9 on (tiny BERT, r = 4) the op's
method="auto" picks the randomized consensus, which is what once let evaluation perturb training."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers", reason="decaf_lora needs the [lora] extra (transformers, peft)")
pytest.importorskip("peft", reason="decaf_lora needs the [lora] extra (transformers, peft)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import decaf_kernels  # noqa: E402
from decaf_lora import Trainer  # noqa: E402
from test_lora_train import tiny_config, tiny_csv, tiny_model  # noqa: E402,F401  (fixtures)

NINE = dict(agents=9, graph="ring", rounds=2, comm_every=1, lora_dropout=0.1, algorithm="decaf")


def quiet(*_):
    return None


def _state(tr: Trainer) -> list[torch.Tensor]:
    return [t.clone() for g in tr.stacks.groups for t in (g.B, g.A)] + [t.clone() for t in tr.stacks.dense.values()]


def _same(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_state(a), _state(b)))


def test_evaluating_every_round_does_not_change_training(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, **NINE)
    never = Trainer(cfg.replace(eval_every=100, out_dir=str(tmp_path / "never")), log=quiet)
    r_never = never.run()
    every = Trainer(cfg.replace(eval_every=1, out_dir=str(tmp_path / "every")), log=quiet)
    r_every = every.run()
    assert _same(never, every)
    assert [h["train_loss"] for h in r_never.history] == [h["train_loss"] for h in r_every.history]
    assert r_never.history[-1]["test_acc_avg_model"] == r_every.history[-1]["test_acc_avg_model"]


def test_averaged_adapter_is_the_exact_truncation(tiny_model, tiny_csv, tmp_path):
    tr = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, **{**NINE, "rounds": 1}), log=quiet)
    tr.run()
    factors, _ = tr.averaged_adapter()
    J = torch.full((9, 9), 1.0 / 9, dtype=torch.float64)
    for g, (B, A) in zip(tr.stacks.groups, factors):
        B_exact, A_exact = decaf_kernels.consensus_tsvd(g.B, g.A, J, method="exact", split=tr.config.split)
        assert torch.equal(B, B_exact[0]) and torch.equal(A, A_exact[0])


def test_resume_with_more_rounds_equals_the_uninterrupted_run(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, **NINE, eval_every=100, checkpoint_every=1)
    full = Trainer(cfg.replace(out_dir=str(tmp_path / "full")), log=quiet)
    full.run()
    # the 1-round run evaluates at its last round, which the 2-round run does not do at round 1
    Trainer(cfg.replace(rounds=1, out_dir=str(tmp_path / "part")), log=quiet).run()
    resumed = Trainer(cfg.replace(out_dir=str(tmp_path / "part")), log=quiet)
    resumed.run(resume=True)
    assert resumed.round == 2 and _same(full, resumed)


def test_a_run_leaves_the_global_rng_alone(tiny_model, tiny_csv, tmp_path):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    tr = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, **{**NINE, "rounds": 1}), log=quiet)
    tr.run()
    tr.evaluate()
    tr.export(tmp_path / "adapter")
    assert torch.equal(torch.get_rng_state(), before)
    # and draws of the user's own between two runs do not change what a run computes
    torch.rand(1000)
    again = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, **{**NINE, "rounds": 1},
                                out_dir=str(tmp_path / "again")), log=quiet)
    again.run()
    assert _same(tr, again)
