"""Benchmarks and the demonstration of decaf-kernels.

* ``bench.cases``      the frozen benchmark cases of docs/design.md and their inputs
* ``bench.baselines``  the comparison set (dense SVD, dense svd_lowrank, factored QR / Cholesky, DLoRA)
                       and the float64 optimality oracle; pure PyTorch, no decaf_kernels import
* ``bench.compare``    ``python -m bench.compare``: every method side by side in one process
* ``bench.demo``       ``python -m bench.demo``: DLoRA vs DeCAF gossip on the tiny and small cases
* ``test_bench_consensus.py``  pytest-benchmark microbenchmarks (``pytest bench/ --benchmark-only``)
* ``test_baselines.py``        correctness of the baselines and the oracle (``pytest bench/test_baselines.py``)
"""
