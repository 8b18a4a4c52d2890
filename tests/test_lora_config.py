"""TrainConfig's checks of every field and the reading of config files: types, finiteness, numeric strings, and
errors (also as ``decaf: error:`` with exit status 2 from the command line) that name the field or file, the
value and what is expected. No model is loaded here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from decaf_lora import TrainConfig, cli
from decaf_lora.config import load_config_file

BAD = [
    ("rslora", "false", TypeError, r"rslora must be true or false .*got 'false' \(str\)"),
    ("progress", 1, TypeError, r"progress must be true or false .*got 1 \(int\)"),
    ("lr", "fast", TypeError, r"lr must be a number > 0, got 'fast' \(str\)"),
    ("lr", math.inf, ValueError, r"lr must be a number > 0 \(finite\), got inf"),
    ("lr", "inf", ValueError, r"lr must be a number > 0 \(finite\), got 'inf'"),
    ("lr", math.nan, ValueError, r"lr must be a number > 0 \(finite\), got nan"),
    ("lr", 0, ValueError, r"lr must be a number > 0, got 0"),
    ("lora_alpha", math.inf, ValueError, r"lora_alpha must be a number > 0 \(finite\), got inf"),
    ("lora_dropout", "0.1x", TypeError, r"lora_dropout must be a number in \[0, 1\), got '0.1x' \(str\)"),
    ("lora_dropout", 1.0, ValueError, r"lora_dropout must be a number in \[0, 1\), got 1.0"),
    ("max_grad_norm", "inf", ValueError, r"max_grad_norm must be a number > 0 \(finite\)"),
    ("er_p", [0.3], TypeError, r"er_p must be a number in \(0, 1\], got \[0.3\] \(list\)"),
    ("rounds", 2.5, ValueError, r"rounds must be a positive integer, got 2.5"),
    ("rounds", "three", TypeError, r"rounds must be a positive integer, got 'three' \(str\)"),
    ("agents", True, TypeError, r"agents must be an integer >= 2 .*got True \(bool\)"),
    ("agents", 1, ValueError, r"agents must be an integer >= 2"),
    ("seed", -1, ValueError, r"seed must be an integer >= 0, got -1"),
    ("checkpoint_every", None, TypeError, r"checkpoint_every must be an integer >= 0 .*got None \(NoneType\)"),
    ("target_modules", 5, TypeError, r"target_modules must be a list of names .*got 5 \(int\)"),
    ("target_modules", ["query", 3], TypeError, r"target_modules must be a list of names"),
    ("target_modules", " , ", ValueError, r"target_modules must name at least one module"),
    ("algorithms", "decaf,x", ValueError, r"unknown algorithm 'x' in algorithms"),
    ("out_dir", 5, TypeError, r"out_dir must be a path \(a string\), got 5 \(int\)"),
    ("data", ["a", "b"], TypeError, r"data must be 'wordnet' or the path .*got \['a', 'b'\] \(list\)"),
    ("model", None, TypeError, r"model must be .*got None \(NoneType\)"),
    ("test_data", 3, TypeError, r"test_data must be a path \(a string\), got 3 \(int\)"),
    ("graph", 3, TypeError, r"graph must be a string, got 3 \(int\)"),
    ("device", "tpu", ValueError, r"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"),
    ("text_column", " ", ValueError, r"text_column must not be empty"),
]


@pytest.mark.parametrize("name,value,exc,match", BAD, ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_every_field_is_checked(name, value, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**{name: value})


def test_numeric_strings_are_parsed_and_hash_like_numbers():
    cfg = TrainConfig(lr="5e-3", lora_dropout="0.1", rounds="3", lora_alpha=16, max_grad_norm="none",
                      time_varying="null", target_modules="query, key", out_dir=Path("runs/x"))
    assert (cfg.lr, cfg.lora_dropout, cfg.rounds, cfg.lora_alpha) == (0.005, 0.1, 3, 16.0)
    assert type(cfg.rounds) is int and type(cfg.lora_alpha) is float
    assert cfg.max_grad_norm is None and cfg.time_varying is None
    assert cfg.target_modules == ["query", "key"] and cfg.out_dir == "runs/x"
    same = TrainConfig(lr=0.005, lora_dropout=0.1, rounds=3, lora_alpha=16.0, max_grad_norm=None,
                       target_modules=["query", "key"], out_dir="runs/x")
    assert cfg.run_hash() == same.run_hash()


def test_a_field_added_later_differs_from_an_older_saved_config_only_off_its_default():
    saved = TrainConfig(rank=4).to_dict()
    del saved["fused"]  # a config saved before the field existed
    assert TrainConfig(rank=4).differences(saved) == {}
    assert TrainConfig(rank=4, fused=True).differences(saved) == {"fused": (False, True)}
    assert TrainConfig(rank=8).differences(saved) == {"rank": (4, 8)}


def test_seeds_are_a_list_of_distinct_integers():
    assert TrainConfig(seeds="0, 1,2").seeds == [0, 1, 2] and TrainConfig(seeds=[5]).seeds == [5]
    assert TrainConfig(seeds="none").seeds is None
    assert TrainConfig(seeds=[0, 1]).run_hash() == TrainConfig().run_hash()  # which seeds a compare runs: no run's
    for bad, exc, match in (("0,0", ValueError, "duplicates"), ("1,-2", ValueError, "integers >= 0"),
                            ("1.5", ValueError, "integers >= 0"), ("a", TypeError, "seeds must be integers"),
                            (3, TypeError, "a list of integers")):
        with pytest.raises(exc, match=match):
            TrainConfig(seeds=bad)


def test_a_failed_validate_changes_nothing():
    cfg = TrainConfig()
    cfg.algorithms = "decaf,dlora"
    cfg.lr = "fast"
    with pytest.raises(TypeError, match="lr must be"):
        cfg.validate()
    assert cfg.algorithms == "decaf,dlora" and cfg.lr == "fast"


def test_yaml_values_are_typed(tmp_path):
    pytest.importorskip("yaml", reason="YAML configs need PyYAML (the [lora] extra)")
    good = tmp_path / "good.yaml"
    good.write_text("lr: 5e-3\nlora_dropout: '0.1'\nrslora: false\n")  # YAML 1.1 reads 5e-3 as a string
    cfg = TrainConfig(**load_config_file(good))
    assert (cfg.lr, cfg.lora_dropout, cfg.rslora) == (0.005, 0.1, False)
    bad = tmp_path / "bad.yaml"
    bad.write_text('rslora: "false"\n')
    with pytest.raises(TypeError, match=r"rslora must be true or false"):
        TrainConfig(**load_config_file(bad))


def _cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    # what was loaded before the error may precede it on stderr (e.g. the data line); the error ends the output
    assert "Traceback" not in err and "decaf: error: " in err, err
    start = err.rindex("decaf: error: ")
    assert start == 0 or err[start - 1] == "\n"
    return err[start:]


def test_cli_reports_bad_config_files(tmp_path, capsys):
    pytest.importorskip("yaml", reason="YAML configs need PyYAML (the [lora] extra)")
    broken = tmp_path / "broken.yaml"
    broken.write_text("agents: 4\nrounds: [2\n")
    err = _cli_error(["train", "--config", str(broken)], capsys)
    assert "broken.yaml" in err and "invalid YAML at line 3, column 1" in err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"rounds": 2,}')
    err = _cli_error(["train", "--config", str(bad_json)], capsys)
    assert "bad.json" in err and "invalid JSON at line 1, column 14" in err
    folder = tmp_path / "configs.yaml"
    folder.mkdir()
    err = _cli_error(["train", "--config", str(folder)], capsys)
    assert "is a folder" in err and "does not exist" not in err
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("data: caf\xe9.csv\n".encode("latin-1"))
    assert "latin1.yaml' is not UTF-8" in _cli_error(["train", "--config", str(latin1)], capsys)
    typed = tmp_path / "typed.json"
    typed.write_text(json.dumps({"lr": "inf"}))
    assert "lr must be a number > 0 (finite), got 'inf'" in _cli_error(["train", "--config", str(typed)], capsys)
    assert "device must be" in _cli_error(["train", "--device", "tpu"], capsys)
