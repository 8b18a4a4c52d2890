"""Where a run reports its rounds besides its log (``report_to``, like transformers' ``TrainingArguments``).

* ``csv`` (the default): in the algorithm's folder, ``metrics.csv`` (one line per round, units in the column
  names: ``sent_MB``, ``time_local_s``, ``peak_rss_MB``, ...) and ``agent_accuracy.csv`` (one line per evaluated
  round, one column per agent). Both are rewritten whole, atomically, after every round from the run's records,
  so a resumed run's files hold exactly its history (the rounds after its checkpoint are gone, as from the log).
* ``tensorboard``: event files in ``<algorithm>/tensorboard/`` through ``torch.utils.tensorboard`` (which needs
  the optional ``tensorboard`` package); ``tensorboard --logdir <out_dir>`` shows every algorithm of the folder.
  A resumed or restarted run hides the rounds an earlier run logged from its start on (TensorBoard's
  ``purge_step``), so nothing is shown twice.
* ``none``: nothing but the log.

Only the process that writes (rank 0) reports: the trainer passes ``enabled``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Sequence

from .report import MB, TIMES, task_metrics
from .runfiles import atomic_write_bytes

__all__ = ["METRICS_CSV", "AGENT_ACCURACY_CSV", "TENSORBOARD_DIR", "ROUND_COLUMNS", "check_report_to", "Reporters"]

METRICS_CSV = "metrics.csv"
AGENT_ACCURACY_CSV = "agent_accuracy.csv"
TENSORBOARD_DIR = "tensorboard"

ROUND_COLUMNS = (
    [("round", "round", None), ("train_loss", "train_loss", None), ("test_loss_mean", "test_loss_mean", None),
     ("test_acc_mean", "test_acc_mean", None), ("test_acc_min", "test_acc_min", None),
     ("test_acc_max", "test_acc_max", None), ("test_acc_avg_model", "test_acc_avg_model", None),
     ("test_loss_avg_model", "test_loss_avg_model", None), ("consensus_distance", "consensus_distance", None),
     ("consensus_distance_rel", "consensus_distance_rel", None),
     ("interference_rel", "interference_rel", None), ("sent_MB", "bytes", MB), ("sent_total_MB", "bytes_total", MB),
     ("wire_MB", "bytes_wire", MB), ("wire_total_MB", "bytes_wire_total", MB),
     ("diagnostic_MB", "bytes_diagnostic", MB)]
    + [(f"{k}_s", k, None) for k in TIMES]
    + [("wall_time_s", "wall_time", None), ("peak_rss_MB", "peak_rss_bytes", MB),
       ("peak_cuda_MB", "peak_cuda_bytes", MB)])
"""The columns of ``metrics.csv``: (column, key of the round record, divisor); the task's other test metrics
(:func:`decaf_lora.report.task_metrics`: a causal LM's perplexity, token accuracy, exact match) follow."""

# TensorBoard tag of each column (round is the step)
_TAGS = {"train_loss": "loss/train", "test_loss_mean": "loss/test_mean", "test_acc_mean": "accuracy/mean",
         "test_acc_min": "accuracy/min", "test_acc_max": "accuracy/max",
         "test_acc_avg_model": "accuracy/averaged_model", "test_loss_avg_model": "loss/test_averaged_model",
         "consensus_distance": "consensus/distance",
         "consensus_distance_rel": "consensus/distance_rel", "interference_rel": "consensus/interference_rel",
         "sent_total_MB": "communication/sent_total_MB", "wire_total_MB": "communication/wire_total_MB",
         **{f"{k}_s": f"time/{k[len('time_'):]}_s" for k in TIMES}, "wall_time_s": "time/wall_s",
         "peak_rss_MB": "memory/peak_rss_MB", "peak_cuda_MB": "memory/peak_cuda_MB"}


def _in_units(rec: dict) -> dict:
    out = {}
    for column, key, divisor in ROUND_COLUMNS:
        value = rec.get(key)
        out[column] = value / divisor if value is not None and divisor else value
    out.update({k: rec[k] for k in task_metrics(rec)})
    return out


def check_report_to(report_to: Sequence[str]) -> None:
    """ImportError (naming ``pip install tensorboard``) when ``report_to`` asks for TensorBoard and it is missing;
    call it before anything is loaded or written."""
    if "tensorboard" not in report_to:
        return
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it; a clearer error than torch's)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"report_to 'tensorboard' needs the tensorboard package, which is missing ({exc}): "
                          "pip install tensorboard, or leave tensorboard out of --report-to") from None


class _Csv:
    def __init__(self, folder: Path, history: Sequence[dict]):
        self.metrics = folder / METRICS_CSV
        self.agents = folder / AGENT_ACCURACY_CSV
        self.records: List[dict] = list(history)
        self.write()

    def round_done(self, rec: dict) -> None:
        self.records.append(rec)
        self.write()

    def write(self) -> None:
        rows = [_in_units(r) for r in self.records]
        columns = [c for c, _, _ in ROUND_COLUMNS]
        for r in self.records:  # the task's other metrics, in the order they first appear
            columns += [k for k in task_metrics(r) if k not in columns]
        _write_csv(self.metrics, columns, rows)
        evaluated = [r for r in self.records if r.get("test_acc")]
        n = max((len(r["test_acc"]) for r in evaluated), default=0)
        names = [f"agent_{i}" for i in range(n)]
        _write_csv(self.agents, ["round"] + names,
                   [{"round": r["round"], **dict(zip(names, r["test_acc"]))} for r in evaluated])

    def close(self) -> None:
        pass


def _write_csv(path: Path, columns: List[str], rows: List[dict]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    atomic_write_bytes(path, write)


class _TensorBoard:
    def __init__(self, folder: Path, start_round: int, config):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what earlier writers logged from this round on (a run resumed from its
        # checkpoint repeats the rounds after it; a run started over repeats them all)
        self.writer = SummaryWriter(log_dir=str(folder / TENSORBOARD_DIR), purge_step=start_round + 1)
        if config is not None:
            text = json.dumps(config.to_dict(), indent=2, default=str)
            self.writer.add_text("config", "```\n" + text + "\n```", global_step=start_round)

    def round_done(self, rec: dict) -> None:
        step = rec["round"]
        for column, value in _in_units(rec).items():
            tag = _TAGS.get(column) or (f"test/{column[len('test_'):]}" if column in task_metrics(rec) else None)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Reporters:
    """The run's ``report_to`` destinations for one algorithm.

    Args:
        config: the run's :class:`~decaf_lora.config.TrainConfig` (``report_to``; TensorBoard also records it).
        out_dir: the algorithm's folder (``<out_dir>/<algorithm>``).
        history: the records of the rounds done before (a resumed run).
        enabled: False on every process but the one that writes: nothing is written.

    Raises:
        ImportError: TensorBoard asked for and missing (before anything is written).
    """

    def __init__(self, config, out_dir, *, history: Sequence[dict] = (), enabled: bool = True):
        report_to = list(config.report_to)
        self._each: list = []
        if not enabled:
            return
        check_report_to(report_to)
        folder = Path(out_dir)
        start = history[-1]["round"] if history else 0
        if "csv" in report_to:
            self._each.append(_Csv(folder, history))
        if "tensorboard" in report_to:
            self._each.append(_TensorBoard(folder, start, config))

    def round_done(self, rec: dict) -> None:
        """Report round ``rec`` (the record the log gets)."""
        for r in self._each:
            r.round_done(rec)

    def close(self) -> None:
        for r in self._each:
            r.close()
        self._each = []

    def __enter__(self) -> "Reporters":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

