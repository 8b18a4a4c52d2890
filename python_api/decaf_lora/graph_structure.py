"""Communication graphs as adjacency matrices: the built-in graphs, user-given ones (files, matrices, networkx
graphs), and connectivity.

An adjacency is a bool ``(n, n)`` CPU tensor, symmetric, with a False diagonal: ``adj[i, j]`` says that agents
``i`` and ``j`` exchange parameters.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, List, Tuple, Union

import numpy as np
import torch

from ._checks import check_choice, check_float, check_int
from ._rng import generator
from .names import GRAPHS

__all__ = ["GRAPHS", "adjacency", "load_adjacency", "from_networkx", "is_networkx_graph", "is_connected"]

_ER_MAX_TRIES = 1000


def undirected_edges(adj: torch.Tensor) -> List[tuple]:
    """The undirected edges ``(i, j)`` with ``i < j`` of a bool adjacency, in row-major order."""
    upper = torch.triu(adj, diagonal=1)
    return [(int(i), int(j)) for i, j in upper.nonzero().tolist()]


def unreachable_from_zero(adj: torch.Tensor) -> List[int]:
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


def validate_adjacency(mat: Any, what: str = "adjacency") -> torch.Tensor:
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
    check_choice("graph name", name, GRAPHS)
    n = check_int("n", n, 2, what=" (the number of agents)")
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
        p = check_float("p", p)
        if not (0.0 < p <= 1.0):
            raise ValueError(f"p (Erdos-Renyi edge probability) must be in (0, 1], got p={p}")
        seed = check_int("seed", seed)
        gen = generator(seed)
        for _ in range(_ER_MAX_TRIES):
            draw = torch.rand(n, n, generator=gen, dtype=torch.float64) < p
            upper = torch.triu(draw, diagonal=1)
            cand = upper | upper.T
            if not unreachable_from_zero(cand):
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
            allowed), a nested list, numpy array or tensor, or an undirected networkx graph (see
            :func:`from_networkx`: agent i is the i-th node in sorted order).

    Returns:
        A bool ``(n, n)`` CPU tensor, symmetric, with a False diagonal (the given diagonal is ignored).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the matrix is not square, smaller than 2x2, has entries other than 0/1, or is not
            symmetric (the message names the first asymmetric pair ``(i, j)``); a text row is ragged or has
            a non-numeric token; a networkx graph that :func:`from_networkx` refuses.
    """
    if is_networkx_graph(source):
        return from_networkx(source)[0]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"adjacency file not found: {str(path)!r}")
        what = f"adjacency in {str(path)!r}"
        if path.suffix.lower() == ".npy":
            mat = np.load(path, allow_pickle=False)
        else:
            mat = _read_text_matrix(path, what)
        return validate_adjacency(mat, what)
    return validate_adjacency(source)


def is_networkx_graph(obj: Any) -> bool:
    """Whether ``obj`` is a networkx graph (``Graph``, ``DiGraph``, ``MultiGraph``, ...).

    networkx is never imported here: whoever holds a graph has imported it already, so ``sys.modules`` has it.
    """
    nx = sys.modules.get("networkx")
    return nx is not None and isinstance(obj, nx.Graph)


def from_networkx(graph: Any) -> Tuple[torch.Tensor, list]:
    """The adjacency of an undirected networkx graph, and which node each agent is.

    Agent ``i`` is the ``i``-th node in sorted order, so a graph labelled ``0 .. n-1`` keeps its labels whatever
    order its nodes were added in, and every process that builds the same graph numbers it the same way. Only the
    structure is read: self-loops are ignored (every agent keeps a weight of its own anyway), parallel edges of a
    multigraph count once, and edge attributes, ``weight`` included, are ignored: the weight rule of the
    topology (Metropolis-Hastings or uniform) makes the mixing matrix, so it stays symmetric and doubly
    stochastic. To mix with weights of your own, pass a mixing matrix instead.

    Args:
        graph: an undirected networkx graph with at least two nodes whose labels can be sorted.

    Returns:
        ``(adjacency, nodes)``: a bool ``(n, n)`` CPU tensor (symmetric, False diagonal) and the ``n`` node labels
        in agent order.

    Raises:
        TypeError: ``graph`` is not a networkx graph.
        ValueError: a directed graph, fewer than two nodes, labels that cannot be sorted, or a graph that is not
            connected (the message names the nodes unreachable from the first one).
    """
    if not is_networkx_graph(graph):
        raise TypeError(f"expected a networkx graph, got {type(graph).__name__}")
    kind = type(graph).__name__
    if graph.is_directed():
        raise ValueError(f"the networkx graph is directed ({kind}); gossip here needs an undirected graph (the "
                         "mixing matrix is symmetric): pass graph.to_undirected()")
    try:
        nodes = sorted(graph.nodes)
    except TypeError as exc:
        raise ValueError(f"the networkx graph's node labels cannot be sorted ({exc}); agent i is the i-th node in "
                         "sorted order: relabel them, e.g. networkx.convert_node_labels_to_integers(graph)") from None
    n = len(nodes)
    if n < 2:
        raise ValueError(f"the networkx graph must have at least two nodes (two agents), got {n}")
    index = {v: i for i, v in enumerate(nodes)}
    adj = torch.zeros(n, n, dtype=torch.bool)
    for u, v in graph.edges():
        if u != v:
            adj[index[u], index[v]] = adj[index[v], index[u]] = True
    missing = unreachable_from_zero(adj)
    if missing:
        shown = ", ".join(repr(nodes[i]) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise ValueError(f"the networkx graph is not connected: {len(missing)} node(s) unreachable from node "
                         f"{nodes[0]!r} ({shown}); a disconnected graph can never reach consensus")
    return adj, nodes


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
    adj = as_bool_square(adj)
    if adj.shape[0] == 0:
        return True
    return not unreachable_from_zero(adj)


def as_bool_square(adj: Any) -> torch.Tensor:
    if not isinstance(adj, torch.Tensor):
        raise TypeError(f"adj must be a torch.Tensor, got {type(adj).__name__}")
    if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square 2-D matrix, got shape {tuple(adj.shape)}")
    out = adj.detach().cpu() != 0
    out.fill_diagonal_(False)
    return out
