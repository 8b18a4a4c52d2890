"""Neighbour structure of a mixing matrix, computed once on the host for each call.

Agent i's consensus product only involves agents j with W[i, j] != 0, so the kernels work on padded
neighbour lists rather than on the dense N x N matrix. Agents whose rows of W are identical (every agent of a
complete graph, for instance) have the same consensus product, so it is computed once and shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True, eq=False)
class Neighbours:
    n_agents: int
    unique_rows: torch.Tensor  # (Nu,) int64: one representative agent per distinct row of W
    inverse: torch.Tensor  # (N,) int64: agent -> index into unique_rows
    idx: torch.Tensor  # (Nu, D) int64 neighbour agents, -1 = empty slot
    weights: torch.Tensor  # (Nu, D) float64 W[i, j] for each slot, 0 for empty slots
    pairs: torch.Tensor  # (T, 2) int64 unordered pairs (j <= k) whose Gram blocks are needed
    pair_of_slots: torch.Tensor  # (Nu, D, D) int64 index into pairs for slots (s, t); 0 for empty slots
    transposed: torch.Tensor  # (Nu, D, D) bool: the pair is stored as (k, j), take the block's transpose

    @property
    def degree(self) -> int:
        return int(self.idx.shape[1])


def neighbours(W: torch.Tensor, *, dedupe: bool = True) -> Neighbours:
    """Neighbour lists of the rows of W (host computation; W is small).

    Cached by W's contents: a training loop passes the same mixing matrix every round.
    """
    Wc = W.detach().to("cpu", torch.float64).contiguous()
    return _neighbours_cached(Wc.numpy().tobytes(), Wc.shape[0], dedupe)


@lru_cache(maxsize=32)
def _neighbours_cached(w_bytes: bytes, N: int, dedupe: bool) -> Neighbours:
    Wc = torch.frombuffer(bytearray(w_bytes), dtype=torch.float64).reshape(N, N)
    if dedupe:
        uniq, inverse = torch.unique(Wc, dim=0, return_inverse=True)
        # one representative agent per distinct row (the first that has it), in agent order
        first = torch.full((uniq.shape[0],), N, dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(N), reduce="amin")
        order = torch.argsort(first)
        remap = torch.empty_like(order)
        remap[order] = torch.arange(order.numel())
        unique_rows, inverse = first[order], remap[inverse]
    else:
        unique_rows, inverse = torch.arange(N), torch.arange(N)
    rows = Wc[unique_rows]
    nbr_lists = [torch.nonzero(row, as_tuple=False).flatten() for row in rows]
    D = max(1, max(len(n) for n in nbr_lists))
    Nu = len(nbr_lists)
    idx = torch.full((Nu, D), -1, dtype=torch.int64)
    weights = torch.zeros((Nu, D), dtype=torch.float64)
    for u, nb in enumerate(nbr_lists):
        idx[u, : len(nb)] = nb
        weights[u, : len(nb)] = rows[u, nb]
    # Gram blocks needed: every unordered pair of neighbours of some agent
    pair_id: dict[tuple[int, int], int] = {}
    pair_of_slots = torch.zeros((Nu, D, D), dtype=torch.int64)
    transposed = torch.zeros((Nu, D, D), dtype=torch.bool)
    for u, nb in enumerate(nbr_lists):
        nb_list = nb.tolist()
        for s, j in enumerate(nb_list):
            for t, k in enumerate(nb_list):
                key = (min(j, k), max(j, k))
                if key not in pair_id:
                    pair_id[key] = len(pair_id)
                pair_of_slots[u, s, t] = pair_id[key]
                transposed[u, s, t] = j > k
    if not pair_id:  # W with an all-zero row set: keep shapes valid
        pair_id[(0, 0)] = 0
    pairs = torch.tensor(sorted(pair_id, key=pair_id.get), dtype=torch.int64).reshape(-1, 2)
    return Neighbours(N, unique_rows, inverse, idx, weights, pairs, pair_of_slots, transposed)


@lru_cache(maxsize=32)
def assembly_index(nb: Neighbours, r: int) -> torch.Tensor:
    """Flat index that gathers the stacked-neighbour Grams (Nu, D r, D r) out of pair blocks (T, r, r).

    Entry (u, s r + a, t r + b) reads block pair_of_slots[u, s, t] at (a, b), or at (b, a) when that pair is
    stored the other way round.
    """
    Nu, D = nb.idx.shape
    a = torch.arange(r)
    within = a[:, None] * r + a[None, :]  # (r, r) offset of (a, b)
    within_t = a[None, :] * r + a[:, None]  # offset of (b, a)
    off = torch.where(nb.transposed[:, :, :, None, None], within_t, within)  # (Nu, D, D, r, r)
    flat = nb.pair_of_slots[:, :, :, None, None] * (r * r) + off
    return flat.permute(0, 1, 3, 2, 4).reshape(Nu, D * r, D * r).contiguous()
