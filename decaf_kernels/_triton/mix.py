"""The reconstruction pass on the GPU: ``out[i, l] = sum_{s: idx[i, s] >= 0} x[idx[i, s], l] @ t[i, l, s]`` (Triton).

Step 3 of the exact consensus (docs/design.md) and the sketch products of the randomized method: a batched
low-rank product mixing in which every output reads only its agent's neighbours. Computed in t's dtype (float32
for fp32 / bf16 / fp16 x, float64 for float64 x) and converted to out's dtype when stored; every element of out is
written exactly once. Program order is layer-major (the outputs of one layer re-read its factors from L2).

Precision modes (``precision=``, the one switch; float64 x always takes fp64 products; numbers in
bench/RESULTS.md, timed by ``bench/triton_variants.py``):

* ``"ieee"``: x converted to t's dtype, FMA products. The library's mode for fp32 and fp64 data.
* ``"split16"``: bf16 / fp16 x only, and the library's mode for them: t = t_hi + t_lo, each rounded to x's dtype,
  two native 16-bit tensor-core products with fp32 accumulation. Products are exact; the split leaves ~u16^2 |t|
  (2^-16 for bf16, 2^-22 for fp16), far below the output's rounding (bf16 `large` on an H100: 0.54 ms against
  1.88 ms for fp32 data in "ieee"). With fp16 x, t must lie inside fp16's range.
* ``"tf32x3"``: x in float32, three TF32 tensor-core products (about fp32 accuracy). An experiment: built and
  tested, never timed on a GPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import launch as K

MIX_PRECISIONS = ("ieee", "tf32x3", "split16")

# Override / interpreter defaults; larger Q or R are looped over (Q) or tiled over the grid (R).
_BLOCK_P = 64
_MAX_BLOCK_Q = 32
_MAX_BLOCK_R = 64
_SPACE = [(bp, w, s) for bp in (64, 128, 256) for (w, s) in ((4, 1), (4, 2), (8, 2), (8, 3))]
_KEY = ["tune_p", "tune_layout", "tune_work", "Q", "R", "D", "BLOCK_Q", "BLOCK_R", "PRECISION"]


def default_precision(dtype: torch.dtype) -> str:
    """The library's mode for data of this dtype (see the module docstring)."""
    return "split16" if dtype in K.HALF_DTYPES else "ieee"


@triton.jit
def _mix_lowrank_kernel(
    x_ptr,
    idx_ptr,
    t_ptr,
    out_ptr,
    n_out,
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
    tune_p,
    tune_layout,
    tune_work,
    BLOCK_P: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program: rows [p0, p0 + BLOCK_P) x columns [r0, r0 + BLOCK_R) of out[i, l].

    Program axis 0 enumerates (l, i) as l * n_out + i (layer-major: the outputs of one layer are
    consecutive programs and re-read that layer's factors from L2), axis 1 the P-block, axis 2 the
    R-block. Accumulates sum over slots s with j = idx[i, s] >= 0 of
    x[j, l, p-block, :] @ t[i, l, s, :, r-block] in t's dtype (the compute dtype: fp32, or fp64 for
    fp64 data), looping over Q in BLOCK_Q chunks; empty slots (j = -1) are skipped without touching
    memory. The products, by PRECISION (fp64 data always takes the first):
    "ieee" -- x converted to t's dtype, FMA (fp64 DMMA / fp32 FFMA);
    "tf32x3" -- x converted to fp32, three TF32 tensor-core products (about fp32 accuracy);
    "split16" -- (16-bit x only) t = t_hi + t_lo rounded to x's dtype, two native 16-bit
    tensor-core products with fp32 accumulation (exact products; t's split error ~u16^2).
    Writes its tile once, converted to out's dtype.
    """
    comp_ty: tl.constexpr = t_ptr.dtype.element_ty
    out_ty: tl.constexpr = out_ptr.dtype.element_ty
    x_ty: tl.constexpr = x_ptr.dtype.element_ty
    pid_li = tl.program_id(0).to(tl.int64)
    pid_p = tl.program_id(1)
    pid_r = tl.program_id(2)
    l_idx = pid_li // n_out
    i_idx = pid_li % n_out

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_p = offs_p < P
    mask_r = offs_r < R
    offs_p64 = offs_p.to(tl.int64)
    offs_r64 = offs_r.to(tl.int64)

    acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=comp_ty)
    for s in range(0, D):
        j = tl.load(idx_ptr + i_idx * stride_ii + s * stride_is)
        if j >= 0:
            x_base = x_ptr + j * stride_xn + l_idx * stride_xl
            t_base = t_ptr + i_idx * stride_ti + l_idx * stride_tl + s * stride_ts
            for q0 in range(0, Q, BLOCK_Q):
                offs_q = q0 + tl.arange(0, BLOCK_Q)
                mask_q = offs_q < Q
                offs_q64 = offs_q.to(tl.int64)
                xv = tl.load(
                    x_base + offs_p64[:, None] * stride_xp + offs_q64[None, :] * stride_xq,
                    mask=mask_p[:, None] & mask_q[None, :],
                    other=0.0,
                )
                tv = tl.load(
                    t_base + offs_q64[:, None] * stride_tq + offs_r64[None, :] * stride_tr,
                    mask=mask_q[:, None] & mask_r[None, :],
                    other=0.0,
                )
                if comp_ty == tl.float64:
                    acc = tl.dot(xv.to(comp_ty), tv, acc, input_precision="ieee", out_dtype=comp_ty)
                elif PRECISION == "split16":
                    t_hi = tv.to(x_ty)
                    t_lo = (tv - t_hi.to(tl.float32)).to(x_ty)
                    acc = tl.dot(xv, t_hi, acc, out_dtype=tl.float32)
                    acc = tl.dot(xv, t_lo, acc, out_dtype=tl.float32)
                elif PRECISION == "tf32x3":
                    acc = tl.dot(xv.to(tl.float32), tv, acc, input_precision="tf32x3", out_dtype=tl.float32)
                else:
                    acc = tl.dot(xv.to(comp_ty), tv, acc, input_precision="ieee", out_dtype=comp_ty)

    if out_ty.primitive_bitwidth == 16:
        # Round through fp32: a direct fp64 -> bf16 cast is mishandled by the interpreter.
        res = acc.to(tl.float32).to(out_ty)
    else:
        res = acc.to(out_ty)
    out_base = out_ptr + i_idx * stride_oi + l_idx * stride_ol
    tl.store(
        out_base + offs_p64[:, None] * stride_op + offs_r64[None, :] * stride_or,
        res,
        mask=mask_p[:, None] & mask_r[None, :],
    )


def _prune(configs, named_args, **kwargs):
    """Keep the configs whose x tile and accumulator (BLOCK_P x (BLOCK_Q + BLOCK_R) in t's dtype) take <= 32 32-bit
    registers per thread: the dot's operand layouts replicate them several times (ptxas for sm_90 at Q = R = 16:
    fp32 BLOCK_P = 256 with 4 warps spills, fp64 at 256 uses all 255 registers). Always keeps the smallest
    BLOCK_P."""
    t = named_args["t_ptr"]
    comp_bytes = t.element_size() if hasattr(t, "element_size") else 4
    width = kwargs["BLOCK_Q"] + kwargs["BLOCK_R"]
    kept = [c for c in configs if c.kwargs["BLOCK_P"] * width * comp_bytes <= 128 * 32 * c.num_warps]
    return kept or K.smallest(configs)


CONFIGS = K.configs(_SPACE)
_mix_lowrank_tuned = K.tuned(_mix_lowrank_kernel, CONFIGS, _KEY, _prune)


def mix_lowrank(
    x: torch.Tensor,
    idx: torch.Tensor,
    t: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    *,
    out_dtype: Optional[torch.dtype] = None,
    precision: str = "ieee",
    check_index: bool = True,
    block_p: Optional[int] = None,
    block_q: Optional[int] = None,
    block_r: Optional[int] = None,
) -> torch.Tensor:
    """``out[i, l] = sum_{s: idx[i, s] >= 0} x[idx[i, s], l] @ t[i, l, s]``; returns out (or a new contiguous
    (n_out, L, P, R) tensor of out_dtype, default x.dtype).

    x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides; idx: (n_out, D) int64 in [0, N) or -1
    (empty slot); t: (n_out, L, D, Q, R) in the compute dtype (float64 for float64 x, else float32), any strides;
    out: (n_out, L, P, R), any strides whose elements do not overlap (e.g. a transposed view), separate from x, idx
    and t; precision: see the module docstring (the backend passes default_precision(x.dtype)); check_index: check idx on the host (the only
    synchronisation; the backend passes False); block_p, block_q, block_r: compile-time tile sizes that skip
    autotuning.
    """
    op = "mix_lowrank"
    K.require_triton(op)
    K.check_tensor(op, "x", x, (None,) * 4, K.X_DTYPES)
    N, L, P, Q = x.shape
    K.check_tensor(op, "idx", idx, (None, None), (K.INDEX_DTYPE,), x.device)
    n_out, D = idx.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    K.check_tensor(op, "t", t, (n_out, L, D, Q, None), (compute,), x.device)
    R = t.shape[4]
    K.check_option(op, "precision", precision, MIX_PRECISIONS)
    if precision == "split16" and x.dtype not in K.HALF_DTYPES:
        raise ValueError(f"{op}: precision='split16' needs bfloat16 or float16 x, got {x.dtype}")
    if out is None:
        K.check_option(op, "out_dtype", out_dtype or x.dtype, K.X_DTYPES)
        out = torch.empty((n_out, L, P, R), dtype=out_dtype or x.dtype, device=x.device)
    elif out_dtype is not None and out_dtype != out.dtype:
        raise TypeError(f"{op}: out_dtype is {out_dtype} but out has dtype {out.dtype}; give one or make them agree")
    K.check_tensor(op, "out", out, (n_out, L, P, R), K.X_DTYPES, x.device)
    if x.dtype == torch.float64:
        precision = "ieee"  # fp64 data: fp64 products whatever was asked
    explicit = block_p is not None or block_q is not None or block_r is not None
    bp = K.block_size(op, "block_p", block_p, _BLOCK_P)
    bq = K.block_size(op, "block_q", block_q, K.dim_block(Q, _MAX_BLOCK_Q))
    br = K.block_size(op, "block_r", block_r, K.dim_block(R, _MAX_BLOCK_R))
    bp_min = bp if explicit or K.interpreter_active() else min(b for b, _, _ in _SPACE)
    K.check_grid(op, (n_out * L, triton.cdiv(P, bp_min), triton.cdiv(R, br)))
    if check_index:
        K.check_index_range(op, "idx", idx, -1, N)
    if out.numel() == 0:
        return out
    sx, so = x.stride(), out.stride()
    tune = (K.bucket(P), 3 * K.layout_class(sx[2], sx[3]) + K.layout_class(so[2], so[3]), K.bucket(n_out * L))
    args = (x, idx, t, out, n_out, P, Q, R, D, *sx, *idx.stride(), *t.stride(), *so, *tune)
    consts = dict(BLOCK_Q=bq, BLOCK_R=br, PRECISION=precision)
    grid_of = lambda b: (L * n_out, triton.cdiv(P, b), triton.cdiv(R, br))  # noqa: E731
    K.launch(_mix_lowrank_kernel, _mix_lowrank_tuned, grid_of, args, consts, block_p, explicit, _BLOCK_P)
    return out
