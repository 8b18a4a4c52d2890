"""Communication graphs and gossip mixing matrices for simulated decentralized training.

``N`` agents sit on the nodes of an undirected graph and average their parameters with their neighbours
through a mixing matrix ``W`` (``N x N``, float64), where ``W[i, j]`` is the weight agent ``i`` gives to
agent ``j``: one gossip round maps the stacked parameters ``X`` to ``W @ X``.

The module offers

* :func:`adjacency` -- the built-in graphs listed in :data:`GRAPHS`;
* :func:`load_adjacency` -- a user-given adjacency (``.npy``, text/CSV file, list, array or tensor);
* :func:`mixing_matrix` -- Metropolis-Hastings or uniform weights on a connected graph;
* :func:`check_mixing_matrix` and :func:`spectral_gap` -- validation and the mixing-speed diagnostic;
* :class:`Topology` -- a graph, its weights and an optional time-varying schedule, with a
  :meth:`Topology.matrix` that is a pure function of the communication round (resuming a run needs no
  random-number-generator state).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

__all__ = [
    "GRAPHS",
    "WEIGHTS",
    "TIME_VARYING",
    "adjacency",
    "load_adjacency",
    "is_connected",
    "mixing_matrix",
    "check_mixing_matrix",
    "spectral_gap",
    "Topology",
]

GRAPHS = ("ring", "complete", "bipartite", "torus", "star", "exponential", "erdos_renyi")
WEIGHTS = ("metropolis", "uniform")
TIME_VARYING = (None, "matching", "one_peer_exp")

_ER_MAX_TRIES = 1000
_SEED_MODULUS = 2**63


# --------------------------------------------------------------------------------------------------------
# small validation helpers
# --------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def _check_n(n: Any) -> int:
    n = _check_int("n", n)
    if n < 2:
        raise ValueError(f"n (the number of agents) must be >= 2, got n={n}")
    return n


def _choice_error(arg: str, value: Any, allowed: tuple) -> ValueError:
    return ValueError(f"unknown {arg} {value!r}; expected one of {allowed}")


def _undirected_edges(adj: torch.Tensor) -> List[tuple]:
    """The undirected edges ``(i, j)`` with ``i < j`` of a bool adjacency, in row-major order."""
    upper = torch.triu(adj, diagonal=1)
    return [(int(i), int(j)) for i, j in upper.nonzero().tolist()]


def _unreachable_from_zero(adj: torch.Tensor) -> List[int]:
    """Agents that a breadth-first search from agent 0 does not reach (sorted)."""
    n = adj.shape[0]
    neigh = [adj[i].nonzero().flatten().tolist() for i in range(n)]
    seen = [False] * n
    seen[0] = True
    frontier = [0]
    while frontier:
        nxt = []
        for i in frontier:
            for j in neigh[i]:
                if not seen[j]:
                    seen[j] = True
                    nxt.append(j)
        frontier = nxt
    return [i for i in range(n) if not seen[i]]


def _validate_adjacency(mat: Any, what: str = "adjacency") -> torch.Tensor:
    """Checks a square 0/1 symmetric matrix and returns it as a bool CPU tensor with a False diagonal."""
    if isinstance(mat, torch.Tensor):
        arr = mat.detach().cpu()
        if arr.dtype == torch.bool:
            arr = arr.numpy()
        else:
            arr = arr.to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(mat)
        except Exception as exc:  # ragged nested lists and the like
            raise ValueError(f"{what} could not be read as a matrix: {exc}") from exc
        if arr.dtype == object:
            raise ValueError(f"{what} must be a rectangular numeric matrix, got a ragged or non-numeric value")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{what} must be a square 2-D matrix, got shape {tuple(arr.shape)}")
    n = arr.shape[0]
    if n < 2:
        raise ValueError(f"{what} must be at least 2x2 (two agents), got shape {tuple(arr.shape)}")
    if arr.dtype == bool:
        b = arr.copy()
    else:
        if not (np.issubdtype(arr.dtype, np.number)):
            raise ValueError(f"{what} entries must be 0/1 numbers or bools, got dtype {arr.dtype}")
        num = arr.astype(np.float64)
        bad = ~((num == 0.0) | (num == 1.0))
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(f"{what} entries must be 0 or 1, got {arr[i, j]!r} at ({i}, {j})")
        b = num == 1.0
    np.fill_diagonal(b, False)
    asym = b != b.T
    if asym.any():
        i, j = (int(x) for x in np.argwhere(asym)[0])
        raise ValueError(
            f"{what} must be symmetric (undirected graph): entry ({i}, {j}) is {int(b[i, j])} "
            f"but ({j}, {i}) is {int(b[j, i])}"
        )
    return torch.from_numpy(np.ascontiguousarray(b))


# --------------------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------------------


def _torus_sides(n: int) -> tuple:
    a = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            a = d
    if a < 2:
        raise ValueError(
            f"torus needs n = a*b with a, b >= 2 (a composite n >= 4), got n={n}"
        )
    return a, n // a


def adjacency(name: str, n: int, *, p: float = 0.3, seed: int = 0) -> torch.Tensor:
    """Builds the adjacency matrix of a built-in communication graph.

    Args:
        name: one of :data:`GRAPHS`:

            * ``"ring"``: agent ``i`` talks to ``i - 1`` and ``i + 1`` (mod ``n``); a single edge for ``n = 2``.
            * ``"complete"``: every pair of agents.
            * ``"bipartite"``: complete bipartite graph between agents ``[0, ceil(n/2))`` and ``[ceil(n/2), n)``.
            * ``"torus"``: 2-D torus ``a x b`` with ``a * b = n`` and ``a`` the largest divisor of ``n`` not
              above ``sqrt(n)``; node ``(u, v)`` is agent ``u * b + v``, its neighbours are ``(u +- 1 mod a, v)``
              and ``(u, v +- 1 mod b)`` (a side of 2 gives one neighbour along it: the graph is simple).
            * ``"star"``: agent 0 is the hub, every other agent a leaf.
            * ``"exponential"``: ``i ~ (i +- 2**k) mod n`` for every ``k`` with ``2**k < n``.
            * ``"erdos_renyi"``: every pair independently with probability ``p``, redrawn (same generator)
              until connected, at most 1000 draws.
        n: number of agents, ``>= 2``.
        p: edge probability of ``"erdos_renyi"``, ``0 < p <= 1`` (ignored by the other graphs).
        seed: seed of the ``torch.Generator`` used by ``"erdos_renyi"`` (ignored by the other graphs); the
            graph is a deterministic function of ``(n, p, seed)``.

    Returns:
        A bool ``(n, n)`` CPU tensor, symmetric, with a False diagonal.

    Raises:
        ValueError: unknown ``name``, ``n < 2``, a prime ``n`` (or ``n < 4``) for the torus, ``p`` outside
            ``(0, 1]``, or no connected Erdos-Renyi draw in 1000 tries.
        TypeError: ``n`` or ``seed`` is not an int.
    """
    if name not in GRAPHS:
        raise _choice_error("graph name", name, GRAPHS)
    n = _check_n(n)
    adj = torch.zeros(n, n, dtype=torch.bool)

    def link(i: int, j: int) -> None:
        if i != j:
            adj[i, j] = True
            adj[j, i] = True

    if name == "ring":
        for i in range(n):
            link(i, (i + 1) % n)
    elif name == "complete":
        adj.fill_(True)
    elif name == "bipartite":
        half = (n + 1) // 2
        adj[:half, half:] = True
        adj[half:, :half] = True
    elif name == "torus":
        a, b = _torus_sides(n)
        for u in range(a):
            for v in range(b):
                i = u * b + v
                link(i, ((u + 1) % a) * b + v)
                link(i, u * b + (v + 1) % b)
    elif name == "star":
        adj[0, 1:] = True
        adj[1:, 0] = True
    elif name == "exponential":
        hop = 1
        while hop < n:
            for i in range(n):
                link(i, (i + hop) % n)
            hop *= 2
    else:  # erdos_renyi
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise TypeError(f"p must be a float, got {p!r} ({type(p).__name__})")
        p = float(p)
        if not (0.0 < p <= 1.0):
            raise ValueError(f"p (Erdos-Renyi edge probability) must be in (0, 1], got p={p}")
        seed = _check_int("seed", seed)
        gen = torch.Generator().manual_seed(seed % _SEED_MODULUS)
        for _ in range(_ER_MAX_TRIES):
            draw = torch.rand(n, n, generator=gen, dtype=torch.float64) < p
            upper = torch.triu(draw, diagonal=1)
            cand = upper | upper.T
            if not _unreachable_from_zero(cand):
                return cand
        raise ValueError(
            f"erdos_renyi with n={n}, p={p}, seed={seed} gave no connected graph in {_ER_MAX_TRIES} draws; "
            f"use a larger p (about 2*ln(n)/n = {min(1.0, 2 * math.log(n) / n):.3g} or more)"
        )
    adj.fill_diagonal_(False)
    return adj


def load_adjacency(source: Union[str, Path, Any]) -> torch.Tensor:
    """Reads and validates a user-given adjacency matrix.

    Args:
        source: a path (``str`` or :class:`pathlib.Path`) to a ``.npy`` file or to a text file (any other
            suffix: rows of 0/1 separated by whitespace and/or commas, blank lines and ``#`` comments
            allowed), or a nested list, numpy array or tensor.

    Returns:
        A bool ``(n, n)`` CPU tensor, symmetric, with a False diagonal (the given diagonal is ignored).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the matrix is not square, smaller than 2x2, has entries other than 0/1, or is not
            symmetric (the message names the first asymmetric pair ``(i, j)``); a text row is ragged or has
            a non-numeric token.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"adjacency file not found: {str(path)!r}")
        what = f"adjacency in {str(path)!r}"
        if path.suffix.lower() == ".npy":
            mat = np.load(path, allow_pickle=False)
        else:
            mat = _read_text_matrix(path, what)
        return _validate_adjacency(mat, what)
    return _validate_adjacency(source)


def _read_text_matrix(path: Path, what: str) -> np.ndarray:
    rows: List[List[float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = [t for t in re.split(r"[,\s]+", line) if t]
        try:
            row = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise ValueError(f"{what}: line {lineno} has a non-numeric entry {bad!r}") from None
        if rows and len(row) != len(rows[0]):
            raise ValueError(
                f"{what}: line {lineno} has {len(row)} entries, the first row has {len(rows[0])}"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{what} is empty (no matrix rows found)")
    return np.asarray(rows, dtype=np.float64)


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_connected(adj: torch.Tensor) -> bool:
    """Whether an undirected graph is connected (breadth-first search from agent 0).

    Args:
        adj: ``(n, n)`` adjacency (bool or 0/1), assumed symmetric.

    Returns:
        True when every agent is reachable from agent 0.
    """
    adj = _as_bool_square(adj)
    if adj.shape[0] == 0:
        return True
    return not _unreachable_from_zero(adj)


def _as_bool_square(adj: Any) -> torch.Tensor:
    if not isinstance(adj, torch.Tensor):
        raise TypeError(f"adj must be a torch.Tensor, got {type(adj).__name__}")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square 2-D matrix, got shape {tuple(adj.shape)}")
    out = adj.detach().cpu() != 0
    out.fill_diagonal_(False)
    return out


# --------------------------------------------------------------------------------------------------------
# mixing matrices
# --------------------------------------------------------------------------------------------------------


def mixing_matrix(adj: torch.Tensor, weights: str = "metropolis") -> torch.Tensor:
    """Symmetric doubly stochastic gossip matrix of a connected undirected graph.

    Args:
        adj: ``(n, n)`` adjacency (bool or 0/1); the diagonal is ignored.
        weights: ``"metropolis"`` (Metropolis-Hastings: ``W_ij = 1 / (1 + max(deg_i, deg_j))`` on each edge)
            or ``"uniform"`` (``W_ij = 1 / (1 + max_degree)`` on each edge, i.e. ``1 / (d + 1)`` everywhere on a
            ``d``-regular graph); in both cases ``W_ii = 1 - sum_{j != i} W_ij``.

    Returns:
        A float64 ``(n, n)`` CPU tensor, symmetric, nonnegative, rows and columns summing to 1.

    Raises:
        ValueError: unknown ``weights``, or a disconnected graph (the message lists agents unreachable from
            agent 0): gossip on a disconnected graph never reaches consensus.
    """
    if weights not in WEIGHTS:
        raise _choice_error("weights", weights, WEIGHTS)
    a = _as_bool_square(adj)
    n = a.shape[0]
    if n == 0:
        raise ValueError("adj must have at least one agent, got shape (0, 0)")
    missing = _unreachable_from_zero(a)
    if missing:
        shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise ValueError(
            f"the graph is not connected: {len(missing)} agent(s) unreachable from agent 0 "
            f"(agents {shown}); a disconnected graph can never reach consensus"
        )
    af = a.to(torch.float64)
    deg = af.sum(dim=1)
    if weights == "metropolis":
        W = af / (1.0 + torch.maximum(deg[:, None], deg[None, :]))
    else:
        W = af / (1.0 + deg.max())
    W.fill_diagonal_(0.0)
    W += torch.diag(1.0 - W.sum(dim=1))
    return W


def check_mixing_matrix(W: torch.Tensor, *, atol: float = 1e-10) -> None:
    """Validates a gossip matrix: square, float, finite, nonnegative and doubly stochastic.

    Args:
        W: the ``(n, n)`` mixing matrix.
        atol: absolute tolerance on every row sum and column sum.

    Returns:
        None.

    Raises:
        TypeError: ``W`` is not a floating-point torch tensor.
        ValueError: ``W`` is not square 2-D, has a non-finite or negative entry, or a row or column does not
            sum to 1 within ``atol`` (the message names the worst one and its sum).
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if not W.is_floating_point():
        raise TypeError(f"W must be a floating-point matrix, got dtype {W.dtype}")
    if W.dim() != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W must be a non-empty square 2-D matrix, got shape {tuple(W.shape)}")
    Wd = W.detach().cpu().to(torch.float64)
    finite = torch.isfinite(Wd)
    if not bool(finite.all()):
        i, j = (int(x) for x in (~finite).nonzero()[0])
        raise ValueError(f"W must be finite, got W[{i}, {j}] = {Wd[i, j].item()}")
    if bool((Wd < 0).any()):
        i, j = (int(x) for x in (Wd < 0).nonzero()[0])
        raise ValueError(f"W must be nonnegative, got W[{i}, {j}] = {Wd[i, j].item()!r}")
    rows = Wd.sum(dim=1)
    cols = Wd.sum(dim=0)
    rerr = (rows - 1.0).abs()
    cerr = (cols - 1.0).abs()
    ri = int(rerr.argmax())
    ci = int(cerr.argmax())
    if rerr[ri] > atol or cerr[ci] > atol:
        if rerr[ri] >= cerr[ci]:
            raise ValueError(
                f"W must be doubly stochastic: row {ri} sums to {rows[ri].item()!r} (atol={atol})"
            )
        raise ValueError(
            f"W must be doubly stochastic: column {ci} sums to {cols[ci].item()!r} (atol={atol})"
        )


def spectral_gap(W: torch.Tensor) -> float:
    """Spectral gap ``1 - ||W - 11^T/n||_2`` of a mixing matrix (largest singular value, in float64).

    For a symmetric ``W`` this is ``1 - max(|lambda_2|, |lambda_n|)``; it also applies to non-symmetric
    doubly stochastic matrices. A larger gap means faster consensus; 1 for ``W = 11^T/n``.

    Args:
        W: the ``(n, n)`` mixing matrix.

    Returns:
        The gap as a Python float.

    Raises:
        TypeError: ``W`` is not a torch tensor.
        ValueError: ``W`` is not a non-empty square 2-D matrix.
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W must be a non-empty square 2-D matrix, got shape {tuple(W.shape)}")
    Wd = W.detach().cpu().to(torch.float64)
    n = Wd.shape[0]
    dev = Wd - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    return float(1.0 - torch.linalg.matrix_norm(dev, ord=2))


# --------------------------------------------------------------------------------------------------------
# topology
# --------------------------------------------------------------------------------------------------------


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
        W: base mixing matrix (float64 CPU, computed).
        n: number of agents (computed).
    """

    name: str
    adjacency: torch.Tensor
    weights: str = "metropolis"
    time_varying: Optional[str] = None
    seed: int = 0
    W: torch.Tensor = field(init=False, repr=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        if self.name not in GRAPHS + ("custom",):
            raise _choice_error("graph", self.name, GRAPHS + ("custom",))
        if self.weights not in WEIGHTS:
            raise _choice_error("weights", self.weights, WEIGHTS)
        if self.time_varying not in TIME_VARYING:
            raise _choice_error("time_varying", self.time_varying, TIME_VARYING)
        self.seed = _check_int("seed", self.seed)
        self.adjacency = _validate_adjacency(self.adjacency)
        self.n = int(self.adjacency.shape[0])
        self.W = mixing_matrix(self.adjacency, self.weights)
        check_mixing_matrix(self.W)

    @classmethod
    def build(
        cls,
        graph: str,
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
            graph: a name from :data:`GRAPHS`, or ``"custom"`` to read ``adjacency_source``.
            n: number of agents; for ``"custom"`` it must match the given matrix, or be None to take its size.
            weights: weight rule, one of :data:`WEIGHTS`.
            time_varying: schedule, one of :data:`TIME_VARYING`.
            p: edge probability of ``"erdos_renyi"``.
            seed: seed of ``"erdos_renyi"`` and of the ``"matching"`` schedule.
            adjacency_source: for ``"custom"``: anything :func:`load_adjacency` accepts.

        Returns:
            The :class:`Topology`.

        Raises:
            ValueError: unknown graph / weights / time_varying, a size mismatch for ``"custom"``, a
                disconnected graph, or any error of :func:`adjacency` / :func:`load_adjacency`.
        """
        if weights not in WEIGHTS:
            raise _choice_error("weights", weights, WEIGHTS)
        if time_varying not in TIME_VARYING:
            raise _choice_error("time_varying", time_varying, TIME_VARYING)
        if graph == "custom":
            if adjacency_source is None:
                raise ValueError("graph='custom' needs adjacency_source (a path, list, array or tensor), got None")
            adj = load_adjacency(adjacency_source)
            if n is not None and _check_int("n", n) != adj.shape[0]:
                raise ValueError(
                    f"n={n} does not match the custom adjacency, which has {adj.shape[0]} agents"
                )
        elif graph in GRAPHS:
            if n is None:
                raise ValueError(f"n must be given for graph {graph!r}, got None")
            adj = adjacency(graph, n, p=p, seed=seed)
        else:
            raise _choice_error("graph", graph, GRAPHS + ("custom",))
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
        t = _check_int("round_index", round_index)
        if t < 0:
            raise ValueError(f"round_index must be >= 0, got round_index={t}")
        n = self.n
        if self.time_varying is None:
            return self.W.clone()
        if self.time_varying == "matching":
            edges = _undirected_edges(self.adjacency)
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + t) % _SEED_MODULUS)
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
