"""Communication graphs over agents ``0..n-1``, built with networkx generators.

Every builder returns an undirected :class:`networkx.Graph` whose nodes are exactly the
integers ``0..n-1`` (agent ids), inserted in that order, and stores the family name in
``graph.graph["kind"]``. Random families are deterministic in ``seed``: they derive
integer seeds with :class:`numpy.random.SeedSequence` and never touch a global RNG.

=================  ================================================================
kind               edges (indices mod n where relevant)
=================  ================================================================
``ring``           ``{i, i+1}``; ``nx.cycle_graph``; degree 2
``torus``          ``rows x cols`` periodic grid, node ``r*cols + c``; degree 4
``complete``       every pair; ``W`` with uniform weights is ``J/n``
``star``           centre 0 linked to ``1..n-1``; ``nx.star_graph``
``tree``           full ``branching``-ary tree in BFS order; ``nx.full_rary_tree``
``erdos_renyi``    each pair with probability ``edge_prob``, resampled until connected
``random_regular`` uniform random ``degree``-regular graph, resampled until connected
``exponential``    ``{i, i + 2^k}`` for all ``2^k < n`` (Assran et al., SGP, ICML 2019)
``hypercube``      ``{i, i XOR 2^k}``, ``n = 2^d``; degree ``log2 n``
=================  ================================================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx
import numpy as np

from nettrain.errors import ConfigError, TopologyError

GRAPHS: tuple[str, ...] = (
    "ring",
    "torus",
    "complete",
    "star",
    "tree",
    "erdos_renyi",
    "random_regular",
    "exponential",
    "hypercube",
)


@dataclass(frozen=True)
class _Params:
    """Keyword arguments of :func:`build_graph`, after validation."""

    seed: int
    degree: int
    edge_prob: float | None
    branching: int
    max_tries: int


def build_graph(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    degree: int = 4,
    edge_prob: float | None = None,
    branching: int = 2,
    max_tries: int = 100,
) -> nx.Graph:
    """Build the undirected graph ``kind`` over agents ``0..n-1``.

    Args:
        kind: one of :data:`GRAPHS`.
        n: number of agents (at least 2, or 1 for ``complete``; at least 3 for ``ring``;
            see the table above for the families that constrain ``n``).
        seed: seed of the random families (``erdos_renyi``, ``random_regular``).
        degree: degree of ``random_regular``.
        edge_prob: edge probability of ``erdos_renyi``; default ``2 ln(n) / n`` (below 1
            for every ``n``), twice the connectivity threshold ``ln(n) / n`` (Erdős &
            Rényi, 1960).
        branching: number of children per node of ``tree``.
        max_tries: how many seeds the random families try before giving up on
            connectivity.

    Raises:
        ConfigError: unknown ``kind`` or an argument out of range.
        TopologyError: ``n`` does not fit the family, or no connected sample was found.
    """
    if kind not in _BUILDERS:
        raise ConfigError(f"unknown graph kind {kind!r}; choose one of {', '.join(GRAPHS)}")
    n = _check_int("n", n, minimum=0)
    minimum = {"ring": 3, "complete": 1}.get(kind, 2)
    if n < minimum:
        raise TopologyError(f"graph {kind!r} needs n >= {minimum} agents, got n={n}")
    params = _Params(
        seed=_check_int("seed", seed, minimum=0),
        degree=_check_int("degree", degree, minimum=1),
        edge_prob=edge_prob,
        branching=_check_int("branching", branching, minimum=1),
        max_tries=_check_int("max_tries", max_tries, minimum=1),
    )
    graph = _BUILDERS[kind](n, params)
    graph.graph["kind"] = kind
    return graph


def edge_array(graph: nx.Graph) -> np.ndarray:
    """Return the undirected edges of ``graph`` as a sorted ``(m, 2)`` int64 array.

    Each edge appears once as ``(min(u, v), max(u, v))``, rows in lexicographic order, so
    the result does not depend on the order edges were inserted. Self-loops are dropped.

    Raises:
        TopologyError: the nodes are not exactly the integers ``0..n-1``.
    """
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise TopologyError(
            "graph nodes must be the agent ids 0..n-1; relabel with "
            "networkx.convert_node_labels_to_integers(graph)"
        )
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 2)  # (m, 2)
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    codes = np.unique(edges[:, 0] * n + edges[:, 1])  # sorted, deduplicated
    return np.stack([codes // n, codes % n], axis=1)  # (m, 2)


def derived_seed(seed: int, stream: int) -> int:
    """Return a 32-bit seed for ``stream`` (e.g. a retry number) derived from ``seed``.

    Uses ``SeedSequence(seed, spawn_key=(stream,))``, so distinct streams get
    statistically independent seeds and nothing depends on global random state.
    """
    state = np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1)
    return int(state[0])


def _check_int(name: str, value: int, *, minimum: int) -> int:
    """Return ``value`` as an int, or raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _on_agents(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    """Return a graph with nodes ``0..n-1`` (in order) and the given edges."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def _canonical(graph: nx.Graph) -> nx.Graph:
    """Return ``graph`` if its nodes are ``0..n-1`` in order, else a copy with that order."""
    n = graph.number_of_nodes()
    if list(graph.nodes) == list(range(n)) and type(graph) is nx.Graph:
        return graph
    return _on_agents(n, graph.edges())


def _ring(n: int, p: _Params) -> nx.Graph:
    """Cycle ``{i, i+1 mod n}``."""
    return _canonical(nx.cycle_graph(n))


def _torus_shape(n: int) -> tuple[int, int]:
    """Return ``(rows, cols)`` with ``rows`` the largest divisor of ``n`` with ``rows^2 <= n``."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def _torus_sizes_near(n: int, count: int = 2) -> list[int]:
    """Return up to ``count`` agent counts below and ``count`` above ``n`` that make a
    torus (every multiple of 3 from 9 does, as ``3 x m/3``: the search above ends)."""

    def fits(m: int) -> bool:
        return _torus_shape(m)[0] >= 3

    below = itertools.islice(filter(fits, range(n - 1, 8, -1)), count)
    above = itertools.islice(filter(fits, itertools.count(max(n + 1, 9))), count)
    return sorted([*below, *above])


def _torus(n: int, p: _Params) -> nx.Graph:
    """Periodic ``rows x cols`` grid, node ``(r, c)`` relabelled ``r * cols + c``.

    Needs ``rows >= 3``: with 2 rows the up and down neighbours coincide and the degree
    drops to 3.
    """
    rows, cols = _torus_shape(n)
    if rows < 3:
        raise TopologyError(
            f"torus needs n = rows x cols with 3 <= rows <= cols (rows = largest divisor of "
            f"n <= sqrt(n)); n={n} gives {rows} x {cols}. Use e.g. n in "
            f"{_torus_sizes_near(n)} (9, 12, 16, 20, 25, ... work)"
        )
    grid = nx.grid_2d_graph(rows, cols, periodic=True)
    return _on_agents(n, ((r * cols + c, s * cols + d) for (r, c), (s, d) in grid.edges()))


def _complete(n: int, p: _Params) -> nx.Graph:
    """All ``n (n - 1) / 2`` pairs."""
    return _canonical(nx.complete_graph(n))


def _star(n: int, p: _Params) -> nx.Graph:
    """Centre 0 linked to leaves ``1..n-1``."""
    return _canonical(nx.star_graph(n - 1))


def _tree(n: int, p: _Params) -> nx.Graph:
    """Full ``branching``-ary tree; node ``i > 0`` has parent ``(i - 1) // branching``."""
    return _canonical(nx.full_rary_tree(p.branching, n))


def _exponential(n: int, p: _Params) -> nx.Graph:
    """Circulant graph with offsets ``2^k < n``: edges ``{i, (i + 2^k) mod n}``
    (``k < ceil(log2 n)``, the bit length of ``n - 1``)."""
    offsets = [2**k for k in range((n - 1).bit_length())]
    return _canonical(nx.circulant_graph(n, offsets))


def _hypercube(n: int, p: _Params) -> nx.Graph:
    """``d``-cube for ``n = 2^d``; bit tuple ``(b_1, ..., b_d)`` relabelled to its binary value."""
    if n & (n - 1):
        low = 1 << (n.bit_length() - 1)
        raise TopologyError(
            f"hypercube needs n to be a power of 2, got n={n}; use n={low} or n={2 * low}"
        )
    cube = nx.hypercube_graph(n.bit_length() - 1)

    def label(bits: tuple[int, ...] | int) -> int:  # networkx gives plain 0/1 when d = 1
        return int("".join(map(str, bits if isinstance(bits, tuple) else (bits,))), 2)

    return _on_agents(n, ((label(u), label(v)) for u, v in cube.edges()))


def _first_connected(
    sample: Callable[[int], nx.Graph], seed: int, max_tries: int
) -> nx.Graph | None:
    """Return the first connected ``sample(derived_seed(seed, k))``, ``k < max_tries``."""
    for attempt in range(max_tries):
        graph = sample(derived_seed(seed, attempt))
        if nx.is_connected(graph):
            return graph
    return None


def _erdos_renyi(n: int, p: _Params) -> nx.Graph:
    """G(n, p) sampled with ``nx.fast_gnp_random_graph`` (O(n + m)), resampled until connected."""
    threshold = math.log(n) / n
    prob = 2.0 * threshold if p.edge_prob is None else p.edge_prob  # 2 ln(n)/n <= 2/e
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 < prob <= 1.0:
        raise ConfigError(f"edge_prob must be a number in (0, 1], got {prob!r}")
    graph = _first_connected(
        lambda s: _canonical(nx.fast_gnp_random_graph(n, prob, seed=s)),
        p.seed,
        p.max_tries,
    )
    if graph is None:
        raise TopologyError(
            f"erdos_renyi(n={n}, edge_prob={prob:.4g}) was disconnected in all {p.max_tries} "
            f"tries; raise edge_prob above the connectivity threshold ln(n)/n = {threshold:.4g} "
            f"(the default is {2.0 * threshold:.4g}) or raise max_tries"
        )
    return graph


def _random_regular(n: int, p: _Params) -> nx.Graph:
    """Uniform random ``degree``-regular graph (``nx.random_regular_graph``), resampled until
    connected (almost surely connected at once for ``degree >= 3``)."""
    if p.degree >= n or (n * p.degree) % 2:
        raise TopologyError(
            f"random_regular needs degree < n and n * degree even; got n={n}, degree={p.degree}"
        )
    if p.degree == 1 and n > 2:
        raise TopologyError(
            f"random_regular with degree 1 is a perfect matching, disconnected for n={n}; "
            "use degree >= 3"
        )
    graph = _first_connected(
        lambda s: _canonical(nx.random_regular_graph(p.degree, n, seed=s)),
        p.seed,
        p.max_tries,
    )
    if graph is None:
        raise TopologyError(
            f"random_regular(n={n}, degree={p.degree}) was disconnected in all "
            f"{p.max_tries} tries; use degree >= 3 or raise max_tries"
        )
    return graph


_BUILDERS: dict[str, Callable[[int, _Params], nx.Graph]] = {
    "ring": _ring,
    "torus": _torus,
    "complete": _complete,
    "star": _star,
    "tree": _tree,
    "erdos_renyi": _erdos_renyi,
    "random_regular": _random_regular,
    "exponential": _exponential,
    "hypercube": _hypercube,
}
