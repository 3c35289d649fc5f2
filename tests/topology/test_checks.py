"""The messages of the topology checks: which components, which agents, in which order."""

from __future__ import annotations

import re

import networkx as nx
import pytest

from nettrain.errors import TopologyError
from nettrain.topology import check_connected


def paths(*sizes: int) -> nx.Graph:
    """Disjoint paths of the given sizes on agents 0, 1, ... in order."""
    graph = nx.Graph()
    start = 0
    for size in sizes:
        nx.add_path(graph, range(start, start + size)) if size > 1 else graph.add_node(start)
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
