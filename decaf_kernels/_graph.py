"""Graph planning on the host: what the kernels need to know about a mixing matrix W.

W is (n_out, N): row o holds the weights output o gives the N input agents (square for the usual gossip step).
Output o's consensus product only involves agents j with W[o, j] != 0, so the kernels work on padded neighbour
lists rather than on the dense matrix (:func:`neighbours`). Outputs whose rows of W are identical (every agent of a
complete graph, for instance) have the same consensus product, so it is computed once and shared. The Gram
pass needs every pair of agents that are neighbours of a common agent; :func:`assembly_index` says where each
stacked-Gram entry comes from, and :func:`pair_groups` groups the pairs by a shared factor for the GPU kernel.

Nothing here is cached: ``_plan.plan`` keeps one plan per (W, device, r, split) built from these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass(frozen=True, eq=False)
class Neighbours:
    n_out: int  # rows of W: outputs
    n_in: int  # columns of W: input agents
    unique_rows: torch.Tensor  # (Nu,) int64: one representative output per distinct row of W
    inverse: torch.Tensor  # (n_out,) int64: output -> index into unique_rows
    idx: torch.Tensor  # (Nu, D) int64 neighbour (input) agents in ascending order, -1 = empty slot
    weights: torch.Tensor  # (Nu, D) float64 W[i, j] for each slot, 0 for empty slots
    pairs: torch.Tensor  # (T, 2) int64 unordered pairs (j <= k) whose Gram blocks are needed
    pair_of_slots: torch.Tensor  # (Nu, D, D) int64 index into pairs for slots (s, t); 0 for empty slots
    transposed: torch.Tensor  # (Nu, D, D) bool: the pair is stored as (k, j), take the block's transpose

    @property
    def degree(self) -> int:
        return int(self.idx.shape[1])


def neighbours(W: torch.Tensor) -> Neighbours:
    """Neighbour lists of the distinct rows of W, (n_out, N) (host computation; W is small)."""
    Wc = W.detach().to("cpu", torch.float64).contiguous()
    n_out, n_in = Wc.shape
    uniq, inverse = torch.unique(Wc, dim=0, return_inverse=True)
    # one representative output per distinct row (the first that has it), in output order
    first = torch.full((uniq.shape[0],), n_out, dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(n_out), reduce="amin")
    order = torch.argsort(first)
    remap = torch.empty_like(order)
    remap[order] = torch.arange(order.numel())
    unique_rows, inverse = first[order], remap[inverse]
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
    return Neighbours(n_out, n_in, unique_rows, inverse, idx, weights, pairs, pair_of_slots, transposed)


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


class PairGroups(NamedTuple):
    """The pairs of a Gram pass grouped by a shared factor (see :func:`pair_groups`).

    Pair t = (a, b) is computed by the group whose row factor j is a (stored as is) or b (flipped: the kernel forms
    x[b]^T x[a] and stores its transpose). Tensors live on one device.
    """

    pairs: torch.Tensor  # (T, 2) int64: the pairs the plan was made for
    row: torch.Tensor  # (n_groups,) int64: the factor j whose tiles each group loads once
    partner: torch.Tensor  # (n_groups, G) int64: the partners k of j, -1 for an empty slot
    code: torch.Tensor  # (n_groups, G) int64: 2 * t + flipped for slot (j, partner), -1 for an empty slot

    @property
    def group_size(self) -> int:
        return int(self.partner.shape[1])


_MAX_GROUP = 8


def pair_groups(pairs: torch.Tensor, *, group_size: Optional[int] = None,
                device: Optional[torch.device] = None) -> PairGroups:
    """Group the pairs by a shared factor, for the grouped Gram kernel (each factor tile read once for all partners).

    Each pair is assigned to one of its two agents (greedily, to even out how many pairs each agent owns; a pair
    (a, b) owned by b is computed flipped), and each agent's pairs are cut into groups of ``group_size`` slots
    (default: the next power of two >= the largest number of pairs an agent owns, at most 8); unused slots stay
    empty. For a ring with pairs at distance 0, 1, 2 that is 3 pairs per agent in groups of 4, so a factor's tile is
    read once for 3 blocks instead of once per block it takes part in.

    Host work, done once per plan: ``pairs`` is read on the host. The result is put on ``device`` (default
    pairs.device).
    """
    op = "pair_groups"
    if not isinstance(pairs, torch.Tensor) or pairs.dtype != torch.int64 or pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{op}: pairs must be a (T, 2) int64 tensor, got "
                         f"{tuple(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs).__name__}")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1 or group_size & (group_size - 1)):
        raise ValueError(f"{op}: group_size={group_size!r}, expected a power of two >= 1")
    device = pairs.device if device is None else torch.device(device)
    host = pairs.detach().to("cpu").tolist()
    for t, (a, b) in enumerate(host):
        if a < 0 or b < 0:
            raise ValueError(f"{op}: pairs[{t}] = ({a}, {b}), expected agent indices >= 0")
    # Orientation: owner[t] = 0 keeps pair t = (a, b) with a, 1 gives it to b. Greedy, then single moves from a
    # most-loaded agent to a partner owning at least two pairs fewer, while any helps.
    owner = [0] * len(host)
    load: dict[int, int] = {}
    for t, (a, b) in enumerate(host):
        if a != b and load.get(b, 0) < load.get(a, 0):
            owner[t] = 1
        load[host[t][owner[t]]] = load.get(host[t][owner[t]], 0) + 1
    for _ in range(min(len(host), 1024)):  # bounded: plans are made once, off the hot path
        top = max(load.values(), default=0)
        move = next(
            (t for t, ab in enumerate(host) if load[ab[owner[t]]] == top and load.get(ab[1 - owner[t]], 0) <= top - 2),
            None,
        )
        if move is None:
            break
        load[host[move][owner[move]]] -= 1
        owner[move] = 1 - owner[move]
        load[host[move][owner[move]]] = load.get(host[move][owner[move]], 0) + 1
    owned: dict[int, list[tuple[int, int]]] = {}
    for t, (a, b) in enumerate(host):
        j, k = (b, a) if owner[t] else (a, b)
        owned.setdefault(j, []).append((k, 2 * t + owner[t]))
    most = max((len(v) for v in owned.values()), default=1)
    G = group_size if group_size is not None else min(_MAX_GROUP, 1 << (max(most, 1) - 1).bit_length())
    rows, partners, codes = [], [], []
    for j in sorted(owned):
        slots = owned[j]
        for s0 in range(0, len(slots), G):
            chunk = slots[s0 : s0 + G]
            rows.append(j)
            partners.append([k for k, _ in chunk] + [-1] * (G - len(chunk)))
            codes.append([c for _, c in chunk] + [-1] * (G - len(chunk)))
    as_index = lambda v, shape: torch.tensor(v, dtype=torch.int64).reshape(shape).to(device)  # noqa: E731
    return PairGroups(
        pairs=pairs.detach().to(device),
        row=as_index(rows, (len(rows),)),
        partner=as_index(partners, (len(rows), G)),
        code=as_index(codes, (len(rows), G)),
    )
