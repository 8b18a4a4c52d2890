"""decaf_lora's layout: loading a config stays light, every name is defined once, the lazy package still exports
everything."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import decaf_kernels.ops as ops
import decaf_lora
from decaf_lora import config, names

HEAVY = ("torch", "numpy", "transformers", "decaf_kernels")


def test_loading_a_config_imports_no_heavy_module(tmp_path):
    pytest.importorskip("yaml", reason="YAML configs need PyYAML (the [lora] extra)")
    (tmp_path / "run.yaml").write_text("agents: 4\ngraph: torus\nlr: 5e-3\nsplit: left\npartition: shards\n")
    script = textwrap.dedent(f"""
        import sys
        from decaf_lora.config import TrainConfig, load_config_file

        cfg = TrainConfig(**load_config_file({str(tmp_path / "run.yaml")!r}))
        cfg.validate()
        assert (cfg.agents, cfg.graph, cfg.lr, cfg.split) == (4, "torus", 0.005, "left"), cfg
        print(" ".join(m for m in {HEAVY!r} if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"loading a config imported {done.stdout.strip()}"


def test_the_package_exports_lazily_what_it_lists():
    for name in decaf_lora.__all__:
        assert getattr(decaf_lora, name) is not None, name
    assert set(decaf_lora.__all__) <= set(dir(decaf_lora))
    assert decaf_lora.data.partition is decaf_lora.partitions.partition  # submodules stay reachable as attributes
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        decaf_lora.no_such_name  # noqa: B018


def test_split_and_method_names_match_the_op():
    assert names.SPLITS == tuple(ops.SPLITS)
    assert sorted(names.CONSENSUS_METHODS) == sorted(ops.METHODS)


def test_each_name_is_defined_once():
    from decaf_lora import algorithms, data, graphs, models, sources

    assert config.TrainConfig().wordnet_path is names.DEFAULT_WORDNET_NOUNS
    assert data.DEFAULT_WORDNET_NOUNS is names.DEFAULT_WORDNET_NOUNS
    assert sources.load_wordnet_supersenses.__defaults__ == (names.DEFAULT_WORDNET_NOUNS,)
    assert config.SPLITS is names.SPLITS and config.DATA_BUILTIN is names.DATA_BUILTIN
    assert algorithms.ALGORITHMS is names.ALGORITHMS and algorithms.MOMENT_POLICIES is names.MOMENT_POLICIES
    assert models.BUILTIN_MODEL is names.BUILTIN_MODEL and data.PARTITIONS is names.PARTITIONS
    assert (graphs.GRAPHS, graphs.WEIGHTS, graphs.TIME_VARYING) == (names.GRAPHS, names.WEIGHTS, names.TIME_VARYING)
