"""Static and time-varying topologies: W(t) every round, determinism, B-connectivity."""

from __future__ import annotations

import itertools
import math
import re

import networkx as nx
import numpy as np
import pytest
import torch

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology import (
    GRAPHS,
    SCHEDULES,
    EdgeDropSchedule,
    OnePeerExponential,
    RandomMatching,
    StaticTopology,
    Topology,
    build_graph,
    build_topology,
    check_doubly_stochastic,
    check_symmetric,
    describe,
    is_b_connected,
    mixing_matrix,
    schedules,
    spectral_gap,
)
from nettrain.topology.schedules import greedy_matching

ROUNDS = 20


def make(schedule: str, seed: int = 0) -> Topology:
    """A fresh time-varying topology on 12 agents."""
    factories = {
        "edge_drop": lambda: EdgeDropSchedule(build_graph("torus", 12), 0.5, seed=seed),
        "one_peer_exponential": lambda: OnePeerExponential(12),
        "random_matching": lambda: RandomMatching(build_graph("complete", 12), seed=seed),
    }
    return factories[schedule]()


TIME_VARYING = ["edge_drop", "one_peer_exponential", "random_matching"]


def test_schedules_constant_lists_all_schedules() -> None:
    assert ("static", *TIME_VARYING) == SCHEDULES


def test_static_topology_has_the_same_w_every_round() -> None:
    graph = build_graph("ring", 6)
    topo = StaticTopology(graph, "metropolis")
    assert not topo.time_varying
    assert topo.graph(3) is graph
    for t in (0, 1, 99):
        torch.testing.assert_close(topo.weights(t), mixing_matrix(graph))
    assert topo.neighbors(0, 5) == [1, 5]
    assert topo.neighbors(3, 0) == [2, 4]


@pytest.mark.parametrize("schedule", TIME_VARYING)
def test_every_round_is_doubly_stochastic(schedule: str) -> None:
    topo = make(schedule)
    assert topo.time_varying
    for t in range(ROUNDS):
        w = topo.weights(t)
        assert w.dtype == torch.float64
        assert w.shape == (12, 12)
        check_doubly_stochastic(w)


@pytest.mark.parametrize("schedule", ["edge_drop", "random_matching"])
def test_symmetric_schedules_are_symmetric_every_round(schedule: str) -> None:
    topo = make(schedule)
    for t in range(ROUNDS):
        check_symmetric(topo.weights(t))


@pytest.mark.parametrize("schedule", TIME_VARYING)
def test_same_seed_and_round_give_the_same_w_in_any_query_order(schedule: str) -> None:
    order = list(np.random.default_rng(7).permutation(ROUNDS))
    forward = [make(schedule).weights(t).clone() for t in range(ROUNDS)]
    shuffled_topo = make(schedule)
    shuffled = {t: shuffled_topo.weights(int(t)).clone() for t in order}
    for t in range(ROUNDS):
        assert torch.equal(forward[t], shuffled[t])
        assert torch.equal(forward[t], make(schedule).weights(t))  # a fresh "process"


@pytest.mark.parametrize("schedule", TIME_VARYING)
def test_consecutive_rounds_differ(schedule: str) -> None:
    topo = make(schedule)
    matrices = [topo.weights(t).clone() for t in range(ROUNDS)]
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(matrices))


@pytest.mark.parametrize("schedule", ["edge_drop", "random_matching"])
def test_seed_changes_the_schedule(schedule: str) -> None:
    a, b = make(schedule, seed=1), make(schedule, seed=2)
    assert any(not torch.equal(a.weights(t), b.weights(t)) for t in range(5))


@pytest.mark.parametrize("schedule", TIME_VARYING)
def test_neighbors_are_the_agents_linked_in_graph_t(schedule: str) -> None:
    topo = make(schedule)
    for t in range(5):
        undirected = topo.graph(t).to_undirected()
        for i in range(topo.n):
            assert topo.neighbors(i, t) == sorted(undirected.neighbors(i))


def test_edge_drop_b_connected_on_a_ring_but_not_every_round() -> None:
    topo = EdgeDropSchedule(build_graph("ring", 16), drop_prob=0.5, seed=3)
    graphs = [topo.graph(t) for t in range(60)]
    assert is_b_connected(graphs, window=20)
    assert not is_b_connected(graphs, window=1)


def test_edge_drop_keeps_about_1_minus_p_of_the_edges() -> None:
    topo = EdgeDropSchedule(build_graph("complete", 20), drop_prob=0.3)
    kept = np.mean([topo.graph(t).number_of_edges() for t in range(ROUNDS)]) / 190
    assert kept == pytest.approx(0.7, abs=0.03)


def test_edge_drop_with_p_0_is_the_static_topology() -> None:
    graph = build_graph("tree", 10)
    topo = EdgeDropSchedule(graph, drop_prob=0.0, scheme="max_degree")
    for t in range(3):
        torch.testing.assert_close(topo.weights(t), mixing_matrix(graph, "max_degree"))


def test_edge_drop_recomputes_metropolis_on_the_surviving_graph() -> None:
    topo = EdgeDropSchedule(build_graph("torus", 16), drop_prob=0.4, seed=2)
    for t in range(5):
        torch.testing.assert_close(topo.weights(t), mixing_matrix(topo.graph(t)))


def test_edge_drop_keeps_an_edge_whose_uniform_equals_drop_prob() -> None:
    """Round ``t`` keeps edge ``e`` (edges sorted) when the ``e``-th uniform ``u_e`` of
    ``default_rng([seed, t])`` is ``>= drop_prob``: ``P(u >= p) = 1 - p`` exactly for ``u``
    uniform on the grid ``k 2^-53`` and ``p`` on it, where ``u > p`` would keep with
    ``1 - p - 2^-53``. With ``drop_prob`` one of the round's uniforms, that edge stays."""
    graph = build_graph("ring", 8)
    edges = sorted(tuple(sorted(e)) for e in graph.edges())
    u = np.random.default_rng([5, 3]).random(len(edges))
    drop_prob = float(np.sort(u)[4])  # the 5th smallest of 8 distinct uniforms: 4 kept
    topo = EdgeDropSchedule(graph, drop_prob, seed=5)
    kept = {edges[e] for e in range(len(edges)) if u[e] >= drop_prob}
    assert len(kept) == 4
    assert {tuple(sorted(e)) for e in topo.graph(3).edges()} == kept


@pytest.mark.parametrize("drop_prob", [1.0, -0.1, 1.5])
def test_edge_drop_rejects_drop_prob_outside_0_1(drop_prob: float) -> None:
    with pytest.raises(ConfigError, match=r"drop_prob must be a number in \[0, 1\)"):
        EdgeDropSchedule(build_graph("ring", 5), drop_prob)


def test_edge_drop_refuses_uniform_weights() -> None:
    with pytest.raises(ConfigError, match=r"irregular.*metropolis"):
        EdgeDropSchedule(build_graph("ring", 5), 0.1, scheme="uniform")


@pytest.mark.parametrize("n", [2, 3, 8, 12])
def test_one_peer_exponential_is_half_identity_plus_half_shift(n: int) -> None:
    topo = OnePeerExponential(n)
    period = math.ceil(math.log2(n))
    assert topo.period == period
    eye = torch.eye(n, dtype=torch.float64)
    for t in range(2 * period + 1):
        shift = 2 ** (t % period)
        p = torch.roll(eye, shift, dims=0)  # p[(i + shift) % n, i] = 1: i sends to i + shift
        torch.testing.assert_close(topo.weights(t), (eye + p) / 2)
        assert sorted(topo.graph(t).edges()) == sorted((i, (i + shift) % n) for i in range(n))
        assert topo.neighbors(0, t) == sorted({shift % n, (-shift) % n})


def test_one_peer_exponential_b_connected_with_window_ceil_log2_n() -> None:
    for n in (5, 8, 16):
        topo = OnePeerExponential(n)
        graphs = [topo.graph(t) for t in range(3 * topo.period)]
        assert is_b_connected(graphs, window=math.ceil(math.log2(n)))


def test_one_peer_exponential_window_1_is_not_connected() -> None:
    topo = OnePeerExponential(8)
    assert not is_b_connected([topo.graph(t) for t in range(6)], window=1)


def test_one_peer_exponential_base_graph_is_the_exponential_graph() -> None:
    topo = OnePeerExponential(8)
    assert set(topo.base_graph.edges()) == set(build_graph("exponential", 8).edges())
    union = nx.Graph()
    for t in range(topo.period):
        union.add_edges_from(topo.graph(t).to_undirected().edges())
    assert {frozenset(e) for e in union.edges()} == {frozenset(e) for e in topo.base_graph.edges()}


def test_one_peer_exponential_needs_two_agents() -> None:
    with pytest.raises(ConfigError, match="n >= 2"):
        OnePeerExponential(1)


def sequential_greedy(edges: np.ndarray, rank: np.ndarray, n: int) -> set[tuple[int, int]]:
    """The textbook greedy: take edges in rank order when both endpoints are free."""
    free = [True] * n
    chosen = set()
    for e in np.argsort(rank):
        u, v = (int(x) for x in edges[e])
        if free[u] and free[v]:
            free[u] = free[v] = False
            chosen.add((u, v))
    return chosen


@pytest.mark.parametrize(("kind", "n"), [("complete", 9), ("erdos_renyi", 40), ("torus", 16)])
def test_round_based_greedy_matching_equals_sequential_greedy(kind: str, n: int) -> None:
    from nettrain.topology.graphs import edge_array

    edges = edge_array(build_graph(kind, n, seed=4))
    for trial in range(10):
        rank = np.random.default_rng(trial).permutation(len(edges))
        fast = {tuple(e) for e in edges[greedy_matching(n, edges, rank)].tolist()}
        assert fast == sequential_greedy(edges, rank, n)


@pytest.mark.parametrize(("kind", "n"), [("complete", 9), ("ring", 10), ("star", 6)])
def test_random_matching_is_a_maximal_matching_with_pairwise_averages(kind: str, n: int) -> None:
    base = build_graph(kind, n)
    topo = RandomMatching(base, seed=1)
    for t in range(10):
        pairs = topo.matching(t)
        matched = pairs.ravel().tolist()
        assert len(matched) == len(set(matched))  # a matching
        assert all(base.has_edge(u, v) for u, v in pairs.tolist())
        assert not any(u not in matched and v not in matched for u, v in base.edges())  # maximal
        expected = torch.eye(n, dtype=torch.float64)
        for u, v in pairs.tolist():
            e = torch.zeros(n, dtype=torch.float64)
            e[u], e[v] = 1.0, -1.0
            expected -= 0.5 * torch.outer(e, e)
        torch.testing.assert_close(topo.weights(t), expected)


def test_random_matching_on_complete_graph_is_b_connected_with_window_10() -> None:
    topo = RandomMatching(build_graph("complete", 8), seed=0)
    graphs = [topo.graph(t) for t in range(40)]
    assert is_b_connected(graphs, window=10)
    assert not is_b_connected(graphs, window=1)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_build_topology_builds_every_schedule(schedule: str) -> None:
    drop_prob = 0.3 if schedule == "edge_drop" else 0.0
    topo = build_topology("torus", 9, schedule=schedule, drop_prob=drop_prob, seed=2)
    assert topo.schedule == schedule
    assert topo.n == 9
    check_doubly_stochastic(topo.weights(0))


def test_build_topology_passes_graph_arguments_through() -> None:
    topo = build_topology("random_regular", 10, degree=3, weights="uniform")
    assert {d for _, d in topo.base_graph.degree()} == {3}
    torch.testing.assert_close(
        topo.weights(0)[topo.neighbors(0, 0), 0], torch.full((3,), 0.25, dtype=torch.float64)
    )


def test_build_topology_rejects_bad_combinations() -> None:
    with pytest.raises(ConfigError, match="static, edge_drop"):
        build_topology("ring", 8, schedule="gossip")
    with pytest.raises(ConfigError, match="unknown graph kind"):
        build_topology("mesh", 8, schedule="one_peer_exponential")
    with pytest.raises(ConfigError, match="only applies to schedule='edge_drop'"):
        build_topology("ring", 8, drop_prob=0.2)
    with pytest.raises(ConfigError, match="unknown weight scheme"):
        build_topology("ring", 8, weights="laplacian")
    with pytest.raises(TopologyError, match="metropolis"):
        build_topology("star", 8, weights="uniform")


def test_rounds_and_agents_are_validated() -> None:
    topo = build_topology("ring", 5)
    with pytest.raises(ConfigError, match="round t"):
        topo.weights(-1)
    with pytest.raises(ConfigError, match="round t"):
        topo.weights(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"agent index must be in 0\.\.4"):
        topo.neighbors(5, 0)


def test_describe_a_ring() -> None:
    info = describe(build_topology("ring", 8))
    assert info == {
        "kind": "ring",
        "schedule": "static",
        "agents": 8,
        "edges": 8,
        "min_degree": 2,
        "max_degree": 2,
        "spectral_gap": pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8))),
        "symmetric": True,
        "doubly_stochastic": True,
        "connected": True,
        "weights": "metropolis",
    }


def test_describe_a_time_varying_topology_reports_the_expected_gap() -> None:
    topo = build_topology("complete", 8, schedule="random_matching")
    info = describe(topo)
    assert info["kind"] == "complete"
    assert info["edges"] == 28
    assert info["symmetric"] and info["doubly_stochastic"] and info["connected"]
    second_moment = sum(topo.weights(t).T @ topo.weights(t) for t in range(20)) / 20
    assert info["spectral_gap_expected"] == pytest.approx(spectral_gap(second_moment))
    assert 0.0 < info["spectral_gap_expected"] <= 1.0


def test_describe_one_peer_exponential_has_closed_form_expected_gap() -> None:
    info = describe(build_topology("ring", 16, schedule="one_peer_exponential"))
    assert info["kind"] == "exponential"
    assert info["edges"] == 16 * 7 // 2
    assert info["symmetric"] is False
    assert info["doubly_stochastic"] is True
    # W_s^T W_s = (2I + P_s + P_s^T) / 4 has eigenvalues cos^2(pi k s / n); 20 rounds cover
    # the shifts s = 1, 2, 4, 8 five times each, so the mean has eigenvalues averaged over s
    mean = [np.mean([math.cos(math.pi * k * s / 16) ** 2 for s in (1, 2, 4, 8)]) for k in range(16)]
    assert info["spectral_gap_expected"] == pytest.approx(1 - max(mean[1:]), abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sparse_weights_are_the_dense_weights(schedule: str) -> None:
    topology = build_topology("erdos_renyi", 12, schedule=schedule, edge_prob=0.4, seed=3)
    for t in range(4):
        sparse = topology.sparse_weights(t)
        assert sparse.is_sparse and sparse.is_coalesced()
        assert torch.equal(sparse.to_dense(), topology.weights(t))


def test_a_ring_of_65536_agents_needs_no_dense_matrix() -> None:
    """3 n entries, the checks pass on the sparse form, and describe() leaves out the
    eigendecomposition (a dense 65,536^2 float64 matrix would take 32 GiB)."""
    n = 65_536
    topology = build_topology("ring", n)
    w = topology.sparse_weights(0)
    assert w.values().numel() == 3 * n
    torch.testing.assert_close(w.values()[:3], torch.tensor([1 / 3] * 3, dtype=torch.float64))
    assert topology.neighbors(0, 0) == [1, n - 1]
    summary = describe(topology)
    assert summary["spectral_gap"] is None and summary["doubly_stochastic"]
    assert summary["symmetric"] and summary["edges"] == n


def test_defaults_are_metropolis_weights_and_seed_0() -> None:
    ring = build_graph("ring", 8)
    static = StaticTopology(ring)
    assert static.scheme == "metropolis"
    assert torch.equal(static.weights(0), mixing_matrix(ring, "metropolis"))
    for default, seeded in [
        (EdgeDropSchedule(ring, 0.5), EdgeDropSchedule(ring, 0.5, "metropolis", seed=0)),
        (RandomMatching(ring), RandomMatching(ring, seed=0)),
    ]:
        assert all(torch.equal(default.weights(t), seeded.weights(t)) for t in range(8))


def test_fixed_rule_schedules_name_their_weights() -> None:
    assert OnePeerExponential(8).scheme == "one_peer_average"
    assert RandomMatching(build_graph("ring", 8)).scheme == "pairwise_average"
    assert describe(OnePeerExponential(8))["weights"] == "one_peer_average"
    assert repr(OnePeerExponential(8)) == (
        "OnePeerExponential(name='exponential/one_peer_exponential', n=8, "
        "scheme='one_peer_average')"
    )


@pytest.mark.parametrize("schedule", ["edge_drop", "one_peer_exponential", "random_matching"])
def test_weights_are_built_on_the_cpu_whatever_the_default_device(schedule: str) -> None:
    """Under ``torch.device("meta")`` a tensor made without ``device=`` holds no values:
    every round's matrix must still be the one built on the CPU."""
    expected = [make(schedule).sparse_weights(t).to_dense() for t in range(4)]
    topology = make(schedule)
    with torch.device("meta"):
        got = [topology.sparse_weights(t) for t in range(4)]
    assert all(w.device.type == "cpu" for w in got)
    assert all(torch.equal(w.to_dense(), e) for w, e in zip(got, expected, strict=True))


@pytest.mark.parametrize("bad", [True, 1.0, "2"])
def test_one_peer_exponential_needs_an_integer(bad) -> None:
    message = f"one_peer_exponential needs an integer n >= 2, got {bad!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        OnePeerExponential(bad)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "0"])
def test_a_schedule_seed_must_be_a_whole_number_from_0(bad) -> None:
    message = f"seed must be an integer >= 0, got {bad!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        RandomMatching(build_graph("ring", 6), seed=bad)
    assert RandomMatching(build_graph("ring", 6), seed=np.int64(3)).seed == 3


def test_edge_drop_refuses_a_boolean_drop_prob_and_uniform_weights_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"^drop_prob must be a number in \[0, 1\), got False$"):
        EdgeDropSchedule(build_graph("ring", 6), False)
    message = (
        "edge_drop cannot use uniform weights: dropped edges make the graph irregular and "
        "uniform weights are then not doubly stochastic; use scheme='metropolis'"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        EdgeDropSchedule(build_graph("ring", 6), 0.1, "uniform")


def test_describe_gives_the_gaps_up_to_the_agent_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """At :data:`SPECTRAL_MAX_AGENTS` agents the gaps are computed, one more leaves them
    out (``None``); a graph without a kind is ``custom``."""
    monkeypatch.setattr(schedules, "SPECTRAL_MAX_AGENTS", 6)
    at_limit, beyond = describe(make_ring(6)), describe(make_ring(7))
    assert at_limit["kind"] == "custom" and make_ring(6).name == "custom/static"
    assert at_limit["spectral_gap"] == pytest.approx(spectral_gap(make_ring(6).weights(0)))
    assert beyond["spectral_gap"] is None
    matching = RandomMatching(build_graph("complete", 7))
    assert describe(matching)["spectral_gap_expected"] is None
    assert describe(RandomMatching(build_graph("complete", 6)))["spectral_gap_expected"] > 0


def make_ring(n: int) -> StaticTopology:
    """A ring given as a plain networkx graph (no ``kind``)."""
    return StaticTopology(nx.cycle_graph(n))


def test_build_topology_passes_its_defaults_and_every_graph_argument_on() -> None:
    def edges(topology: Topology) -> set[frozenset[int]]:
        return {frozenset(e) for e in topology.base_graph.edges()}

    def graph_edges(graph: nx.Graph) -> set[frozenset[int]]:
        return {frozenset(e) for e in graph.edges()}

    assert edges(build_topology("random_regular", 10)) == graph_edges(
        build_graph("random_regular", 10, seed=0, degree=4)
    )
    assert edges(build_topology("random_regular", 10, seed=3)) == graph_edges(
        build_graph("random_regular", 10, seed=3, degree=4)
    )
    assert edges(build_topology("tree", 13)) == graph_edges(build_graph("tree", 13, branching=2))
    assert edges(build_topology("tree", 13, branching=3)) == graph_edges(
        build_graph("tree", 13, branching=3)
    )
    assert edges(build_topology("erdos_renyi", 20, edge_prob=0.9)) == graph_edges(
        build_graph("erdos_renyi", 20, edge_prob=0.9)
    )
    message = f"unknown graph kind 'mesh'; choose one of {', '.join(GRAPHS)}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build_topology("mesh", 8)


@pytest.mark.parametrize("bad", [True, -1, 1.5])
def test_a_round_must_be_a_whole_number_from_0(bad) -> None:
    message = f"round t must be an integer >= 0, got {bad!r}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build_topology("ring", 5).weights(bad)
