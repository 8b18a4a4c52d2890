"""The Gram pass on the GPU: ``out[l, t] = x[j_t, l]^T @ x[k_t, l]`` for the pairs of a plan (Triton).

Step 1 of the exact consensus (docs/design.md): the Gram blocks of the pairs of agents that are neighbours of a
common agent, accumulated in float64. Pairs are grouped by a shared factor (``_graph.pair_groups``): one program
computes all the blocks of one factor ``x[j]`` with its partners, so every tile of ``x[j]`` is loaded once for all
of them. Program order is layer-major: consecutive program ids share a layer, so the N agents' factors of one layer
are read from HBM once and re-read by the neighbouring programs from L2.

Precision modes (``precision=``, the one switch; the library uses "fp64", the others are experiments timed by
``bench/triton_variants.py``, numbers in bench/RESULTS.md):

* ``"fp64"``: operands converted to float64 (exactly), fp64 products and sums (DMMA on sm_80+). Products of fp32 /
  bf16 / fp16 data are exact, so the result is the exact Gram up to the float64 rounding of the P-term sums.
* ``"fp32"``: operands in float32 (fp64 data rounded), FFMA with fp32 accumulation: error ~P 2^-24 sum |x_j||x_k|.
* ``"tf32x3"``: three TF32 tensor-core products of the operands' high and low parts with fp32 accumulation:
  about fp32 accuracy. Never timed on a GPU.
* ``"native16"``: bf16 / fp16 data only, straight to the 16-bit tensor cores with fp32 accumulation (products
  exact, sums rounded). Half the fp64 mode's time on an H100 but it failed its kernel-level accuracy test at
  P = 4096 there (cause unknown), so it is not used.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._graph import PairGroups
from . import launch as K

GRAM_PRECISIONS = ("fp64", "fp32", "tf32x3", "native16")

# Override / interpreter defaults (ptxas reports for sm_80 / sm_90: no spills up to 64 x 64 tiles at 8 warps).
_BLOCK_P = 64
_MAX_BLOCK_Q = 64
_GROUP_MAX_COLS = 128  # G partners x BLOCK_Q columns per program at most
# Autotuning space (BLOCK_P, num_warps, num_stages). Q = r = 16 is the main case: a 16 x BLOCK_P tile per operand,
# so a large BLOCK_P is what amortises the per-iteration overhead and keeps enough bytes in flight per SM.
_SPACE = [(bp, w, s) for bp in (64, 128, 256) for (w, s) in ((4, 2), (4, 3), (8, 3), (8, 4))]
_KEY = ["tune_p", "tune_layout", "tune_work", "Q", "BLOCK_Q", "PRECISION", "G"]


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


def _prune(configs, named_args, **kwargs):
    """Keep the configs whose operand tiles (A: BLOCK_Q x BLOCK_P, B: BLOCK_P x G*BLOCK_Q, in the dot's input type;
    x3 for tf32x3's high / low parts) take <= MAX_TILE_BYTES in all and <= 128 32-bit registers per thread. From
    ptxas reports for sm_90 at Q = 16: tf32x3 at BLOCK_P = 256 spills kilobytes, the fp32 kernel at BLOCK_P = 256
    with 4 warps hundreds of bytes. Always keeps the smallest BLOCK_P."""
    op_bytes = {"fp64": 8, "native16": 2, "tf32x3": 12}.get(kwargs["PRECISION"], 4)
    cols = kwargs["BLOCK_Q"] * (1 + kwargs.get("G", 1))

    def fits(c):
        tile = c.kwargs["BLOCK_P"] * cols * op_bytes
        return tile <= K.MAX_TILE_BYTES and tile <= 512 * 32 * c.num_warps

    return [c for c in configs if fits(c)] or K.smallest(configs)


CONFIGS = K.configs(_SPACE)
_pair_gram_tuned = K.tuned(_pair_gram_kernel, CONFIGS, _KEY, _prune)


def _one_pair_per_group(pairs: torch.Tensor) -> PairGroups:
    """Each pair its own group (G = 1), made on pairs' device without a host round trip."""
    T = pairs.shape[0]
    code = 2 * torch.arange(T, dtype=torch.int64, device=pairs.device)
    return PairGroups(pairs=pairs, row=pairs[:, 0].contiguous(), partner=pairs[:, 1:].contiguous(),
                      code=code[:, None])


def pair_gram(
    x: torch.Tensor,
    pairs: torch.Tensor,
    *,
    precision: str = "fp64",
    out_dtype: Optional[torch.dtype] = None,
    groups: Optional[PairGroups] = None,
    check_index: bool = True,
    block_p: Optional[int] = None,
    block_q: Optional[int] = None,
) -> torch.Tensor:
    """Gram blocks ``out[l, t] = x[j_t, l]^T @ x[k_t, l]`` with ``(j_t, k_t) = pairs[t]``, as a new contiguous
    (L, T, Q, Q) tensor, float64 for "fp64" and float32 otherwise unless ``out_dtype=torch.float64`` asks for the
    fp32 accumulator stored as float64.

    x: (N, L, P, Q) float32 / float64 / bfloat16 / float16, any strides (e.g. ``A.mT``); pairs: (T, 2) int64 in
    [0, N) on x's device; groups: ``_graph.pair_groups(pairs)`` on x's device (None: one pair per group);
    check_index: check the indices on the host (the only synchronisation; the backend passes False, its indices
    being valid by construction); block_p, block_q: compile-time tile sizes that skip autotuning.
    """
    op = "pair_gram"
    K.require_triton(op)
    K.check_tensor(op, "x", x, (None,) * 4, K.X_DTYPES)
    K.check_tensor(op, "pairs", pairs, (None, 2), (K.INDEX_DTYPE,), x.device)
    K.check_option(op, "precision", precision, GRAM_PRECISIONS)
    if precision == "native16" and x.dtype not in K.HALF_DTYPES:
        raise ValueError(f"{op}: precision='native16' needs bfloat16 or float16 x, got {x.dtype}")
    out_dtype = out_dtype or (torch.float64 if precision == "fp64" else torch.float32)
    K.check_option(op, "out_dtype", out_dtype, (torch.float64,) if precision == "fp64" else (torch.float32, torch.float64))
    if groups is None:
        groups = _one_pair_per_group(pairs)
    elif check_index and not torch.equal(groups.pairs, pairs):
        raise ValueError(f"{op}: groups was made for different pairs; make it with pair_groups(pairs)")
    N, L, P, Q = x.shape
    T, G, n_rows = pairs.shape[0], groups.group_size, groups.row.shape[0]
    bq = K.block_size(op, "block_q", block_q, K.dim_block(Q, min(_MAX_BLOCK_Q, max(K.MIN_DOT, _GROUP_MAX_COLS // G))))
    explicit = block_p is not None or block_q is not None
    K.block_size(op, "block_p", block_p, _BLOCK_P)
    n_qtiles = triton.cdiv(Q, bq)
    grid = (L * n_rows, n_qtiles * n_qtiles)
    K.check_grid(op, grid)
    if check_index:
        K.check_index_range(op, "pairs", pairs, 0, N)

    out = torch.empty((L, T, Q, Q), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    sx = x.stride()
    tune = (K.bucket(P), K.layout_class(sx[2], sx[3]), K.bucket(L * n_rows))
    args = (x, groups.row, groups.partner.contiguous(), groups.code.contiguous(), out, T, n_rows, P, Q, *sx, *tune)
    consts = dict(G=G, BLOCK_Q=bq, PRECISION=precision)
    K.launch(_pair_gram_kernel, _pair_gram_tuned, lambda bp: grid, args, consts, block_p, explicit, _BLOCK_P)
    return out
