"""The communication step of each algorithm, over the stacked adapters of all agents.

Every algorithm has one interface: :meth:`Algorithm.mixing` says which matrix (if any) it uses at a round, and
:meth:`Algorithm.communicate` updates the stacks in place. The LoRA scale ``s`` (``alpha / r``, or
``alpha / sqrt(r)`` with rsLoRA) is a per-layer constant shared by all agents, so ``sum_j W_ij s B_j A_j =
s sum_j W_ij B_j A_j``: every rule below works on the unscaled factors and keeps the rank, hence ``s``, fixed.

===========  =====================================================================================================
local        no communication
dlora        gossip of the factors: ``B_i <- sum_j W_ij B_j``, ``A_i <- sum_j W_ij A_j`` (interference included)
dlora_fa     A frozen at the shared initialisation, only B gossiped: exact, half the traffic
decaf        gossip, then ``B_i, A_i <- TSVD_r(sum_j W_ij B_j A_j)`` (``decaf_kernels.consensus_tsvd``)
fedavg       a server averages the factors of all agents (FedAvg on LoRA: product of means)
exact_avg    a server averages the products and truncates: ``TSVD_r(mean_j B_j A_j)`` (DeCAF's centralised twin)
===========  =====================================================================================================

Dense trainable parameters (the classifier head) are averaged with the same matrix by every communicating
algorithm; averaging them is exact.

Re-factorisation (decaf, exact_avg) changes the basis of B and A every round, so an optimizer's moments
(Adam's m and v, per coordinate of the old basis) no longer refer to the same directions. :func:`align_factors`
rotates the new factors by the r x r orthogonal matrix that brings them closest to the old ones (orthogonal
Procrustes), which leaves every product B A unchanged; see :data:`MOMENT_POLICIES`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor

import decaf_kernels

from ._checks import check_choice
from .adapters import AgentStacks
from .exchange import Exchange
from .processes import Group, Placement
from .names import ALGORITHMS, MOMENT_POLICIES


def _mix(X: Tensor, W: Tensor) -> Tensor:
    return decaf_kernels.mix_factors(X, W.to(device=X.device), validate=False)


def revive_null_directions(B_new: Tensor, A_new: Tensor, A_old: Tensor) -> Tensor:
    """Give rank directions that came back empty a trainable A again (the products stay exactly the same).

    ``consensus_tsvd`` returns zero columns of B' and zero rows of A' for directions beyond the numerical rank of
    the mixed product (at the start, peft's B = 0 makes every product zero). A pair of zero B column and zero A
    row receives no gradient ever again; putting the agent's previous A row back while the B column is zero
    restores its gradient without changing ``B' A'``.

    Returns:
        A' with those rows replaced, shape (N, L, r, k).
    """
    dead = (B_new == 0).all(dim=-2) & (A_new == 0).all(dim=-1)  # (N, L, r)
    if not bool(dead.any()):
        return A_new
    return torch.where(dead.unsqueeze(-1), A_old, A_new)


def align_factors(B_new: Tensor, A_new: Tensor, B_old: Tensor, A_old: Tensor) -> tuple[Tensor, Tensor]:
    r"""Rotate new factors onto the old basis: ``B' R, R^T A'`` with ``R = argmin ||B' R - B||^2 + ||R^T A' - A||^2``.

    R is orthogonal (r x r), so ``(B' R)(R^T A') = B' A'``; it is the polar factor of
    ``C = B'^T B + A' A^T`` (``C = U S V^T``, ``R = U V^T``), computed in float64 per agent and layer.

    Args:
        B_new, A_new: (N, L, d, r), (N, L, r, k) factors after re-factorisation.
        B_old, A_old: the factors before it (same shapes).

    Returns:
        the rotated ``(B, A)`` in the input dtype.
    """
    C = (B_new.double().mT @ B_old.double()) + (A_new.double() @ A_old.double().mT)
    U, _, Vh = torch.linalg.svd(C)
    R = U @ Vh
    return (B_new.double() @ R).to(B_new.dtype), (R.mT @ A_new.double()).to(A_new.dtype)


@dataclass
class RoundTraffic:
    """What one communication step moved and cost on this process."""

    bytes_wire: int = 0  # bytes this process sent for the algorithm (measured; 0 with one process)
    bytes_diagnostic: int = 0  # bytes sent only to measure the interference (fedavg over several processes)
    t_comm: float = 0.0  # seconds in the exchange
    t_consensus: float = 0.0  # seconds in the mixing / consensus maths
    interference: Optional[Tensor] = None  # (n_local * L,) relative interference of this process's agents


class Algorithm:
    """One of :data:`ALGORITHMS`. Build with :func:`make_algorithm`."""

    name = "base"
    server = False  # a server sees every agent (W = 11^T / N)
    communicates = True
    refactorizes = False  # the factors' basis changes at communication
    trains_A = True
    description = ""

    def __init__(self, *, split: str = "balanced", consensus_method: str = "exact", moments: str = "procrustes"):
        if moments not in MOMENT_POLICIES:
            raise ValueError(f"moments must be one of {MOMENT_POLICIES}, got {moments!r}")
        self.split = split
        self.consensus_method = consensus_method
        self.moments = moments

    def mixing(self, topology, round_index: int) -> Optional[Tensor]:
        """The mixing matrix used at this round (float64 CPU), or None when the algorithm does not communicate."""
        if not self.communicates:
            return None
        if self.server:
            return torch.full((topology.n, topology.n), 1.0 / topology.n, dtype=torch.float64)
        return topology.matrix(round_index)

    def bytes_sent(self, stacks: AgentStacks, W: Optional[Tensor], n_agents: Optional[int] = None) -> int:
        """Modelled bytes on the wire in one communication of all ``n_agents`` agents: decentralised, one message
        per nonzero off-diagonal W_ij; with a server, every agent uploads and downloads one payload."""
        if W is None:
            return 0
        payload = stacks.payload_bytes(include_A=self.trains_A)
        if self.server:
            return 2 * (n_agents or stacks.n) * payload
        off = W.clone()
        off.fill_diagonal_(0)
        return int((off > 0).sum()) * payload

    def exchanged(self, stacks: AgentStacks) -> List[Tensor]:
        """The per-agent stacks a communication sends: every group's B (and A unless frozen), then the dense
        parameters."""
        out = []
        for g in stacks.groups:
            out.append(g.B)
            if self.trains_A:
                out.append(g.A)
        return out + list(stacks.dense.values())

    def communicate(self, stacks: AgentStacks, W: Tensor, exchange: Optional[Exchange] = None) -> RoundTraffic:
        """Update this process's agents in ``stacks`` in place under the round's full (N, N) matrix ``W``,
        fetching the neighbours' parameters through ``exchange`` (one process alone when None)."""
        exchange = exchange if exchange is not None else _alone(stacks)
        out = RoundTraffic()
        t0 = time.perf_counter()
        tensors = self.exchanged(stacks)
        if self.server:
            inputs, out.bytes_wire = exchange.gather_all(tensors, "the all_gather of the server average")
            rows = list(exchange.placement.local)
            W_rows = W[rows].contiguous()
        else:
            got = exchange.neighbours(tensors, W)
            inputs, W_rows, out.bytes_wire = got.inputs, got.routes.W_rows, got.bytes_sent
        t1 = time.perf_counter()
        with torch.no_grad():
            out.interference = self._interference(stacks, inputs, W_rows)
            self._update(stacks, inputs, W_rows)
        out.t_comm, out.t_consensus = t1 - t0, time.perf_counter() - t1
        return out

    def _split_inputs(self, stacks: AgentStacks, inputs: List[Tensor]):
        """(B_in, A_in) per group and the dense inputs, from the exchanged list (a frozen A is the same on
        every agent, so the local one stands for all)."""
        it = iter(inputs)
        factors = []
        for g in stacks.groups:
            B_in = next(it)
            A_in = next(it) if self.trains_A else g.A[:1].expand(B_in.shape[0], *g.A.shape[1:])
            factors.append((B_in, A_in))
        return factors, [next(it) for _ in stacks.dense]

    def _interference(self, stacks: AgentStacks, inputs: List[Tensor], W_rows: Tensor) -> Tensor:
        factors, _ = self._split_inputs(stacks, inputs)
        vals = []
        for g, (B_in, A_in) in zip(stacks.groups, factors):
            sB = B_in.double() * g.scaling.to(B_in.device).view(1, -1, 1, 1)
            vals.append(decaf_kernels.interference(sB, A_in.double(), W_rows.to(sB.device), relative=True)
                        .flatten())
        return torch.cat(vals).cpu()

    def _update(self, stacks: AgentStacks, inputs: List[Tensor], W_rows: Tensor) -> None:
        factors, dense = self._split_inputs(stacks, inputs)
        self._update_factors(stacks, factors, W_rows)
        for t, t_in in zip(stacks.dense.values(), dense):
            t.copy_(_mix(t_in, W_rows))

    def _update_factors(self, stacks: AgentStacks, factors, W_rows: Tensor) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, moments={self.moments!r})"


def _alone(stacks: AgentStacks) -> Exchange:
    return Exchange(Group(), Placement(stacks.n, 1, 0))


class Local(Algorithm):
    name = "local"
    communicates = False
    description = "no communication"

    def communicate(self, stacks, W, exchange=None):
        return RoundTraffic()


class DLoRA(Algorithm):
    name = "dlora"
    description = "gossip of B and A separately"

    def _update_factors(self, stacks, factors, W_rows):
        for g, (B_in, A_in) in zip(stacks.groups, factors):
            g.B.copy_(_mix(B_in, W_rows))
            if self.trains_A:  # a frozen, shared A is the same on every agent: nothing to mix
                g.A.copy_(_mix(A_in, W_rows))


class DLoRAFA(DLoRA):
    name = "dlora_fa"
    trains_A = False
    description = "A frozen at the shared init, B gossiped (exact)"


class DeCAF(Algorithm):
    name = "decaf"
    refactorizes = True
    description = "gossip of the products, rank-r truncated SVD"

    def _update_factors(self, stacks, factors, W_rows):
        for g, (B_in, A_in) in zip(stacks.groups, factors):
            B_new, A_new = decaf_kernels.consensus_tsvd(B_in, A_in, W_rows, method=self.consensus_method,
                                                        split=self.split)
            A_new = revive_null_directions(B_new, A_new, g.A)
            if self.moments == "procrustes":
                B_new, A_new = align_factors(B_new, A_new, g.B, g.A)
            g.B.copy_(B_new)
            g.A.copy_(A_new)


class FedAvg(DLoRA):
    name = "fedavg"
    server = True
    description = "server averages B and A (product of means)"

    def communicate(self, stacks, W, exchange=None):
        """The mean of every factor and dense parameter through one all_reduce (the product of means)."""
        exchange = exchange if exchange is not None else _alone(stacks)
        out = RoundTraffic()
        tensors = self.exchanged(stacks)
        with torch.no_grad():
            t0 = time.perf_counter()
            # the interference needs every agent's factors: one process has them, several gather them for it
            full, out.bytes_diagnostic = exchange.gather_all(tensors, "the all_gather of the interference",
                                                             native=True)
            out.interference = self._interference(stacks, full, W[list(exchange.placement.local)])
            t1 = time.perf_counter()
            means, out.bytes_wire = exchange.mean_all(tensors)
            t2 = time.perf_counter()
            for t, m in zip(tensors, means):
                t.copy_(m.expand_as(t))
        out.t_comm, out.t_consensus = t2 - t1, (t1 - t0) + (time.perf_counter() - t2)
        return out


class ExactAvg(DeCAF):
    name = "exact_avg"
    server = True
    description = "server averages the products, rank-r truncated SVD"


_CLASSES = {c.name: c for c in (Local, DLoRA, DLoRAFA, DeCAF, FedAvg, ExactAvg)}


def make_algorithm(name: str, **kwargs) -> Algorithm:
    """The algorithm called ``name`` (one of :data:`ALGORITHMS`); kwargs: ``split``, ``consensus_method``,
    ``moments`` (one of :data:`MOMENT_POLICIES`; it only matters for the re-factorising decaf and exact_avg)."""
    return _CLASSES[check_choice("algorithm", name, ALGORITHMS)](**kwargs)
