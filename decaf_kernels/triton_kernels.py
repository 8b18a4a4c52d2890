"""Triton kernels for the two bandwidth-bound passes of the factored consensus TSVD.

* :func:`pair_gram` -- Gram blocks ``x[j]^T x[k]`` of stacked neighbour factors, accumulated in
  float64 by default so that fp32 data gives exact products (step 1 of the algorithm in docs/design.md);
  faster float32 / tensor-core precisions are selected with ``precision=``. With a
  :func:`pair_groups` plan, one program computes all the blocks of one factor ``x[j]`` with its
  partners, so every tile of ``x[j]`` is loaded once for all of them.
* :func:`mix_lowrank` -- the reconstruction pass ``out[i] = sum_s x[idx[i, s]] @ t[i, s]``, a batched
  low-rank product mixing where every output reads only the agent's neighbours (step 3).

Layering follows Liger-Kernel: ``_<op>_kernel`` is the ``@triton.jit`` body (its docstring says what
one program instance computes), ``<op>`` is the launch wrapper (checks, shapes, grid, allocation).
Registration with ``torch.library`` is done elsewhere.

Program order is layer-major in both kernels: consecutive program ids share a layer, so the N agents'
factors of one layer are read from HBM once and re-read by the neighbouring programs from L2.

Launch configuration. Without block-size overrides the wrappers launch ``triton.autotune`` handles
(:data:`GRAM_CONFIGS`, :data:`MIX_CONFIGS`: BLOCK_P x num_warps x num_stages; BLOCK_Q / BLOCK_R follow
from Q and R). Autotuning benchmarks every config on the first call for each key (shape bucket, stride
class, dtypes, precision) and caches the choice in memory and in Triton's cache directory; do that
first call before capturing a CUDA graph. Every config writes every output element, so benchmarking
leaves correct results. The keyword-only ``block_p`` / ``block_q`` / ``block_r`` overrides (powers of
two >= 16, the smallest shape ``tl.dot`` accepts) bypass the autotuner and launch the plain kernel with
:data:`_NUM_WARPS` warps. Under the interpreter there is no autotuning: one default config.

Host synchronisation: the only one is the index range check (``check_index=True``, the default);
``check_index=False`` launches without any, and the launches are CUDA-graph capturable once the
autotuner has run for that key.

This module imports without Triton (``is_available()`` is then ``False`` and the wrappers raise).
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors through the Triton interpreter; it must
be set before ``triton`` is first imported, because Triton decides at ``@triton.jit`` time (for its
own helpers such as ``tl.sum`` as well as for these kernels). Otherwise the kernels need CUDA tensors.
The interpreter computes every ``tl.dot`` as an exact numpy matmul in the accumulator dtype, so the
tensor-core precisions ("tf32x3", "native16", "split16") are only checked there for what they compute,
not for how the GPU rounds; it has no bfloat16 arithmetic (bf16 is stored as uint16), so the bf16
tensor-core paths are checked by the ahead-of-time build test and the GPU tests only.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple, Optional

import torch

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _err:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = _err

#: The oldest Triton the kernels run on: 3.5 is the first whose tl.dot takes float64 (the fp64 Gram mode). torch
#: before 2.9 pins an older Triton; CUDA tensors then take the pure-PyTorch fallback.
MIN_TRITON = (3, 5)
_TRITON_TOO_OLD = triton is not None and tuple(int(p) for p in triton.__version__.split(".")[:2]) < MIN_TRITON
if _TRITON_TOO_OLD:
    _TRITON_IMPORT_ERROR = ImportError(
        f"Triton {triton.__version__} is older than 3.5, the first whose tl.dot takes float64 (the fp64 Gram kernels)"
    )
    triton = tl = None

__all__ = [
    "is_available",
    "interpreter_active",
    "pair_gram",
    "pair_groups",
    "PairGroups",
    "mix_lowrank",
    "GRAM_PRECISIONS",
    "MIX_PRECISIONS",
]

# Defaults for the explicit-override path and the interpreter, chosen from ptxas reports of AOT builds
# for sm_80 / sm_90 (no register spills in the fp32 and 16-bit variants; a few bytes in fp64
# mix_lowrank): tiles up to 64 x 64 at 8 warps. Larger Q or R are tiled over the grid (pair_gram's
# Q x Q tiles, mix_lowrank's R) or looped over (mix_lowrank's Q).
_GRAM_BLOCK_P = 64
_GRAM_MAX_BLOCK_Q = 64
_GROUP_MAX_COLS = 128  # grouped pair_gram: G partners x BLOCK_Q columns per program at most
_MIX_BLOCK_P = 64
_MIX_MAX_BLOCK_Q = 32
_MIX_MAX_BLOCK_R = 64
_NUM_WARPS = 8
_NUM_STAGES = 3
_MIN_DOT = 16  # tl.dot needs every dimension >= 16

_INDEX_DTYPE = torch.int64
_X_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ACC_DTYPES = (torch.float32, torch.float64)
_16BIT = (torch.bfloat16, torch.float16)

#: pair_gram precisions (see :func:`pair_gram`).
GRAM_PRECISIONS = ("fp64", "fp32", "tf32x3", "native16")
#: mix_lowrank precisions (see :func:`mix_lowrank`).
MIX_PRECISIONS = ("ieee", "tf32x3", "split16")

# Autotuning spaces: (BLOCK_P, num_warps, num_stages). Pruned per call by the operand footprint
# (_prune_configs). Q = r = 16 is the main case: a 16 x BLOCK_P tile per operand, so large BLOCK_P is
# what amortises the per-iteration overhead and keeps enough bytes in flight per SM.
_GRAM_SPACE = [(bp, w, s) for bp in (64, 128, 256) for (w, s) in ((4, 2), (4, 3), (8, 3), (8, 4))]
_MIX_SPACE = [(bp, w, s) for bp in (64, 128, 256) for (w, s) in ((4, 1), (4, 2), (8, 2), (8, 3))]
_MAX_TILE_BYTES = 64 * 1024  # operand bytes per pipeline stage (A tile + B tile)


def is_available() -> bool:
    """Whether Triton could be imported and is new enough (the kernels in this module are defined)."""
    return triton is not None


def unavailable_reason() -> str:
    """Why is_available() is False ("" when it is True)."""
    return "" if triton is not None else str(_TRITON_IMPORT_ERROR)


def triton_too_old() -> bool:
    """Triton is installed but older than MIN_TRITON (the one reason besides its absence to go without it)."""
    return _TRITON_TOO_OLD


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
    def _gram_operand(v, PRECISION: tl.constexpr):
        """A loaded pair_gram tile in the dot's input type: fp64 for "fp64", as loaded (16-bit) for
        "native16", else fp32 (fp64 data rounds to fp32 here; 16-bit data converts exactly)."""
        if PRECISION == "fp64":
            return _dot_operand(v, tl.float64)
        elif PRECISION == "native16":
            return v
        else:
            return v.to(tl.float32)

    @triton.jit
    def _gram_dot(a, b, acc, PRECISION: tl.constexpr):
        """acc + a @ b: fp64 (DMMA on sm_80+), fp32 via three TF32 tensor-core products ("tf32x3"),
        16-bit tensor cores with fp32 accumulation ("native16"), or fp32 FFMA ("fp32", "ieee")."""
        if PRECISION == "fp64":
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float64)
        elif PRECISION == "tf32x3":
            return tl.dot(a, b, acc, input_precision="tf32x3", out_dtype=tl.float32)
        else:
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)

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
        tune_p,
        tune_layout,
        tune_work,
        BLOCK_P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: the (BLOCK_Q x BLOCK_Q) tile (qa, qb) of out[l, t] = x[j, l]^T @ x[k, l].

        Program axis 0 enumerates (l, t) as l * T + t (layer-major: the T pairs of one layer are
        consecutive programs and share that layer's factors in L2), axis 1 the output tile
        qa * n_qtiles + qb. (j, k) = pairs[t]. The loop runs over P in BLOCK_P chunks; both operands
        are loaded (masked past P and Q), converted for PRECISION (_gram_operand) and multiplied with
        _gram_dot (fp64 accumulator for "fp64", else fp32). Writes the tile once, masked to Q x Q,
        converted to out's dtype. tune_* are autotuning keys only (unused here).
        """
        out_ty: tl.constexpr = out_ptr.dtype.element_ty
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
        qa_off = offs_qa.to(tl.int64) * stride_xq
        qb_off = offs_qb.to(tl.int64) * stride_xq

        if PRECISION == "fp64":
            acc = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_Q, BLOCK_Q), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            p_off = offs_p.to(tl.int64) * stride_xp
            # A operand loaded directly as the transposed (BLOCK_Q x BLOCK_P) tile.
            a = tl.load(xa_base + qa_off[:, None] + p_off[None, :], mask=mask_qa[:, None] & mask_p[None, :], other=0.0)
            b = tl.load(xb_base + p_off[:, None] + qb_off[None, :], mask=mask_p[:, None] & mask_qb[None, :], other=0.0)
            acc = _gram_dot(_gram_operand(a, PRECISION), _gram_operand(b, PRECISION), acc, PRECISION)

        out_base = out_ptr + pid_lt * Q * Q
        tl.store(
            out_base + offs_qa[:, None] * Q + offs_qb[None, :],
            acc.to(out_ty),
            mask=mask_qa[:, None] & mask_qb[None, :],
        )

    @triton.jit
    def _pair_gram_grouped_kernel(
        x_ptr,
        gj_ptr,
        gk_ptr,
        gt_ptr,
        out_ptr,
        T,
        n_groups,
        P,
        Q,
        stride_xn,
        stride_xl,
        stride_xp,
        stride_xq,
        tune_p,
        tune_layout,
        tune_work,
        G: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: tile (qa, qb) of C_s = x[j, l]^T @ x[k_s, l] for the G partner slots s of one
        group (j, k_0..k_{G-1}) = (gj[g], gk[g, :]), stored to out[l, t_s] -- or, when the slot is
        flipped, C_s^T stored there (the pair was (k_s, j); the plan orients pairs so that every row
        factor has about as many partners). gt[g, s] = 2 * t_s + flipped; k_s = -1 marks an empty slot.

        Program axis 0 enumerates (l, g) as l * n_groups + g (layer-major), axis 1 the Q tile
        qa * n_qtiles + qb. The partners' (BLOCK_P x BLOCK_Q) tiles sit side by side as the columns of
        one (BLOCK_P x G * BLOCK_Q) operand (column c: slot c // BLOCK_Q, q = qb * BLOCK_Q +
        c % BLOCK_Q), so one dot per P chunk forms all G blocks and x[j]'s tile is loaded once for all
        of them. Stores each column block to out[l, t_s] (masked to Q and to non-empty slots).
        """
        out_ty: tl.constexpr = out_ptr.dtype.element_ty
        NCOLS: tl.constexpr = G * BLOCK_Q
        pid_lg = tl.program_id(0).to(tl.int64)
        pid_q = tl.program_id(1)
        n_qtiles = tl.cdiv(Q, BLOCK_Q)
        qa = pid_q // n_qtiles
        qb = pid_q % n_qtiles
        l_idx = pid_lg // n_groups
        g_idx = pid_lg % n_groups

        j = tl.load(gj_ptr + g_idx)
        cols = tl.arange(0, NCOLS)
        slot = cols // BLOCK_Q
        offs_qb = qb * BLOCK_Q + cols % BLOCK_Q
        k = tl.load(gk_ptr + g_idx * G + slot)
        code = tl.load(gt_ptr + g_idx * G + slot)
        t_out = code >> 1
        flipped = (code & 1) != 0
        mask_c = (k >= 0) & (offs_qb < Q)
        k = tl.where(k >= 0, k, 0)

        offs_qa = qa * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mask_qa = offs_qa < Q
        layer_base = x_ptr + l_idx * stride_xl
        xa_base = layer_base + j * stride_xn
        qa_off = offs_qa.to(tl.int64) * stride_xq
        col_off = k * stride_xn + offs_qb.to(tl.int64) * stride_xq

        if PRECISION == "fp64":
            acc = tl.zeros((BLOCK_Q, NCOLS), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_Q, NCOLS), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < P
            p_off = offs_p.to(tl.int64) * stride_xp
            a = tl.load(xa_base + qa_off[:, None] + p_off[None, :], mask=mask_qa[:, None] & mask_p[None, :], other=0.0)
            b = tl.load(layer_base + p_off[:, None] + col_off[None, :], mask=mask_p[:, None] & mask_c[None, :], other=0.0)
            acc = _gram_dot(_gram_operand(a, PRECISION), _gram_operand(b, PRECISION), acc, PRECISION)

        block_off = (l_idx * T + t_out) * Q * Q  # (NCOLS,) int64
        within = tl.where(
            flipped[None, :], offs_qb[None, :] * Q + offs_qa[:, None], offs_qa[:, None] * Q + offs_qb[None, :]
        )
        tl.store(
            out_ptr + block_off[None, :] + within,
            acc.to(out_ty),
            mask=mask_qa[:, None] & mask_c[None, :],
        )

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


# ---------------------------------------------------------------------------------------------------
# Launch configuration: autotuned handles (GPU) and the fixed configuration (interpreter, overrides)
# ---------------------------------------------------------------------------------------------------


def _dtype_bytes(ptr_arg) -> int:
    return ptr_arg.element_size() if hasattr(ptr_arg, "element_size") else 4


def _prune_gram(configs, named_args, **kwargs):
    """Keep the configs whose operand tiles (A: BLOCK_Q x BLOCK_P, B: BLOCK_P x G*BLOCK_Q, in the
    dot's input type; x3 for tf32x3's high / low parts) take <= _MAX_TILE_BYTES in all and <= 128
    32-bit registers per thread. From ptxas reports for sm_90 at Q = 16: tf32x3 at BLOCK_P = 256
    spills kilobytes, the grouped fp32 kernel at BLOCK_P = 256 with 4 warps hundreds of bytes.
    Always keeps the smallest BLOCK_P."""
    op_bytes = {"fp64": 8, "native16": 2, "tf32x3": 12}.get(kwargs["PRECISION"], 4)
    cols = kwargs["BLOCK_Q"] * (1 + kwargs.get("G", 1))

    def fits(c):
        tile = c.kwargs["BLOCK_P"] * cols * op_bytes
        return tile <= _MAX_TILE_BYTES and tile <= 512 * 32 * c.num_warps

    return [c for c in configs if fits(c)] or _smallest(configs)


def _prune_mix(configs, named_args, **kwargs):
    """Keep the configs whose x tile and accumulator (BLOCK_P x (BLOCK_Q + BLOCK_R) in t's dtype)
    take <= 32 32-bit registers per thread: the dot's operand layouts replicate them several times
    (ptxas for sm_90 at Q = R = 16: fp32 BLOCK_P = 256 with 4 warps spills, fp64 at 256 uses all 255
    registers). Always keeps the smallest BLOCK_P."""
    comp_bytes = _dtype_bytes(named_args["t_ptr"])
    width = kwargs["BLOCK_Q"] + kwargs["BLOCK_R"]
    kept = [c for c in configs if c.kwargs["BLOCK_P"] * width * comp_bytes <= 128 * 32 * c.num_warps]
    return kept or _smallest(configs)


def _smallest(configs):
    least = min(c.kwargs["BLOCK_P"] for c in configs)
    return [c for c in configs if c.kwargs["BLOCK_P"] == least]


_GRAM_KEY = ["tune_p", "tune_layout", "tune_work", "Q", "BLOCK_Q", "PRECISION"]
_GROUPED_KEY = _GRAM_KEY + ["G"]
_MIX_KEY = ["tune_p", "tune_layout", "tune_work", "Q", "R", "D", "BLOCK_Q", "BLOCK_R", "PRECISION"]

if triton is not None:
    #: Autotuning configs of pair_gram (both kernels): BLOCK_P x (num_warps, num_stages).
    GRAM_CONFIGS = [triton.Config({"BLOCK_P": bp}, num_warps=w, num_stages=s) for bp, w, s in _GRAM_SPACE]
    #: Autotuning configs of mix_lowrank: BLOCK_P x (num_warps, num_stages).
    MIX_CONFIGS = [triton.Config({"BLOCK_P": bp}, num_warps=w, num_stages=s) for bp, w, s in _MIX_SPACE]

    def _tuned(kernel, configs, key, prune):
        return triton.autotune(
            configs=configs, key=key, prune_configs_by={"early_config_prune": prune}, cache_results=True
        )(kernel)

    if not _is_interpreted(_pair_gram_kernel):
        _pair_gram_tuned = _tuned(_pair_gram_kernel, GRAM_CONFIGS, _GRAM_KEY, _prune_gram)
        _pair_gram_grouped_tuned = _tuned(_pair_gram_grouped_kernel, GRAM_CONFIGS, _GROUPED_KEY, _prune_gram)
        _mix_lowrank_tuned = _tuned(_mix_lowrank_kernel, MIX_CONFIGS, _MIX_KEY, _prune_mix)
    else:  # the interpreter: one fixed config (autotuning there would be slow and meaningless)
        _pair_gram_tuned = _pair_gram_grouped_tuned = _mix_lowrank_tuned = None
else:  # pragma: no cover
    GRAM_CONFIGS = MIX_CONFIGS = []


def _launch(raw, tuned, grid_of, args, consts: dict, block_p: Optional[int], explicit: bool, default_block_p: int):
    """Launch the autotuned handle, or -- with a block-size override (explicit) or under the
    interpreter (tuned is None) -- the plain kernel at BLOCK_P = block_p or default_block_p with
    _NUM_WARPS warps and _NUM_STAGES stages. grid_of maps BLOCK_P to the launch grid; consts holds
    every other compile-time argument."""
    if tuned is not None and not explicit and _AUTOTUNE:
        tuned[lambda meta: grid_of(meta["BLOCK_P"])](*args, **consts)
    else:
        bp = default_block_p if block_p is None else block_p
        raw[grid_of(bp)](*args, **consts, BLOCK_P=bp, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES)


#: DECAF_TRITON_AUTOTUNE=0 launches the fixed default configs instead of autotuning (for quick test runs on a
#: GPU: every new shape would otherwise benchmark all configs; the results are the same function).
_AUTOTUNE = os.environ.get("DECAF_TRITON_AUTOTUNE", "1").strip() not in ("0", "false", "off", "no")


def _layout_class(stride_p: int, stride_q: int) -> int:
    """Autotuning key: 0 when the Q axis is contiguous (B factors), 1 when P is (A.mT), 2 otherwise."""
    return 0 if stride_q == 1 else (1 if stride_p == 1 else 2)


def _bucket(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


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


def _check_precision(op: str, precision, allowed) -> None:
    if precision not in allowed:
        raise ValueError(f"{op}: precision={precision!r}, expected one of {allowed}")


class PairGroups(NamedTuple):
    """A plan for :func:`pair_gram`'s grouped kernel, made by :func:`pair_groups`.

    Pair t = (a, b) is computed by the group whose row factor j is a (stored as is) or b (flipped:
    the kernel forms x[b]^T x[a] and stores its transpose). Tensors live on one device.
    """

    pairs: torch.Tensor  # (T, 2) int64: the pairs the plan was made for
    row: torch.Tensor  # (n_groups,) int64: the factor j whose tiles each group loads once
    partner: torch.Tensor  # (n_groups, G) int64: the partners k of j, -1 for an empty slot
    code: torch.Tensor  # (n_groups, G) int64: 2 * t + flipped for slot (j, partner), -1 for an empty slot

    @property
    def group_size(self) -> int:
        return int(self.partner.shape[1])


_MAX_GROUP = 8


def pair_groups(
    pairs: torch.Tensor, *, group_size: Optional[int] = None, device: Optional[torch.device] = None
) -> PairGroups:
    """Group the pairs by a shared factor, for ``pair_gram(..., groups=...)``.

    Each pair is assigned to one of its two agents (greedily, to even out how many pairs each agent
    owns; a pair (a, b) owned by b is computed flipped), and each agent's pairs are cut into groups
    of ``group_size`` slots (default: the next power of two >= the largest number of pairs an agent
    owns, at most 8); unused slots stay empty. For a ring with pairs at distance 0, 1, 2 that is
    3 pairs per agent in groups of 4, so a factor's tile is read once for 3 blocks instead of once
    per block it takes part in.

    Plan once, outside the hot path: this reads ``pairs`` on the host (a copy, hence a
    synchronisation, when pairs is on a GPU). The plan is put on ``device`` (default pairs.device).
    """
    op = "pair_groups"
    if not isinstance(pairs, torch.Tensor):
        raise TypeError(f"{op}: pairs must be a torch.Tensor, got {type(pairs).__name__}")
    if pairs.dtype != _INDEX_DTYPE:
        raise TypeError(f"{op}: pairs has dtype {pairs.dtype}, expected torch.int64")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{op}: pairs has shape {tuple(pairs.shape)}, expected (T, 2)")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1 or group_size & (group_size - 1)):
        raise ValueError(f"{op}: group_size={group_size!r}, expected a power of two >= 1")
    device = pairs.device if device is None else torch.device(device)
    host = pairs.detach().to("cpu").tolist()
    for t, (a, b) in enumerate(host):
        if a < 0 or b < 0:
            raise ValueError(f"{op}: pairs[{t}] = ({a}, {b}), expected agent indices >= 0")
    # Orientation: owner[t] = 0 keeps pair t = (a, b) with a, 1 gives it to b. Greedy, then single
    # moves from a most-loaded agent to a partner owning at least two pairs fewer, while any helps.
    owner = [0] * len(host)
    load: dict[int, int] = {}
    for t, (a, b) in enumerate(host):
        if a != b and load.get(b, 0) < load.get(a, 0):
            owner[t] = 1
        load[host[t][owner[t]]] = load.get(host[t][owner[t]], 0) + 1
    for _ in range(min(len(host), 1024)):  # bounded: plans are made once, off the hot path
        top = max(load.values(), default=0)
        move = next(
            (t for t, ab in enumerate(host) if load[ab[owner[t]]] == top and load.get(ab[1 - owner[t]], 0) <= top - 2),
            None,
        )
        if move is None:
            break
        load[host[move][owner[move]]] -= 1
        owner[move] = 1 - owner[move]
        load[host[move][owner[move]]] = load.get(host[move][owner[move]], 0) + 1
    owned: dict[int, list[tuple[int, int]]] = {}
    for t, (a, b) in enumerate(host):
        j, k = (b, a) if owner[t] else (a, b)
        owned.setdefault(j, []).append((k, 2 * t + owner[t]))
    most = max((len(v) for v in owned.values()), default=1)
    G = group_size if group_size is not None else min(_MAX_GROUP, _next_pow2(most))
    rows, partners, codes = [], [], []
    for j in sorted(owned):
        slots = owned[j]
        for s0 in range(0, len(slots), G):
            chunk = slots[s0 : s0 + G]
            rows.append(j)
            partners.append([k for k, _ in chunk] + [-1] * (G - len(chunk)))
            codes.append([c for _, c in chunk] + [-1] * (G - len(chunk)))
    as_index = lambda v, shape: torch.tensor(v, dtype=_INDEX_DTYPE).reshape(shape).to(device)  # noqa: E731
    return PairGroups(
        pairs=pairs.detach().to(device),
        row=as_index(rows, (len(rows),)),
        partner=as_index(partners, (len(rows), G)),
        code=as_index(codes, (len(rows), G)),
    )


def _next_pow2(n: int) -> int:
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()


def pair_gram(
    x: torch.Tensor,
    pairs: torch.Tensor,
    *,
    precision: Optional[str] = None,
    out_dtype: Optional[torch.dtype] = None,
    acc_dtype: Optional[torch.dtype] = None,
    groups: Optional[PairGroups] = None,
    check_index: bool = True,
    block_p: Optional[int] = None,
    block_q: Optional[int] = None,
) -> torch.Tensor:
    """Gram blocks of factor pairs: ``out[l, t] = x[j_t, l]^T @ x[k_t, l]`` with ``(j_t, k_t) = pairs[t]``.

    Precisions (``precision=``), and what they do with each input dtype:

    * ``"fp64"`` (default): operands converted to float64 (exactly), fp64 products and sums (DMMA
      tensor cores on sm_80+). Products of fp32 / bf16 / fp16 data are exact, so the result is the
      exact Gram up to the float64 rounding of the P-term sums. Result float64.
    * ``"fp32"``: operands in float32 (fp64 data rounded to fp32; 16-bit data exact), FFMA with fp32
      accumulation ("ieee"): error ~P * 2^-24 * sum |x_j| |x_k|.
    * ``"tf32x3"``: operands in float32, each split into a TF32 high part and a TF32 low part,
      three tensor-core products with fp32 accumulation: about fp32 accuracy (a per-product error of
      ~2^-20 on top of the fp32 sums). bf16 and fp16 values are exact in TF32, so for 16-bit data
      the products are exact (the two correction products are zero) -- "native16" does the same
      with one product.
    * ``"native16"``: bf16 / fp16 data only: the 16-bit tiles go straight to the 16-bit tensor cores
      with fp32 accumulation. Products of 16-bit numbers are exact in fp32; only the sums round.

    The result is float64 for "fp64" and float32 otherwise, unless ``out_dtype=torch.float64`` asks
    for the fp32 accumulator stored as float64 (no accuracy gained, a uniform interface for
    callers). The legacy ``acc_dtype`` means ``precision="fp64"`` (float64) or ``"fp32"`` (float32)
    with that result dtype.

    ``groups`` (from :func:`pair_groups` on the same pairs) switches to the grouped kernel: one
    program per (layer, group, Q tile) forms all of a factor's blocks with its partners, loading the
    factor's tiles once. The result is the same tensor, in the order of ``pairs``.

    Args:
        x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides (e.g. ``A.transpose(-1, -2)``).
        pairs: (T, 2) int64 agent indices in [0, N), on x's device.
        precision: one of :data:`GRAM_PRECISIONS`; None means "fp64" (or what acc_dtype implies).
        out_dtype: torch.float64 or torch.float32 (must be float64 for "fp64"); None picks as above.
        acc_dtype: legacy: torch.float64 or torch.float32, see above.
        groups: optional :class:`PairGroups` plan for these pairs, on x's device.
        check_index: check on the host that pairs (and groups) are valid -- the only host
            synchronisation. Pass False for indices that are valid by construction (CUDA graphs).
        block_p, block_q: optional compile-time tile sizes (powers of two >= 16); giving either skips
            autotuning (the other one takes its default).

    Returns:
        A new contiguous (L, T, Q, Q) tensor of the result dtype.

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
    if acc_dtype is not None and acc_dtype not in _ACC_DTYPES:
        raise TypeError(f"{op}: acc_dtype is {acc_dtype}, expected torch.float64 or torch.float32")
    if out_dtype is not None and out_dtype not in _ACC_DTYPES:
        raise TypeError(f"{op}: out_dtype is {out_dtype}, expected torch.float64 or torch.float32")
    if acc_dtype is not None:
        implied = "fp64" if acc_dtype == torch.float64 else "fp32"
        if precision is not None and precision != implied:
            raise ValueError(
                f"{op}: acc_dtype={acc_dtype} means precision={implied!r}, but precision={precision!r} was given; "
                "give precision= and out_dtype= instead"
            )
        if out_dtype is not None and out_dtype != acc_dtype:
            raise TypeError(f"{op}: acc_dtype is {acc_dtype} but out_dtype is {out_dtype}; give one or make them agree")
        precision, out_dtype = implied, acc_dtype
    precision = "fp64" if precision is None else precision
    _check_precision(op, precision, GRAM_PRECISIONS)
    if out_dtype is None:
        out_dtype = torch.float64 if precision == "fp64" else torch.float32
    if precision == "fp64" and out_dtype != torch.float64:
        raise ValueError(f"{op}: precision='fp64' accumulates in float64, so out_dtype must be torch.float64, got {out_dtype}")
    if precision == "native16" and x.dtype not in _16BIT:
        raise ValueError(f"{op}: precision='native16' needs bfloat16 or float16 x, got {x.dtype}; use 'fp64', 'fp32' or 'tf32x3'")
    if pairs.dtype != _INDEX_DTYPE:
        raise TypeError(f"{op}: pairs has dtype {pairs.dtype}, expected torch.int64")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{op}: pairs has shape {tuple(pairs.shape)}, expected (T, 2)")
    _check_same_device(op, "pairs", pairs, x)
    if groups is not None:
        if not isinstance(groups, PairGroups):
            raise TypeError(f"{op}: groups must be a PairGroups from pair_groups(), got {type(groups).__name__}")
        for name in ("pairs", "row", "partner", "code"):
            _check_same_device(op, f"groups.{name}", getattr(groups, name), x)
        if tuple(groups.pairs.shape) != tuple(pairs.shape):
            raise ValueError(f"{op}: groups was made for {groups.pairs.shape[0]} pairs, got {pairs.shape[0]}")
    _check_device(op, x)
    explicit = block_p is not None or block_q is not None
    _block_size(op, "block_p", block_p, _GRAM_BLOCK_P)
    N, L, P, Q = x.shape
    T = pairs.shape[0]
    if groups is None:
        bq = _block_size(op, "block_q", block_q, _dim_block(Q, _GRAM_MAX_BLOCK_Q))
        n_rows = T
    else:
        G = groups.group_size
        bq = _block_size(op, "block_q", block_q, _dim_block(Q, min(_GRAM_MAX_BLOCK_Q, max(_MIN_DOT, _GROUP_MAX_COLS // G))))
        n_rows = groups.row.shape[0]
    n_qtiles = triton.cdiv(Q, bq)
    grid = (L * n_rows, n_qtiles * n_qtiles)
    _check_grid(op, grid)
    if check_index:
        _check_index_range(op, "pairs", pairs, 0, N)
        if groups is not None and not torch.equal(groups.pairs, pairs):
            raise ValueError(f"{op}: groups was made for different pairs; make it with pair_groups(pairs)")

    out = torch.empty((L, T, Q, Q), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    sx = x.stride()
    tune = (_bucket(P), _layout_class(sx[2], sx[3]), _bucket(L * n_rows))
    with _device_guard(x):
        if groups is None:
            args = (x, pairs, out, T, P, Q, *sx, *pairs.stride(), *tune)
            consts = dict(BLOCK_Q=bq, PRECISION=precision)
            _launch(_pair_gram_kernel, _pair_gram_tuned, lambda bp: grid, args, consts, block_p, explicit, _GRAM_BLOCK_P)
        else:
            args = (x, groups.row, groups.partner.contiguous(), groups.code.contiguous(), out, T, n_rows, P, Q, *sx, *tune)
            consts = dict(G=G, BLOCK_Q=bq, PRECISION=precision)
            _launch(
                _pair_gram_grouped_kernel, _pair_gram_grouped_tuned, lambda bp: grid, args, consts, block_p, explicit, _GRAM_BLOCK_P
            )
    return out


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
    """Batched low-rank product mixing: ``out[i, l] = sum_{s: idx[i, s] >= 0} x[idx[i, s], l] @ t[i, l, s]``.

    Computed in t's dtype (float32 for fp32 / bf16 / fp16 x, float64 for float64 x) and converted to
    out's dtype when stored; every element of ``out`` is written exactly once.

    Precisions (``precision=``; float64 x always takes fp64 products whatever is asked):

    * ``"ieee"`` (default): x converted to t's dtype, FMA products (fp32 FFMA or fp64).
    * ``"tf32x3"``: x converted to float32, three TF32 tensor-core products with fp32 accumulation
      (about fp32 accuracy: a per-product error of ~2^-20 on top of the fp32 sums).
    * ``"split16"``: bf16 / fp16 x only. t = t_hi + t_lo with t_hi = t rounded to x's dtype and
      t_lo = (t - t_hi) rounded again, two native 16-bit tensor-core products with fp32
      accumulation. Products are exact; the split leaves an error of ~u16^2 |t| (2^-16 for bf16,
      2^-22 for fp16), far below the 16-bit rounding of the output. With fp16 x, t must lie inside
      fp16's range (|t| < 65504; entries below ~2^-14 lose relative accuracy as fp16 subnormals).

    Args:
        x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides.
        idx: (n_out, D) int64 neighbour indices in [0, N), or -1 for an empty slot; on x's device.
        t: (n_out, L, D, Q, R), any strides, in the compute dtype: float64 for float64 x, else float32.
        out: optional preallocated (n_out, L, P, R) floating tensor with any non-overlapping strides
            (e.g. a transposed view), not sharing memory with x, idx or t.
        out_dtype: dtype of the allocated result when ``out`` is None (default x.dtype).
        precision: one of :data:`MIX_PRECISIONS`.
        check_index: check on the host that idx is in range -- the only host synchronisation. Pass
            False for indices that are valid by construction (CUDA graphs).
        block_p, block_q, block_r: optional compile-time tile sizes (powers of two >= 16); giving any
            skips autotuning (the others take their defaults).

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
    _check_precision(op, precision, MIX_PRECISIONS)
    if precision == "split16" and x.dtype not in _16BIT:
        raise ValueError(f"{op}: precision='split16' needs bfloat16 or float16 x, got {x.dtype}; use 'ieee' or 'tf32x3'")
    if x.dtype == torch.float64:
        precision = "ieee"  # fp64 data: fp64 products whatever was asked
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
    explicit = block_p is not None or block_q is not None or block_r is not None
    bp = _block_size(op, "block_p", block_p, _MIX_BLOCK_P)
    bq = _block_size(op, "block_q", block_q, _dim_block(Q, _MIX_MAX_BLOCK_Q))
    br = _block_size(op, "block_r", block_r, _dim_block(R, _MIX_MAX_BLOCK_R))
    bp_min = bp if explicit or interpreter_active() else min(b for b, _, _ in _MIX_SPACE)
    _check_grid(op, (n_out * L, triton.cdiv(P, bp_min), triton.cdiv(R, br)))
    if check_index:
        _check_index_range(op, "idx", idx, -1, N)

    if out is None:
        out = torch.empty((n_out, L, P, R), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    sx, so = x.stride(), out.stride()
    tune = (_bucket(P), 3 * _layout_class(sx[2], sx[3]) + _layout_class(so[2], so[3]), _bucket(n_out * L))
    args = (x, idx, t, out, n_out, P, Q, R, D, *sx, *idx.stride(), *t.stride(), *so, *tune)
    consts = dict(BLOCK_Q=bq, BLOCK_R=br, PRECISION=precision)
    with _device_guard(x):
        _launch(
            _mix_lowrank_kernel,
            _mix_lowrank_tuned,
            lambda b: (L * n_out, triton.cdiv(P, b), triton.cdiv(R, br)),
            args,
            consts,
            block_p,
            explicit,
            _MIX_BLOCK_P,
        )
    return out
