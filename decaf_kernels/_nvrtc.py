"""The CUDA small-core kernel compiled at run time with NVRTC (through CuPy), for installs without nvcc.

Most people install with a CUDA build of torch and no CUDA toolkit, so ``decaf_kernels._C_cuda`` is never built
and the small core would fall back to torch's eigh + svd (seconds on large problems). When CuPy is installed
(``pip install 'decaf-kernels[cuda]'``, or ``[cuda12]`` for a CUDA 12 build of torch), this module compiles the
same kernel source (csrc/cuda/small_core_block_kernel.cuh) with NVRTC the first time a core of a given size
bucket is solved on a device: about 1.5 s per instantiation, cached on disk by CuPy per source, options and
architecture (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``), so later processes load it in milliseconds.

:data:`KERNEL` mirrors the host code of csrc/cuda/small_core_block.cu: the size buckets, the shared-memory
placements and the workspace size; ``tests/test_nvrtc.py`` checks the two against each other. It exposes the same
functions as ``_C_cuda`` (``small_core_block_work_doubles``, ``small_core_block``, ``SMALL_CORE_BLOCK_MAX_M``), so
:mod:`decaf_kernels._backend` calls either the same way.
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch

KERNEL_FILE = "cuda/small_core_block_kernel.cuh"
KERNEL_NAME = "decaf::cuda::small_core_block_kernel"
SMALL_CORE_BLOCK_MAX_M = 256
# (largest m, threads per block, lanes per Jacobi pair), as small_core_block_launch picks them
BUCKETS = ((16, 64, 8), (32, 128, 8), (48, 192, 8), (64, 256, 8), (96, 384, 8), (128, 512, 8), (256, 512, 16))
SMEM_RB, SMEM_RA, SMEM_W, SMEM_V = 1, 2, 4, 8
MASKS = (SMEM_RB | SMEM_RA | SMEM_W | SMEM_V, SMEM_W | SMEM_V, SMEM_W, 0)  # in order of preference
DEFAULT_SMEM = 48 * 1024  # what a kernel may use without opting in
TARGETS = {"float64": 0, "float32": 1}  # kSmallCoreTargetFloat64 / Float32 (decaf/small_core/shared.h)
NVRTC_OPTIONS = ("-std=c++17",)
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def source_root() -> Path:
    """Where the kernel's sources are: ``decaf_kernels/_cuda_src`` in an installed wheel (setup.py copies them
    there), else the ``csrc`` folder of a source checkout (editable and in-place installs)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_cuda_src", here.parent / "csrc"):
        if (root / KERNEL_FILE).is_file():
            return root
    raise FileNotFoundError(f"the CUDA kernel source {KERNEL_FILE} is neither in {here / '_cuda_src'} nor in "
                            f"{here.parent / 'csrc'}; reinstall decaf-kernels")


def _flatten(path: Path, root: Path, seen: set) -> list[str]:
    # Our own quoted includes are pasted in (each once: every header has #pragma once), so that the one string
    # NVRTC compiles, and CuPy's cache key hashes, is the whole source.
    out = []
    for line in path.read_text().splitlines():
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
            continue
        cands = [path.parent / m.group(1), root / "include" / m.group(1)]
        found = next((c.resolve() for c in cands if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: included file {m.group(1)!r} not found under {root}")
        if found not in seen:
            seen.add(found)
            out += _flatten(found, root, seen)
    return out


@lru_cache(maxsize=1)
def kernel_source() -> str:
    """The kernel as one self-contained CUDA C++ string (what NVRTC compiles)."""
    root = source_root()
    return "\n".join(_flatten(root / KERNEL_FILE, root, set())) + "\n"


def bucket(m: int) -> tuple[int, int, int]:
    """(kMax, threads, group) of the instantiation that takes cores of size m."""
    for kmax, nt, group in BUCKETS:
        if 1 <= m <= kmax:
            return kmax, nt, group
    raise ValueError(f"small_core_block: m must be in [1, {SMALL_CORE_BLOCK_MAX_M}], got {m}")


def kernel_name(m: int, mask: int) -> str:
    kmax, nt, group = bucket(m)
    return f"{KERNEL_NAME}<{nt}, {group}, {kmax}, {mask}>"


def smem_bytes(m: int, mask: int) -> int:
    """Dynamic shared memory of one block: the matrices the mask places there (m x ld doubles each, ld = m | 1),
    then four vectors of ld doubles plus 32, then five vectors of ld ints (smem_bytes in the kernel header)."""
    ld = m | 1
    return (_in_shared(mask) * m * ld + 4 * ld + 32) * 8 + 5 * ld * 4


def choose_mask(m: int, limit: int) -> int:
    """The first placement in MASKS whose shared memory fits in `limit` bytes (0: all in the workspace)."""
    for mask in MASKS:
        if smem_bytes(m, mask) <= limit:
            return mask
    return 0


def work_doubles_for(m: int, mask: int) -> int:
    """Global workspace per problem: the matrices the mask leaves out of shared memory."""
    return (4 - _in_shared(mask)) * m * (m | 1)


def _in_shared(mask: int) -> int:
    return bin(mask & 15).count("1")


def smem_limit(device_index: int) -> int:
    """Shared memory a block may opt in to on the device; DECAF_SMALL_CORE_BLOCK_SMEM overrides it (a testing aid,
    as in the nvcc build: it forces the workspace layouts)."""
    raw = os.environ.get("DECAF_SMALL_CORE_BLOCK_SMEM", "").strip()
    if raw:
        try:
            lim = int(raw)
        except ValueError:
            lim = 0
        if lim > 0:
            return lim
    if device_index not in _optin:  # a device attribute: read once per device, as the nvcc build caches it
        props = torch.cuda.get_device_properties(device_index)
        _optin[device_index] = int(getattr(props, "shared_memory_per_block_optin", 0) or DEFAULT_SMEM)
    return _optin[device_index]


_optin: dict = {}


class _NvrtcSmallCore:
    """The `_C_cuda`-like entry points of the NVRTC build; functions compiled per (device, instantiation)."""

    SMALL_CORE_BLOCK_MAX_M = SMALL_CORE_BLOCK_MAX_M

    def __init__(self, cupy):
        self._cp = cupy
        self._lock = threading.Lock()
        self._funcs: dict = {}
        self._streams: dict = {}

    @staticmethod
    def _check_m(m: int) -> None:
        if not 1 <= m <= SMALL_CORE_BLOCK_MAX_M:
            raise ValueError(f"small_core_block: m must be in [1, {SMALL_CORE_BLOCK_MAX_M}], got {m}")

    def small_core_block_work_doubles(self, m: int) -> int:
        self._check_m(m)
        return work_doubles_for(m, choose_mask(m, smem_limit(torch.cuda.current_device())))

    def _function(self, device_index: int, m: int, mask: int):
        name = kernel_name(m, mask)
        key = (device_index, name)
        with self._lock:
            fn = self._funcs.get(key)
            if fn is None:
                cp = self._cp
                with cp.cuda.Device(device_index):
                    mod = cp.RawModule(code=kernel_source(), options=NVRTC_OPTIONS, name_expressions=[name],
                                       backend="nvrtc")
                    fn = mod.get_function(name)  # compiles (or loads from CuPy's disk cache) for this device
                    need = smem_bytes(m, mask)
                    if need > DEFAULT_SMEM:
                        fn.max_dynamic_shared_size_bytes = need
                self._funcs[key] = fn
        return fn

    def small_core_block(self, gb_ptr: int, ga_ptr: int, batch: int, m: int, rank: int, alpha: float, x_ptr: int,
                         y_ptr: int, s_ptr: int, info_ptr: int, work_ptr: int, target: str, stream: int) -> None:
        """As ``_C_cuda.small_core_block`` (same arguments, checks and results); launched on `stream`, on the
        current torch device, without host synchronisation."""
        self._check_m(m)
        if not 1 <= batch <= 2**31 - 1:
            raise ValueError(f"small_core_block: batch must be in [1, 2^31 - 1], got {batch}")
        if not 1 <= rank <= m:
            raise ValueError(f"small_core_block: rank must be in [1, m={m}], got {rank}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"small_core_block: alpha must be in [0, 1], got {alpha}")
        if target not in TARGETS:
            raise ValueError(f"small_core_block: target must be 'float64' or 'float32', got '{target}'")
        ptrs = (gb_ptr, ga_ptr, x_ptr, y_ptr, s_ptr, info_ptr)
        if any(p == 0 for p in ptrs):
            raise ValueError("small_core_block: null device pointer")
        if any(p % 8 for p in (gb_ptr, ga_ptr, x_ptr, y_ptr, s_ptr, work_ptr)) or info_ptr % 4:
            raise ValueError("small_core_block: pointers must be 8-byte aligned (info_ptr 4-byte)")
        dev = torch.cuda.current_device()
        mask = choose_mask(m, smem_limit(dev))
        wstride = work_doubles_for(m, mask)
        if wstride and not work_ptr:
            raise ValueError(f"small_core_block: m = {m} needs a workspace of batch * {wstride} doubles "
                             "(small_core_block_work_doubles), got work_ptr = 0")
        fn = self._function(dev, m, mask)
        u64, i32 = np.uint64, np.int32
        args = (u64(gb_ptr), u64(ga_ptr), i32(m), i32(rank), np.float64(alpha), i32(TARGETS[target]), u64(x_ptr),
                u64(y_ptr), u64(s_ptr), u64(info_ptr), u64(work_ptr), np.int64(wstride))
        _, nt, _ = bucket(m)
        with self._cp.cuda.Device(dev), self._stream(stream):  # CuPy launches on its current stream
            fn((batch,), (nt,), args, shared_mem=smem_bytes(m, mask))

    def _stream(self, handle: int):
        """A CuPy view of the caller's (torch's) stream, made once per handle."""
        s = self._streams.get(handle)
        if s is None:
            cp = self._cp
            from_external = getattr(cp.cuda.Stream, "from_external", None)  # CuPy >= 14; ExternalStream before
            s = from_external(_RawStream(handle)) if from_external else cp.cuda.ExternalStream(handle)
            self._streams[handle] = s
        return s


class _RawStream:
    """A cudaStream_t handle in the CUDA stream protocol (what CuPy's Stream.from_external reads)."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self):
        return (0, self.handle)


_state: dict = {}


def _load() -> tuple[Optional[_NvrtcSmallCore], str]:
    if "mod" not in _state:
        mod, why = None, ""
        try:
            if not torch.cuda.is_available():
                why = "no CUDA device"
            else:
                import cupy  # noqa: F401 - the optional [cuda] extra

                source_root()
                mod = _NvrtcSmallCore(cupy)
                why = f"CuPy {cupy.__version__} (CUDA runtime {_cupy_cuda(cupy)}; torch's CUDA {torch.version.cuda})"
        except Exception as err:  # noqa: BLE001 - CuPy missing or unusable (no driver, wrong CUDA major, ...)
            mod, why = None, f"{type(err).__name__}: {err}".strip()
            if isinstance(err, ImportError):
                why = ("CuPy is not installed (pip install 'decaf-kernels[cuda]' for CUDA 13 builds of torch, "
                       "'[cuda12]' for CUDA 12)")
        _state["mod"], _state["why"] = mod, why
    return _state["mod"], _state["why"]


def _cupy_cuda(cupy) -> str:
    v = cupy.cuda.runtime.runtimeGetVersion()
    return f"{v // 1000}.{v % 1000 // 10}"


def small_core_module() -> Optional[_NvrtcSmallCore]:
    """The NVRTC build's entry points, or None (see :func:`status` for why)."""
    return _load()[0]


def status() -> str:
    """Why the NVRTC build is or is not usable here (one line)."""
    mod, why = _load()
    return ("available: " if mod is not None else "unavailable: ") + why


def disable(reason: str) -> None:
    """Marks the NVRTC build unusable for this process (a compile or launch failed), so the op falls back."""
    _state["mod"], _state["why"] = None, reason
