"""Tables and plots of the regime study (``python -m bench.regimes --report``): see :mod:`bench.regimes`.

Per factor: a table of every level and algorithm (mean +- sample std over the seeds that finished, and how many
did; DLoRA's interference only for the algorithms that average factors), the decaf - dlora differences paired by
seed (the same seed shares data, partition, graph and initialisation, so the pairing removes their variance), and
a plot (accuracy of the agents, of the averaged
model, consensus distance; error bars one std). Written to ``<results>/report.md`` and ``<results>/<factor>.png``
and printed.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bench.regimes import ALGORITHMS, FACTORS, METRICS, effective_changes, setting_name

# the interference is what averaging the factors loses; decaf averages products (its logged value is that loss
# measured on its own factors, which it never incurs), local does not communicate
NOT_AVERAGING = ("decaf", "local")
TIE = 1e-9  # a difference this small is a tie, not a win (complete graph: both at exact consensus)

Records = Dict[Tuple[str, str], Dict[int, dict]]  # (setting, algorithm) -> seed -> record


def load(results: Path) -> Records:
    out: Records = {}
    for path in sorted((results / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        out.setdefault((r["setting"], r["algorithm"]), {})[r["seed"]] = r
    return out


def value(record: dict, metric: str) -> Optional[float]:
    if metric == "interference_mean":
        return record.get("interference_mean")
    return record["summary"].get(metric)


def mean_std(xs: List[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def _runs(records: Records, changes: dict, alg: str) -> Dict[int, dict]:
    return records.get((setting_name(effective_changes(changes, alg)), alg), {})


def factor_table(records: Records, factor: str) -> List[str]:
    lines = ["| level | algorithm | seeds | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for level, changes in FACTORS[factor]:
        for alg in ALGORITHMS:
            runs = _runs(records, changes, alg)
            if not runs:
                continue
            cells = [mean_std([v for r in runs.values() if (v := value(r, m)) is not None])
                     if not (m == "interference_mean" and alg in NOT_AVERAGING) else "-" for m, _ in METRICS]
            lines.append(f"| {level} | {alg} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def paired_table(records: Records, factor: str) -> List[str]:
    """decaf - dlora per level, over the seeds both finished: mean +- std of the differences, and decaf's wins."""
    diffs = [("test_acc_mean", "acc mean"), ("test_acc_min", "acc min"), ("test_acc_avg_model", "acc avg-model"),
             ("consensus_distance_rel", "consensus dist (rel)")]
    lines = ["| level | seeds | " + " | ".join(f"Δ {name} (decaf wins)" for _, name in diffs) + " |",
             "|---|---|" + "---|" * len(diffs)]
    for level, changes in FACTORS[factor]:
        a, b = _runs(records, changes, "decaf"), _runs(records, changes, "dlora")
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        cells = []
        for m, _ in diffs:
            d = [value(a[s], m) - value(b[s], m) for s in seeds]
            wins = sum(1 for x in d if (x < -TIE if m.startswith("consensus") else x > TIE))
            cells.append(f"{mean_std(d)} ({wins}/{len(d)})")
        lines.append(f"| {level} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def plot(records: Records, factor: str, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("test_acc_mean", "mean accuracy of the agents"),
              ("test_acc_avg_model", "accuracy of the averaged model"),
              ("consensus_distance_rel", "consensus distance (relative)")]
    levels = FACTORS[factor]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (metric, title) in zip(axes, panels):
        for k, alg in enumerate(ALGORITHMS):
            xs, ys, es = [], [], []
            for i, (_, changes) in enumerate(levels):
                vals = [v for r in _runs(records, changes, alg).values() if (v := value(r, metric)) is not None]
                if vals:
                    xs.append(i + (k - 2) * 0.06)
                    ys.append(statistics.mean(vals))
                    es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=alg,
                            linewidth=2 if alg in ("decaf", "dlora") else 1)
        ax.set_xticks(range(len(levels)), [lv for lv, _ in levels])
        ax.set_xlabel(factor.replace("_", " "))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(results: Path, factors: List[str]) -> int:
    records = load(results)
    if not records:
        print(f"error: no results in {results / 'runs'}; run python -m bench.regimes first", file=sys.stderr)
        return 1
    any_run = next(iter(next(iter(records.values())).values()))
    out = [f"# Regime study: {sum(len(v) for v in records.values())} runs "
           f"({any_run['date']}, {any_run['machine']}, {any_run['versions']})", ""]
    for f in factors:
        out += [f"## {f}", ""] + factor_table(records, f) + ["", "decaf - dlora, paired by seed:", ""]
        out += paired_table(records, f) + [""]
        if plot(records, f, results / f"{f}.png"):
            out += [f"![{f}]({f}.png)", ""]
    text = "\n".join(out)
    (results / "report.md").write_text(text)
    print(text)
    return 0
