"""decaf_lora's files: the output folder (a user's files are never replaced unless --overwrite; a file in the way
fails before anything is loaded), unreadable or damaged checkpoints, temporaries left by a kill, permissions
that follow the umask, and data files that are not UTF-8."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="decaf_lora needs the [lora] extra (transformers, peft)")
pytest.importorskip("peft", reason="decaf_lora needs the [lora] extra (transformers, peft)")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from decaf_lora import Trainer, cli  # noqa: E402
from decaf_lora.data import load_text_file  # noqa: E402
from test_lora_config import _cli_error  # noqa: E402
from test_lora_train import tiny_config, tiny_csv, tiny_model  # noqa: E402,F401  (fixtures)

RUN_MARKER = "decaf_run.json"  # the documented name of the marker (decaf_lora.runfiles.RUN_MARKER)


def quiet(*_):
    return None


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _config_file(tmp_path: Path, tiny_model: str, tiny_csv: str, out_dir: Path, **kw) -> str:
    values = {"model": tiny_model, "data": tiny_csv, "agents": 4, "rank": 4, "rounds": 1, "comm_every": 1,
              "batch_size": 8, "max_length": 16, "eval_every": 1, "target_modules": ["query", "value"],
              "out_dir": str(out_dir), "progress": False}
    values.update(kw)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(values))
    return str(path)


# ------------------------------------------------------------------------------------------------ the output folder


def test_out_dir_that_is_a_file_fails_before_data_and_model(tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    missing = str(tmp_path / "missing.csv")  # loading it would fail: the folder must be checked first
    for out in (a_file, a_file / "sub"):
        for command in ("train", "compare"):
            err = _cli_error([command, "--out-dir", str(out), "--data", missing, "--model", "nowhere"], capsys)
            assert "is a file, not a folder" in err and "missing.csv" not in err
    assert a_file.read_text() == "mine"


def test_folder_without_a_run_is_refused_unless_overwrite(tiny_model, tiny_csv, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.csv").write_text("my numbers\n")
    cfg = _config_file(tmp_path, tiny_model, tiny_csv, out)
    for extra in ([], ["--resume"]):
        err = _cli_error(["train", "--config", cfg, "--algorithm", "dlora", *extra], capsys)
        assert "holds no decaf run" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]
    assert (out / "summary.csv").read_text() == "my numbers\n"
    with pytest.raises(FileExistsError, match="holds no decaf run"):
        Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, out_dir=str(out)), log=quiet).run()
    # --overwrite writes there (what `make demo` passes); then the folder holds a run and takes more runs
    assert cli.main(["train", "--config", cfg, "--algorithm", "dlora", "--overwrite"]) == 0
    assert (out / RUN_MARKER).is_file() and (out / "summary.csv").read_text() != "my numbers\n"
    # dlora resumes from its checkpoint, local starts in the folder that now holds a run
    assert cli.main(["compare", "--config", cfg, "--algorithms", "dlora,local", "--resume", "--rounds", "2"]) == 0
    assert (out / "local" / "log.jsonl").is_file()


def test_export_never_replaces_a_folder_it_did_not_write(tiny_model, tiny_csv, tmp_path, capsys):
    tr = Trainer(tiny_config(tiny_model, tiny_csv, tmp_path, rounds=1, algorithm="dlora"), log=quiet)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        tr.export(docs)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        tr.export(tmp_path / "file")
    assert (docs / "notes.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    tr.export(tmp_path / "adapter")
    tr.export(tmp_path / "adapter", agent=1)  # an earlier export is replaced
    assert json.loads((tmp_path / "adapter" / "decaf_export.json").read_text())["agent"] == 1
    # the command line finds out before training
    out = tmp_path / "out"
    (out / "dlora" / "adapter").mkdir(parents=True)
    (out / RUN_MARKER).write_text("{}")
    cfg = _config_file(tmp_path, tiny_model, tiny_csv, out, data=str(tmp_path / "missing.csv"))
    err = _cli_error(["train", "--config", cfg, "--algorithm", "dlora"], capsys)
    assert "adapter' is a folder that decaf did not write" in err


def test_stale_temporaries_are_removed_on_start(tiny_model, tiny_csv, tmp_path):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora", rounds=1, checkpoint_every=1)
    run = Path(cfg.out_dir) / "dlora"
    run.mkdir(parents=True)
    (Path(cfg.out_dir) / RUN_MARKER).write_text("{}")
    stale = [run / ".checkpoint.pt.k1ll3d.tmp", run / ".log.jsonl.abc.tmp", Path(cfg.out_dir) / ".summary.csv.x.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (run / ".adapter.y.tmp").mkdir()
    stale.append(run / ".adapter.y.tmp")
    kept = [run / ".notes.tmp", run / "checkpoint.pt.tmp"]  # not decaf's pattern: not ours to remove
    for p in kept:
        p.write_text("mine")
    messages = []
    Trainer(cfg, log=messages.append).run()
    assert [p for p in stale if p.exists()] == [] and all(p.read_text() == "mine" for p in kept)
    assert sum("left by an interrupted write" in m for m in messages) == len(stale)


def test_files_follow_the_umask(tiny_model, tiny_csv, tmp_path):
    old = os.umask(0o027)
    try:
        cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora", rounds=1, checkpoint_every=1)
        tr = Trainer(cfg, log=quiet)
        tr.run()
        adapter = tr.export(tr.out_dir / "adapter")
    finally:
        os.umask(old)
    for f in (tr.out_dir / "checkpoint.pt", tr.out_dir / "log.jsonl", Path(cfg.out_dir) / RUN_MARKER,
              adapter / "decaf_export.json"):
        assert _mode(f) == 0o640, f
    assert _mode(adapter) == 0o750 and _mode(tr.out_dir) == 0o750


# ------------------------------------------------------------------------------------------------ checkpoints


def test_bad_checkpoints_are_refused_with_a_reason(tiny_model, tiny_csv, tmp_path, capsys):
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora", rounds=1, checkpoint_every=1)
    Trainer(cfg, log=quiet).run()
    ckpt = Path(cfg.out_dir) / "dlora" / "checkpoint.pt"
    good = torch.load(ckpt, weights_only=True)
    bad = tmp_path / "bad.pt"

    def refused(match: str) -> str:
        tr = Trainer(cfg.replace(rounds=2), log=quiet)
        with pytest.raises(ValueError, match=match) as info:
            tr.load_checkpoint(bad)
        assert tr.round == 0 and "weights_only" not in str(info.value)
        return str(info.value)

    bad.write_bytes(b"")
    refused(r"bad.pt is empty \(0 bytes\)")
    bad.write_bytes(b"not a checkpoint at all")
    refused(r"cannot read checkpoint .*bad.pt \(\w+Error: .*\): it is damaged or was not written by decaf_lora")
    torch.save({"format": 1, "payload": argparse.Namespace(x=1)}, bad)  # not tensors and plain values
    refused(r"cannot read checkpoint .*not a checkpoint of tensors and plain values")
    for key in ("run_hash", "agents"):
        torch.save({k: v for k, v in good.items() if k != key}, bad)
        refused(f"lacks '{key}'")
    torch.save(dict(good, agents={0: {k: v for k, v in good["agents"][0].items() if k != "rng"}}), bad)
    refused("lacks 'rng'")
    torch.save(dict(good, agents={a: good["agents"][a] for a in (0, 1)}), bad)
    refused(r"holds no state for agent\(s\) \[2, 3\]")
    torch.save(dict(good, format=1), bad)
    refused("written by an older decaf_lora")
    # the command line says the same, with exit status 2
    torch.save({k: v for k, v in good.items() if k != "run_hash"}, ckpt)
    cfg_file = _config_file(tmp_path, tiny_model, tiny_csv, Path(cfg.out_dir), **{
        k: v for k, v in cfg.to_dict().items() if k not in ("algorithms", "out_dir")})
    assert "lacks 'run_hash'" in _cli_error(["train", "--config", cfg_file, "--resume", "--rounds", "2"], capsys)


def test_checkpoint_with_values_of_another_type_resumes(tiny_model, tiny_csv, tmp_path):
    """A checkpoint written before values were normalised (lora_alpha 8, an int) hashes differently but is the
    same run."""
    cfg = tiny_config(tiny_model, tiny_csv, tmp_path, algorithm="dlora", rounds=1, checkpoint_every=1)
    Trainer(cfg, log=quiet).run()
    ckpt = Path(cfg.out_dir) / "dlora" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save(dict(state, config=dict(state["config"], lora_alpha=8), run_hash="0123456789abcdef"), ckpt)
    tr = Trainer(cfg.replace(rounds=2), log=quiet)
    tr.run(resume=True)
    assert tr.round == 2


# ------------------------------------------------------------------------------------------------ data files


def test_data_that_is_not_utf8_names_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\nhello,a\ncaf\xe9 latte,b\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text \(line 3, byte 4 .*\\xe9"):
        load_text_file(bad)
    err = _cli_error(["train", "--data", str(bad), "--out-dir", str(tmp_path / "out")], capsys)
    assert "latin1.csv: not UTF-8 text" in err
