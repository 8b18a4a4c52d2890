"""Triton kernels for the two bandwidth-bound passes of the factored consensus TSVD.

* :func:`pair_gram` -- Gram blocks ``x[j]^T x[k]`` of stacked neighbour factors, accumulated in
  float64 (or float32) so that fp32 data gives exact products (step 2 of the algorithm in DESIGN.md).
* :func:`mix_lowrank` -- the reconstruction pass ``out[i] = sum_s x[idx[i, s]] @ t[i, s]``, a batched
  low-rank product mixing where every output reads only the agent's neighbours (step 4).

Layering follows Liger-Kernel: ``_<op>_kernel`` is the ``@triton.jit`` body (its docstring says what
one program instance computes), ``<op>`` is the launch wrapper (checks, shapes, grid, allocation).
Both wrappers are plain ``kernel[grid](...)`` launches; registration with ``torch.library`` is done
elsewhere.

This module imports without Triton (``is_available()`` is then ``False`` and the wrappers raise).
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors through the Triton interpreter; it must
be set before ``triton`` is first imported, because Triton decides at ``@triton.jit`` time (for its
own helpers such as ``tl.sum`` as well as for these kernels). Otherwise the kernels need CUDA tensors.

Block sizes are compile-time constants with defaults below; each wrapper takes optional keyword-only
overrides (powers of two >= 16, the smallest shape ``tl.dot`` accepts). Autotuning is a later issue.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _err:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _err

__all__ = ["is_available", "interpreter_active", "pair_gram", "mix_lowrank"]

# Defaults, chosen from ptxas reports of AOT builds for sm_80 / sm_90 (no register spills in the fp32
# and 16-bit variants; a few bytes in fp64 mix_lowrank): tiles up to 64 x 64 at 8 warps. Larger Q or
# R are tiled over the grid (pair_gram's Q x Q tiles, mix_lowrank's R) or looped over (mix_lowrank's Q).
_GRAM_BLOCK_P = 64
_GRAM_MAX_BLOCK_Q = 64
_MIX_BLOCK_P = 64
_MIX_MAX_BLOCK_Q = 32
_MIX_MAX_BLOCK_R = 64
_NUM_WARPS = 8
_MIN_DOT = 16  # tl.dot needs every dimension >= 16

_INDEX_DTYPE = torch.int64
_X_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ACC_DTYPES = (torch.float32, torch.float64)


def is_available() -> bool:
    """Whether Triton could be imported (the kernels in this module are defined)."""
    return triton is not None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "on", "yes", "y")


def interpreter_active() -> bool:
    """Whether this module's kernels run under the Triton interpreter (``TRITON_INTERPRET=1``).

    Triton fixes this when a function is decorated with ``@triton.jit``, so the answer reflects the
    environment when this module was imported. Without Triton it reports the environment variable.
    """
    if triton is None:
        return _env_flag("TRITON_INTERPRET")
    return _is_interpreted(_pair_gram_kernel)


def _is_interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _dot_operand(v, DTYPE: tl.constexpr):
        """v converted to DTYPE for tl.dot.

        A 16-bit load feeding an fp64 tl.dot crashes Triton's NVIDIA backend (3.x, sm80/sm90: MMAv2
        "fp64 don't support largeK MMA"): the dot-operand layout takes its k-width from the loaded
        bit width, traced back through element-wise ops. A reduction over a size-1 axis ends that
        trace and costs nothing; wider loads take the plain conversion.
        """
        if v.dtype.primitive_bitwidth == 16 and DTYPE.primitive_bitwidth == 64:
            return tl.sum(v.to(DTYPE)[:, :, None], axis=2)
        else:
            return v.to(DTYPE)

    @triton.jit
    def _pair_gram_kernel(
        x_ptr,
        pairs_ptr,
        out_ptr,
        T,
        P,
        Q,
        stride_xn,
        stride_xl,
        stride_xp,
        stride_xq,
        stride_pt,
        stride_pc,
        BLOCK_P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
    ):
        """One program: the (BLOCK_Q x BLOCK_Q) tile (qa, qb) of out[l, t] = x[j, l]^T @ x[k, l].

        Program axis 0 enumerates (l, t) as l * T + t, axis 1 the output tile qa * n_qtiles + qb.
        (j, k) = pairs[t]. The loop runs over P in BLOCK_P chunks; both operands are loaded (masked
        past P and Q), converted to the accumulator dtype (out's element type) and multiplied there,
        so fp32 data accumulated in fp64 forms exact products. Writes the tile once, masked to Q x Q.
        """
        acc_ty: tl.constexpr = out_ptr.dtype.element_ty
        pid_lt = tl.program_id(0).to(tl.int64)
        pid_q = tl.program_id(1)
        n_qtiles = tl.cdiv(Q, BLOCK_Q)
        qa = pid_q // n_qtiles
        qb = pid_q % n_qtiles
        l_idx = pid_lt // T
        t_idx = pid_lt % T

        j = tl.load(pairs_ptr + t_idx * stride_pt)
        k = tl.load(pairs_ptr + t_idx * stride_pt + stride_pc)

        offs_qa = qa * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_qb = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mask_qa = offs_qa < Q
        mask_qb = offs_qb < Q
        xa_base = x_ptr + j * stride_xn + l_idx * stride_xl
        xb_base = x_ptr + k * stride_xn + l_idx * stride_xl

        acc = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=acc_ty)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            # A operand loaded directly as the transposed (BLOCK_Q x BLOCK_P) tile.
            a = tl.load(
                xa_base + offs_qa[:, None] * stride_xq + offs_p[None, :].to(tl.int64) * stride_xp,
                mask=mask_qa[:, None] & mask_p[None, :],
                other=0.0,
            )
            b = tl.load(
                xb_base + offs_p[:, None].to(tl.int64) * stride_xp + offs_qb[None, :] * stride_xq,
                mask=mask_p[:, None] & mask_qb[None, :],
                other=0.0,
            )
            # "ieee": no TF32 for fp32 accumulation on GPUs (the interpreter is exact fp32 anyway).
            a = _dot_operand(a, acc_ty)
            b = _dot_operand(b, acc_ty)
            acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc_ty)

        out_base = out_ptr + pid_lt * Q * Q
        tl.store(
            out_base + offs_qa[:, None] * Q + offs_qb[None, :],
            acc,
            mask=mask_qa[:, None] & mask_qb[None, :],
        )

    @triton.jit
    def _mix_lowrank_kernel(
        x_ptr,
        idx_ptr,
        t_ptr,
        out_ptr,
        L,
        P,
        Q,
        R,
        D,
        stride_xn,
        stride_xl,
        stride_xp,
        stride_xq,
        stride_ii,
        stride_is,
        stride_ti,
        stride_tl,
        stride_ts,
        stride_tq,
        stride_tr,
        stride_oi,
        stride_ol,
        stride_op,
        stride_or,
        BLOCK_P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        """One program: rows [p0, p0 + BLOCK_P) x columns [r0, r0 + BLOCK_R) of out[i, l].

        Program axis 0 enumerates (i, l) as i * L + l, axis 1 the P-block, axis 2 the R-block.
        Accumulates sum over slots s with j = idx[i, s] >= 0 of x[j, l, p-block, :] @ t[i, l, s, :, r-block]
        in t's dtype (the compute dtype), looping over Q in BLOCK_Q chunks; empty slots (j = -1) are
        skipped without touching memory. Writes its tile once, converted to out's dtype.
        """
        comp_ty: tl.constexpr = t_ptr.dtype.element_ty
        out_ty: tl.constexpr = out_ptr.dtype.element_ty
        pid_il = tl.program_id(0).to(tl.int64)
        pid_p = tl.program_id(1)
        pid_r = tl.program_id(2)
        i_idx = pid_il // L
        l_idx = pid_il % L

        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        mask_p = offs_p < P
        mask_r = offs_r < R
        offs_p64 = offs_p.to(tl.int64)

        acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=comp_ty)
        for s in range(0, D):
            j = tl.load(idx_ptr + i_idx * stride_ii + s * stride_is)
            if j >= 0:
                x_base = x_ptr + j * stride_xn + l_idx * stride_xl
                t_base = t_ptr + i_idx * stride_ti + l_idx * stride_tl + s * stride_ts
                for q0 in range(0, Q, BLOCK_Q):
                    offs_q = q0 + tl.arange(0, BLOCK_Q)
                    mask_q = offs_q < Q
                    xv = tl.load(
                        x_base + offs_p64[:, None] * stride_xp + offs_q[None, :] * stride_xq,
                        mask=mask_p[:, None] & mask_q[None, :],
                        other=0.0,
                    )
                    tv = tl.load(
                        t_base + offs_q[:, None] * stride_tq + offs_r[None, :] * stride_tr,
                        mask=mask_q[:, None] & mask_r[None, :],
                        other=0.0,
                    )
                    acc = tl.dot(xv.to(comp_ty), tv, acc, input_precision="ieee", out_dtype=comp_ty)

        if out_ty.primitive_bitwidth == 16:
            # Round through fp32: a direct fp64 -> bf16 cast is mishandled by the interpreter.
            res = acc.to(tl.float32).to(out_ty)
        else:
            res = acc.to(out_ty)
        out_base = out_ptr + i_idx * stride_oi + l_idx * stride_ol
        tl.store(
            out_base + offs_p64[:, None] * stride_op + offs_r[None, :] * stride_or,
            res,
            mask=mask_p[:, None] & mask_r[None, :],
        )


# ---------------------------------------------------------------------------------------------------
# Launch wrappers
# ---------------------------------------------------------------------------------------------------


def _require_triton(op: str) -> None:
    if triton is None:
        raise RuntimeError(f"{op}: triton is not installed ({_TRITON_IMPORT_ERROR!r}); use the PyTorch reference")
    # Triton's own @jit helpers (tl.sum, tl.cdiv ...) are decorated when triton is first imported;
    # kernels decorated in the other mode cannot call them.
    if interpreter_active() != _is_interpreted(tl.sum):
        raise RuntimeError(
            f"{op}: TRITON_INTERPRET was {'off' if interpreter_active() else 'on'} when triton was imported but "
            f"{'on' if interpreter_active() else 'off'} when decaf_kernels.triton_kernels was; set it before importing triton"
        )


def _check_device(op: str, x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreter_active():
        raise ValueError(
            f"{op}: x is on device {x.device}; the Triton kernels need a CUDA tensor, "
            "or TRITON_INTERPRET=1 set before triton is imported"
        )


def _check_same_device(op: str, name: str, tensor: torch.Tensor, x: torch.Tensor) -> None:
    if tensor.device != x.device:
        raise ValueError(f"{op}: {name} is on device {tensor.device}, expected x's device {x.device}")


def _block_size(op: str, name: str, value: Optional[int], default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or value < _MIN_DOT or value & (value - 1):
        raise ValueError(f"{op}: {name}={value!r}, expected a power of two >= {_MIN_DOT}")
    return value


def _dim_block(extent: int, cap: int) -> int:
    """Smallest power of two >= extent, clamped to [16, cap]."""
    return max(_MIN_DOT, min(cap, triton.next_power_of_2(max(extent, 1))))


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        if size > 1:
            if stride >= 0:
                hi += (size - 1) * stride * t.element_size()
            else:
                lo += (size - 1) * stride * t.element_size()
    return lo, hi + t.element_size()


def _memory_overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    a_lo, a_hi = _byte_span(a)
    b_lo, b_hi = _byte_span(b)
    return a_lo < b_hi and b_lo < a_hi


def _has_internal_overlap(t: torch.Tensor) -> bool:
    """Conservative: True unless the strides, sorted, prove every element has its own address."""
    dims = sorted((abs(st), sz) for sz, st in zip(t.shape, t.stride()) if sz > 1)
    span = 1  # elements covered by the dimensions seen so far
    for stride, size in dims:
        if stride < span:
            return True
        span = stride * (size - 1) + span
    return False


def _check_index_range(op: str, name: str, index: torch.Tensor, low: int, high: int) -> None:
    """low <= index < high, checked on the host (one synchronisation on CUDA)."""
    if index.numel() == 0:
        return
    lo, hi = torch.stack([index.min(), index.max()]).tolist()
    if lo < low or hi >= high:
        raise ValueError(f"{op}: {name} has values in [{lo}, {hi}], expected values in [{low}, {high - 1}]")


def _check_grid(op: str, grid: tuple) -> None:
    """CUDA caps grid axis 0 at 2^31 - 1 and axes 1, 2 at 65535 programs."""
    limits = (2**31 - 1, 65535, 65535)
    if any(g > lim for g, lim in zip(grid, limits)):
        raise ValueError(f"{op}: launch grid {grid} exceeds the CUDA limits {limits}; use larger block sizes")


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def pair_gram(
    x: torch.Tensor,
    pairs: torch.Tensor,
    *,
    acc_dtype: torch.dtype = torch.float64,
    block_p: Optional[int] = None,
    block_q: Optional[int] = None,
) -> torch.Tensor:
    """Gram blocks of factor pairs: ``out[l, t] = x[j_t, l]^T @ x[k_t, l]`` with ``(j_t, k_t) = pairs[t]``.

    Products and sums are formed in ``acc_dtype`` after upcasting the loaded data, so fp32 (and
    bf16 / fp16) data accumulated in float64 has exact products.

    Args:
        x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides (e.g. ``A.transpose(-1, -2)``).
        pairs: (T, 2) int64 agent indices in [0, N), on x's device.
        acc_dtype: torch.float64 (default) or torch.float32; the dtype of the products, sums and result.
        block_p, block_q: optional compile-time tile sizes (powers of two >= 16); None picks the default.

    Returns:
        A new contiguous (L, T, Q, Q) tensor of ``acc_dtype``.

    Example:
        >>> x = torch.randn(4, 2, 100, 8)
        >>> pairs = torch.tensor([[0, 1], [2, 2]])
        >>> g = pair_gram(x, pairs)  # g[l, 0] == x[0, l].double().T @ x[1, l].double()
    """
    op = "pair_gram"
    _require_triton(op)
    if not isinstance(x, torch.Tensor) or not isinstance(pairs, torch.Tensor):
        raise TypeError(f"{op}: x and pairs must be torch.Tensor, got {type(x).__name__} and {type(pairs).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, expected 4 dimensions (N, L, P, Q)")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}, expected one of {_X_DTYPES}")
    if acc_dtype not in _ACC_DTYPES:
        raise TypeError(f"{op}: acc_dtype is {acc_dtype}, expected torch.float64 or torch.float32")
    if pairs.dtype != _INDEX_DTYPE:
        raise TypeError(f"{op}: pairs has dtype {pairs.dtype}, expected torch.int64")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{op}: pairs has shape {tuple(pairs.shape)}, expected (T, 2)")
    _check_same_device(op, "pairs", pairs, x)
    _check_device(op, x)
    bp = _block_size(op, "block_p", block_p, _GRAM_BLOCK_P)
    N, L, P, Q = x.shape
    T = pairs.shape[0]
    bq = _block_size(op, "block_q", block_q, _dim_block(Q, _GRAM_MAX_BLOCK_Q))
    n_qtiles = triton.cdiv(Q, bq)
    grid = (L * T, n_qtiles * n_qtiles)
    _check_grid(op, grid)
    _check_index_range(op, "pairs", pairs, 0, N)

    out = torch.empty((L, T, Q, Q), dtype=acc_dtype, device=x.device)
    if out.numel() == 0:
        return out
    with _device_guard(x):
        _pair_gram_kernel[grid](
            x,
            pairs,
            out,
            T,
            P,
            Q,
            *x.stride(),
            *pairs.stride(),
            BLOCK_P=bp,
            BLOCK_Q=bq,
            num_warps=_NUM_WARPS,
        )
    return out


def mix_lowrank(
    x: torch.Tensor,
    idx: torch.Tensor,
    t: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    *,
    out_dtype: Optional[torch.dtype] = None,
    block_p: Optional[int] = None,
    block_q: Optional[int] = None,
    block_r: Optional[int] = None,
) -> torch.Tensor:
    """Batched low-rank product mixing: ``out[i, l] = sum_{s: idx[i, s] >= 0} x[idx[i, s], l] @ t[i, l, s]``.

    Computed in t's dtype (float32 for fp32 / bf16 / fp16 x, float64 for float64 x) and converted to
    out's dtype when stored; every element of ``out`` is written exactly once.

    Args:
        x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides.
        idx: (n_out, D) int64 neighbour indices in [0, N), or -1 for an empty slot; on x's device.
        t: (n_out, L, D, Q, R), any strides, in the compute dtype: float64 for float64 x, else float32.
        out: optional preallocated (n_out, L, P, R) floating tensor with any non-overlapping strides
            (e.g. a transposed view), not sharing memory with x, idx or t.
        out_dtype: dtype of the allocated result when ``out`` is None (default x.dtype).
        block_p, block_q, block_r: optional compile-time tile sizes (powers of two >= 16).

    Returns:
        ``out``, or a new contiguous (n_out, L, P, R) tensor of ``out_dtype``.

    Example:
        >>> x = torch.randn(4, 2, 100, 8)
        >>> idx = torch.tensor([[0, 1, -1], [2, 3, 1]])
        >>> t = torch.randn(2, 2, 3, 8, 5)
        >>> y = mix_lowrank(x, idx, t)  # y[0, l] == x[0, l] @ t[0, l, 0] + x[1, l] @ t[0, l, 1]
    """
    op = "mix_lowrank"
    _require_triton(op)
    for name, value in (("x", x), ("idx", idx), ("t", t)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if out is not None and not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: out must be a torch.Tensor or None, got {type(out).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, expected 4 dimensions (N, L, P, Q)")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}, expected one of {_X_DTYPES}")
    if idx.dtype != _INDEX_DTYPE:
        raise TypeError(f"{op}: idx has dtype {idx.dtype}, expected torch.int64")
    if idx.dim() != 2:
        raise ValueError(f"{op}: idx has shape {tuple(idx.shape)}, expected (n_out, D)")
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if t.dtype != compute_dtype:
        raise TypeError(f"{op}: t has dtype {t.dtype} for x of dtype {x.dtype}; expected t in {compute_dtype}")
    N, L, P, Q = x.shape
    n_out, D = idx.shape
    if t.dim() != 5 or tuple(t.shape[:4]) != (n_out, L, D, Q):
        raise ValueError(
            f"{op}: t has shape {tuple(t.shape)}, expected (n_out, L, D, Q, R) = ({n_out}, {L}, {D}, {Q}, R)"
        )
    R = t.shape[4]
    _check_same_device(op, "idx", idx, x)
    _check_same_device(op, "t", t, x)

    if out is None:
        dtype = x.dtype if out_dtype is None else out_dtype
        if dtype not in _X_DTYPES:
            raise TypeError(f"{op}: out_dtype is {dtype}, expected one of {_X_DTYPES}")
    else:
        if tuple(out.shape) != (n_out, L, P, R):
            raise ValueError(f"{op}: out has shape {tuple(out.shape)}, expected (n_out, L, P, R) = {(n_out, L, P, R)}")
        if out.dtype not in _X_DTYPES:
            raise TypeError(f"{op}: out has dtype {out.dtype}, expected one of {_X_DTYPES}")
        if out_dtype is not None and out_dtype != out.dtype:
            raise TypeError(f"{op}: out_dtype is {out_dtype} but out has dtype {out.dtype}; give one or make them agree")
        _check_same_device(op, "out", out, x)
        if _has_internal_overlap(out):
            raise ValueError(
                f"{op}: out has strides {tuple(out.stride())} for shape {tuple(out.shape)}, "
                "expected strides where every element has its own memory (no expand / broadcast views)"
            )
        for name, other in (("x", x), ("idx", idx), ("t", t)):
            if _memory_overlaps(out, other):
                raise ValueError(f"{op}: out shares memory with {name}, expected a separate output buffer")
    _check_device(op, x)
    bp = _block_size(op, "block_p", block_p, _MIX_BLOCK_P)
    bq = _block_size(op, "block_q", block_q, _dim_block(Q, _MIX_MAX_BLOCK_Q))
    br = _block_size(op, "block_r", block_r, _dim_block(R, _MIX_MAX_BLOCK_R))
    grid = (n_out * L, triton.cdiv(P, bp), triton.cdiv(R, br))
    _check_grid(op, grid)
    _check_index_range(op, "idx", idx, -1, N)

    if out is None:
        out = torch.empty((n_out, L, P, R), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    with _device_guard(x):
        _mix_lowrank_kernel[grid](
            x,
            idx,
            t,
            out,
            L,
            P,
            Q,
            R,
            D,
            *x.stride(),
            *idx.stride(),
            *t.stride(),
            *out.stride(),
            BLOCK_P=bp,
            BLOCK_Q=bq,
            BLOCK_R=br,
            num_warps=_NUM_WARPS,
        )
    return out
