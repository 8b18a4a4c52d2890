"""What a run shows and writes besides its log: the summary (table, summary.csv), the plot, the per-round
reporters (report_to: csv, tensorboard), the progress display and the peak memory. Fed with made-up round
records: no model is trained here (CPU, a few seconds)."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import pytest

from decaf_lora import memory, trackers
from decaf_lora.config import TrainConfig
from decaf_lora.progress import RoundProgress
from decaf_lora.report import figure, plot, summarise, table, write_csv, write_outputs

pytest.importorskip("matplotlib")


def history(rounds=6, agents=4, eval_every=2, *, offset=0.0, sent=250_000, start=0, lm=False):
    """Round records as the trainer logs them (evaluated every ``eval_every`` rounds and at the last; ``lm``: with
    a causal LM's metrics too)."""
    out = []
    for r in range(start + 1, rounds + 1):
        rec = {"round": r, "algorithm": "x", "train_loss": 2.0 - 0.1 * r, "consensus_distance": 0.5 / r,
               "consensus_distance_rel": 0.1 / r, "interference_rel": 0.01 * r, "bytes": sent,
               "bytes_total": sent * r, "bytes_wire": 0, "bytes_wire_total": 0, "bytes_diagnostic": 0,
               "processes": 1, "time_local": 1.0, "time_wait": 0.0, "time_comm": 0.25, "time_consensus": 0.5,
               "time_eval": 0.125, "wall_time": 2.0 * r, "peak_rss_bytes": 100_000_000 + r * 1_000_000,
               "peak_cuda_bytes": None}
        if r % eval_every == 0 or r == rounds:
            accs = [round(0.1 * r / rounds + 0.1 * a + offset, 4) for a in range(agents)]
            rec.update({"test_acc_mean": sum(accs) / agents, "test_acc_min": min(accs), "test_acc_max": max(accs),
                        "test_loss_mean": 1.0, "test_acc_avg_model": max(accs) + 0.01, "test_acc": accs,
                        "test_loss_avg_model": 0.9})
            if lm:
                rec.update({"test_perplexity_mean": 10.0 / r, "test_perplexity_avg_model": 9.0 / r,
                            "test_exact_match_mean": 0.1 * r})
        else:
            rec.update({"test_acc_mean": None, "test_acc_min": None, "test_acc_avg_model": None})
        out.append(rec)
    return out


class Result:  # the fields of trainer.RunResult that report.write_outputs reads
    def __init__(self, algorithm, hist, config):
        self.algorithm, self.history, self.config, self.summary = algorithm, hist, config, {}
        self.out_dir = Path(config.out_dir) / algorithm


def read_csv(path: Path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------------ summary


def test_summarise_keeps_the_last_evaluation_the_time_split_and_the_peak_memory():
    hist = history(rounds=5, eval_every=2)
    s = summarise(hist)
    assert s["rounds"] == 5 and s["test_acc_mean"] == hist[-1]["test_acc_mean"]
    assert s["test_acc_max"] == hist[-1]["test_acc_max"] and s["test_acc_min"] == hist[-1]["test_acc_min"]
    assert s["bytes_total"] == 5 * 250_000 and s["wall_time"] == 10.0
    assert (s["time_local"], s["time_comm"], s["time_eval"]) == (5.0, 1.25, 0.625)
    assert s["peak_rss_bytes"] == 105_000_000 and s["peak_cuda_bytes"] is None
    assert summarise([]) == {}
    # an unevaluated last round: the accuracies are the last evaluated round's
    assert summarise(hist[:3])["test_acc_mean"] == hist[1]["test_acc_mean"]


def test_summary_csv_has_units_in_its_names_and_the_run_settings(tmp_path):
    config = TrainConfig(seed=3, agents=4, graph="star", out_dir=str(tmp_path))
    rows = [dict(algorithm=a, **summarise(history(offset=k / 10))) for k, a in enumerate(("decaf", "dlora"))]
    write_csv(rows, tmp_path / "summary.csv", [config.replace(algorithm="decaf"), config.replace(algorithm="dlora")])
    lines = read_csv(tmp_path / "summary.csv")
    assert [r["algorithm"] for r in lines] == ["decaf", "dlora"]
    first = lines[0]
    assert float(first["sent_MB"]) == 1.5 and float(first["wall_time_s"]) == 12.0
    assert float(first["time_local_s"]) == 6.0 and float(first["peak_rss_MB"]) == 106.0
    assert first["peak_cuda_MB"] == "" and first["test_acc_max"] != ""
    assert (first["seed"], first["graph"], first["agents"], first["target_modules"]) == ("3", "star", "4", "query,value")
    for raw in ("bytes_total", "wall_time", "algorithms", "out_dir"):
        assert raw not in first, raw
    assert "MB sent" in table(rows) and "time (s)" in table(rows)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # written through a temporary, renamed


def test_write_outputs_writes_summary_and_plot(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path))
    results = [Result(a, history(offset=k / 20), config.replace(algorithm=a)) for k, a in enumerate(("decaf", "local"))]
    out = write_outputs(results, tmp_path, title="t")
    assert [r["algorithm"] for r in read_csv(out["csv"])] == ["decaf", "local"]
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decaf" in out["table"] and out["markdown"].startswith("| algorithm |")


def test_a_tasks_other_metrics_reach_the_summary_and_the_csv_files(tmp_path):
    hist = history(rounds=4, eval_every=2, lm=True)
    s = summarise(hist)
    assert (s["test_perplexity_mean"], s["test_perplexity_avg_model"], s["test_exact_match_mean"]) == (2.5, 2.25, 0.4)
    write_csv([dict(algorithm="decaf", **s)], tmp_path / "summary.csv")
    row = read_csv(tmp_path / "summary.csv")[0]
    assert float(row["test_perplexity_mean"]) == 2.5 and float(row["test_loss_avg_model"]) == 0.9
    with trackers.Reporters(TrainConfig(), tmp_path / "decaf", history=hist):
        pass
    metrics = read_csv(tmp_path / "decaf" / trackers.METRICS_CSV)
    assert [m["test_perplexity_mean"] for m in metrics] == ["", "5.0", "", "2.5"]
    assert list(metrics[0])[-3:] == ["test_perplexity_mean", "test_perplexity_avg_model", "test_exact_match_mean"]
    # the terminal table shows a causal LM's perplexity; a classifier's table has no such column
    shown = table([dict(algorithm="decaf", **s)]).splitlines()
    assert "ppl mean" in shown[0] and "ppl avg-model" in shown[0] and "2.50" in shown[2] and "2.25" in shown[2]
    assert "ppl" not in table([dict(algorithm="decaf", **summarise(history(rounds=4)))])


# ------------------------------------------------------------------------------------------------ plot


def test_plot_has_every_piece(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    names = ["decaf", "dlora", "dlora_fa", "local", "fedavg", "exact_avg"]
    hists = {n: history(rounds=3, eval_every=2, offset=k / 50, sent=100_000 * k) for k, n in enumerate(names)}
    fig = figure(hists, title="six algorithms")
    try:
        ax_acc, ax_mb, ax_cd = fig.axes
        legend = fig.legends[0]
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels[:6] == names
        assert {"mean over agents", "averaged model", "worst to best agent"} <= set(labels)
        dotted = [h for h in legend.legend_handles if getattr(h, "get_linestyle", lambda: None)() == ":"]
        assert len(dotted) == 1
        # one min-max band per algorithm, from the worst to the best agent
        bands = [c for c in ax_acc.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(names)
        ys = bands[0].get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(min(h["test_acc_min"] for h in hists["decaf"] if "test_acc" in h))
        assert max(ys) == pytest.approx(max(h["test_acc_max"] for h in hists["decaf"] if "test_acc" in h))
        # accuracy vs MB sent: x is bytes_total in MB at the evaluated rounds
        fedavg_line = ax_mb.get_lines()[2 * names.index("fedavg")]
        evaluated = [h for h in hists["fedavg"] if "test_acc" in h]
        assert list(fedavg_line.get_xdata()) == pytest.approx([h["bytes_total"] / 1e6 for h in evaluated])
        assert "MB" in ax_mb.get_xlabel()
        fig.canvas.draw()
        for ax in (ax_acc, ax_cd):
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert fig.get_suptitle() == "six algorithms"
    finally:
        plt.close(fig)
    plot(hists, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_run_evaluated_once_has_whole_rounds_and_names_a_causal_lms_accuracy():
    import matplotlib.pyplot as plt

    from decaf_lora.report import accuracy_name

    lm = TrainConfig(task="causal_lm", data="x.jsonl", prompt_column="p", completion_column="c")
    assert accuracy_name(lm) == "test exact match" and accuracy_name(TrainConfig()) == "test accuracy"
    assert accuracy_name(lm.replace(prompt_column=None, completion_column=None)) == "test next-token accuracy"
    fig = figure({"decaf": history(rounds=3, eval_every=5)}, acc_label=accuracy_name(lm))  # evaluated at round 3 only
    try:
        ax_acc, ax_mb, ax_cd = fig.axes[:3]
        fig.canvas.draw()
        for ax in (ax_acc, ax_cd):
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks == [1.0, 2.0, 3.0], ticks
        assert ax_acc.get_ylabel() == ax_mb.get_ylabel() == "test exact match"
    finally:
        plt.close(fig)


def test_plot_copes_with_records_that_lack_the_band_and_averaged_model():
    import matplotlib.pyplot as plt

    old = [{k: v for k, v in h.items() if k not in ("test_acc_max", "test_acc_avg_model")} for h in history()]
    fig = figure({"decaf": old, "local": history(rounds=1, eval_every=1)})
    try:
        assert len(fig.axes[0].collections) == 1  # only "local" has its band
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------ progress


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_shows_the_round_just_done():
    stream = FakeStream(tty=True)
    config = TrainConfig(algorithm="decaf", rounds=3)
    bar = RoundProgress(config, 0, True, stream=stream)
    assert bar.mode == "bar"
    recs = history(rounds=3, eval_every=1)
    recs[0]["test_acc_mean"], recs[1]["test_acc_mean"] = 0.6, 0.884
    bar.round_done(recs[0])
    bar.round_done(recs[1])
    drawn = stream.getvalue().split("\r")[-1]  # what the terminal shows now
    assert "2/3" in drawn and "acc=0.884" in drawn and f"loss={recs[1]['train_loss']:.3f}" in drawn, drawn
    bar.round_done(recs[2])
    bar.close()
    assert "3/3" in stream.getvalue().split("\r")[-1]


def test_progress_bar_of_a_resumed_run_shows_its_last_accuracy():
    stream = FakeStream(tty=True)
    done = history(rounds=4, eval_every=2)
    with RoundProgress(TrainConfig(rounds=6), 4, True, history=done, stream=stream) as bar:
        bar.round_done(history(rounds=6, eval_every=2, start=4)[0])  # round 5: not evaluated
        drawn = stream.getvalue().split("\r")[-1]
        assert "5/6" in drawn and f"acc={done[-1]['test_acc_mean']:.3f}" in drawn, drawn


def test_progress_without_a_terminal_prints_one_line_per_round():
    stream = FakeStream(tty=False)
    bar = RoundProgress(TrainConfig(algorithm="dlora", rounds=4), 0, True, stream=stream)
    recs = history(rounds=4, eval_every=2)
    for rec in recs:
        bar.round_done(rec)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [ln.split()[2] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert lines[0].startswith("dlora") and "acc" not in lines[0]
    assert f"acc {recs[1]['test_acc_mean']:.3f} (min {recs[1]['test_acc_min']:.3f}, avg-model" in lines[1]
    assert "cdist 5.00e-02" in lines[1] and lines[1].endswith("4.0 s")


def test_no_progress_prints_the_evaluated_rounds_and_other_ranks_nothing():
    for tty in (True, False):
        stream = FakeStream(tty=tty)
        bar = RoundProgress(TrainConfig(rounds=5, progress=False), 0, True, stream=stream)
        for rec in history(rounds=5, eval_every=2):
            bar.round_done(rec)
        bar.close()
        assert [ln.split()[2] for ln in stream.getvalue().splitlines()] == ["2/5", "4/5", "5/5"]
    quiet = FakeStream(tty=True)
    bar = RoundProgress(TrainConfig(rounds=5), 0, False, stream=quiet)
    for rec in history(rounds=5):
        bar.round_done(rec)
    bar.close()
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------------ report_to


def test_csv_reporter_writes_metrics_and_the_agent_table(tmp_path):
    config = TrainConfig(report_to=["csv"])
    recs = history(rounds=5, agents=3, eval_every=2)
    folder = tmp_path / "decaf"
    with trackers.Reporters(config, folder, history=recs[:2]) as rep:
        assert len(read_csv(folder / trackers.METRICS_CSV)) == 2  # a resumed run's files hold its history at once
        for rec in recs[2:]:
            rep.round_done(rec)
    metrics = read_csv(folder / trackers.METRICS_CSV)
    assert [int(m["round"]) for m in metrics] == [1, 2, 3, 4, 5]
    assert list(metrics[0]) == [c for c, _, _ in trackers.ROUND_COLUMNS]
    assert float(metrics[2]["sent_total_MB"]) == 0.75 and float(metrics[2]["time_comm_s"]) == 0.25
    assert float(metrics[2]["peak_rss_MB"]) == 103.0 and metrics[2]["test_acc_mean"] == ""
    agents = read_csv(folder / trackers.AGENT_ACCURACY_CSV)
    assert list(agents[0]) == ["round", "agent_0", "agent_1", "agent_2"]
    assert [int(a["round"]) for a in agents] == [2, 4, 5]
    assert [float(agents[1][f"agent_{i}"]) for i in range(3)] == recs[3]["test_acc"]
    assert sorted(p.name for p in folder.iterdir()) == [trackers.AGENT_ACCURACY_CSV, trackers.METRICS_CSV]


def test_reporters_write_nothing_for_none_or_on_other_ranks(tmp_path):
    for config, enabled in ((TrainConfig(report_to=["none"]), True), (TrainConfig(report_to=["csv", "tensorboard"]), False)):
        with trackers.Reporters(config, tmp_path / "x", enabled=enabled) as rep:
            rep.round_done(history(rounds=1)[0])
    assert not (tmp_path / "x").exists()


def test_tensorboard_reporter_logs_scalars_per_round(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recs = history(rounds=4, eval_every=2, lm=True)
    with trackers.Reporters(TrainConfig(report_to=["tensorboard"]), tmp_path) as rep:
        for rec in recs:
            rep.round_done(rec)
    assert not (tmp_path / trackers.METRICS_CSV).exists()
    acc = EventAccumulator(str(tmp_path / trackers.TENSORBOARD_DIR))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"accuracy/mean", "accuracy/max", "loss/train", "time/comm_s", "memory/peak_rss_MB",
            "communication/sent_total_MB"} <= set(tags)
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("accuracy/mean")] == [2, 4]
    assert acc.Scalars("memory/peak_rss_MB")[-1].value == pytest.approx(104.0)
    assert [e.value for e in acc.Scalars("test/perplexity_mean")] == pytest.approx([5.0, 2.5])


def test_missing_tensorboard_is_named_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # "import tensorboard" now raises ImportError
    with pytest.raises(ImportError, match="pip install tensorboard"):
        trackers.check_report_to(["csv", "tensorboard"])
    with pytest.raises(ImportError, match="pip install tensorboard"):
        trackers.Reporters(TrainConfig(report_to=["csv", "tensorboard"]), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    trackers.check_report_to(["csv"])  # not asked for: no error


# ------------------------------------------------------------------------------------------------ memory


def test_peak_memory_is_the_process_peak_in_bytes(monkeypatch):
    got = memory.peak_memory("cpu")
    assert set(got) == set(memory.MEMORY) and got["peak_cuda_bytes"] is None
    assert got["peak_rss_bytes"] > 10 * 2**20  # python and torch alone hold more than 10 MiB
    if sys.platform.startswith("linux"):
        status = Path("/proc/self/status").read_text()
        hwm_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
        assert abs(got["peak_rss_bytes"] - hwm_kb * 1024) <= 0.1 * hwm_kb * 1024
    parts = [{"peak_rss_bytes": 5, "peak_cuda_bytes": None}, {"peak_rss_bytes": 9, "peak_cuda_bytes": None}]
    assert memory.max_over_processes(parts) == {"peak_rss_bytes": 9, "peak_cuda_bytes": None}
    assert memory.max_over_processes([{"peak_rss_bytes": 1, "peak_cuda_bytes": 7}, {}])["peak_cuda_bytes"] == 7


@pytest.mark.skipif(os.name != "posix", reason="resource.getrusage is POSIX")
def test_peak_rss_units_per_platform(monkeypatch):
    import resource

    class Usage:
        ru_maxrss = 1000

    monkeypatch.setattr(resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(memory.sys, "platform", "linux")
    assert memory.peak_rss_bytes() == 1_024_000  # kilobytes on Linux
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.peak_rss_bytes() == 1000  # bytes on macOS
