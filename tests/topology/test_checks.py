"""The topology checks: their boundaries, their messages, and the gap of non-symmetric W."""

from __future__ import annotations

import math
import re

import networkx as nx
import pytest
import torch

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology import (
    check_connected,
    check_doubly_stochastic,
    check_symmetric,
    is_b_connected,
    spectral_gap,
)


def paths(*sizes: int) -> nx.Graph:
    """Disjoint paths of the given sizes on agents 0, 1, ... in order."""
    graph = nx.Graph()
    start = 0
    for size in sizes:
        nx.add_path(graph, range(start, start + size))
        start += size
    return graph


def message_of(graph: nx.Graph) -> str:
    with pytest.raises(TopologyError) as error:
        check_connected(graph)
    return str(error.value)


def test_at_most_four_components_of_at_most_six_agents_are_shown() -> None:
    """Components largest first; six agents of each in numeric order (10 after 9, not
    after 1), then ``...`` for a larger one; ``...`` for a fifth component."""
    shown = (
        "5 components of sizes [12, 8, 7, 6, 2] ({0, 1, 2, 3, 4, 5, ...}, "
        "{12, 13, 14, 15, 16, 17, ...}, {20, 21, 22, 23, 24, 25, ...}, "
        "{27, 28, 29, 30, 31, 32}, ...); agents in different components"
    )
    assert shown in message_of(paths(12, 8, 7, 6, 2))


def test_four_components_are_all_shown() -> None:
    shown = "4 components of sizes [6, 3, 2, 1] ({0, 1, 2, 3, 4, 5}, {6, 7, 8}, {9, 10}, {11});"
    assert shown in message_of(paths(6, 3, 2, 1))


def test_agents_without_an_order_are_listed_by_name() -> None:
    graph = nx.Graph([("b", 1), ("a", "c")])
    assert "of sizes [2, 2] ({1, b}, {a, c})" in message_of(graph)


def test_the_whole_message_of_a_disconnected_graph() -> None:
    message = (
        "graph is disconnected: 2 components of sizes [2, 1] ({0, 1}, {2}); agents in "
        "different components never reach consensus. Add edges between them or use a "
        "denser graph (for erdos_renyi raise edge_prob)"
    )
    with pytest.raises(TopologyError, match=f"^{re.escape(message)}$"):
        check_connected(paths(2, 1))
    empty = "graph has no agents; build it with at least 2 nodes"
    with pytest.raises(TopologyError, match=f"^{re.escape(empty)}$"):
        check_connected(nx.Graph())


def test_the_largest_component_comes_first_whatever_the_agent_numbers() -> None:
    assert "2 components of sizes [5, 2] ({2, 3, 4, 5, 6}, {0, 1})" in message_of(paths(2, 5))


def test_symmetry_is_checked_to_atol_inclusive_and_names_both_entries() -> None:
    w = torch.eye(3, dtype=torch.float64)
    w[0, 2], w[2, 0] = 0.25, 0.125
    message = (
        "mixing matrix is not symmetric: W[0,2]=0.25 but W[2,0]=0.125; build it with "
        "mixing_matrix(graph, 'metropolis') on an undirected graph"
    )
    with pytest.raises(TopologyError, match=f"^{re.escape(message)}$"):
        check_symmetric(w, atol=0.1)
    check_symmetric(w, atol=0.125)  # |W_02 - W_20| = atol exactly: within it
    check_symmetric(torch.zeros(3, 3))  # no entry at all


FIX = "build W with mixing_matrix(graph, 'metropolis')"


def test_stochasticity_is_checked_to_atol_inclusive() -> None:
    """A negative entry of exactly ``-atol`` and a row sum off by exactly ``atol`` pass;
    a positive entry below ``atol`` is not negative."""
    check_doubly_stochastic(torch.tensor([[1.5, -0.5], [-0.5, 1.5]]), atol=0.5)
    check_doubly_stochastic(torch.tensor([[1.5, 0.0], [0.0, 1.0]]), atol=0.5)
    tiny = 1e-11
    check_doubly_stochastic(torch.tensor([[1 - tiny, tiny], [tiny, 1 - tiny]], dtype=torch.float64))


def test_the_row_named_is_the_one_farthest_from_1_below_or_above() -> None:
    w = torch.tensor([[0.5, 0.0], [0.1, 1.0]], dtype=torch.float64)  # rows 0.5 and 1.1
    message = (
        "mixing matrix is not doubly stochastic: row 0 sums to 0.5 (worst of all rows, "
        f"tolerance 1e-10); {FIX}"
    )
    with pytest.raises(TopologyError, match=f"^{re.escape(message)}$"):
        check_doubly_stochastic(w)


def test_non_finite_and_negative_entries_are_named_with_the_fix() -> None:
    with pytest.raises(
        TopologyError, match=f"^{re.escape(f'mixing matrix has NaN or infinite entries; {FIX}')}$"
    ):
        check_doubly_stochastic(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(TopologyError, match=re.escape(f"W[0,1]=-0.5; {FIX}") + "$"):
        check_doubly_stochastic(torch.tensor([[1.5, -0.5], [-0.5, 1.5]]))


def test_a_matrix_gets_one_verdict_dense_or_sparse_in_any_float_dtype() -> None:
    """Rows of float32 ``0.1, 0.2, 0.7`` sum to 1 in float32 but to ``1 - 7.5e-9`` in the
    values they hold: checked in float64, dense or sparse, the matrix is refused."""
    row = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float32)
    w = torch.stack([row, row.roll(1), row.roll(2)])
    for given in (w, w.to_sparse(), w.numpy()):
        with pytest.raises(TopologyError, match=r"row 0 sums to 0\.999999992549 "):
            check_doubly_stochastic(given)
    check_doubly_stochastic(w.to_sparse(), atol=1e-8)


def test_spectral_gap_of_a_non_symmetric_circulant_is_its_second_modulus() -> None:
    """Circulant rows ``(1/2, c_1, c_2)``: eigenvalues ``1`` and ``1/2 + c_1 w + c_2 w^2``
    (``w = e^{2 pi i / 3}``), of modulus ``sqrt((1/2 - (c_1 + c_2)/2)^2 + 3/4 (c_1 - c_2)^2)``.
    ``(1/5, 3/10)`` is far from symmetric although each ``|W_ij - W_ji| <= W_ji``; with
    ``c_1 - c_2 = 2e-9`` it is within 1e-8 of symmetric, far above 1e-12: both need the
    general eigenvalue solver (the symmetric one reads half of ``W``)."""
    for c1, c2 in [(0.2, 0.3), (0.25 + 1e-9, 0.25 - 1e-9)]:
        row = torch.tensor([0.5, c1, c2], dtype=torch.float64)
        w = torch.stack([row, row.roll(1), row.roll(2)])
        modulus = math.sqrt((0.5 - (c1 + c2) / 2) ** 2 + 0.75 * (c1 - c2) ** 2)
        assert spectral_gap(w) == pytest.approx(1 - modulus, abs=1e-13)


def test_spectral_gap_is_computed_in_float64_from_any_input() -> None:
    w = torch.full((4, 4), 0.25)  # J / n, exact in float32: gap 1
    for given in (w, w.numpy(), w.to_sparse()):
        assert spectral_gap(given) == pytest.approx(1.0, abs=1e-13)


def test_b_connectivity_with_exactly_window_graphs_and_with_one_graph() -> None:
    left, right = nx.Graph([(0, 1), (2, 3)]), nx.Graph([(1, 2), (3, 0)])
    assert is_b_connected([left, right], window=2)
    assert is_b_connected([nx.cycle_graph(4)], window=1)
    with pytest.raises(ConfigError, match=r"^window must be an integer >= 1, got True$"):
        is_b_connected([left, right], window=True)
    message = "all graphs of a schedule must have the same agents"
    with pytest.raises(TopologyError, match=f"^{message}$"):
        is_b_connected([left, nx.cycle_graph(5)], window=1)
