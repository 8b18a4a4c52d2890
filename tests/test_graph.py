"""Graph planning on the host (decaf_kernels._graph, decaf_kernels._plan): neighbour lists, pair groups, the plan cache."""

import pytest
import torch

from decaf_kernels import _plan
from decaf_kernels._graph import pair_groups


def ring_pairs(n):
    """The Gram pairs of a ring with self-loops: (i, i), (i, i+1), (i, i+2) mod n, as (min, max)."""
    return sorted({tuple(sorted((i, (i + s) % n))) for i in range(n) for s in (0, 1, 2)})


def test_pair_groups_plan():
    pairs = torch.tensor(ring_pairs(16))
    g = pair_groups(pairs)
    # balanced: every agent owns 3 of the 48 pairs, in groups of 4 slots
    assert g.group_size == 4 and g.row.shape == (16,) and sorted(g.row.tolist()) == list(range(16))
    assert ((g.partner >= 0).sum(1) == 3).all()
    # every pair exactly once, with the flip flag saying which end owns it
    seen = {}
    for j, ks, cs in zip(g.row.tolist(), g.partner.tolist(), g.code.tolist()):
        for k, c in zip(ks, cs):
            if k < 0:
                assert c == -1
                continue
            t, flipped = divmod(c, 2)
            assert t not in seen
            seen[t] = True
            assert tuple(pairs[t].tolist()) == ((k, j) if flipped else (j, k))
    assert sorted(seen) == list(range(48))
    empty = pair_groups(torch.empty(0, 2, dtype=torch.int64))
    assert empty.row.numel() == 0
    with pytest.raises(ValueError, match="group_size=3"):
        pair_groups(pairs, group_size=3)
    with pytest.raises(ValueError, match=r"pairs\[0\] = \(-1, 0\)"):
        pair_groups(torch.tensor([[-1, 0]]))


def test_one_plan_per_matrix_device_rank_and_split():
    """The plan is found again by W's values (a training loop passes a new tensor with the same W every round),
    and a different rank or split gets its own; the cache is bounded."""
    n = 6
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in (i - 1, i, i + 1):
            W[i, j % n] += 1.0 / 3.0
    cpu = torch.device("cpu")
    first = _plan.plan(W, cpu, 4, 0.5)
    assert _plan.plan(W.clone(), cpu, 4, 0.5) is first
    assert _plan.plan(W, cpu, 2, 0.5) is not first and _plan.plan(W, cpu, 4, 1.0) is not first
    assert first.idx.shape == (n, 3) and first.index.shape == (n, 12, 12) and first.groups is None
    for s in range(_plan._MAX_PLANS + 5):
        _plan.plan(W, cpu, 1, s / 1000)
    assert len(_plan._plans) == _plan._MAX_PLANS
    assert _plan.plan(W.clone(), cpu, 4, 0.5) is not first  # evicted: made again


def test_plan_of_a_rectangular_w():
    """W (n_out, N): the tables are per output row, over the N input agents; the cache tells shapes apart."""
    n = 6
    W = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in (i - 1, i, i + 1):
            W[i, j % n] += 1.0 / 3.0
    cpu = torch.device("cpu")
    rows = _plan.plan(W[1:3], cpu, 2, 0.5)  # outputs 1 and 2 over all six agents
    assert (rows.nb.n_out, rows.nb.n_in) == (2, 6)
    assert rows.idx.tolist() == [[0, 1, 2], [1, 2, 3]] and rows.inverse.tolist() == [0, 1] and not rows.shared_rows
    assert rows.uncovered.tolist() == [4, 5]  # inputs no output uses: their finiteness is checked separately
    # the same 12 values read as (3, 4) are another matrix
    other = _plan.plan(W[1:3].reshape(3, 4), cpu, 2, 0.5)
    assert other is not rows and (other.nb.n_out, other.nb.n_in) == (3, 4)
    assert _plan.plan(W[1:3].clone(), cpu, 2, 0.5) is rows
    # more outputs than inputs, rows repeating: solved per distinct row, expanded by inverse
    more = _plan.plan(W[[0, 1, 0, 1, 1]][:, [0, 1, 2, 5]], cpu, 2, 0.5)
    assert (more.nb.n_out, more.nb.n_in) == (5, 4) and more.shared_rows
    assert more.inverse.tolist() == [0, 1, 0, 1, 1] and more.idx.tolist() == [[0, 1, 3], [0, 1, 2]]
