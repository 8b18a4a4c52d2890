"""bench/distributed.py's argument handling only (no process is started, nothing is timed; < 1 s)."""

import pytest

from bench import distributed as D


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        D.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_help_names_both_parts(capsys):
    with pytest.raises(SystemExit) as exc:
        D.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--procs" in out and "--sizes" in out and "Exchange.neighbours" in out


def test_defaults():
    a = D.parse_args([])
    assert a.parts == ["train", "exchange"] and a.procs == [1, 2, 4] and a.algorithms == ["decaf", "dlora"]
    assert a.sizes[0] == 1024 and a.sizes[-1] == 64 * 2 ** 20 and len(a.sizes) == 9
    assert a.agents % 4 == 0 and not a.worker


@pytest.mark.parametrize("argv, words", [
    (["--procs", "3"], "divide --agents 8"),
    (["--procs", "2", "--agents", "6", "--procs", "4"], "divide --agents 6"),
    (["--procs", "x"], "invalid literal"),
    (["--sizes", "1K,3"], "multiple of 4"),
    (["--sizes", "lots"], "cannot read the size"),
    (["--parts", "train,gpu"], "--parts"),
    (["--algorithms", "decaf,fedavg"], "neighbour-exchange"),
    (["--reps", "0"], "--reps must be >= 1"),
    (["--run-timeout", "0"], "--run-timeout"),
    (["--worker"], "--worker needs --result"),
])
def test_bad_arguments_are_refused_with_a_reason(capsys, argv, words):
    assert words in _error(capsys, argv)


def test_parse_size_and_table():
    assert [D.parse_size(s) for s in ("4", "1K", "16M", "1KiB", "2g")] == [4, 1024, 16 * 2 ** 20, 1024, 2 * 2 ** 30]
    assert D.human(1024) == "1 KiB" and D.human(334952) == "327.10 KiB"
    t = D.table(["a", "b"], [[1, 2]])
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| 1 | 2 |"]
