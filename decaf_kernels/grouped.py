"""Consensus over layers of different shapes in one call, and consensus captured in a CUDA graph.

* :func:`consensus_tsvd_grouped` takes lists of factor stacks (q/k/v/o projections next to MLP projections,
  say), groups them by shape and dtype, and runs one :func:`~decaf_kernels.consensus_tsvd` per group.
* :class:`CapturedConsensus` records one consensus step on fixed factor tensors in a CUDA graph; each
  :meth:`~CapturedConsensus.replay` recomputes it from the tensors' current values at the cost of one graph
  launch, which removes the per-kernel launch overhead that dominates small problems.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _validation as V
from .ops import consensus_tsvd

__all__ = ["consensus_tsvd_grouped", "CapturedConsensus"]


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
        W: (N, N) mixing matrix shared by all entries.
        rank: rank of every result (default: each entry's own r); must satisfy 1 <= rank <= min(d_t, k_t).
        **kwargs: passed to consensus_tsvd (method, split, validate, generator, ...), except
            return_singular_values, which is not supported here.

    Returns:
        A list with ``(B_new, A_new)`` for every entry, in the order given, shaped like consensus_tsvd's outputs.

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
        R = B_new.shape[-1]
        for t, b, a in zip(members, B_new.split(sizes, 1), A_new.split(sizes, 1)):
            batch = tuple(Bs[t].shape[1:-2])
            out[t] = (b.reshape(N, *batch, d, R), a.reshape(N, *batch, R, k))
    return out


class CapturedConsensus:
    """One consensus step on fixed CUDA factor tensors, recorded in a CUDA graph.

    Capture once, then call :meth:`replay` every round: it recomputes ``consensus_tsvd(B, A, W, rank, ...)`` from
    the *current values* of ``B`` and ``A`` (update them in place, e.g. ``B.copy_(...)`` or an optimizer step) and
    returns the same output tensors, overwritten. W and the shapes are fixed at capture; a new W (a time-varying
    graph) needs a new capture. The exact method only; no value checks happen during replay, so check inputs
    before (``validate=True`` at construction runs one checked call first).

    Args:
        B, A: CUDA factor stacks, as for consensus_tsvd. They must stay alive and keep their storage.
        W: (N, N) mixing matrix (copied to the host once).
        rank, split: as for consensus_tsvd.
        validate: run one eager, checked call before capturing (default True).
        warmup: eager calls before capture (kernels compile and autotune there; default 2).

    Example (on a GPU)::

        step = decaf_kernels.CapturedConsensus(B, A, W)
        for _ in range(rounds):
            train_locally(B, A)                  # in place
            B_new, A_new = step.replay()
            B.copy_(B_new); A.copy_(A_new)
    """

    def __init__(self, B: Tensor, A: Tensor, W: Tensor, rank: Optional[int] = None, *, split: str = "balanced",
                 validate: bool = True, warmup: int = 2):
        if not isinstance(B, Tensor) or B.device.type != "cuda":
            raise ValueError(f"CapturedConsensus needs CUDA factor tensors, got B on "
                             f"{B.device if isinstance(B, Tensor) else type(B).__name__}")
        V.check_factors(B, A)
        W = V.dense_mixing(W)
        V.check_mixing(W, B.shape[0], B, "B", allow_host=True)
        self.B, self.A = B, A
        self.W = W.detach().to("cpu")
        self.rank, self.split = rank, split
        kw = dict(method="exact", split=split)
        if validate:
            consensus_tsvd(B, A, self.W, rank, validate=True, **kw)
        side = torch.cuda.Stream(device=B.device)
        side.wait_stream(torch.cuda.current_stream(B.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                consensus_tsvd(B, A, self.W, rank, validate=False, **kw)
        torch.cuda.current_stream(B.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = consensus_tsvd(B, A, self.W, rank, validate=False, **kw)

    def replay(self) -> tuple[Tensor, Tensor]:
        """Recompute from the current values of B and A; returns the (overwritten) output tensors."""
        self.graph.replay()
        return self.outputs
