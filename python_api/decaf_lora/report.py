"""What a run shows: the final comparison table (terminal), a CSV summary and a PNG plot (both written
atomically, see :mod:`decaf_lora.runfiles`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence

from .runfiles import PLOT, SUMMARY, atomic_write_bytes

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


def _cell(key: str, fmt: Optional[str], value) -> str:
    if value is None:
        return "-"
    if key == "bytes_total":
        return f"{value / 1e6:.1f}"
    return fmt.format(value)


def table(rows: Sequence[dict]) -> str:
    """A fixed-width table of summary rows (one per algorithm)."""
    header = [title for _, title, _ in COLUMNS]
    body = [[_cell(k, f, row.get(k)) for k, _, f in COLUMNS] for row in rows]
    widths = [max(len(h), *(len(r[j]) for r in body)) if body else len(h) for j, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])


def markdown_table(rows: Sequence[dict]) -> str:
    header = [title for _, title, _ in COLUMNS]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(k, f, row.get(k)) for k, _, f in COLUMNS) + " |" for row in rows]
    return "\n".join(out)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    keys = [k for k, _, _ in COLUMNS] + ["rounds"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: row.get(k) for k in keys})

    atomic_write_bytes(Path(path), write)


def plot(histories: dict, path: Path, *, title: str = "") -> None:
    """Accuracy (mean over agents, and of the averaged model) and consensus distance vs round, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_cd) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, (name, hist) in enumerate(histories.items()):
        color = f"C{k}"
        ev = [h for h in hist if h.get("test_acc_mean") is not None]
        if ev:
            ax_acc.plot([h["round"] for h in ev], [h["test_acc_mean"] for h in ev], "o-", color=color, label=name)
            ax_acc.plot([h["round"] for h in ev], [h["test_acc_avg_model"] for h in ev], ":", color=color)
        cd = [(h["round"], h["consensus_distance_rel"]) for h in hist if h.get("consensus_distance_rel")]
        if cd:
            ax_cd.semilogy(*zip(*cd), "-", color=color, label=name)
    ax_acc.set_xlabel("round")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title("solid: mean over agents; dotted: averaged model", fontsize=9)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    ax_cd.set_xlabel("round")
    ax_cd.set_ylabel("consensus distance of s*B*A (relative)")
    ax_cd.set_title("after communication (server methods: 0, not drawn)", fontsize=9)
    ax_cd.grid(alpha=0.3, which="both")
    ax_cd.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write_bytes(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_outputs(results: List, out_dir: Path, *, title: str = "") -> dict:
    """summary.csv and plot.png in ``out_dir``; returns their paths and the table text."""
    out_dir = Path(out_dir)
    rows = [dict(algorithm=r.algorithm, **r.summary) for r in results]
    write_csv(rows, out_dir / SUMMARY)
    plot({r.algorithm: r.history for r in results}, out_dir / PLOT, title=title)
    return {"csv": out_dir / SUMMARY, "plot": out_dir / PLOT, "table": table(rows),
            "markdown": markdown_table(rows)}
