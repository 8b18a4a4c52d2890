"""Triton itself and what every kernel launch shares: availability, the interpreter, autotuning, argument checks.

This module imports without Triton: :func:`is_available` is then False and the kernel modules (``gram``, ``mix``)
are not imported. Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors through the Triton interpreter; it
must be set before ``triton`` is first imported, because Triton decides at ``@triton.jit`` time (for its own
helpers such as ``tl.sum`` as well as for these kernels). Otherwise the kernels need CUDA tensors.

Launch configuration. Without block-size overrides a wrapper launches a ``triton.autotune`` handle (BLOCK_P x
num_warps x num_stages; BLOCK_Q / BLOCK_R follow from the shape). Autotuning benchmarks every config on the first
call for each key (shape bucket, stride class, dtypes, precision) and caches the choice; make that first call
before capturing a CUDA graph. Every config writes every output element, so benchmarking leaves correct results.
Block-size overrides (powers of two >= 16, the smallest shape ``tl.dot`` accepts) bypass the autotuner and launch
the plain kernel with :data:`NUM_WARPS` warps; under the interpreter there is no autotuning, one default config.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _err:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None
    _IMPORT_ERROR = _err

#: The oldest Triton the kernels run on: 3.5 is the first whose tl.dot takes float64 (the fp64 Gram mode). torch
#: before 2.9 pins an older Triton; CUDA tensors then take the pure-PyTorch fallback.
MIN_TRITON = (3, 5)
_TOO_OLD = triton is not None and tuple(int(p) for p in triton.__version__.split(".")[:2]) < MIN_TRITON
if _TOO_OLD:
    _IMPORT_ERROR = ImportError(
        f"Triton {triton.__version__} is older than 3.5, the first whose tl.dot takes float64 (the fp64 Gram kernels)"
    )
    triton = tl = None

NUM_WARPS = 8  # the override / interpreter config; from ptxas reports of AOT builds (no spills up to 64 x 64 tiles)
NUM_STAGES = 3
MIN_DOT = 16  # tl.dot needs every dimension >= 16
MAX_TILE_BYTES = 64 * 1024  # operand bytes per pipeline stage (A tile + B tile) an autotuning config may take
INDEX_DTYPE = torch.int64
X_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HALF_DTYPES = (torch.bfloat16, torch.float16)

#: DECAF_TRITON_AUTOTUNE=0 launches the fixed default configs instead of autotuning (quick test runs on a GPU:
#: every new shape would otherwise benchmark all configs; the results are the same function).
AUTOTUNE = os.environ.get("DECAF_TRITON_AUTOTUNE", "1").strip() not in ("0", "false", "off", "no")


def is_available() -> bool:
    """Whether Triton could be imported and is new enough (the kernels can be defined)."""
    return triton is not None


def unavailable_reason() -> str:
    """Why is_available() is False ("" when it is True)."""
    return "" if triton is not None else str(_IMPORT_ERROR)


def triton_too_old() -> bool:
    """Triton is installed but older than MIN_TRITON (the one reason besides its absence to go without it)."""
    return _TOO_OLD


if triton is not None:

    @triton.jit
    def _probe():
        """Decorated at import like every kernel of this package: tells how Triton decorated them."""
        pass


def is_interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


def interpreter_active() -> bool:
    """Whether this package's kernels run under the Triton interpreter (``TRITON_INTERPRET=1`` at import time).

    Without Triton it reports the environment variable.
    """
    if triton is None:
        return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")
    return is_interpreted(_probe)


# ------------------------------------------------------------------------------------------------ autotuning


def smallest(configs):
    """The configs with the smallest BLOCK_P: what a pruning function keeps when nothing else fits."""
    least = min(c.kwargs["BLOCK_P"] for c in configs)
    return [c for c in configs if c.kwargs["BLOCK_P"] == least]


def configs(space):
    """triton.Config objects for (BLOCK_P, num_warps, num_stages) triples."""
    return [triton.Config({"BLOCK_P": bp}, num_warps=w, num_stages=s) for bp, w, s in space]


def tuned(kernel, configs, key, prune):
    """The autotuned handle of a kernel, or None under the interpreter (autotuning there is slow and meaningless)."""
    if is_interpreted(kernel):
        return None
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune},
                           cache_results=True)(kernel)


def launch(raw, handle, grid_of, args, consts: dict, block_p: Optional[int], explicit: bool, default_block_p: int):
    """Launch the autotuned handle, or -- with a block-size override (explicit) or under the interpreter (handle is
    None) -- the plain kernel at BLOCK_P = block_p or default_block_p with NUM_WARPS warps and NUM_STAGES stages.
    grid_of maps BLOCK_P to the launch grid; consts holds every other compile-time argument."""
    device = args[0].device
    guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with guard:
        if handle is not None and not explicit and AUTOTUNE:
            handle[lambda meta: grid_of(meta["BLOCK_P"])](*args, **consts)
        else:
            bp = default_block_p if block_p is None else block_p
            raw[grid_of(bp)](*args, **consts, BLOCK_P=bp, num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def layout_class(stride_p: int, stride_q: int) -> int:
    """Autotuning key: 0 when the Q axis is contiguous (B factors), 1 when P is (A.mT), 2 otherwise."""
    return 0 if stride_q == 1 else (1 if stride_p == 1 else 2)


def bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def dim_block(extent: int, cap: int) -> int:
    """Smallest power of two >= extent, clamped to [16, cap]."""
    return max(MIN_DOT, min(cap, triton.next_power_of_2(max(extent, 1))))


# ------------------------------------------------------------------------------------------------ checks
# The wrappers are private (the backend calls them with indices valid by construction); these checks turn a
# wiring mistake into a message naming the argument instead of a wrong result or an illegal memory access.


def check_tensor(op: str, name: str, t, shape: tuple, dtypes: tuple, device=None) -> None:
    """t is a tensor of `shape` (None = any extent) with a dtype in `dtypes`, on `device` when given."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {want}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {' or '.join(map(str, dtypes))}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on device {t.device}, expected x's device {device}")
    if device is None and t.device.type != "cuda" and not interpreter_active():
        raise ValueError(f"{op}: {name} is on device {t.device}; the Triton kernels need a CUDA tensor, "
                         "or TRITON_INTERPRET=1 set before triton is imported")


def check_option(op: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{op}: {name}={value!r}, expected one of {tuple(allowed)}")


def block_size(op: str, name: str, value: Optional[int], default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value < MIN_DOT or value & (value - 1):
        raise ValueError(f"{op}: {name}={value!r}, expected a power of two >= {MIN_DOT}")
    return value


def check_index_range(op: str, name: str, index: torch.Tensor, low: int, high: int) -> None:
    """low <= index < high, checked on the host (one synchronisation on CUDA: only when the caller asks)."""
    if index.numel() == 0:
        return
    lo, hi = torch.stack([index.min(), index.max()]).tolist()
    if lo < low or hi >= high:
        raise ValueError(f"{op}: {name} has values in [{lo}, {hi}], expected values in [{low}, {high - 1}]")


def check_grid(op: str, grid: tuple) -> None:
    """CUDA caps grid axis 0 at 2^31 - 1 and axes 1, 2 at 65535 programs."""
    limits = (2**31 - 1, 65535, 65535)
    if any(g > lim for g, lim in zip(grid, limits)):
        raise ValueError(f"{op}: launch grid {grid} exceeds the CUDA limits {limits}; use larger block sizes")


def require_triton(op: str) -> None:
    if triton is None:
        raise RuntimeError(f"{op}: Triton is unavailable ({unavailable_reason()}); use the PyTorch reference")
    # Triton's own @jit helpers (tl.sum, tl.cdiv ...) are decorated when triton is first imported; kernels
    # decorated in the other mode cannot call them.
    if interpreter_active() != is_interpreted(tl.sum):
        raise RuntimeError(
            f"{op}: TRITON_INTERPRET was {'off' if interpreter_active() else 'on'} when triton was imported but "
            f"{'on' if interpreter_active() else 'off'} when decaf_kernels._triton was; set it before importing triton"
        )
