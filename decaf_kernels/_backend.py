"""Chooses, per device, the implementation of the three building blocks of the factored consensus TSVD.

=============  ==========================================  ===========================================
block          CPU tensors                                 CUDA tensors
=============  ==========================================  ===========================================
pair_gram      C++ ``_C.pair_gram`` (fp64 accumulation)    Triton ``pair_gram`` (fp64 accumulation)
mix_lowrank    C++ ``_C.mix_lowrank``                      Triton ``mix_lowrank``
small_core     C++ ``_C.small_core`` (OpenMP over the      CUDA ``_C_cuda.small_core_block`` (one
               batch)                                      problem per thread block)
=============  ==========================================  ===========================================

Whenever the preferred implementation is unavailable (extension not built, Triton not installed), the
pure-PyTorch version from :mod:`decaf_kernels.reference` is used instead; ``backend_info()`` reports which.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from . import _ext, _nvrtc
from .reference import mix_lowrank_torch, pair_gram_torch, small_core_torch

# status code of the small-core kernels (kSmallCoreNoConvergence in csrc/include/decaf/small_core/base.h; _C.INFO_NO_CONVERGENCE)
_INFO_NO_CONVERGENCE = -2

_triton_mod = None
_triton_err: Optional[str] = None


def _triton():
    """The Triton kernel module, imported on first use (Triton is optional)."""
    global _triton_mod, _triton_err
    if _triton_mod is None and _triton_err is None:
        try:
            from . import _triton as tk

            if not tk.is_available():
                raise ImportError(tk.unavailable_reason())
            _triton_mod = tk
        except Exception as err:  # noqa: BLE001 - any import failure means "use the fallback"
            _triton_err = f"{type(err).__name__}: {err}"
    return _triton_mod


_triton_for_cpu = False


class triton_on_cpu:
    """Test hook: route CPU tensors through the Triton kernels (with TRITON_INTERPRET=1), so the whole op is
    checked on the kernels CUDA tensors use. Private; not a user setting."""

    def __enter__(self):
        global _triton_for_cpu
        if _triton() is None:
            raise RuntimeError(f"Triton is unavailable: {_triton_err}")
        self._old, _triton_for_cpu = _triton_for_cpu, True
        return self

    def __exit__(self, *exc):
        global _triton_for_cpu
        _triton_for_cpu = self._old


def _use_triton(x: torch.Tensor) -> bool:
    if x.device.type == "cuda":
        return _triton() is not None
    return _triton_for_cpu


def _cpu_kernel_dtype(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def pair_gram(x: torch.Tensor, pairs: torch.Tensor, groups=None) -> torch.Tensor:
    """(L, T, Q, Q) float64 Gram blocks x[j]^T x[k] for the pairs; see ``reference.pair_gram_torch``.

    groups: optional ``_graph.pair_groups(pairs)`` plan (Triton path only): each factor tile is read once for all
    its partners. Triton accumulates in float64 for every data dtype (exact products; the faster modes are
    experiments, see ``_triton.gram``).
    """
    N, L, P, Q = x.shape
    if _use_triton(x):
        return _triton().pair_gram(x, pairs, groups=groups, check_index=False)
    if x.device.type == "cpu":
        ext = _ext.cpu_ext()
        if ext is not None:
            x = _cpu_kernel_dtype(x)
            pairs = pairs.contiguous()
            out = torch.empty((L, pairs.shape[0], Q, Q), dtype=torch.float64)
            ext.pair_gram(x.data_ptr(), str(x.dtype).replace("torch.", ""), L, P, Q, *x.stride(),
                          pairs.data_ptr(), pairs.shape[0], out.data_ptr())
            return out
    return pair_gram_torch(x, pairs)


def mix_lowrank(x: torch.Tensor, idx: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Writes out[i, l] = sum_s x[idx[i, s], l] @ t[i, l, s] into `out` (any strides) and returns it."""
    N, L, P, Q = x.shape
    n_out, D = idx.shape
    R = t.shape[-1]
    if _use_triton(x):
        tk = _triton()
        return tk.mix_lowrank(x, idx, t, out=out, precision=tk.default_precision(x.dtype), check_index=False)
    if x.device.type == "cpu":
        ext = _ext.cpu_ext()
        if ext is not None and D > ext.MIX_MAX_SLOTS:
            # more neighbours than the kernel's slot table: sum over chunks of slots
            step = ext.MIX_MAX_SLOTS
            mix_lowrank(x, idx[:, :step], t[:, :, :step], out)
            part = torch.empty(out.shape, dtype=out.dtype)
            for s0 in range(step, D, step):
                out += mix_lowrank(x, idx[:, s0:s0 + step], t[:, :, s0:s0 + step], part)
            return out
        if ext is not None:
            x = x if x.dtype == t.dtype else x.to(t.dtype)
            t = t.contiguous()
            idx = idx.contiguous()
            target = out if out.dtype == t.dtype else torch.empty(out.shape, dtype=t.dtype)
            ext.mix_lowrank(x.data_ptr(), str(x.dtype).replace("torch.", ""), L, P, Q, *x.stride(),
                            idx.data_ptr(), n_out, D, t.data_ptr(), R, target.data_ptr(), *target.stride())
            if target is not out:
                out.copy_(target)
            return out
    out.copy_(mix_lowrank_torch(x, idx, t, out.dtype))
    return out


def _warn_stuck(stuck: int, nb: int) -> None:
    if stuck:
        warnings.warn(
            f"decaf_kernels: the small-core solver hit its iteration limit on {stuck} of {nb} problems; "
            "their factors are the best it reached (usually still accurate to well below fp32 rounding). "
            "Please report the inputs if this recurs.",
            RuntimeWarning,
            stacklevel=3,
        )


CUDA_SMALL_CORE_CHOICES = ("auto", "nvcc", "nvrtc", "torch")


def _cuda_core_choice() -> str:
    raw = os.environ.get("DECAF_CUDA_SMALL_CORE", "").strip().lower() or "auto"
    if raw not in CUDA_SMALL_CORE_CHOICES:
        raise ValueError(f"DECAF_CUDA_SMALL_CORE must be one of {', '.join(CUDA_SMALL_CORE_CHOICES)}, got {raw!r}")
    return raw


def _nvcc_small_core():
    ext = _ext.cuda_ext()
    return ext if ext is not None and hasattr(ext, "small_core_block") else None


def _cuda_small_core_block():
    """The block-per-problem CUDA small-core kernel: the nvcc-built ``_C_cuda`` when installed, else the same source
    compiled at run time by NVRTC (``_nvrtc``, needs CuPy), else None (torch fallback). DECAF_CUDA_SMALL_CORE=nvcc /
    nvrtc / torch picks one (an unavailable pick is an error, not a silent fallback)."""
    choice = _cuda_core_choice()
    if choice == "torch":
        return None
    if choice in ("auto", "nvcc"):
        ext = _nvcc_small_core()
        if ext is not None:
            return ext
        if choice == "nvcc":
            raise RuntimeError(f"DECAF_CUDA_SMALL_CORE=nvcc, but decaf_kernels._C_cuda is not built "
                               f"({_ext.status('_C_cuda')})")
    mod = _nvrtc.small_core_module()
    if mod is None and choice == "nvrtc":
        raise RuntimeError(f"DECAF_CUDA_SMALL_CORE=nvrtc, but the NVRTC build is {_nvrtc.status()}")
    return mod


def _cuda_small_core_name() -> str:
    try:
        core = _cuda_small_core_block()
    except (RuntimeError, ValueError) as err:
        return f"error: {err}"
    if core is None:
        return "none"
    return "nvcc" if core is _nvcc_small_core() else "nvrtc"


def small_core(Gb: torch.Tensor, Ga: torch.Tensor, rank: int, alpha: float, target: torch.dtype = torch.float64,
               *, check_convergence: bool = True):
    """Batched top-`rank` core solve (float64); see ``reference.small_core_torch`` for the contract and
    csrc/include/decaf/small_core.h for the algorithm.

    target: the dtype the results end up in (float32 lets the kernels take a cheaper, fp32-accurate route).
    check_convergence: read the kernels' status on the host and warn when a problem hit its iteration limit
    (on CUDA this waits for the device, so the hot path passes False).
    """
    batch_shape = Gb.shape[:-2]
    m = Gb.shape[-1]
    kr = min(rank, m)  # a core of size m has at most m directions; the rest are null (zeros)
    tname = "float64" if target == torch.float64 else "float32"
    dev = Gb.device
    ext = _ext.cpu_ext() if dev.type == "cpu" else _cuda_small_core_block()
    if ext is not None and m > getattr(ext, "SMALL_CORE_MAX_M" if dev.type == "cpu" else "SMALL_CORE_BLOCK_MAX_M", m):
        ext = None  # the kernels' workspaces are sized for bounded m; torch's eigh + svd take larger cores
    if ext is not None:
        gb = Gb.reshape(-1, m, m).to(torch.float64).contiguous()
        ga = Ga.reshape(-1, m, m).to(torch.float64).contiguous()
        nb = gb.shape[0]
        # the kernels write every entry (the kernel tests poison their outputs), so only the columns beyond the
        # core's size need zeros: one fill launch fewer per output on CUDA when rank <= m
        new = torch.empty if kr == rank else torch.zeros
        X = new((nb, m, rank), dtype=torch.float64, device=dev)
        Y = new((nb, rank, m), dtype=torch.float64, device=dev)
        S = new((nb, rank), dtype=torch.float64, device=dev)
        Xk, Yk, Sk = (X, Y, S) if kr == rank else (torch.empty((nb, m, kr), dtype=torch.float64, device=dev),
                                                   torch.empty((nb, kr, m), dtype=torch.float64, device=dev),
                                                   torch.empty((nb, kr), dtype=torch.float64, device=dev))
        info = torch.empty((nb,), dtype=torch.int32, device=dev)
        if dev.type == "cpu":
            ext.small_core(gb.data_ptr(), ga.data_ptr(), nb, m, kr, float(alpha),
                           Xk.data_ptr(), Yk.data_ptr(), Sk.data_ptr(), info.data_ptr(), target=tname)
        elif nb > 0:
            with torch.cuda.device(dev):
                nwork = ext.small_core_block_work_doubles(m)
                work = torch.empty((max(1, nb * nwork),), dtype=torch.float64, device=dev) if nwork else None
                try:
                    ext.small_core_block(gb.data_ptr(), ga.data_ptr(), nb, m, kr, float(alpha), Xk.data_ptr(),
                                         Yk.data_ptr(), Sk.data_ptr(), info.data_ptr(),
                                         work.data_ptr() if work is not None else 0, tname,
                                         torch.cuda.current_stream(dev).cuda_stream)
                except Exception as err:  # noqa: BLE001 - an NVRTC compile failure must not fail the op
                    if ext is _nvcc_small_core() or isinstance(err, ValueError):
                        raise
                    _nvrtc.disable(f"compile or launch failed: {type(err).__name__}: {err}")
                    warnings.warn(f"decaf_kernels: the NVRTC build of the CUDA small core failed ({err}); using "
                                  "torch's eigh + svd from now on in this process.", RuntimeWarning, stacklevel=2)
                    return small_core_torch(Gb.to(torch.float64), Ga.to(torch.float64), rank, alpha)
        if kr != rank:
            X[..., :kr], Y[..., :kr, :], S[..., :kr] = Xk, Yk, Sk
        if check_convergence and nb > 0:
            _warn_stuck(int((info == _INFO_NO_CONVERGENCE).sum()), nb)
        return (X.reshape(*batch_shape, m, rank), Y.reshape(*batch_shape, rank, m),
                S.reshape(*batch_shape, rank))
    return small_core_torch(Gb.to(torch.float64), Ga.to(torch.float64), rank, alpha)


def _cuda_small_core_text(cuda_status: str) -> str:
    how = ("one problem per thread block in shared memory: pivoted Cholesky + one-sided Jacobi SVD in float64")
    which = _cuda_small_core_name()
    if which == "nvcc":
        return f"CUDA decaf_kernels._C_cuda.small_core_block, built by nvcc ({how})"
    if which == "nvrtc":
        return (f"CUDA small_core_block compiled at run time by NVRTC through CuPy, cached on disk ({how}; "
                f"no nvcc-built _C_cuda: {cuda_status})")
    if which.startswith("error"):
        return which
    return ("fallback: torch.linalg eigh + svd in float64 on the device (no CUDA small-core kernel: _C_cuda "
            f"{cuda_status}; NVRTC {_nvrtc.status()})")


def backend_info() -> dict:
    """Which implementation each op and building block uses on this machine, and why.

    Returns a dict: ``{"cpu": {...}, "cuda": {...}, "extension": {...}, "triton": ...}``, each entry a
    short human-readable string. Printing it is the quickest way to see whether the compiled kernels loaded.
    """
    c = _ext.cpu_ext() is not None
    cpu_status = _ext.status("_C")
    cuda_status = _ext.status("_C_cuda")
    tri = _triton()
    triton_state = "available" if tri is not None else f"unavailable ({_triton_err})"
    if tri is not None and os.environ.get("TRITON_INTERPRET", "") == "1":
        triton_state += " [TRITON_INTERPRET=1: interpreter]"
    cuda_ok = torch.cuda.is_available()
    cpu_kernel = "C++ decaf_kernels._C" if c else f"pure PyTorch fallback (extension: {cpu_status})"
    return {
        "extension": {"_C": cpu_status, "_C_cuda": cuda_status, "nvrtc": _nvrtc.status()},
        "triton": triton_state,
        "cuda_device": torch.cuda.get_device_name() if cuda_ok else "none",
        "cpu": {
            "consensus_tsvd.gram": cpu_kernel + (" (fp64 accumulation)" if c else " (einsum in float64)"),
            "consensus_tsvd.small_core": (cpu_kernel + (
                " (pivoted Cholesky, then a symmetric eigensolver of the squared core) for fp32/bf16/fp16 data"
                if c else " (eigh + svd) for fp32/bf16/fp16 data")
                + "; float64 data: Householder QR of the stacked factors + LAPACK SVD of the core (torch.linalg)"),
            "consensus_tsvd.reconstruct": cpu_kernel + (" (mix_lowrank)" if c else " (einsum)"),
            "mix_factors": "torch matmul (one GEMM over agents)",
            "mix_products": "torch matmul/einsum (dense, for small shapes)",
            "consensus_distance": "torch, factored Grams in float64",
            "interference": "torch, factored Grams in float64",
        },
        "cuda": {
            "consensus_tsvd.gram": ("Triton pair_gram, grouped (fp64 accumulation)" if tri is not None
                                     else "pure PyTorch fallback (Triton unavailable)"),
            "consensus_tsvd.small_core": _cuda_small_core_text(cuda_status),
            "consensus_tsvd.reconstruct": ("Triton mix_lowrank" if tri is not None
                                            else "pure PyTorch fallback (Triton unavailable)"),
            "mix_factors": "torch matmul",
            "mix_products": "torch matmul/einsum",
            "consensus_distance": "torch, factored Grams in float64",
            "interference": "torch, factored Grams in float64",
        },
    }
