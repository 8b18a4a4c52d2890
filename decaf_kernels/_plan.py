"""One plan per (W, device, r, split): everything a consensus call derives from the mixing matrix alone.

The neighbour tables, the Gram pairs and their grouping, the assembly index and the slot coefficients depend on W,
the factor rank r and the split, never on the factor values. A training loop passes the same W every round, so
they are made once, on the data's device, and found again by W's contents: per-call host-to-device copies would
synchronise the stream and break CUDA-graph capture. This module holds the only cache of W-derived tables.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch

from ._graph import Neighbours, PairGroups, assembly_index, neighbours, pair_groups

_MAX_PLANS = 64  # a time-varying graph cycles through a few matrices; a bound keeps a long sweep from growing it


@dataclass(frozen=True, eq=False)
class Plan:
    nb: Neighbours  # host tables (idx, weights, pairs, ... on the CPU)
    alpha: float  # the split's exponent (B' = U S^alpha, A' = S^(1-alpha) V^T)
    idx: torch.Tensor  # (Nu, D) int64, -1 = empty slot
    inverse: torch.Tensor  # (n_out,) int64: output -> its distinct row
    shared_rows: bool  # some outputs share a row of W: results are solved per distinct row, then expanded by inverse
    pairs: torch.Tensor  # (T, 2) int64
    active: torch.Tensor  # (Nu, D) float64, 1 for a filled slot
    slot: torch.Tensor  # (Nu, D) int64, idx with empty slots pointing at agent 0
    weights: torch.Tensor  # (Nu, D) float64 W[i, j] per slot, 0 for empty slots (so no mask is needed with it)
    index: torch.Tensor  # assembly_index(nb, r)
    same: torch.Tensor  # (T,) bool: the pair is (j, j)
    uncovered: torch.Tensor  # (n,) int64: input agents no diagonal pair covers (their finiteness is not in the Grams)
    groups: Optional[PairGroups]  # pairs grouped by a shared factor for the GPU Gram kernel (CUDA), else None
    coefs: tuple  # slot_coefs of data without per-agent scales (every dtype but float64)
    outer: tuple  # the assembly products outer_coef(coefs[0], r), outer_coef(coefs[1], r)


_plans: "OrderedDict[tuple, Plan]" = OrderedDict()


def not_while_capturing(dev: torch.device) -> None:
    """Tensors made during a CUDA-graph capture only receive their values when the graph is replayed, so the
    per-W tables must exist before: a capture needs one eager call with the same W, shapes and split first."""
    if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("consensus_tsvd is being captured in a CUDA graph before any eager call with this W, rank "
                           "and split: run it once eagerly first (a warm-up; kernels also compile and autotune "
                           "there), then capture")


def plan(W: torch.Tensor, dev: torch.device, r: int, alpha: float) -> Plan:
    """The plan of mixing matrix W, (n_out, N), for factors of rank r on device dev (cached by W's values and shape)."""
    Wc = W.detach().to("cpu", torch.float64).contiguous()
    # the full shape: the same bytes read as (2, 6) or (3, 4) are different matrices
    key = (Wc.numpy().tobytes(), tuple(Wc.shape), str(dev), r, float(alpha))
    hit = _plans.get(key)
    if hit is not None:
        _plans.move_to_end(key)
        return hit
    not_while_capturing(dev)
    nb = neighbours(Wc)
    idx = nb.idx.to(dev)
    active = (idx >= 0).to(torch.float64)
    weights = nb.weights.to(dev, torch.float64)
    same = nb.pairs[:, 0] == nb.pairs[:, 1]
    covered = torch.zeros(nb.n_in, dtype=torch.bool)
    covered[nb.pairs[same][:, 0]] = True
    coefs = slot_coefs(weights[None], active[None], alpha)  # the weights are 0 on empty slots
    pl = Plan(
        nb=nb,
        alpha=float(alpha),
        idx=idx,
        inverse=nb.inverse.to(dev),
        shared_rows=nb.unique_rows.numel() != nb.n_out,
        pairs=nb.pairs.to(dev),
        active=active,
        slot=idx.clamp(min=0),
        weights=weights,
        index=assembly_index(nb, r).to(dev),
        same=same.to(dev),
        uncovered=torch.nonzero(~covered).flatten().to(dev),
        groups=pair_groups(nb.pairs, device=dev) if dev.type == "cuda" else None,
        coefs=coefs,
        outer=(outer_coef(coefs[0], r), outer_coef(coefs[1], r)),
    )
    _plans[key] = pl
    while len(_plans) > _MAX_PLANS:
        _plans.popitem(last=False)
    return pl


def slot_coefs(wb: torch.Tensor, ca: torch.Tensor, alpha: float):
    """Per-slot coefficients from wb (weight x scale of each B slot) and ca (scale of each A slot), (L or 1, Nu, D):
    the slot coefficients of Bc~ and Ac~ (normalised by the row maxima hb, ha), the reconstruction factors gb, ga
    that undo the normalisation (Bc = hb Bc~, Ac = ha Ac~ => S = hb ha S~, B' = Bc~ X~ (hb ha)^alpha,
    A' = (hb ha)^(1 - alpha) Y~ Ac~) and the scale hb ha of S. The Gram route assembles with their
    :func:`outer_coef` products."""
    hb = wb.abs().amax(-1, keepdim=True)
    ha = ca.abs().amax(-1, keepdim=True)
    hb = torch.where(hb > 0, hb, torch.ones_like(hb))
    ha = torch.where(ha > 0, ha, torch.ones_like(ha))
    cb, cn = wb / hb, ca / ha
    gb = cb * (hb.pow(alpha) * ha.pow(alpha))
    ga = cn * (hb.pow(1.0 - alpha) * ha.pow(1.0 - alpha))
    return cb, cn, gb, ga, hb * ha


def outer_coef(coef: torch.Tensor, r: int) -> torch.Tensor:
    """(.., Nu, D) per-slot scalars -> (.., Nu, D r, D r) products coef_s coef_t, block by block."""
    c = coef.repeat_interleave(r, dim=-1)
    return c[..., :, None] * c[..., None, :]
