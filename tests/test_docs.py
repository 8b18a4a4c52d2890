"""The documentation's examples run: the docstring examples of the public ops and the README's example."""

import doctest
import re
from pathlib import Path

import torch

import decaf_kernels
import decaf_kernels.grouped as grouped
import decaf_kernels.ops as ops


def test_docstring_examples():
    result = doctest.testmod(ops, extraglobs={"torch": torch, "decaf_kernels": decaf_kernels})
    assert result.attempted >= 10 and result.failed == 0, result
    result = doctest.testmod(grouped, extraglobs={"torch": torch, "decaf_kernels": decaf_kernels})
    assert result.attempted >= 3 and result.failed == 0, result


def test_readme_example():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["B_new"].shape == (8, 48, 768, 8) and namespace["A_new"].shape == (8, 48, 8, 768)
