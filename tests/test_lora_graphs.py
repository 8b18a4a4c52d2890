"""Graphs, mixing matrices and time-varying schedules of decaf_lora.graphs (CPU, fast)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from decaf_lora import graphs
from decaf_lora.graphs import (
    GRAPHS,
    TIME_VARYING,
    WEIGHTS,
    Topology,
    adjacency,
    check_mixing_matrix,
    is_connected,
    load_adjacency,
    mixing_matrix,
    spectral_gap,
)

# n values per graph: odd, even, 2 where the graph allows it, and 16.
SIZES = {
    "ring": [2, 3, 5, 8, 16],
    "complete": [2, 3, 7, 16],
    "bipartite": [2, 3, 5, 8, 16],
    "torus": [4, 6, 9, 15, 16],
    "star": [2, 3, 7, 16],
    "exponential": [2, 3, 5, 8, 16],
    "erdos_renyi": [2, 5, 9, 16],
}
CASES = [(g, n) for g in GRAPHS for n in SIZES[g]]


def degrees(adj: torch.Tensor) -> list:
    return adj.sum(dim=1).tolist()


def n_edges(adj: torch.Tensor) -> int:
    return int(adj.sum()) // 2


def edge_set(adj: torch.Tensor) -> set:
    return {(i, j) for i, j in adj.nonzero().tolist() if i < j}


# --------------------------------------------------------------------------------------------------------
# adjacency
# --------------------------------------------------------------------------------------------------------


def test_size_table_covers_every_graph():
    assert set(SIZES) == set(GRAPHS)


@pytest.mark.parametrize("graph,n", CASES)
def test_adjacency_is_simple_undirected_connected(graph, n):
    A = adjacency(graph, n, p=0.5, seed=3)
    assert A.dtype == torch.bool
    assert A.shape == (n, n)
    assert torch.equal(A, A.T)
    assert not A.diagonal().any()
    assert is_connected(A)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
def test_ring_degrees_and_edges(n):
    A = adjacency("ring", n)
    if n == 2:
        assert edge_set(A) == {(0, 1)}
    else:
        assert degrees(A) == [2] * n
        assert n_edges(A) == n
        for i in range(n):
            assert A[i, (i + 1) % n] and A[i, (i - 1) % n]


@pytest.mark.parametrize("n", [2, 3, 7, 16])
def test_complete_degrees_and_edges(n):
    A = adjacency("complete", n)
    assert degrees(A) == [n - 1] * n
    assert n_edges(A) == n * (n - 1) // 2


@pytest.mark.parametrize("n", [2, 3, 7, 16])
def test_star_degrees(n):
    A = adjacency("star", n)
    d = degrees(A)
    assert d[0] == n - 1
    assert d[1:] == [1] * (n - 1)
    assert n_edges(A) == n - 1
    assert A[0, 1:].all()


@pytest.mark.parametrize("n", [2, 3, 5, 8, 16])
def test_bipartite_sides(n):
    A = adjacency("bipartite", n)
    h = math.ceil(n / 2)
    assert not A[:h, :h].any()
    assert not A[h:, h:].any()
    assert A[:h, h:].all()
    assert degrees(A) == [n - h] * h + [h] * (n - h)
    assert n_edges(A) == h * (n - h)


@pytest.mark.parametrize("n,a,b", [(9, 3, 3), (12, 3, 4), (16, 4, 4), (15, 3, 5), (25, 5, 5)])
def test_torus_four_regular_when_sides_at_least_three(n, a, b):
    A = adjacency("torus", n)
    assert degrees(A) == [4] * n
    assert n_edges(A) == 2 * n
    # node (u, v) = u*b + v: check the four neighbours explicitly
    for u in range(a):
        for v in range(b):
            i = u * b + v
            expected = {((u + 1) % a) * b + v, ((u - 1) % a) * b + v, u * b + (v + 1) % b, u * b + (v - 1) % b}
            assert set(A[i].nonzero().flatten().tolist()) == expected


@pytest.mark.parametrize("n,deg,edges", [(4, 2, 4), (6, 3, 9), (8, 3, 12)])
def test_torus_with_a_side_of_two_is_simple(n, deg, edges):
    # 2x2 is a 4-cycle, 2x3 is a prism (degree 3), 2x4 likewise degree 3
    A = adjacency("torus", n)
    assert degrees(A) == [deg] * n
    assert n_edges(A) == edges


@pytest.mark.parametrize("n", [2, 3, 5, 7, 13])
def test_torus_rejects_prime_or_small_n(n):
    with pytest.raises(ValueError, match=r"torus needs n = a\*b with a, b >= 2.*n=" + str(n)):
        adjacency("torus", n)


def test_exponential_degrees():
    A = adjacency("exponential", 8)
    assert degrees(A) == [5] * 8
    assert set(A[0].nonzero().flatten().tolist()) == {1, 7, 2, 6, 4}
    assert n_edges(A) == 20
    A16 = adjacency("exponential", 16)  # hops 1, 2, 4, 8: +-1, +-2, +-4, 8
    assert degrees(A16) == [7] * 16
    A5 = adjacency("exponential", 5)  # hops 1, 2, 4: 4 = -1, so +-1, +-2
    assert degrees(A5) == [4] * 5


def test_erdos_renyi_deterministic_and_seeded():
    a1 = adjacency("erdos_renyi", 16, p=0.3, seed=7)
    a2 = adjacency("erdos_renyi", 16, p=0.3, seed=7)
    assert torch.equal(a1, a2)
    assert is_connected(a1)
    others = [adjacency("erdos_renyi", 16, p=0.3, seed=s) for s in range(8, 12)]
    assert any(not torch.equal(a1, o) for o in others)
    # p = 1 is the complete graph
    assert torch.equal(adjacency("erdos_renyi", 6, p=1.0), adjacency("complete", 6))


def test_erdos_renyi_errors():
    with pytest.raises(ValueError, match="p=0.0"):
        adjacency("erdos_renyi", 8, p=0.0)
    with pytest.raises(ValueError, match="p=1.5"):
        adjacency("erdos_renyi", 8, p=1.5)
    with pytest.raises(ValueError, match="larger p"):
        adjacency("erdos_renyi", 40, p=0.001)


def test_adjacency_argument_errors():
    with pytest.raises(ValueError, match="hexagon") as exc:
        adjacency("hexagon", 4)
    for g in GRAPHS:
        assert g in str(exc.value)
    for g in GRAPHS:
        with pytest.raises(ValueError, match="n=1"):
            adjacency(g, 1)
    with pytest.raises(TypeError, match="n must be an int"):
        adjacency("ring", 4.0)


# --------------------------------------------------------------------------------------------------------
# load_adjacency
# --------------------------------------------------------------------------------------------------------

PATH4 = [[0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_load_from_list_array_tensor():
    expected = torch.tensor(PATH4, dtype=torch.bool)
    for src in (PATH4, np.array(PATH4), torch.tensor(PATH4), torch.tensor(PATH4, dtype=torch.bool)):
        A = load_adjacency(src)
        assert A.dtype == torch.bool
        assert torch.equal(A, expected)


def test_load_ignores_diagonal():
    m = np.array(PATH4)
    np.fill_diagonal(m, 1)
    A = load_adjacency(m)
    assert not A.diagonal().any()
    assert torch.equal(A, torch.tensor(PATH4, dtype=torch.bool))


def test_load_npy(tmp_path):
    f = tmp_path / "adj.npy"
    np.save(f, np.array(PATH4, dtype=np.int64))
    assert torch.equal(load_adjacency(f), torch.tensor(PATH4, dtype=torch.bool))
    assert torch.equal(load_adjacency(str(f)), torch.tensor(PATH4, dtype=torch.bool))


def test_load_text_with_commas_and_comments(tmp_path):
    f = tmp_path / "adj.txt"
    f.write_text(
        "# a path graph on four agents\n0, 1, 0, 0\n\n1,0 ,1, 0  # inline\n# middle comment\n0 1 0 1\n0,0,1,0\n"
    )
    assert torch.equal(load_adjacency(f), torch.tensor(PATH4, dtype=torch.bool))
    g = tmp_path / "adj.csv"
    g.write_text("0,1,1\n1,0,1\n1,1,0\n")
    assert torch.equal(load_adjacency(g), adjacency("complete", 3))


def test_load_asymmetric_names_pair(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("0 1 1\n1 0 0\n0 1 0\n")  # (0, 2) = 1 but (2, 0) = 0
    with pytest.raises(ValueError, match=r"symmetric.*\(0, 2\)"):
        load_adjacency(f)


def test_load_rejects_non_binary_entries(tmp_path):
    with pytest.raises(ValueError, match=r"0 or 1.*2.*\(0, 1\)"):
        load_adjacency([[0, 2], [2, 0]])
    with pytest.raises(ValueError, match="0 or 1"):
        load_adjacency(np.array([[0.0, 0.5], [0.5, 0.0]]))
    f = tmp_path / "neg.csv"
    f.write_text("0,-1\n-1,0\n")
    with pytest.raises(ValueError, match="0 or 1"):
        load_adjacency(f)
    g = tmp_path / "word.txt"
    g.write_text("0 1\n1 x\n")
    with pytest.raises(ValueError, match="'x'"):
        load_adjacency(g)


def test_load_shape_errors(tmp_path):
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        load_adjacency([[0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match="at least 2x2"):
        load_adjacency([[0]])
    f = tmp_path / "ragged.txt"
    f.write_text("0 1 0\n1 0\n0 1 0\n")
    with pytest.raises(ValueError, match="line 2"):
        load_adjacency(f)


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_adjacency(missing)


# --------------------------------------------------------------------------------------------------------
# mixing matrices
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("graph,n", CASES)
def test_mixing_matrix_symmetric_doubly_stochastic(graph, n, weights):
    A = adjacency(graph, n, p=0.5, seed=1)
    W = mixing_matrix(A, weights)
    assert W.dtype == torch.float64 and W.device.type == "cpu"
    assert torch.equal(W, W.T)
    assert torch.allclose(W.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(W.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (W >= 0).all()
    off = W.clone()
    off.fill_diagonal_(0)
    assert torch.equal(off > 0, A)  # support is exactly the graph
    check_mixing_matrix(W)
    assert spectral_gap(W) > 0  # connected + positive diagonal somewhere


def test_metropolis_star_by_hand():
    n = 5
    W = mixing_matrix(adjacency("star", n), "metropolis")
    # hub degree 4, leaves degree 1: edge weight 1/(1+4) = 1/5
    expected = torch.zeros(n, n, dtype=torch.float64)
    expected[0, 1:] = expected[1:, 0] = 0.2
    expected[0, 0] = 1 - 4 * 0.2  # 0.2
    for i in range(1, n):
        expected[i, i] = 0.8
    assert torch.allclose(W, expected, atol=1e-15, rtol=0)


def test_metropolis_vs_uniform_on_irregular_graph():
    # path 0-1-2-3: degrees 1, 2, 2, 1
    A = load_adjacency(PATH4)
    Wm = mixing_matrix(A, "metropolis")
    assert Wm[0, 1] == pytest.approx(1 / 3)
    assert Wm[1, 2] == pytest.approx(1 / 3)
    assert Wm[0, 0] == pytest.approx(2 / 3)
    assert Wm[1, 1] == pytest.approx(1 / 3)
    Wu = mixing_matrix(A, "uniform")  # max degree 2: every edge 1/3
    assert Wu[0, 1] == pytest.approx(1 / 3) and Wu[2, 3] == pytest.approx(1 / 3)
    assert Wu[0, 0] == pytest.approx(2 / 3) and Wu[1, 1] == pytest.approx(1 / 3)
    Ws = mixing_matrix(adjacency("star", 5), "uniform")  # max degree 4: every edge 1/5
    assert Ws[1, 0] == pytest.approx(0.2) and Ws[1, 1] == pytest.approx(0.8) and Ws[0, 0] == pytest.approx(0.2)


@pytest.mark.parametrize("n", [3, 4, 5, 8, 11, 16])
def test_ring_spectral_gap_closed_form(n):
    W = mixing_matrix(adjacency("ring", n), "metropolis")
    assert torch.allclose(W, mixing_matrix(adjacency("ring", n), "uniform"))  # regular graph
    expected = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / n))
    assert spectral_gap(W) == pytest.approx(expected, abs=1e-12)
    # cross-check against the eigenvalues of the symmetric matrix
    ev = torch.linalg.eigvalsh(W)
    assert spectral_gap(W) == pytest.approx(1 - max(abs(ev[0].item()), abs(ev[-2].item())), abs=1e-12)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("n", [2, 5, 16])
def test_complete_graph_averages_in_one_step(n, weights):
    W = mixing_matrix(adjacency("complete", n), weights)
    assert torch.allclose(W, torch.full((n, n), 1 / n, dtype=torch.float64), atol=1e-15, rtol=0)
    assert spectral_gap(W) == pytest.approx(1.0, abs=1e-12)


def test_spectral_gap_identity_and_nonsymmetric():
    assert spectral_gap(torch.eye(4, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)
    # directed cycle permutation: orthogonal, ||P - J|| = 1 -> gap 0
    P = torch.roll(torch.eye(5, dtype=torch.float64), 1, dims=1)
    assert spectral_gap(P) == pytest.approx(0.0, abs=1e-12)
    # (I + P)/2 on n = 4: singular values of the deviation are |1 + w^k|/2 for w^k != 1
    W = 0.5 * (torch.eye(4, dtype=torch.float64) + torch.roll(torch.eye(4, dtype=torch.float64), 1, dims=1))
    assert spectral_gap(W) == pytest.approx(1 - abs(1 + 1j) / 2, abs=1e-12)


def test_disconnected_graph_rejected():
    A = torch.zeros(5, 5, dtype=torch.bool)
    A[0, 1] = A[1, 0] = True
    A[2, 3] = A[3, 2] = True
    A[3, 4] = A[4, 3] = True
    assert not is_connected(A)
    assert is_connected(adjacency("ring", 5))
    for w in WEIGHTS:
        with pytest.raises(ValueError, match=r"not connected.*2, 3, 4"):
            mixing_matrix(A, w)
    with pytest.raises(ValueError, match="not connected"):
        Topology.build("custom", None, adjacency_source=A.int().tolist())


def test_mixing_matrix_unknown_weights():
    with pytest.raises(ValueError, match="'max_degree'.*metropolis.*uniform"):
        mixing_matrix(adjacency("ring", 4), "max_degree")


def test_check_mixing_matrix_catches_errors():
    n = 4
    good = mixing_matrix(adjacency("ring", n))
    check_mixing_matrix(good)
    # row-stochastic only: column 0 sums to 1.75
    row_only = torch.zeros(n, n, dtype=torch.float64)
    row_only[:, 0] = 0.5
    row_only += 0.5 * torch.eye(n, dtype=torch.float64)
    row_only[0, 0] = 1.0
    assert torch.allclose(row_only.sum(1), torch.ones(n, dtype=torch.float64))
    with pytest.raises(ValueError, match="column 0 sums to 2.5"):
        check_mixing_matrix(row_only)
    # column-stochastic only: row 0 sums to 2.5
    with pytest.raises(ValueError, match="row 0 sums to 2.5"):
        check_mixing_matrix(row_only.T.contiguous())
    neg = good.clone()
    neg[0, 1] = -0.1
    neg[0, 0] += 0.1 + 1 / 3
    neg[1, 0] = -0.1
    neg[1, 1] += 0.1 + 1 / 3
    with pytest.raises(ValueError, match=r"nonnegative.*W\[0, 1\] = -0.1"):
        check_mixing_matrix(neg)
    nan = good.clone()
    nan[2, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        check_mixing_matrix(nan)
    with pytest.raises(ValueError, match=r"square.*\(4, 3\)"):
        check_mixing_matrix(good[:, :3])
    with pytest.raises(TypeError, match="floating"):
        check_mixing_matrix(torch.eye(3, dtype=torch.int64))
    # tolerance is honoured
    near = good.clone()
    near[0, 0] += 1e-12
    check_mixing_matrix(near)
    with pytest.raises(ValueError, match="row 0"):
        check_mixing_matrix(near, atol=1e-14)


# --------------------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph,n", [("ring", 7), ("torus", 16), ("exponential", 8), ("erdos_renyi", 12)])
def test_topology_static(graph, n):
    topo = Topology.build(graph, n, p=0.4, seed=2)
    assert topo.n == n
    assert torch.equal(topo.W, mixing_matrix(adjacency(graph, n, p=0.4, seed=2)))
    for t in (0, 1, 5):
        assert torch.equal(topo.matrix(t), topo.W)
    nb = topo.neighbours(3)
    assert nb == [topo.adjacency[i].nonzero().flatten().tolist() for i in range(n)]


def test_topology_custom(tmp_path):
    f = tmp_path / "g.npy"
    np.save(f, np.array(PATH4))
    topo = Topology.build("custom", None, adjacency_source=f, weights="uniform")
    assert topo.n == 4 and topo.name == "custom"
    assert Topology.build("custom", 4, adjacency_source=f).n == 4
    with pytest.raises(ValueError, match=r"n=5.*4 agents"):
        Topology.build("custom", 5, adjacency_source=f)
    with pytest.raises(ValueError, match="adjacency_source"):
        Topology.build("custom", 4)


def test_topology_validation_errors():
    with pytest.raises(ValueError, match="'grid'.*ring.*custom"):
        Topology.build("grid", 4)
    with pytest.raises(ValueError, match="'equal'.*metropolis"):
        Topology.build("ring", 4, weights="equal")
    with pytest.raises(ValueError, match="'random'.*matching.*one_peer_exp"):
        Topology.build("ring", 4, time_varying="random")
    with pytest.raises(ValueError, match="time_varying"):
        Topology("ring", adjacency("ring", 4), time_varying="static")
    with pytest.raises(ValueError, match="round_index=-1"):
        Topology.build("ring", 4).matrix(-1)
    assert TIME_VARYING[0] is None


@pytest.mark.parametrize("graph,n", [("ring", 9), ("torus", 16), ("erdos_renyi", 10), ("complete", 7), ("star", 6)])
def test_matching_schedule(graph, n):
    topo = Topology.build(graph, n, time_varying="matching", p=0.4, seed=5)
    base = edge_set(topo.adjacency)
    mats = [topo.matrix(t) for t in range(10)]
    for t, W in enumerate(mats):
        assert W.dtype == torch.float64
        check_mixing_matrix(W, atol=0)
        assert torch.equal(W, W.T)
        nb = topo.neighbours(t)
        assert all(len(x) <= 1 for x in nb)
        matched = {(i, x[0]) for i, x in enumerate(nb) if x and i < x[0]}
        assert matched <= base
        assert matched  # at least one edge on a connected graph
        # maximal: every base edge has a matched endpoint
        busy = {i for e in matched for i in e}
        assert all(i in busy or j in busy for i, j in base)
        for i, j in matched:
            assert W[i, i] == W[i, j] == 0.5
        for i, x in enumerate(nb):
            if not x:
                assert W[i, i] == 1.0
    fresh = Topology.build(graph, n, time_varying="matching", p=0.4, seed=5)
    for t in (0, 3, 9):
        assert torch.equal(fresh.matrix(t), mats[t])
    # resumption: asking out of order gives the same matrices
    assert torch.equal(fresh.matrix(7), topo.matrix(7))
    assert any(not torch.equal(mats[0], m) for m in mats[1:])


def test_matching_depends_on_seed():
    a = Topology.build("ring", 12, time_varying="matching", seed=0)
    b = Topology.build("ring", 12, time_varying="matching", seed=1)
    assert any(not torch.equal(a.matrix(t), b.matrix(t)) for t in range(5))


@pytest.mark.parametrize("n", [2, 5, 6, 8, 16])
def test_one_peer_exp_schedule(n):
    topo = Topology.build("ring", n, time_varying="one_peer_exp")
    tau = math.ceil(math.log2(n))
    for t in range(2 * tau + 1):
        W = topo.matrix(t)
        check_mixing_matrix(W, atol=0)
        hop = 2 ** (t % tau)
        nb = topo.neighbours(t)
        assert nb == [[(i + hop) % n] for i in range(n)]
        assert torch.equal(W.diagonal(), torch.full((n,), 0.5, dtype=torch.float64))
        if n > 2 and 2 * hop != n:
            assert not torch.equal(W, W.T)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_one_peer_exp_exact_average_after_tau_rounds(n):
    topo = Topology.build("ring", n, time_varying="one_peer_exp")
    tau = math.ceil(math.log2(n))
    J = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    for start in (0, 1, tau + 2):  # any tau consecutive rounds cover every hop once
        P = torch.eye(n, dtype=torch.float64)
        for t in range(start, start + tau):
            P = topo.matrix(t) @ P
        assert torch.equal(P, J)
    # fewer rounds are not enough
    if tau > 1:
        P = torch.eye(n, dtype=torch.float64)
        for t in range(tau - 1):
            P = topo.matrix(t) @ P
        assert not torch.allclose(P, J)


def test_one_peer_exp_not_exact_for_non_power_of_two():
    n = 6
    topo = Topology.build("ring", n, time_varying="one_peer_exp")
    P = torch.eye(n, dtype=torch.float64)
    for t in range(3):
        P = topo.matrix(t) @ P
    assert not torch.allclose(P, torch.full((n, n), 1.0 / n, dtype=torch.float64))
    check_mixing_matrix(P)


def test_describe_json():
    topo = Topology.build("star", 6, weights="uniform", time_varying="matching", seed=3)
    d = json.loads(json.dumps(topo.describe()))
    assert d == {
        "name": "star",
        "n": 6,
        "weights": "uniform",
        "time_varying": "matching",
        "edges": 5,
        "degree_min": 1,
        "degree_max": 5,
        "spectral_gap": pytest.approx(spectral_gap(topo.W), abs=1e-15),
    }
    ring = Topology.build("ring", 8).describe()
    assert ring["edges"] == 8 and ring["degree_min"] == ring["degree_max"] == 2
    assert ring["spectral_gap"] == pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8)), abs=1e-12)
    assert ring["time_varying"] is None
    assert isinstance(ring["spectral_gap"], float) and isinstance(ring["edges"], int)
    comp = Topology.build("complete", 16).describe()
    assert comp["edges"] == 120 and comp["spectral_gap"] == pytest.approx(1.0, abs=1e-12)


def test_module_exports():
    for name in graphs.__all__:
        assert hasattr(graphs, name)


# --------------------------------------------------------------------------------------------------------
# networkx graphs
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def nx():
    return pytest.importorskip("networkx")  # it comes with torch


def test_networkx_graph_gives_the_same_topology_as_the_built_in_one(nx):
    for weights in WEIGHTS:
        topo = Topology.from_networkx(nx.cycle_graph(6), weights=weights)
        ring = Topology.build("ring", 6, weights=weights)
        assert topo.name == "custom" and topo.n == 6 and topo.nodes == list(range(6))
        assert torch.equal(topo.adjacency, ring.adjacency)
        assert torch.equal(topo.W, ring.W)
    via_build = Topology.build(nx.cycle_graph(6), None, time_varying="matching", seed=3)
    assert via_build.time_varying == "matching" and torch.equal(via_build.W, ring.W)
    assert torch.equal(via_build.matrix(2), Topology.build("ring", 6, time_varying="matching", seed=3).matrix(2))
    assert Topology.build(nx.cycle_graph(6), 6).n == 6
    with pytest.raises(ValueError, match=r"n=5 does not match the networkx graph, which has 6 nodes"):
        Topology.build(nx.cycle_graph(6), 5)
    assert torch.equal(load_adjacency(nx.cycle_graph(6)), ring.adjacency)
    custom = Topology.build("custom", None, adjacency_source=nx.cycle_graph(6))
    assert torch.equal(custom.W, ring.W)


def test_networkx_nodes_are_agents_in_sorted_order(nx):
    g = nx.Graph()
    g.add_edges_from([(3, 1), (1, 0), (0, 2)])  # labels 0..3 added out of order: a path 3-1-0-2
    topo = Topology.from_networkx(g)
    assert topo.nodes == [0, 1, 2, 3]
    assert edge_set(topo.adjacency) == {(1, 3), (0, 1), (0, 2)}
    letters = Topology.from_networkx(nx.path_graph(["c", "a", "b"]))  # path c-a-b
    assert letters.nodes == ["a", "b", "c"] and edge_set(letters.adjacency) == {(0, 2), (0, 1)}


def test_networkx_edge_weights_self_loops_and_parallel_edges_are_ignored(nx):
    plain = nx.star_graph(4)
    weighted = nx.star_graph(4)
    for u, v in weighted.edges:
        weighted[u][v]["weight"] = 10.0 * (u + v + 1)
    weighted.add_edge(2, 2, weight=5.0)
    multi = nx.MultiGraph(plain)
    multi.add_edge(0, 1)
    for g in (weighted, multi):
        topo = Topology.from_networkx(g, weights="metropolis")
        assert torch.equal(topo.W, Topology.from_networkx(plain).W)
        assert torch.equal(topo.W, mixing_matrix(adjacency("star", 5)))


def test_networkx_graphs_are_checked(nx):
    with pytest.raises(ValueError, match=r"not connected: 2 node\(s\) unreachable from node 'a' \('x', 'y'\)"):
        Topology.from_networkx(nx.Graph([("a", "b"), ("x", "y")]))
    lonely = nx.path_graph(3)
    lonely.add_node(7)
    with pytest.raises(ValueError, match=r"unreachable from node 0 \(7\)"):
        Topology.from_networkx(lonely)
    with pytest.raises(ValueError, match=r"directed \(DiGraph\).*to_undirected"):
        Topology.from_networkx(nx.DiGraph([(0, 1), (1, 0)]))
    with pytest.raises(ValueError, match="at least two nodes"):
        Topology.from_networkx(nx.empty_graph(1))
    with pytest.raises(ValueError, match="cannot be sorted.*convert_node_labels_to_integers"):
        Topology.from_networkx(nx.Graph([(0, "a"), ("a", 1)]))
    with pytest.raises(ValueError, match="'equal'.*metropolis"):
        Topology.from_networkx(nx.cycle_graph(4), weights="equal")
    with pytest.raises(TypeError, match="expected a networkx graph, got list"):
        graphs.Topology.from_networkx([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"nodes has 3 label\(s\) but the adjacency has 4 agents"):
        Topology("custom", adjacency("ring", 4), nodes=[0, 1, 2])


def test_networkx_is_not_imported_to_recognise_a_graph():
    import subprocess
    import sys

    code = ("import sys; from decaf_lora.graph_structure import is_networkx_graph; import decaf_lora.topology; "
            "assert not is_networkx_graph([[0, 1], [1, 0]]); assert 'networkx' not in sys.modules, 'imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# --------------------------------------------------------------------------------------------------------
# saving a mixing matrix
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["W.npy", "W.txt", "W.csv"])
def test_save_mixing_matrix_round_trips_exactly(tmp_path, name):
    from decaf_lora.mixing import save_mixing_matrix

    W = Topology.build("erdos_renyi", 7, p=0.5, seed=1).W
    path = save_mixing_matrix(W, tmp_path / name)
    if name.endswith(".npy"):
        back = np.load(path)
    else:
        back = np.loadtxt(path, delimiter="," if name.endswith(".csv") else None)
        assert ("," in path.read_text()) == name.endswith(".csv")
    assert back.dtype == np.float64 and np.array_equal(back, W.numpy())
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left beside it


def test_save_mixing_matrix_refuses_before_writing(tmp_path):
    from decaf_lora.mixing import save_mixing_matrix

    W = Topology.build("ring", 4).W
    target = tmp_path / "W.npy"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="W.npy' exists; refusing to replace it"):
        save_mixing_matrix(W, target)
    assert target.read_bytes() == b"mine"
    save_mixing_matrix(W, target, overwrite=True)
    assert np.array_equal(np.load(target), W.numpy())
    with pytest.raises(ValueError, match=r"must end in \.npy, \.txt, \.csv"):
        save_mixing_matrix(W, tmp_path / "W.json")
    (tmp_path / "folder.npy").mkdir()
    with pytest.raises(FileExistsError, match="is a folder"):
        save_mixing_matrix(W, tmp_path / "folder.npy", overwrite=True)
    with pytest.raises(ValueError, match="square"):
        save_mixing_matrix(torch.ones(2, 3, dtype=torch.float64), tmp_path / "bad.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["W.npy", "folder.npy"]


def test_saved_files_follow_the_umask(tmp_path):
    import os

    from decaf_lora.mixing import save_mixing_matrix

    old = os.umask(0o027)
    try:
        path = save_mixing_matrix(Topology.build("ring", 4).W, tmp_path / "W.txt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
