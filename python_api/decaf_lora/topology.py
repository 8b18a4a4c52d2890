"""A run's communication topology: a graph, its mixing weights and an optional time-varying schedule.

The graph is a built-in one (:data:`~decaf_lora.names.GRAPHS`), a user-given 0/1 adjacency, or a networkx graph
(:meth:`Topology.from_networkx`); networkx itself is never imported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ._checks import check_choice, check_int
from ._rng import stream_generator
from .graph_structure import (adjacency, from_networkx, is_networkx_graph, load_adjacency, undirected_edges,
                              validate_adjacency)
from .mixing import check_mixing_matrix, mixing_matrix, spectral_gap
from .names import GRAPHS, TIME_VARYING, WEIGHTS

__all__ = ["Topology"]


@dataclass(eq=False)
class Topology:
    """A communication graph with its mixing weights and an optional time-varying schedule.

    Attributes:
        name: graph name from :data:`GRAPHS`, or ``"custom"`` for a user-given adjacency.
        adjacency: bool ``(n, n)`` symmetric adjacency of the base graph (normalised in ``__post_init__``).
        weights: weight rule of the base mixing matrix, one of :data:`WEIGHTS`.
        time_varying: ``None`` (always the base matrix), ``"matching"`` (a random maximal matching of the
            base graph per round) or ``"one_peer_exp"`` (directed one-peer exponential graph, which ignores
            the base graph).
        seed: seed of the per-round matching schedule.
        nodes: for a graph from networkx, its node labels in agent order (agent ``i`` is ``nodes[i]``); else None.
        W: base mixing matrix (float64 CPU, computed).
        n: number of agents (computed).
    """

    name: str
    adjacency: torch.Tensor
    weights: str = "metropolis"
    time_varying: Optional[str] = None
    seed: int = 0
    nodes: Optional[List[Any]] = field(default=None, repr=False)
    W: torch.Tensor = field(init=False, repr=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        check_choice("graph", self.name, GRAPHS + ("custom",))
        check_choice("weights", self.weights, WEIGHTS)
        check_choice("time_varying", self.time_varying, TIME_VARYING)
        self.seed = check_int("seed", self.seed)
        self.adjacency = validate_adjacency(self.adjacency)
        self.n = int(self.adjacency.shape[0])
        if self.nodes is not None and len(self.nodes) != self.n:
            raise ValueError(f"nodes has {len(self.nodes)} label(s) but the adjacency has {self.n} agents")
        self.W = mixing_matrix(self.adjacency, self.weights)
        check_mixing_matrix(self.W)

    @classmethod
    def from_networkx(cls, graph: Any, *, weights: str = "metropolis", time_varying: Optional[str] = None,
                      seed: int = 0) -> "Topology":
        """A topology on an undirected networkx graph, named ``"custom"``.

        Agent ``i`` is the ``i``-th node in sorted order (:attr:`nodes` lists them), so nodes labelled
        ``0 .. n-1`` keep their labels. The mixing matrix comes from ``weights`` exactly as for a built-in graph:
        edge attributes (``weight`` included) and self-loops are ignored (see
        :func:`~decaf_lora.graph_structure.from_networkx`).

        Raises:
            TypeError: ``graph`` is not a networkx graph.
            ValueError: unknown ``weights`` / ``time_varying``; a directed, too small or disconnected graph, or
                node labels that cannot be sorted.
        """
        check_choice("weights", weights, WEIGHTS)
        check_choice("time_varying", time_varying, TIME_VARYING)
        adj, nodes = from_networkx(graph)
        return cls(name="custom", adjacency=adj, weights=weights, time_varying=time_varying, seed=seed, nodes=nodes)

    @classmethod
    def build(
        cls,
        graph: Any,
        n: Optional[int],
        *,
        weights: str = "metropolis",
        time_varying: Optional[str] = None,
        p: float = 0.3,
        seed: int = 0,
        adjacency_source: Any = None,
    ) -> "Topology":
        """Builds a topology from a graph name (or a user-given adjacency).

        Args:
            graph: a name from :data:`GRAPHS`, ``"custom"`` to read ``adjacency_source``, or a networkx graph
                (as :meth:`from_networkx`).
            n: number of agents; for ``"custom"`` or a networkx graph it must match the graph, or be None to take
                its size.
            weights: weight rule, one of :data:`WEIGHTS`.
            time_varying: schedule, one of :data:`TIME_VARYING`.
            p: edge probability of ``"erdos_renyi"``.
            seed: seed of ``"erdos_renyi"`` and of the ``"matching"`` schedule.
            adjacency_source: for ``"custom"``: anything :func:`load_adjacency` accepts (a networkx graph too).

        Returns:
            The :class:`Topology`.

        Raises:
            ValueError: unknown graph / weights / time_varying, a size mismatch for ``"custom"``, a
                disconnected graph, or any error of :func:`adjacency` / :func:`load_adjacency`.
        """
        check_choice("weights", weights, WEIGHTS)
        check_choice("time_varying", time_varying, TIME_VARYING)
        if is_networkx_graph(graph):
            topo = cls.from_networkx(graph, weights=weights, time_varying=time_varying, seed=seed)
            if n is not None and check_int("n", n) != topo.n:
                raise ValueError(f"n={n} does not match the networkx graph, which has {topo.n} nodes")
            return topo
        check_choice("graph", graph, GRAPHS + ("custom",))
        if graph == "custom":
            if adjacency_source is None:
                raise ValueError("graph='custom' needs adjacency_source (a path, list, array or tensor), got None")
            adj = load_adjacency(adjacency_source)
            if n is not None and check_int("n", n) != adj.shape[0]:
                raise ValueError(
                    f"n={n} does not match the custom adjacency, which has {adj.shape[0]} agents"
                )
        else:
            if n is None:
                raise ValueError(f"n must be given for graph {graph!r}, got None")
            adj = adjacency(graph, n, p=p, seed=seed)
        return cls(name=graph, adjacency=adj, weights=weights, time_varying=time_varying, seed=seed)

    def matrix(self, round_index: int) -> torch.Tensor:
        """The mixing matrix used at communication round ``round_index``.

        The schedule is a pure function of ``(seed, round_index)``: no random state is carried between
        rounds, so a resumed run sees the same matrices.

        * ``time_varying=None``: the base matrix :attr:`W` (a copy).
        * ``"matching"``: a random maximal matching of the base graph: the edge list is shuffled by a
          ``torch.Generator`` seeded with ``seed * 1_000_003 + round_index`` and edges whose two endpoints are
          still free are taken greedily; matched pairs average with weight 1/2, unmatched agents keep their
          own value (``W_t = I - 1/2 sum (e_i - e_j)(e_i - e_j)^T``). Symmetric, doubly stochastic.
        * ``"one_peer_exp"``: with ``tau = ceil(log2 n)`` and ``hop = 2 ** (round_index % tau)``,
          ``W_t[i, i] = W_t[i, (i + hop) % n] = 1/2``. Directed, doubly stochastic, not symmetric; it
          **ignores the base graph** (every agent needs a link to agents at all power-of-two offsets). For
          ``n`` a power of two the product of ``tau`` consecutive matrices is exactly ``11^T / n``.

        Args:
            round_index: 0-based communication round.

        Returns:
            A float64 ``(n, n)`` CPU tensor satisfying :func:`check_mixing_matrix`.

        Raises:
            ValueError: ``round_index < 0``.
            TypeError: ``round_index`` is not an int.
        """
        t = check_int("round_index", round_index, 0)
        n = self.n
        if self.time_varying is None:
            return self.W.clone()
        if self.time_varying == "matching":
            edges = undirected_edges(self.adjacency)
            gen = stream_generator(self.seed, t)
            order = torch.randperm(len(edges), generator=gen).tolist()
            free = [True] * n
            W = torch.eye(n, dtype=torch.float64)
            for k in order:
                i, j = edges[k]
                if free[i] and free[j]:
                    free[i] = free[j] = False
                    W[i, i] = W[j, j] = 0.5
                    W[i, j] = W[j, i] = 0.5
            return W
        # one_peer_exp
        tau = max(1, math.ceil(math.log2(n)))
        hop = 2 ** (t % tau)
        W = torch.zeros(n, n, dtype=torch.float64)
        idx = torch.arange(n)
        W[idx, idx] = 0.5
        W[idx, (idx + hop) % n] = 0.5
        return W

    def neighbours(self, round_index: int) -> List[List[int]]:
        """Per agent, the agents ``j != i`` it takes a positive weight from at round ``round_index``.

        Args:
            round_index: 0-based communication round.

        Returns:
            ``n`` sorted lists of agent indices.
        """
        W = self.matrix(round_index)
        off = W > 0
        off.fill_diagonal_(False)
        return [off[i].nonzero().flatten().tolist() for i in range(self.n)]

    def describe(self) -> Dict[str, Any]:
        """A JSON-serialisable summary of the topology.

        Returns:
            A dict with ``name``, ``n``, ``weights``, ``time_varying``, ``edges`` (undirected edges of the base
            graph), ``degree_min``, ``degree_max`` and ``spectral_gap`` (of the base matrix :attr:`W`).
        """
        deg = self.adjacency.sum(dim=1)
        return {
            "name": self.name,
            "n": self.n,
            "weights": self.weights,
            "time_varying": self.time_varying,
            "edges": int(self.adjacency.sum().item()) // 2,
            "degree_min": int(deg.min().item()),
            "degree_max": int(deg.max().item()),
            "spectral_gap": float(spectral_gap(self.W)),
        }
