"""Moving agents' parameters between processes: the neighbour exchange and the server collectives.

A communication round under mixing matrix W needs, for each of this process's agents i, the parameters of every
agent j with ``W[i, j] != 0``. :func:`routes` works out from W alone (every rank derives the same W from the seed)
which local agents each peer process needs and which remote agents this process needs; :meth:`Exchange.neighbours`
then sends **one flat buffer per peer process** (every layer's B and A and the dense parameters of all the agents
that peer needs, in agent order) with ``torch.distributed.batch_isend_irecv`` and receives the same. LoRA payloads
are small, so a round is bound by latency, not bandwidth: one message per peer, not one per tensor.

The result is the stack of *input* agents (the columns this process's rows of W use, in global agent order, the
local ones included) and those rows of W restricted to those columns: the consensus then runs locally with the
rectangular ops of :mod:`decaf_kernels`. With one process the exchange is free and the inputs are the local stacks.

Server algorithms use collectives instead: :meth:`Exchange.gather_all` (all_gather: every agent's parameters on
every process, for exact_avg) and :meth:`Exchange.mean_all` (all_reduce: the agents' mean, for fedavg).

Bytes are counted as they leave this process: the exact size of each point-to-point buffer; for a collective, what
its ring algorithm sends per process ((P-1) buffers for all_gather, 2(P-1)/P of the buffer for all_reduce, one
buffer from each rank but 0 for a gather to rank 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .processes import Group, Placement

__all__ = ["Routes", "routes", "Exchange", "Received", "WIRE_DTYPES"]

WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Routes:
    """Who sends what to whom in one round (all lists in global agent order)."""

    rows: List[int]  # this process's agents (the outputs)
    cols: List[int]  # the input agents those rows use, local ones included
    send: Dict[int, List[int]]  # peer rank -> local agents it needs
    recv: Dict[int, List[int]]  # peer rank -> its agents this process needs
    W_rows: Tensor  # (len(rows), len(cols)) float64: W[rows][:, cols]


def routes(W: Tensor, placement: Placement) -> Routes:
    """The round's traffic under W for this process (a pure function of W and the placement)."""
    W = W.detach().to("cpu", torch.float64)
    N = placement.n_agents
    if W.shape != (N, N):
        raise ValueError(f"W has shape {tuple(W.shape)}, the run has {N} agents: expected ({N}, {N})")
    nz = W != 0
    rows = list(placement.local)
    used = nz[rows].any(0)
    cols = used.nonzero().flatten().tolist()
    send, recv = {}, {}
    for q in range(placement.world):
        if q == placement.rank:
            continue
        theirs = list(placement.block(q))
        need = [j for j in cols if placement.owner(j) == q]
        if need:
            recv[q] = need
        give = nz[theirs][:, rows].any(0).nonzero().flatten().tolist()
        if give:
            send[q] = [rows[g] for g in give]
    return Routes(rows, cols, send, recv, W[rows][:, cols].contiguous())


@dataclass
class Received:
    """The inputs of this process's rows: per tensor, a stack over ``routes.cols``."""

    routes: Routes
    inputs: List[Tensor]
    bytes_sent: int


class Exchange:
    """Sends and receives agents' parameters for one process of a run.

    Args:
        group: the processes (:class:`~decaf_lora.processes.Group`; one process alone by default).
        placement: which agents this process hosts.
        wire_dtype: the dtype on the wire; ``torch.bfloat16`` halves the bytes of fp32 parameters (the receiver
            casts back; its own agents are never rounded). None: each tensor's own dtype.
    """

    def __init__(self, group: Group, placement: Placement, *, wire_dtype: Optional[torch.dtype] = None):
        if placement.world != group.world or placement.rank != group.rank:
            raise ValueError(f"placement (rank {placement.rank} of {placement.world}) does not match the process "
                             f"group (rank {group.rank} of {group.world})")
        self.group = group
        self.placement = placement
        self.wire_dtype = wire_dtype

    # ------------------------------------------------------------------------------------------------ packing
    def _wire(self, tensors: Sequence[Tensor]) -> torch.dtype:
        return self.wire_dtype if self.wire_dtype is not None else self._wire_native(tensors)

    @staticmethod
    def _wire_native(tensors: Sequence[Tensor]) -> torch.dtype:
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise ValueError(f"the exchanged tensors have several dtypes {sorted(map(str, dtypes))}; pass wire_dtype")
        return dtypes.pop()

    def _pack(self, tensors: Sequence[Tensor], agents: Sequence[int], wire: torch.dtype) -> Tensor:
        first = self.placement.first
        parts = [t[a - first].reshape(-1) for a in agents for t in tensors]
        return torch.cat(parts).to(self.group.device, wire)

    @staticmethod
    def _unpack(buf: Tensor, tensors: Sequence[Tensor], n_agents: int) -> List[Tensor]:
        """(n_agents, *shape) per tensor, from a buffer packed agent by agent."""
        sizes = [t[0].numel() for t in tensors]
        per_agent = buf.view(n_agents, sum(sizes))
        out, at = [], 0
        for t, s in zip(tensors, sizes):
            out.append(per_agent[:, at:at + s].reshape(n_agents, *t.shape[1:]).to(t.device, t.dtype))
            at += s
        return out

    # ------------------------------------------------------------------------------------------------ gossip
    def neighbours(self, tensors: Sequence[Tensor], W: Tensor) -> Received:
        """Exchange with the processes that host this process's neighbours under W.

        Args:
            tensors: per-agent stacks of this process, each ``(n_local, *shape)`` (factors, dense parameters).
            W: the round's full ``(N, N)`` mixing matrix (the same on every process).

        Returns:
            the stacks of the input agents and the rows of W over them (:class:`Received`).
        """
        rt = routes(W, self.placement)
        wire = self._wire(tensors)
        sent = 0
        if self.group.distributed and (rt.send or rt.recv):
            import torch.distributed as dist

            ops, bufs = [], {}
            per_agent = sum(t[0].numel() for t in tensors)
            for q, agents in rt.send.items():
                buf = self._pack(tensors, agents, wire)
                sent += buf.numel() * buf.element_size()
                ops.append(dist.P2POp(dist.isend, buf, q, group=self.group.pg))
            for q, agents in rt.recv.items():
                bufs[q] = torch.empty(len(agents) * per_agent, dtype=wire, device=self.group.device)
                ops.append(dist.P2POp(dist.irecv, bufs[q], q, group=self.group.pg))
            self.group.wait(dist.batch_isend_irecv(ops), "the neighbour exchange",
                            peers=set(rt.send) | set(rt.recv))
            got = {q: dict(zip(rt.recv[q], zip(*self._unpack(bufs[q], tensors, len(rt.recv[q])))))
                   for q in bufs}
        else:
            got = {}
        pos = {a: i for i, a in enumerate(rt.cols)}
        first = self.placement.first
        inputs = []
        for k, t in enumerate(tensors):
            stack = t.new_empty((len(rt.cols), *t.shape[1:]))
            for a in rt.cols:
                q = self.placement.owner(a)
                stack[pos[a]] = t[a - first] if q == self.placement.rank else got[q][a][k]
            inputs.append(stack)
        return Received(rt, inputs, sent)

    # ------------------------------------------------------------------------------------------------ server
    def gather_all(self, tensors: Sequence[Tensor], what: str = "all_gather", *, to_main: bool = False,
                   native: bool = False) -> tuple[Optional[List[Tensor]], int]:
        """Every agent's stacks ``(N, *shape)`` on every process (all_gather), or with ``to_main`` on rank 0 only
        (gather; None elsewhere), and the bytes this process sent. ``native``: in the tensors' own dtype whatever
        the wire dtype (for metrics, which must not see the wire's rounding)."""
        if not self.group.distributed:
            return [t for t in tensors], 0
        wire = self._wire_native(tensors) if native else self._wire(tensors)
        buf = self._pack(tensors, list(self.placement.local), wire)
        size = buf.numel() * buf.element_size()
        if to_main:
            rows = self.group.gather(buf, what)
            sent = size if self.group.rank != 0 else 0
        else:
            rows = self.group.all_gather(buf, what)  # (P, numel)
            sent = (self.group.world - 1) * size
        if rows is None:
            return None, sent
        return self._unpack(rows.reshape(-1), tensors, self.placement.n_agents), sent

    def mean_all(self, tensors: Sequence[Tensor]) -> tuple[List[Tensor], int]:
        """The mean over all N agents of each stack (shape ``(1, *shape)``), and the bytes this process sent."""
        if not self.group.distributed:
            return [t.mean(0, keepdim=True) for t in tensors], 0
        wire = self._wire(tensors)
        sums = torch.cat([t.sum(0).reshape(-1) for t in tensors]).to(self.group.device, wire)
        total = self.group.all_reduce_sum(sums, "the all_reduce of the server average")
        P = self.group.world
        mean = [m / self.placement.n_agents for m in self._unpack(total, [t[:1] for t in tensors], 1)]
        return mean, int(round(2 * (P - 1) / P * sums.numel() * sums.element_size()))
