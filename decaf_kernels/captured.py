"""One consensus step recorded in a CUDA graph and replayed every round.

:class:`CapturedConsensus` records :func:`~decaf_kernels.consensus_tsvd` on fixed factor tensors; each
:meth:`~CapturedConsensus.replay` recomputes it from the tensors' current values at the cost of one graph launch,
which removes the per-kernel launch overhead that dominates small problems.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _validation as V
from .ops import consensus_tsvd

__all__ = ["CapturedConsensus"]


class CapturedConsensus:
    """One consensus step on fixed CUDA factor tensors, recorded in a CUDA graph.

    Capture once, then call :meth:`replay` every round: it recomputes ``consensus_tsvd(B, A, W, rank, ...)`` from
    the *current values* of ``B`` and ``A`` (update them in place, e.g. ``B.copy_(...)`` or an optimizer step) and
    returns the same output tensors, overwritten. W and the shapes are fixed at capture; a new W (a time-varying
    graph) needs a new capture. The exact method only; no value checks happen during replay, so check inputs
    before (``validate=True`` at construction runs one checked call first).

    Args:
        B, A: CUDA factor stacks, as for consensus_tsvd. They must stay alive and keep their storage.
        W: (n_out, N) mixing matrix, as for consensus_tsvd (copied to the host once).
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
