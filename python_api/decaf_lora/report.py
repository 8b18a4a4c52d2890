"""What a run shows at the end: the comparison table (terminal), ``summary.csv`` and ``plot.png`` (both written
atomically, see :mod:`decaf_lora.runfiles`), and :func:`summarise`, the final row of a run.

The log keeps raw units (bytes, seconds); the table and ``summary.csv`` show megabytes (10^6 bytes) and seconds,
and every column name of ``summary.csv`` that has a unit says it (``sent_MB``, ``wall_time_s``, ``peak_rss_MB``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .memory import MEMORY
from .runfiles import PLOT, SUMMARY, atomic_write_bytes

__all__ = ["TIMES", "summarise", "task_metrics", "summary_row", "table", "markdown_table", "write_csv", "figure",
           "plot", "write_outputs"]

TIMES = ("time_local", "time_wait", "time_comm", "time_consensus", "time_eval")
"""What a process measures per round (seconds), reported as the maximum over processes."""

MB = 1e6  # "MB" everywhere in decaf's output is 10^6 bytes

COLUMNS = (
    ("algorithm", "algorithm", "{}"),
    ("test_acc_mean", "acc mean", "{:.3f}"),
    ("test_acc_min", "acc min", "{:.3f}"),
    ("test_acc_avg_model", "acc avg-model", "{:.3f}"),
    ("train_loss", "train loss", "{:.3f}"),
    ("consensus_distance_rel", "consensus dist (rel)", "{:.2e}"),
    ("interference_rel", "interference (rel)", "{:.2e}"),
    ("bytes_total", "MB sent", None),
    ("wall_time", "time (s)", "{:.1f}"),
)
"""The terminal table: (summary key, title, format)."""

_LM_COLUMNS = (("test_perplexity_mean", "ppl mean", "{:.2f}"), ("test_perplexity_avg_model", "ppl avg-model", "{:.2f}"))
"""A causal LM's table also shows the perplexity, after the accuracies."""


def table_columns(rows: Sequence[dict]):
    if not any(row.get("test_perplexity_mean") is not None for row in rows):
        return COLUMNS
    return COLUMNS[:4] + _LM_COLUMNS + COLUMNS[4:]

# summary.csv: (column, summary key, divisor); the run's seed and settings follow (see summary_row)
_CSV_METRICS = (
    [("rounds", "rounds", None), ("test_acc_mean", "test_acc_mean", None), ("test_acc_min", "test_acc_min", None),
     ("test_acc_max", "test_acc_max", None), ("test_acc_avg_model", "test_acc_avg_model", None),
     ("test_loss_mean", "test_loss_mean", None), ("test_loss_avg_model", "test_loss_avg_model", None),
     ("train_loss", "train_loss", None),
     ("consensus_distance_rel", "consensus_distance_rel", None), ("interference_rel", "interference_rel", None),
     ("sent_MB", "bytes_total", MB), ("wire_MB", "bytes_wire_total", MB), ("wall_time_s", "wall_time", None)]
    + [(f"{k}_s", k, None) for k in TIMES]
    + [("peak_rss_MB", "peak_rss_bytes", MB), ("peak_cuda_MB", "peak_cuda_bytes", MB)])
# settings that do not describe the run (where it writes, how it shows progress, compare's list)
_NOT_SETTINGS = ("algorithm", "algorithms", "seeds", "rounds", "out_dir", "progress", "report_to",
                 "checkpoint_every", "dist_timeout", "eval_batch_size")


_FIXED_TESTS = ("test_acc_mean", "test_acc_min", "test_acc_max", "test_acc_avg_model", "test_loss_mean",
                "test_loss_avg_model")


def task_metrics(rec: dict) -> List[str]:
    """The test metrics of ``rec`` beyond the fixed ones: every task's ``test_<metric>_mean`` and
    ``test_<metric>_avg_model`` (a causal LM's ``test_perplexity_mean``, ``test_token_acc_avg_model``, ...)."""
    return [k for k in rec if k.startswith("test_") and k.endswith(("_mean", "_avg_model")) and k not in _FIXED_TESTS]


def eval_record(parts: List[dict]) -> dict:
    """The round's test metrics from every process's :meth:`decaf_lora.Trainer._evaluate_local`: per metric the
    mean over agents (and for accuracy the min, max and every agent's), and the averaged model's."""
    avg = next(p["avg"] for p in parts if "avg" in p)
    rec = {}
    for k in avg:
        values = [x for p in parts for x in p[k]]
        rec[f"test_{k}_mean"] = sum(values) / len(values)
        rec[f"test_{k}_avg_model"] = avg[k]
        if k == "acc":
            rec.update({"test_acc_min": min(values), "test_acc_max": max(values), "test_acc": values})
    return rec


def summarise(history: List[dict]) -> dict:
    """The final row of a run: its last evaluated metrics (every task's), last consensus distance, bytes, time (in
    total and summed per part) and peak memory (the largest of any round)."""
    if not history:
        return {}
    last = history[-1]
    ev = next((h for h in reversed(history) if h.get("test_acc_mean") is not None), {})
    out = {"rounds": last["round"], "train_loss": last["train_loss"],
           **{k: ev.get(k) for k in _FIXED_TESTS}, **{k: ev[k] for k in task_metrics(ev)},
           "consensus_distance": last["consensus_distance"], "consensus_distance_rel": last["consensus_distance_rel"],
           "interference_rel": last["interference_rel"], "bytes_total": last["bytes_total"],
           "bytes_wire_total": last.get("bytes_wire_total"), "wall_time": last["wall_time"],
           **{k: sum(h.get(k) or 0.0 for h in history) for k in TIMES}}
    for k in MEMORY:
        values = [h[k] for h in history if h.get(k) is not None]
        out[k] = max(values) if values else None
    return out


# ---------------------------------------------------------------------------------------------------- table


def _cell(key: str, fmt: Optional[str], value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):  # (mean, std) over seeds
        mean, std = value
        if key == "bytes_total" and std == 0:
            return f"{mean / MB:.1f}"
        return f"{_cell(key, fmt, mean)} ± {_cell(key, fmt, std)}"
    if key == "bytes_total":
        return f"{value / MB:.1f}"
    return fmt.format(value)


def table(rows: Sequence[dict], columns=None) -> str:
    """A fixed-width table of summary rows (one per algorithm); a value may be a (mean, std) pair. ``columns``:
    (key, title, format) triples, :data:`COLUMNS` (and a causal LM's perplexity) by default."""
    columns = columns or table_columns(rows)
    header = [title for _, title, _ in columns]
    body = [[_cell(k, f, row.get(k)) for k, _, f in columns] for row in rows]
    widths = [max(len(h), *(len(r[j]) for r in body)) if body else len(h) for j, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(rows: Sequence[dict], columns=None) -> str:
    columns = columns or table_columns(rows)
    header = [title for _, title, _ in columns]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(k, f, row.get(k)) for k, _, f in columns) + " |" for row in rows]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- summary.csv


def _plain(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def summary_row(row: dict, config=None) -> Dict[str, object]:
    """One line of ``summary.csv``: ``algorithm``, the metrics in the table's units (MB, seconds), the task's other
    test metrics (:func:`task_metrics`), then the run's ``seed`` and its other settings (the
    :class:`~decaf_lora.config.TrainConfig` fields that describe the run, lists comma-separated). ``row``:
    :func:`summarise`'s dict plus ``algorithm``."""
    out: Dict[str, object] = {"algorithm": row.get("algorithm")}
    for column, key, divisor in _CSV_METRICS:
        value = row.get(key)
        out[column] = value / divisor if value is not None and divisor else value
    out.update({k: row[k] for k in task_metrics(row)})
    if config is not None:
        settings = config.to_dict()
        out["seed"] = settings["seed"]
        out.update({k: _plain(v) for k, v in settings.items() if k not in _NOT_SETTINGS and k != "seed"})
    return out


def write_csv(rows: Sequence[dict], path: Path, configs: Optional[Sequence] = None) -> None:
    """``summary.csv``: one :func:`summary_row` per row (``configs[i]``: row i's run settings, or None)."""
    lines = [summary_row(r, configs[i] if configs else None) for i, r in enumerate(rows)]
    keys: List[str] = []
    for line in lines:
        keys += [k for k in line if k not in keys]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(lines)

    atomic_write_bytes(Path(path), write)


# ---------------------------------------------------------------------------------------------------- plot


def accuracy_name(config=None) -> str:
    """What a run's ``acc`` measures, for axis labels: a causal LM's exact match of the completions (prompt/completion
    data) or its next-token accuracy (plain texts); a classifier's accuracy."""
    if config is None or getattr(config, "task", "classification") != "causal_lm":
        return "test accuracy"
    return "test exact match" if config.prompt_column is not None else "test next-token accuracy"


def figure(histories: Dict[str, List[dict]], *, title: str = "", acc_label: str = "test accuracy"):
    """The comparison figure (a matplotlib Figure, Agg backend; close it with ``plt.close(fig)``).

    Three panels, one colour per algorithm: test accuracy vs round (solid: mean over agents, with a band from
    the worst to the best agent; dotted: the averaged model), the same accuracies vs megabytes sent (cumulative,
    modelled), and the consensus distance vs round. Round axes have integer ticks and start at round 1. One legend
    below the panels names the algorithms and the line styles. ``acc_label``: what the accuracy is
    (:func:`accuracy_name`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, (ax_acc, ax_mb, ax_cd) = plt.subplots(1, 3, figsize=(15, 4.8))
    handles = []
    for k, (name, hist) in enumerate(histories.items()):
        color = f"C{k % 10}"
        handles.append(Line2D([], [], color=color, marker="o", markersize=4, label=name))
        ev = [h for h in hist if h.get("test_acc_mean") is not None]
        if ev:
            rounds = [h["round"] for h in ev]
            sent = [h["bytes_total"] / MB for h in ev]
            mean = [h["test_acc_mean"] for h in ev]
            avg = [(h["round"], h["bytes_total"] / MB, h["test_acc_avg_model"]) for h in ev
                   if h.get("test_acc_avg_model") is not None]
            ax_acc.plot(rounds, mean, "o-", color=color, markersize=4)
            ax_mb.plot(sent, mean, "o-", color=color, markersize=4)
            if avg:
                ax_acc.plot([a[0] for a in avg], [a[2] for a in avg], ":", color=color, linewidth=1.8)
                ax_mb.plot([a[1] for a in avg], [a[2] for a in avg], ":", color=color, linewidth=1.8)
            band = [(h["round"], h["test_acc_min"], h["test_acc_max"]) for h in ev
                    if h.get("test_acc_min") is not None and h.get("test_acc_max") is not None]
            if band:
                ax_acc.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                    color=color, alpha=0.12, linewidth=0)
        cd = [(h["round"], h["consensus_distance_rel"]) for h in hist if h.get("consensus_distance_rel")]
        if cd:
            ax_cd.semilogy(*zip(*cd), "-", color=color)
    styles = [Line2D([], [], color="0.3", linestyle="-", label="mean over agents"),
              Line2D([], [], color="0.3", linestyle=":", linewidth=1.8, label="averaged model"),
              Patch(facecolor="0.3", alpha=0.25, label="worst to best agent")]
    ax_acc.set(xlabel="round", ylabel=acc_label, title="accuracy vs round")
    ax_mb.set(xlabel="MB sent (cumulative, modelled)", ylabel=acc_label, title="accuracy vs communication")
    ax_cd.set(xlabel="round", ylabel="consensus distance of s*B*A (relative)",
              title="consensus distance (server methods: 0, not drawn)")
    last = max((h["round"] for hist in histories.values() for h in hist), default=1)
    for ax in (ax_acc, ax_cd):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last + 0.5)  # a run evaluated once still gets whole rounds on its axis
    hi = ax_mb.get_xlim()[1]
    if hi > 0:  # communication starts at nothing; a margin keeps the points of local training (0 MB) in view
        ax_mb.set_xlim(-0.03 * hi, hi)
    for ax in (ax_acc, ax_mb, ax_cd):
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, which="both")
    all_handles = handles + styles
    fig.legend(handles=all_handles, loc="lower center", ncol=min(len(all_handles), 9), frameon=False,
               fontsize=9)
    if title:
        fig.suptitle(title)
    # room below the panels for the legend (two rows when it wraps)
    fig.tight_layout(rect=(0, 0.1 if len(all_handles) <= 9 else 0.15, 1, 1))
    return fig


def plot(histories: Dict[str, List[dict]], path: Path, *, title: str = "", acc_label: str = "test accuracy") -> None:
    """Write :func:`figure` as a PNG, atomically."""
    import matplotlib.pyplot as plt

    fig = figure(histories, title=title, acc_label=acc_label)
    try:
        atomic_write_bytes(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_outputs(results: List, out_dir: Path, *, title: str = "") -> dict:
    """summary.csv and plot.png in ``out_dir``; returns their paths and the table text."""
    out_dir = Path(out_dir)
    rows = [dict(algorithm=r.algorithm, **(summarise(r.history) if r.history else r.summary)) for r in results]
    write_csv(rows, out_dir / SUMMARY, [getattr(r, "config", None) for r in results])
    plot({r.algorithm: r.history for r in results}, out_dir / PLOT, title=title,
         acc_label=accuracy_name(getattr(results[0], "config", None) if results else None))
    return {"csv": out_dir / SUMMARY, "plot": out_dir / PLOT, "table": table(rows),
            "markdown": markdown_table(rows)}
