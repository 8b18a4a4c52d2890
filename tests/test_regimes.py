"""bench/regimes.py, the regime study's runner and report, without training: the job list (every setting once, the
graph dropped for algorithms that never read it, decaf and dlora first), the refusal to mix results of another
configuration, and the report's statistics (mean ± sample std; decaf - dlora paired by seed)."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("torch")
regimes = pytest.importorskip("bench.regimes")
from bench.regimes_report import load, paired_table, factor_table  # noqa: E402


def test_jobs_cover_every_setting_once_main_algorithms_first():
    todo = regimes.jobs(list(regimes.FACTORS), [0, 1], regimes.ALGORITHMS)
    keys = [(regimes.setting_name(c), s, a) for c, s, a in todo]
    assert len(keys) == len(set(keys))
    n_main = sum(1 for _, _, a in todo if a in ("decaf", "dlora"))
    assert {a for _, _, a in todo[:n_main]} == {"decaf", "dlora"}
    # the demo's setting appears in three factors but runs once per seed and algorithm
    assert keys.count(("base", 0, "decaf")) == 1
    # ring-16 and complete-16 are one run for local and fedavg (no graph), two for decaf
    graph_settings = {regimes.setting_name(c) for c, s, a in todo if a == "local" and c.get("agents") == 16}
    assert graph_settings == {"agents-16"}
    assert {regimes.setting_name(c) for c, s, a in todo if a == "decaf" and c.get("agents") == 16} == \
        {"agents-16_graph-ring", "agents-16_graph-complete"}
    # every job is a valid configuration
    for changes, seed, alg in todo:
        cfg = regimes.config_for(changes, seed, alg, "unused", None)
        assert cfg.eval_every == cfg.rounds and cfg.seed == seed


def test_a_result_of_another_configuration_is_refused(tmp_path):
    changes = dict(rank=4, lora_alpha=8.0)
    path = regimes.result_path(tmp_path, changes, 0, "decaf")
    other = regimes.config_for(changes, 0, "decaf", "x", None).replace(lr=1e-3)
    regimes.write_json(path, {"config": other.to_dict()})
    with pytest.raises(SystemExit, match="lr: there 0.001, now 0.005"):
        regimes.main(["--factors", "rank", "--seeds", "0", "--algorithms", "decaf", "--results", str(tmp_path),
                      "--shard", "0/3"])  # the shard of rank 4 / decaf: job 0 of 3


def _record(setting, changes, seed, alg, acc, cd):
    return {"setting": setting, "changes": changes, "seed": seed, "algorithm": alg, "interference_mean": 0.01,
            "summary": {"test_acc_mean": acc, "test_acc_min": acc - 0.05, "test_acc_avg_model": acc + 0.05,
                        "consensus_distance_rel": cd}}


def test_report_gives_mean_std_and_paired_differences(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    values = {("decaf", 0): (0.60, 0.2), ("decaf", 1): (0.64, 0.3), ("dlora", 0): (0.58, 0.25),
              ("dlora", 1): (0.63, 0.28), ("dlora", 2): (0.50, 0.40)}  # seed 2 has no decaf run: not paired
    level, changes = regimes.FACTORS["rank"][0]  # rank 4
    for (alg, seed), (acc, cd) in values.items():
        record = _record(regimes.setting_name(changes), changes, seed, alg, acc, cd)
        (runs / f"{alg}-{seed}.json").write_text(json.dumps(record))
    records = load(tmp_path)
    table = "\n".join(factor_table(records, "rank"))
    dl = [0.58, 0.63, 0.50]
    assert f"| 4 | dlora | 3 | {statistics.mean(dl):.3f} ± {statistics.stdev(dl):.3f} |" in table
    paired = "\n".join(paired_table(records, "rank"))
    d = [0.60 - 0.58, 0.64 - 0.63]
    assert f"| 4 | 2 | {statistics.mean(d):.3f} ± {statistics.stdev(d):.3f} (2/2) |" in paired
    assert "(1/2)" in paired  # consensus distance: decaf lower in seed 0 only
