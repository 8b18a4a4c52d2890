"""Consensus over layers of different shapes in one call.

:func:`consensus_tsvd_grouped` takes lists of factor stacks (q/k/v/o projections next to MLP projections, say),
groups them by shape and dtype, and runs one :func:`~decaf_kernels.consensus_tsvd` per group.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _validation as V
from .ops import consensus_tsvd

__all__ = ["consensus_tsvd_grouped"]


def _group_key(B: Tensor, A: Tensor) -> tuple:
    return (B.shape[0], B.shape[-2], B.shape[-1], A.shape[-1], B.dtype, B.device)


def consensus_tsvd_grouped(
    Bs: Sequence[Tensor],
    As: Sequence[Tensor],
    W: Tensor,
    rank: Optional[int] = None,
    **kwargs,
) -> list[tuple[Tensor, Tensor]]:
    r""":func:`~decaf_kernels.consensus_tsvd` over a list of factor stacks of different shapes, one call per shape.

    Entry ``t`` is a stack ``Bs[t]: (N, *batch_t, d_t, r_t)``, ``As[t]: (N, *batch_t, r_t, k_t)`` (for example
    all q/k/v/o projections of a model in one stack and all MLP up-projections in another). Entries that share
    ``(N, d, r, k, dtype, device)`` form a group and are solved by one consensus_tsvd call: one launch of each
    kernel for the whole group. Entries of a group are concatenated along the layer axis first, which copies
    them once; a caller that keeps each shape's adapters in one stack (one entry per group) pays no copy.

    Args:
        Bs, As: sequences of the same length of factor stacks; every entry is checked like consensus_tsvd's B, A.
        W: (n_out, N) mixing matrix shared by all entries (see consensus_tsvd; square (N, N) is the usual gossip
            step).
        rank: rank of every result (default: each entry's own r); must satisfy 1 <= rank <= min(d_t, k_t).
        **kwargs: passed to consensus_tsvd (method, split, validate, generator, ...), except
            return_singular_values, which is not supported here.

    Returns:
        A list with ``(B_new, A_new)`` for every entry, in the order given, shaped like consensus_tsvd's outputs
        (n_out in dimension 0).

    Example:
        >>> import torch, decaf_kernels
        >>> W = torch.full((4, 4), 0.25)
        >>> attn = (torch.randn(4, 8, 64, 4), torch.randn(4, 8, 4, 64))    # 8 square projections
        >>> mlp = (torch.randn(4, 2, 256, 4), torch.randn(4, 2, 4, 64))    # 2 up-projections
        >>> out = decaf_kernels.consensus_tsvd_grouped([attn[0], mlp[0]], [attn[1], mlp[1]], W)
        >>> [tuple(b.shape) for b, _ in out]
        [(4, 8, 64, 4), (4, 2, 256, 4)]
    """
    if "return_singular_values" in kwargs:
        raise TypeError("consensus_tsvd_grouped does not take return_singular_values; call consensus_tsvd per group")
    if isinstance(Bs, Tensor) or isinstance(As, Tensor):
        raise TypeError("Bs and As must be sequences (lists or tuples) of factor stacks, not single tensors; "
                        "for one stack call consensus_tsvd")
    Bs, As = list(Bs), list(As)
    if len(Bs) != len(As):
        raise ValueError(f"Bs has {len(Bs)} entries but As has {len(As)}; expected one A stack per B stack")
    if not Bs:
        raise ValueError("Bs and As are empty; expected at least one factor stack")
    groups: dict[tuple, list[int]] = {}
    for t, (B, A) in enumerate(zip(Bs, As)):
        try:
            V.check_factors(B, A)
        except (TypeError, ValueError) as err:
            raise type(err)(f"entry {t}: {err}") from None
        groups.setdefault(_group_key(B, A), []).append(t)
    N0 = Bs[0].shape[0]
    for t, B in enumerate(Bs):
        if B.shape[0] != N0:
            raise ValueError(f"entry {t} has N = {B.shape[0]} agents but entry 0 has {N0}; all entries share W")
    if rank is not None:
        rank = V.as_int("rank", rank)
        for t, (B, A) in enumerate(zip(Bs, As)):
            if not 1 <= rank <= min(B.shape[-2], A.shape[-1]):
                raise ValueError(f"rank must satisfy 1 <= rank <= min(d, k) = {min(B.shape[-2], A.shape[-1])} for "
                                 f"entry {t} (B {tuple(B.shape)}), got rank={rank}")

    out: list = [None] * len(Bs)
    for members in groups.values():
        if len(members) == 1:
            t = members[0]
            out[t] = tuple(consensus_tsvd(Bs[t], As[t], W, rank, **kwargs))
            continue
        N, d, r, k = Bs[members[0]].shape[0], Bs[members[0]].shape[-2], Bs[members[0]].shape[-1], As[members[0]].shape[-1]
        flat_B = [Bs[t].reshape(N, -1, d, r) for t in members]
        flat_A = [As[t].reshape(N, -1, r, k) for t in members]
        sizes = [b.shape[1] for b in flat_B]
        B_new, A_new = consensus_tsvd(torch.cat(flat_B, 1), torch.cat(flat_A, 1), W, rank, **kwargs)
        n_out, R = B_new.shape[0], B_new.shape[-1]
        for t, b, a in zip(members, B_new.split(sizes, 1), A_new.split(sizes, 1)):
            batch = tuple(Bs[t].shape[1:-2])
            out[t] = (b.reshape(n_out, *batch, d, R), a.reshape(n_out, *batch, R, k))
    return out
