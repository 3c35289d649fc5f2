"""Mixing matrices and checks: formulas, stochasticity, closed-form spectral gaps."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology import (
    WEIGHTS,
    build_graph,
    check_connected,
    check_doubly_stochastic,
    check_symmetric,
    is_b_connected,
    mixing_matrix,
    spectral_gap,
)
from nettrain.topology.weights import (
    _check_edges,
    nonzero_entries,
    sparse_matrix,
    sparse_mixing_matrix,
)

IRREGULAR = [("star", 9), ("tree", 12), ("erdos_renyi", 20)]
REGULAR = [("ring", 8), ("torus", 12), ("complete", 6), ("hypercube", 16), ("exponential", 10)]


def reference_weights(graph: nx.Graph, scheme: str) -> np.ndarray:
    """Per-node loops straight from the formulas, to check the vectorised code against."""
    n = graph.number_of_nodes()
    d_max = max(d for _, d in graph.degree())
    w = np.zeros((n, n))
    for i in range(n):
        for j in graph.neighbors(i):
            w[i, j] = {
                "metropolis": 1 / (1 + max(graph.degree(i), graph.degree(j))),
                "uniform": 1 / (1 + graph.degree(i)),
                "max_degree": 1 / (1 + d_max),
            }[scheme]
        w[i, i] = 1 - w[i].sum()
    return w


CASES = [(kind, n, s) for kind, n in REGULAR for s in WEIGHTS] + [
    (kind, n, s) for kind, n in IRREGULAR for s in ("metropolis", "max_degree")
]


@pytest.mark.parametrize(("kind", "n", "scheme"), CASES)
def test_every_scheme_is_symmetric_doubly_stochastic(kind: str, n: int, scheme: str) -> None:
    w = mixing_matrix(build_graph(kind, n, seed=1), scheme)
    assert w.dtype == torch.float64
    assert w.shape == (n, n)
    check_symmetric(w)
    check_doubly_stochastic(w)
    assert torch.equal(w, w.T)
    assert torch.allclose(w.sum(dim=0), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert bool((w >= 0).all())


@pytest.mark.parametrize(("kind", "n", "scheme"), CASES)
def test_weights_match_the_per_node_formula(kind: str, n: int, scheme: str) -> None:
    graph = build_graph(kind, n, seed=1)
    np.testing.assert_allclose(
        mixing_matrix(graph, scheme).numpy(), reference_weights(graph, scheme)
    )


def test_metropolis_on_a_path_by_hand() -> None:
    # path 0 - 1 - 2: degrees 1, 2, 1; every edge gets 1 / (1 + 2)
    w = mixing_matrix(nx.path_graph(3), "metropolis")
    third = 1 / 3
    expected = [[2 * third, third, 0], [third, third, third], [0, third, 2 * third]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))


def test_uniform_on_a_star_raises_and_says_use_metropolis() -> None:
    with pytest.raises(
        TopologyError,
        match=r"^uniform weights .*regular graphs.*degrees from 1 to 7\. "
        r"Use scheme='metropolis' \(or 'max_degree'\)$",
    ):
        mixing_matrix(build_graph("star", 8), "uniform")


def test_an_isolated_last_agent_has_degree_0() -> None:
    """A triangle on agents 0..2 and agent 3 without edges: degrees (2, 2, 2, 0), so the
    graph is irregular (uniform refused) and agent 3 keeps its own value, ``W_33 = 1``."""
    edges = np.array([[0, 1], [1, 2], [0, 2]])
    with pytest.raises(TopologyError, match="degrees from 0 to 2"):
        sparse_mixing_matrix(4, edges, "uniform")
    third = 1 / 3
    expected = [[third] * 3 + [0.0]] * 3 + [[0.0, 0.0, 0.0, 1.0]]
    for scheme in ("metropolis", "max_degree"):
        w = sparse_mixing_matrix(4, edges, scheme).to_dense()
        torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))


def test_no_agents_give_the_empty_matrix() -> None:
    for scheme in WEIGHTS:
        assert mixing_matrix(nx.empty_graph(0), scheme).shape == (0, 0)


def test_nonzero_entries_drop_stored_zeros_in_row_major_order() -> None:
    """Entries given out of order, one of them a stored 0 and one a 1: the 0 is dropped,
    the rest comes sorted by row then column."""
    w = sparse_matrix(3, [2, 0, 1, 0], [0, 2, 1, 1], [0.25, 1.0, 0.0, 0.5])
    rows, cols, values = nonzero_entries(w)
    assert rows.tolist() == [0, 0, 2]
    assert cols.tolist() == [1, 2, 0]
    assert values.tolist() == [0.5, 1.0, 0.25]


def test_sparse_matrix_has_the_given_size_and_refuses_entries_outside_it() -> None:
    """The size is ``(n, n)`` even when the last rows and columns are empty; an entry
    outside it is an error, not a silently larger or corrupt matrix."""
    w = sparse_matrix(4, [0], [1], [2.0])
    assert w.shape == (4, 4)
    assert w.to_dense()[0, 1] == 2.0
    with pytest.raises(RuntimeError, match="size is inconsistent with indices"):
        sparse_matrix(2, [0], [2], [1.0])


def test_a_topology_is_built_on_the_cpu_whatever_the_default_device() -> None:
    """Under ``with torch.device("meta")`` (a default device holding no values) the mixing
    matrix is still a CPU tensor with its values: the ring's 1/3 weights (metropolis)."""
    with torch.device("meta"):
        dense = mixing_matrix(nx.cycle_graph(4))
        sparse = mixing_matrix(nx.cycle_graph(4), sparse=True)
    expected = (
        torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.float64)
        / 3
    )
    for w in (dense, sparse):
        assert w.device == torch.device("cpu")
        torch.testing.assert_close(w.to_dense(), expected)


def test_edges_are_checked_and_returned_as_int64_pairs() -> None:
    """Labels outside ``0..n-1`` (below or at ``n``) and self-loops are refused, naming
    the range; other integer (or whole-number float) arrays come back as int64 pairs."""
    for bad in ([[-1, 0]], [[0, 3]]):
        with pytest.raises(TopologyError, match=r"^edge endpoints must be agent ids in 0\.\.2$"):
            sparse_mixing_matrix(3, np.array(bad), "metropolis")
    with pytest.raises(
        TopologyError,
        match=r"^edges must not contain self-loops; W_ii is set by the scheme$",
    ):
        sparse_mixing_matrix(3, np.array([[0, 1], [2, 2]]), "metropolis")
    for given in (np.array([0, 1, 1, 2], dtype=np.int32), np.array([[0.0, 1.0], [1.0, 2.0]])):
        edges = _check_edges(3, given)
        assert edges.dtype == np.int64
        assert edges.tolist() == [[0, 1], [1, 2]]


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="metropolis, uniform, max_degree"):
        mixing_matrix(build_graph("ring", 5), "laplacian")


def test_directed_graph_is_refused() -> None:
    with pytest.raises(
        TopologyError,
        match=r"^mixing weights need an undirected graph; pass graph\.to_undirected\(\)$",
    ):
        mixing_matrix(nx.DiGraph(nx.cycle_graph(4)))


def ring_gap_closed_form(n: int) -> float:
    """W = circulant(1/3, 1/3, 1/3): eigenvalues 1/3 + 2/3 cos(2 pi k / n), k = 0..n-1."""
    return 1 - max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))


@pytest.mark.parametrize("n", [3, 5, 8, 16, 31])
@pytest.mark.parametrize("scheme", WEIGHTS)
def test_ring_spectral_gap_has_closed_form(n: int, scheme: str) -> None:
    w = mixing_matrix(build_graph("ring", n), scheme)
    torch.testing.assert_close(w[0, 1], torch.tensor(1 / 3, dtype=torch.float64))
    assert spectral_gap(w) == pytest.approx(ring_gap_closed_form(n), abs=1e-12)


@pytest.mark.parametrize("n", [8, 16])
def test_ring_gap_is_1_minus_lambda_2_for_these_n(n: int) -> None:
    # here the second largest modulus is the k = 1 eigenvalue, not the most negative one
    lambda_2 = 1 / 3 + 2 / 3 * math.cos(2 * math.pi / n)
    assert spectral_gap(mixing_matrix(build_graph("ring", n), "uniform")) == pytest.approx(
        1 - lambda_2, abs=1e-12
    )


def test_complete_graph_with_uniform_weights_is_j_over_n_with_gap_1() -> None:
    w = mixing_matrix(build_graph("complete", 10), "uniform")
    torch.testing.assert_close(w, torch.full((10, 10), 0.1, dtype=torch.float64))
    assert spectral_gap(w) == pytest.approx(1.0, abs=1e-12)


def test_gap_of_a_disconnected_graph_is_0() -> None:
    w = mixing_matrix(nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(4)))
    assert spectral_gap(w) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [4, 5, 8])
def test_gap_of_non_symmetric_one_shift_average(n: int) -> None:
    # W = (I + P) / 2, P the cyclic shift: eigenvalues (1 + w^k) / 2, moduli |cos(pi k / n)|
    w = (
        torch.eye(n, dtype=torch.float64) + torch.roll(torch.eye(n, dtype=torch.float64), 1, 0)
    ) / 2
    check_doubly_stochastic(w)
    assert spectral_gap(w) == pytest.approx(1 - math.cos(math.pi / n), abs=1e-12)


def test_gap_of_a_single_agent_is_1() -> None:
    assert spectral_gap(torch.ones(1, 1, dtype=torch.float64)) == 1.0


def test_check_connected_names_the_components() -> None:
    graph = nx.disjoint_union(nx.cycle_graph(5), nx.path_graph(3))
    with pytest.raises(
        TopologyError,
        match=r"2 components of sizes \[5, 3\] \(\{0, 1, 2, 3, 4\}, "
        r"\{5, 6, 7\}\).*[Aa]dd edges",
    ):
        check_connected(graph)
    check_connected(build_graph("ring", 5))


def test_check_connected_uses_weak_connectivity_for_digraphs() -> None:
    check_connected(nx.DiGraph([(0, 1), (2, 1)]))
    with pytest.raises(TopologyError, match="2 components"):
        check_connected(nx.DiGraph([(0, 1), (2, 3)]))


def test_check_symmetric_names_the_worst_pair() -> None:
    w = torch.eye(3, dtype=torch.float64)
    w[0, 2] = 0.25
    with pytest.raises(TopologyError, match=r"W\[0,2\]=0.25 but W\[2,0\]=0"):
        check_symmetric(w)
    check_symmetric(w, atol=0.3)


def test_check_doubly_stochastic_names_the_worst_row() -> None:
    w = mixing_matrix(build_graph("ring", 6)).clone()
    w[4, 4] += 1e-3
    with pytest.raises(TopologyError, match=r"row 4 sums to 1.001.*metropolis"):
        check_doubly_stochastic(w)


def test_check_doubly_stochastic_checks_columns_too() -> None:
    rows = [[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.2, 0.0, 0.8]]  # row stochastic only
    w = torch.tensor(rows, dtype=torch.float64)
    with pytest.raises(TopologyError, match=r"column 0 sums to 1.4"):
        check_doubly_stochastic(w)


def test_check_doubly_stochastic_rejects_negative_entries() -> None:
    w = torch.tensor([[1.5, -0.5], [-0.5, 1.5]], dtype=torch.float64)
    with pytest.raises(TopologyError, match=r"negative entry W\[0,1\]=-0.5"):
        check_doubly_stochastic(w)


def test_checks_reject_non_square_matrices() -> None:
    with pytest.raises(TopologyError, match="square"):
        check_symmetric(torch.ones(2, 3))


def test_is_b_connected_on_alternating_halves() -> None:
    left = nx.Graph([(0, 1), (2, 3)])
    right = nx.Graph([(1, 2), (3, 0)])
    assert is_b_connected([left, right] * 3, window=2)
    assert not is_b_connected([left, right] * 3, window=1)
    assert not is_b_connected([left, left, right], window=2)
    with pytest.raises(ConfigError, match="window"):
        is_b_connected([left], window=2)
    with pytest.raises(ConfigError, match="window"):
        is_b_connected([left], window=0)
