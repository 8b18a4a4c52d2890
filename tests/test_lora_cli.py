"""The ``decaf`` command line: each subcommand's own flags, grouped, each with a line of help and its default;
``decaf graph --save``; the ``predict`` subcommand's parser and hand-off; results on stdout, the rest on stderr."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import types

import numpy as np
import pytest

from decaf_lora import cli
from decaf_lora.config import config_fields
from decaf_lora.topology import Topology
from test_lora_train import tiny_csv, tiny_model  # noqa: F401  (fixtures)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _flags(p: argparse.ArgumentParser) -> dict:
    return {s: a for a in p._actions for s in a.option_strings}


def _groups(p: argparse.ArgumentParser) -> dict:
    return {g.title: [a.dest for a in g._group_actions] for g in p._action_groups}


# ------------------------------------------------------------------------------------------------ help


def test_train_and_compare_list_only_their_own_flags():
    train, compare = _flags(_subparser("train")), _flags(_subparser("compare"))
    assert "--algorithm" in train and "--algorithms" not in train and "--export" in train
    assert "--algorithms" in compare and "--algorithm" not in compare and "--export" not in compare
    for name in config_fields():
        flag = "--" + name.replace("_", "-")
        assert (flag in train) == (name not in ("algorithms", "seeds")), flag
        assert (flag in compare) == (name != "algorithm"), flag
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["train", "--algorithms", "decaf,dlora"])
    assert exc.value.code == 2


def test_every_setting_has_a_group_a_line_of_help_and_its_default():
    for command in ("train", "compare"):
        p = _subparser(command)
        groups = _groups(p)
        assert cli._OTHER not in groups, f"settings without a group: {groups.get(cli._OTHER)}"
        titles = [t for t in groups if t not in ("positional arguments", "options")]
        assert titles == ["algorithm, model and task", "data", "agents and graph", "optimisation",
                          "evaluation and output", "device and processes"]
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help and "no description yet" not in action.help, action.dest
            if action.dest != "config":
                assert "(default: " in action.help, action.dest
    for name in ("task", "head", "prompt_column", "completion_column", "report_to"):
        assert name in cli._HELP, name
    assert "(default: auto)" in cli.field_help("partition")  # the declared default, not the resolved one
    assert "(default: csv)" in cli.field_help("report_to") and "(default: on)" in cli.field_help("progress")
    text = _subparser("train").format_help()
    assert "--wordnet-path" in text and "--algorithms" not in text


def test_graph_and_predict_help_give_every_default():
    for command in ("graph", "predict"):
        for action in _subparser(command)._actions:
            if action.dest not in ("help", "export"):
                assert "(default: " in action.help, (command, action.dest)


def test_every_existing_flag_still_parses(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"agents": 6}))
    args = cli.build_parser().parse_args(
        ["train", "--config", str(cfg), "--algorithm", "dlora", "--no-progress", "--resume", "--overwrite",
         "--export", "none", "--max-grad-norm", "none", "--target-modules", "query,key", "--report-to",
         "csv,tensorboard", "--task", "classification", "--head", "mean_pooling"])
    c = cli._config_from_args(args)
    assert (c.agents, c.algorithm, c.progress, c.max_grad_norm) == (6, "dlora", False, None)
    assert c.target_modules == ["query", "key"] and c.report_to == ["csv", "tensorboard"]
    assert args.resume and args.overwrite and args.export == "none"


# ------------------------------------------------------------------------------------------------ graph


def test_graph_prints_and_saves_the_mixing_matrix(tmp_path, capsys):
    target = tmp_path / "W.npy"
    assert cli.main(["graph", "--graph", "torus", "--agents", "6", "--save", str(target)]) == 0
    out, err = capsys.readouterr()
    expected = Topology.build("torus", 6).W.numpy()
    assert np.array_equal(np.load(target), expected)
    rows = out.strip().splitlines()[-6:]
    assert [len(r.split()) for r in rows] == [6] * 6 and '"spectral_gap"' in out
    assert str(target) in err and str(target) not in out  # stdout: the matrix only
    # an existing file is kept unless --overwrite, and refused before anything is printed
    assert cli.main(["graph", "--graph", "ring", "--agents", "6", "--save", str(target)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("decaf: error: ") and "--overwrite" in err
    assert np.array_equal(np.load(target), expected)
    assert cli.main(["graph", "--graph", "ring", "--agents", "6", "--save", str(target), "--overwrite"]) == 0
    assert np.array_equal(np.load(target), Topology.build("ring", 6).W.numpy())
    capsys.readouterr()
    text = tmp_path / "W.csv"
    assert cli.main(["graph", "--agents", "4", "--weights", "uniform", "--save", str(text)]) == 0
    assert np.array_equal(np.loadtxt(text, delimiter=","), Topology.build("ring", 4, weights="uniform").W.numpy())
    assert cli.main(["graph", "--save", str(tmp_path / "W.mat")]) == 2
    assert ".npy, .txt, .csv" in capsys.readouterr().err and not (tmp_path / "W.mat").exists()


# ------------------------------------------------------------------------------------------------ predict


def test_predict_parses_its_flags_and_hands_them_to_decaf_lora_predict(monkeypatch):
    got = {}

    def fake_main(args):
        got["args"] = args
        return 0

    fake = types.ModuleType("decaf_lora.predict")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "decaf_lora.predict", fake)
    assert cli.main(["predict", "exp", "--text", "a b", "--text", "c", "--input", "in.jsonl", "--output", "o.jsonl",
                     "--batch-size", "4", "--max-new-tokens", "9", "--device", "cuda:1", "--text-column", "q"]) == 0
    a = got["args"]
    assert (a.export, a.text, a.input, a.output, a.text_column) == ("exp", ["a b", "c"], "in.jsonl", "o.jsonl", "q")
    assert (a.batch_size, a.max_new_tokens, a.device) == (4, 9, "cuda:1")
    d = cli.build_parser().parse_args(["predict", "exp"])
    assert (d.text, d.input, d.output, d.text_column) == ([], None, None, None)
    assert (d.batch_size, d.max_new_tokens, d.device) == (None, 32, "cpu")  # None: predict picks 32 or 8
    for bad in (["--batch-size", "0"], ["--max-new-tokens", "x"], ["--device", "tpu"]):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(["predict", "exp", *bad])
        assert exc.value.code == 2


def test_a_missing_predict_module_fails_only_predict(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "decaf_lora.predict", None)  # as if predict.py did not exist
    assert cli.main(["predict", "exp", "--text", "x"]) == 2
    assert capsys.readouterr().err.startswith("decaf: error: ")
    assert cli.main(["graph", "--agents", "3"]) == 0


# ------------------------------------------------------------------------------------------------ runs


def test_missing_tensorboard_stops_a_run_before_anything_is_loaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out_dir = tmp_path / "runs"
    assert cli.main(["train", "--report-to", "csv,tensorboard", "--data", str(tmp_path / "missing.csv"),
                     "--out-dir", str(out_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip install tensorboard" in err and "missing.csv" not in err
    assert not out_dir.exists()


def test_results_go_to_stdout_and_messages_to_stderr(tiny_model, tiny_csv, tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": tiny_model, "data": tiny_csv, "agents": 4, "rank": 4, "rounds": 2,
                               "comm_every": 1, "batch_size": 8, "max_length": 16, "eval_every": 1, "seed": 5,
                               "target_modules": ["query", "value"], "out_dir": str(tmp_path / "out")}))
    assert cli.main(["train", "--config", str(cfg), "--algorithm", "dlora", "--no-progress", "--export", "none"]) == 0
    out, err = capsys.readouterr()
    assert "acc mean" in out and "MB sent" in out and "summary:" in out and "metrics:" in out
    assert "acc mean" not in err and err.strip()  # the run's messages (data, model) went to stderr
    assert not set(err.splitlines()) & set(out.splitlines()) - {""}
    row = next(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert row["algorithm"] == "dlora" and row["seed"] == "5" and "sent_MB" in row and "wall_time_s" in row



def test_compare_over_seeds_reports_mean_and_spread(tiny_model, tiny_csv, tmp_path, capsys):
    out_dir = tmp_path / "out"
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": tiny_model, "data": tiny_csv, "agents": 4, "rank": 4, "rounds": 2,
                               "comm_every": 1, "batch_size": 8, "max_length": 16, "eval_every": 2,
                               "target_modules": ["query", "value"], "out_dir": str(out_dir)}))
    argv = ["compare", "--config", str(cfg), "--algorithms", "decaf,dlora", "--seeds", "3,4", "--no-progress"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(open(out_dir / "summary.csv")))
    assert [(r["algorithm"], r["seed"]) for r in rows] == [("decaf", "3"), ("dlora", "3"), ("decaf", "4"),
                                                           ("dlora", "4")]
    for s in (3, 4):  # each seed is an ordinary comparison in its own folder
        own = list(csv.DictReader(open(out_dir / f"seed-{s}" / "summary.csv")))
        assert [r["seed"] for r in own] == [str(s)] * 2
        assert (out_dir / f"seed-{s}" / "decaf" / "log.jsonl").is_file()
    assert (out_dir / "plot.png").is_file() and "seed 3 (1 of 2)" in err
    # the table: per algorithm the mean and sample std over the two seeds
    accs = [float(r["test_acc_mean"]) for r in rows if r["algorithm"] == "dlora"]
    line = next(x for x in out.splitlines() if x.startswith("dlora"))
    mean, std = np.mean(accs), np.std(accs, ddof=1)
    assert f"{mean:.3f} ± {std:.3f}" in line and " 2 " in line
    # then each algorithm's difference to the first, seed by seed
    cd = {(r["algorithm"], r["seed"]): float(r["consensus_distance_rel"]) for r in rows}
    diffs = [cd["dlora", s] - cd["decaf", s] for s in ("3", "4")]
    wins = sum(d < 0 for d in diffs)
    paired = next(x for x in out.splitlines() if x.startswith("dlora - decaf"))
    assert paired.endswith(f"{np.mean(diffs):+.3f} ± {np.std(diffs, ddof=1):.3f} ({wins}/2)")
    # a second run without --resume/--overwrite is refused before anything is trained
    assert cli.main(argv) == 2
    assert "checkpoint(s) of an earlier run" in capsys.readouterr().err
