"""A comparison over several seeds (``decaf compare --seeds 0,1,2``): every algorithm once per seed, and the
spread over the seeds.

A seed draws the data split, the partition, the graph (where random), the initialisation and every random stream,
so one seed says little about differences of a few points between algorithms. Seed ``k``'s comparison is an
ordinary one in ``<out_dir>/seed-<k>`` (its own summary.csv, plot and one folder per algorithm, resumable as
any); ``<out_dir>`` gets ``summary.csv`` with every (algorithm, seed) row, ``plot.png`` with the curves averaged
over the seeds, and the table shows each metric as mean +- sample standard deviation over the seeds, followed by
each algorithm's difference to the first, seed by seed (the pairing removes what varies between seeds).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import TrainConfig
from .processes import Group, join
from .report import accuracy_name, table_columns, markdown_table, plot, summarise, table, write_csv, write_outputs
from .runfiles import PLOT, SUMMARY, check_out_dir, mark_run

__all__ = ["seed_dir", "check_seed_dirs", "compare_seeds", "seed_rows", "paired_rows", "mean_history",
           "write_seed_outputs"]

# the curves averaged over seeds in the plot
_CURVES = ("test_acc_mean", "test_acc_min", "test_acc_max", "test_acc_avg_model", "bytes_total",
           "consensus_distance_rel")


def seed_dir(out_dir, seed: int) -> Path:
    return Path(out_dir) / f"seed-{seed}"


def check_seed_dirs(config: TrainConfig, algorithms: List[str], seeds: List[int], *, resume: bool,
                    overwrite: bool) -> None:
    """Refuse, before anything is loaded, what :func:`decaf_lora.runfiles.check_out_dir` refuses, for ``out_dir``
    itself and for every seed's folder."""
    check_out_dir(config.out_dir, [], resume=resume, overwrite=overwrite)
    for s in seeds:
        check_out_dir(seed_dir(config.out_dir, s), algorithms, resume=resume, overwrite=overwrite)


def compare_seeds(config: TrainConfig, seeds: Optional[List[int]] = None, *, resume: bool = False,
                  overwrite: bool = False, log: Callable[[str], None] = print, group: Optional[Group] = None,
                  **kwargs) -> Dict[int, list]:
    """:func:`decaf_lora.compare` once per seed (``seeds``, else ``config.seeds``), each into ``seed_dir(out_dir,
    seed)``; returns seed -> its results. ``kwargs`` go to :func:`~decaf_lora.compare` (``model``, ``loss``,
    ``collator``; not ``experiment``, which a seed changes). Under torchrun every process calls it."""
    from .models import pick_device
    from .trainer import compare, restarted_by_torchrun

    seeds = list(seeds if seeds is not None else config.seeds or [config.seed])
    if "experiment" in kwargs:
        raise ValueError("compare_seeds builds each seed's experiment (the seed draws the split and partition): "
                         "pass train/test data through the config, or call compare once per seed")
    algorithms = list(config.algorithms)
    group = group if group is not None else join(pick_device(config.device), timeout=config.dist_timeout)
    if group.rank == 0:
        if not restarted_by_torchrun():
            check_seed_dirs(config, algorithms, seeds, resume=resume, overwrite=overwrite)
        Path(config.out_dir).mkdir(parents=True, exist_ok=True)
        mark_run(Path(config.out_dir))
    out: Dict[int, list] = {}
    for i, s in enumerate(seeds):
        log(f"seed {s} ({i + 1} of {len(seeds)})")
        out[s] = compare(config.replace(seed=s, seeds=None, out_dir=str(seed_dir(config.out_dir, s))),
                         resume=resume, overwrite=overwrite, log=log, group=group, **kwargs)
    return out


def _spread(values: List[float]):
    if not values:
        return None
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_rows(by_seed: Dict[int, list]) -> List[dict]:
    """One table row per algorithm: every numeric summary value as (mean, sample std) over the seeds, and
    ``seeds``, how many."""
    rows = []
    algorithms = [r.algorithm for r in next(iter(by_seed.values()))]
    for alg in algorithms:
        summaries = [summarise(r.history) for results in by_seed.values() for r in results if r.algorithm == alg]
        keys = [k for k in summaries[0] if all(isinstance(s.get(k), (int, float)) for s in summaries)]
        row = {"algorithm": alg, "seeds": len(summaries)}
        row.update({k: _spread([float(s[k]) for s in summaries]) for k in keys})
        rows.append(row)
    return rows


def mean_history(histories: List[List[dict]]) -> List[dict]:
    """The rounds that every history has, with the plotted values averaged over the histories (None where one of
    them has none)."""
    out = []
    for recs in zip(*histories):
        rec = {"round": recs[0]["round"]}
        for k in _CURVES:
            values = [r.get(k) for r in recs]
            rec[k] = None if any(v is None for v in values) else statistics.mean(values)
        out.append(rec)
    return out


# the metrics whose differences the paired table shows, and whether lower is better
_PAIRED = (("test_acc_mean", "acc mean", False), ("test_acc_min", "acc min", False),
           ("test_acc_avg_model", "acc avg-model", False), ("consensus_distance_rel", "consensus dist (rel)", True))


def paired_rows(by_seed: Dict[int, list]) -> List[dict]:
    """Each algorithm after the first minus the first, seed by seed (a seed's runs share data, partition, graph and
    initialisation, so the pairing takes out what varies between seeds): per metric (mean, std) of the differences
    and in how many seeds the algorithm did better (``<key>_wins``)."""
    runs = list(by_seed.values())
    algorithms = [r.algorithm for r in runs[0]]
    rows = []
    summaries = [{r.algorithm: summarise(r.history) for r in results} for results in runs]
    for alg in algorithms[1:]:
        row = {"algorithm": f"{alg} - {algorithms[0]}", "seeds": len(runs)}
        for key, _, lower in _PAIRED:
            pairs = [(s[alg].get(key), s[algorithms[0]].get(key)) for s in summaries]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            row[key] = _spread(diffs)
            row[f"{key}_wins"] = sum(1 for d in diffs if (d < -1e-9 if lower else d > 1e-9))
        rows.append(row)
    return rows


def paired_table(rows: List[dict]) -> str:
    """The text of :func:`paired_rows`: ``mean ± std (better in k of n seeds)`` per metric (report's table)."""
    cells = [{"algorithm": row["algorithm"], "seeds": row["seeds"],
              **{k: None if row[k] is None else
                 f"{row[k][0]:+.3f} ± {row[k][1]:.3f} ({row[k + '_wins']}/{row['seeds']})" for k, _, _ in _PAIRED}}
             for row in rows]
    columns = (("algorithm", "difference", "{}"), ("seeds", "seeds", "{}")) + tuple((k, t, "{}") for k, t, _ in _PAIRED)
    return table(cells, columns)


def write_seed_outputs(by_seed: Dict[int, list], out_dir, *, title: str = "") -> dict:
    """Each seed's own outputs in its folder; in ``out_dir`` summary.csv (every algorithm and seed), plot.png
    (curves averaged over the seeds) and the table of :func:`seed_rows`. Returns their paths and the table text."""
    out_dir = Path(out_dir)
    for s, results in by_seed.items():
        write_outputs(results, seed_dir(out_dir, s), title=f"{title}, seed {s}" if title else f"seed {s}")
    runs = [r for results in by_seed.values() for r in results]
    write_csv([dict(algorithm=r.algorithm, **summarise(r.history)) for r in runs], out_dir / SUMMARY,
              [r.config for r in runs])
    algorithms = [r.algorithm for r in next(iter(by_seed.values()))]
    histories = {a: mean_history([r.history for r in runs if r.algorithm == a]) for a in algorithms}
    seeds = ",".join(str(s) for s in by_seed)
    plot(histories, out_dir / PLOT, acc_label=accuracy_name(runs[0].config),
         title=f"{title} (mean over seeds {seeds})" if title else f"mean over seeds {seeds}")
    rows = seed_rows(by_seed)
    columns = table_columns(rows)
    columns = columns[:1] + (("seeds", "seeds", "{}"),) + columns[1:]
    text = table(rows, columns)
    paired = paired_rows(by_seed)
    if paired:
        text += (f"\n\npaired by seed (each seed's difference to {paired[0]['algorithm'].split(' - ')[1]}; "
                 "in parentheses: seeds where it did better)\n" + paired_table(paired))
    return {"csv": out_dir / SUMMARY, "plot": out_dir / PLOT, "table": text,
            "markdown": markdown_table(rows, columns), "rows": rows, "paired": paired}

