"""Identities of the graph families in nettrain.topology.graphs."""

from __future__ import annotations

import math
import re

import networkx as nx
import numpy as np
import pytest

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology import GRAPHS, build_graph
from nettrain.topology.graphs import _canonical, derived_seed, edge_array


def edge_set(graph: nx.Graph) -> set[frozenset[int]]:
    return {frozenset(e) for e in graph.edges()}


def degrees(graph: nx.Graph) -> set[int]:
    return {d for _, d in graph.degree()}


@pytest.mark.parametrize("kind", GRAPHS)
def test_every_kind_is_undirected_connected_on_agents_0_to_n_minus_1(kind: str) -> None:
    graph = build_graph(kind, 16)
    assert list(graph.nodes) == list(range(16))
    assert not graph.is_directed()
    assert nx.is_connected(graph)
    assert nx.number_of_selfloops(graph) == 0
    assert graph.graph["kind"] == kind


@pytest.mark.parametrize("n", [3, 4, 10, 33])
def test_ring_is_circulant_with_offset_1(n: int) -> None:
    assert edge_set(build_graph("ring", n)) == edge_set(nx.circulant_graph(n, [1]))


@pytest.mark.parametrize(("n", "shape"), [(9, (3, 3)), (12, (3, 4)), (16, (4, 4)), (20, (4, 5))])
def test_torus_is_4_regular_periodic_grid_row_major(n: int, shape: tuple[int, int]) -> None:
    rows, cols = shape
    graph = build_graph("torus", n)
    assert degrees(graph) == {4}
    assert graph.number_of_edges() == 2 * n
    expected = set()
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            expected.add(frozenset((i, r * cols + (c + 1) % cols)))
            expected.add(frozenset((i, ((r + 1) % rows) * cols + c)))
    assert edge_set(graph) == expected


@pytest.mark.parametrize("n", [4, 7, 10, 14])
def test_torus_with_fewer_than_3_rows_names_sizes_that_work(n: int) -> None:
    with pytest.raises(TopologyError, match=r"torus needs .*9, 12, 16"):
        build_graph("torus", n)


def test_complete_has_all_pairs() -> None:
    graph = build_graph("complete", 7)
    assert graph.number_of_edges() == 7 * 6 // 2
    assert degrees(graph) == {6}


def test_star_has_centre_0() -> None:
    graph = build_graph("star", 9)
    assert graph.degree(0) == 8
    assert all(graph.degree(i) == 1 for i in range(1, 9))
    assert edge_set(graph) == {frozenset((0, i)) for i in range(1, 9)}


@pytest.mark.parametrize(("n", "branching"), [(2, 2), (15, 2), (13, 3), (6, 1)])
def test_tree_is_a_full_rary_tree_in_bfs_order(n: int, branching: int) -> None:
    graph = build_graph("tree", n, branching=branching)
    assert nx.is_tree(graph)
    assert edge_set(graph) == {frozenset((i, (i - 1) // branching)) for i in range(1, n)}


@pytest.mark.parametrize(("n", "degree"), [(8, 5), (12, 6), (16, 7), (5, 4), (2, 1)])
def test_exponential_links_i_to_i_plus_powers_of_2(n: int, degree: int) -> None:
    graph = build_graph("exponential", n)
    expected = {frozenset((i, (i + 2**k) % n)) for i in range(n) for k in range(n) if 2**k < n}
    assert edge_set(graph) == expected
    assert degrees(graph) == {degree}


def test_exponential_degree_is_2_log2_n_minus_1_for_powers_of_2() -> None:
    for d in range(2, 7):
        assert degrees(build_graph("exponential", 2**d)) == {2 * d - 1}


@pytest.mark.parametrize("n", [2, 4, 8, 32])
def test_hypercube_links_labels_differing_in_one_bit(n: int) -> None:
    graph = build_graph("hypercube", n)
    d = int(math.log2(n))
    assert degrees(graph) == {d}
    assert edge_set(graph) == {frozenset((i, i ^ (1 << k))) for i in range(n) for k in range(d)}


def test_hypercube_needs_power_of_two() -> None:
    with pytest.raises(TopologyError, match=r"power of 2.*n=8 or n=16"):
        build_graph("hypercube", 12)


def test_random_regular_has_the_asked_degree_and_is_seeded() -> None:
    graph = build_graph("random_regular", 20, degree=3, seed=5)
    assert degrees(graph) == {3}
    assert edge_set(graph) == edge_set(build_graph("random_regular", 20, degree=3, seed=5))
    assert edge_set(graph) != edge_set(build_graph("random_regular", 20, degree=3, seed=6))


@pytest.mark.parametrize(("n", "degree"), [(9, 3), (6, 6), (6, 7), (5, 1)])
def test_random_regular_rejects_impossible_degree(n: int, degree: int) -> None:
    with pytest.raises(TopologyError, match="degree"):
        build_graph("random_regular", n, degree=degree)


def test_erdos_renyi_is_connected_and_deterministic_in_seed() -> None:
    a = build_graph("erdos_renyi", 40, seed=3)
    assert nx.is_connected(a)
    assert edge_set(a) == edge_set(build_graph("erdos_renyi", 40, seed=3))
    assert edge_set(a) != edge_set(build_graph("erdos_renyi", 40, seed=4))


def test_erdos_renyi_default_edge_prob_is_2_ln_n_over_n() -> None:
    n = 400
    graph = build_graph("erdos_renyi", n, seed=1)
    expected = 2 * math.log(n) / n * n * (n - 1) / 2
    assert abs(graph.number_of_edges() - expected) < 5 * math.sqrt(expected)


def test_erdos_renyi_with_tiny_edge_prob_gives_up_and_names_the_fix() -> None:
    with pytest.raises(TopologyError, match=r"disconnected in all 3 tries; raise edge_prob"):
        build_graph("erdos_renyi", 30, edge_prob=0.01, max_tries=3)


@pytest.mark.parametrize("edge_prob", [0.0, -0.1, 1.5])
def test_erdos_renyi_rejects_edge_prob_outside_0_1(edge_prob: float) -> None:
    with pytest.raises(ConfigError, match="edge_prob"):
        build_graph("erdos_renyi", 10, edge_prob=edge_prob)


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="ring, torus, complete"):
        build_graph("mesh", 8)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        build_graph("mesh", 8)


@pytest.mark.parametrize(
    ("kind", "n", "minimum"), [("ring", 2, 3), ("complete", 0, 1), ("star", 0, 2), ("tree", 1, 2)]
)
def test_too_few_agents_is_an_error(kind: str, n: int, minimum: int) -> None:
    with pytest.raises(TopologyError, match=f"needs n >= {minimum}"):
        build_graph(kind, n)


def test_one_agent_is_a_complete_graph_of_one_node() -> None:
    graph = build_graph("complete", 1)
    assert list(graph.nodes) == [0] and graph.number_of_edges() == 0


@pytest.mark.parametrize("bad", [2.0, "8", True, -3])
def test_n_must_be_a_nonnegative_integer(bad: object) -> None:
    with pytest.raises(ConfigError, match="n must be"):
        build_graph("ring", bad)  # type: ignore[arg-type]


def test_edge_array_is_sorted_unique_and_independent_of_insertion_order() -> None:
    a = nx.Graph()
    a.add_nodes_from(range(4))
    a.add_edges_from([(3, 1), (0, 2), (2, 1), (2, 2)])
    b = nx.Graph()
    b.add_nodes_from([3, 2, 1, 0])
    b.add_edges_from([(1, 2), (1, 3), (2, 0)])
    assert edge_array(a).tolist() == [[0, 2], [1, 2], [1, 3]]
    assert edge_array(b).tolist() == edge_array(a).tolist()


def test_edge_array_rejects_labels_other_than_agent_ids() -> None:
    with pytest.raises(TopologyError, match="convert_node_labels_to_integers"):
        edge_array(nx.path_graph(["a", "b", "c"]))


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(4, "[9, 12]"), (10, "[9, 12, 15]"), (14, "[9, 12, 15, 16]"), (22, "[20, 21, 24, 25]")],
)
def test_torus_error_names_the_two_nearest_sizes_on_each_side(n: int, sizes: str) -> None:
    """Sizes with at least 3 rows: 9 = 3x3, 12 = 3x4, 15 = 3x5, 16 = 4x4, 20 = 4x5, 21 = 3x7,
    24 = 4x6, 25 = 5x5 (10 = 2x5, 11, 13, 14 = 2x7, 22 = 2x11, 23 and 4 = 2x2 do not);
    none below 9."""
    tail = f"n={n} gives 2 x {n // 2}. Use e.g. n in {sizes} (9, 12, 16, 20, 25, ... work)"
    with pytest.raises(TopologyError, match=re.escape(tail) + "$"):
        build_graph("torus", n)


def test_random_regular_of_degree_1_is_one_edge_and_nothing_larger() -> None:
    assert edge_set(build_graph("random_regular", 2, degree=1)) == {frozenset((0, 1))}
    message = (
        "random_regular with degree 1 is a perfect matching, disconnected for n=4; use degree >= 3"
    )
    with pytest.raises(TopologyError, match=f"^{message}$"):
        build_graph("random_regular", 4, degree=1)


def test_random_regular_of_degree_2_is_a_cycle_through_every_agent() -> None:
    graph = build_graph("random_regular", 6, degree=2, seed=1)
    assert degrees(graph) == {2} and nx.is_connected(graph)


def test_random_regular_gives_up_and_names_the_fix() -> None:
    """A random 2-regular graph on 200 agents is a union of cycles, rarely one."""
    message = (
        "random_regular(n=200, degree=2) was disconnected in all 2 tries; use degree >= 3 or "
        "raise max_tries"
    )
    with pytest.raises(TopologyError, match=rf"^{re.escape(message)}$"):
        build_graph("random_regular", 200, degree=2, max_tries=2)


def test_erdos_renyi_refuses_a_boolean_edge_prob() -> None:
    with pytest.raises(ConfigError, match=r"^edge_prob must be a number in \(0, 1\], got True$"):
        build_graph("erdos_renyi", 10, edge_prob=True)


def test_derived_seeds_are_distinct_across_streams_and_fixed_by_the_seed() -> None:
    seeds = [derived_seed(7, stream) for stream in range(10)]
    assert len(set(seeds)) == 10 and all(0 <= s < 2**32 for s in seeds)
    assert seeds == [derived_seed(7, stream) for stream in range(10)]
    assert seeds != [derived_seed(8, stream) for stream in range(10)]


def test_erdos_renyi_takes_edge_prob_1_and_names_its_default_when_it_gives_up() -> None:
    assert edge_set(build_graph("erdos_renyi", 6, edge_prob=1.0)) == edge_set(nx.complete_graph(6))
    message = (
        "erdos_renyi(n=30, edge_prob=0.01) was disconnected in all 3 tries; raise edge_prob "
        "above the connectivity threshold ln(n)/n = 0.1134 (the default is 0.2267) or raise "
        "max_tries"
    )
    with pytest.raises(TopologyError, match=f"^{re.escape(message)}$"):
        build_graph("erdos_renyi", 30, edge_prob=0.01, max_tries=3)


def test_build_graph_defaults() -> None:
    """Seed 0, degree 4, branching 2, 100 tries."""
    assert edge_set(build_graph("random_regular", 10)) == edge_set(
        build_graph("random_regular", 10, seed=0, degree=4)
    )
    assert edge_set(build_graph("tree", 13)) == edge_set(build_graph("tree", 13, branching=2))
    with pytest.raises(TopologyError, match="disconnected in all 100 tries"):
        build_graph("erdos_renyi", 30, edge_prob=0.01)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("seed", -1, "seed must be >= 0, got -1"),
        ("seed", 1.5, "seed must be an integer, got 1.5"),
        ("degree", 0, "degree must be >= 1, got 0"),
        ("branching", 0, "branching must be >= 1, got 0"),
        ("max_tries", 0, "max_tries must be >= 1, got 0"),
        ("max_tries", True, "max_tries must be an integer, got True"),
    ],
)
def test_build_graph_arguments_are_checked_by_name(argument: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build_graph("ring", 5, **{argument: value})


def test_one_try_is_enough_when_it_is_connected() -> None:
    assert nx.is_connected(build_graph("random_regular", 10, degree=3, max_tries=1))


def test_edges_need_agents_0_to_n_minus_1_and_come_sorted_once() -> None:
    message = (
        "graph nodes must be the agent ids 0..n-1; relabel with "
        "networkx.convert_node_labels_to_integers(graph)"
    )
    with pytest.raises(TopologyError, match=f"^{re.escape(message)}$"):
        edge_array(nx.Graph([(1, 2)]))
    graph = nx.Graph([(3, 1), (0, 3), (2, 2)])  # a self-loop, edges given high to low
    assert edge_array(graph).tolist() == [[0, 3], [1, 3]]
    empty = edge_array(nx.Graph())
    assert empty.shape == (0, 2) and empty.dtype == np.int64


def test_a_graph_is_relabelled_to_a_plain_graph_on_agents_in_order() -> None:
    shuffled = nx.Graph([(2, 0), (0, 1)])  # nodes in the order 2, 0, 1
    canonical = _canonical(shuffled)
    assert list(canonical.nodes) == [0, 1, 2] and edge_set(canonical) == edge_set(shuffled)
    multi = _canonical(nx.MultiGraph([(0, 1), (0, 1), (1, 2)]))
    assert type(multi) is nx.Graph and multi.number_of_edges() == 2
    plain = nx.path_graph(3)
    assert _canonical(plain) is plain
