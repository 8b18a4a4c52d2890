"""Loads the compiled extension modules, once, without ever making the package fail to import.

``decaf_kernels._C`` holds the C++ CPU kernels and ``decaf_kernels._C_cuda`` the CUDA ones. If a module is
missing (a source checkout that was never built) or fails to load (an ABI or driver problem), the ops fall
back to the pure-PyTorch reference and a single warning says why.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Optional

_cache: dict[str, tuple[Optional[ModuleType], str]] = {}


def _load(name: str, *, warn: bool) -> tuple[Optional[ModuleType], str]:
    if name not in _cache:
        try:
            mod = importlib.import_module(f"decaf_kernels.{name}")
            _cache[name] = (mod, "loaded")
        except ImportError as err:  # missing or unloadable shared object
            _cache[name] = (None, f"{type(err).__name__}: {err}")
            if warn:
                warnings.warn(
                    f"decaf_kernels: the compiled extension decaf_kernels.{name} could not be loaded ({err}); "
                    "falling back to the pure-PyTorch implementation, which is correct but slower. "
                    "Reinstall with `pip install .` from a source checkout to build it.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _cache[name]


def cpu_ext() -> Optional[ModuleType]:
    """The C++ CPU module, or None (after one warning) when it cannot be loaded."""
    return _load("_C", warn=True)[0]


def cuda_ext() -> Optional[ModuleType]:
    """The CUDA module, or None. Its absence is normal on CPU-only builds, so it never warns."""
    return _load("_C_cuda", warn=False)[0]


def status(name: str) -> str:
    return _load(name, warn=False)[1]
