"""Topologies: the communication graph and mixing matrix ``W(t)`` of every round ``t``.

Convention: one gossip round is ``x <- W(t) @ x`` with ``x: (n_agents, d)``, so ``W[i, j]``
is the weight agent ``i`` gives to the value it receives from agent ``j``.

Time-varying schedules draw round ``t`` from ``np.random.default_rng([seed, t])``: ``W(t)``
is a pure function of ``(seed, t)``. Every process of a distributed run derives the same
schedule on its own, in any order, without communicating.

==========================  ===========================================================
schedule                    round ``t``
==========================  ===========================================================
``static``                  the base graph and its ``W`` every round
``edge_drop``               each base edge dropped with probability ``drop_prob``;
                            ``W`` recomputed on the surviving graph
``one_peer_exponential``    ``i`` sends to ``i + 2^k`` with ``k = t mod ceil(log2 n)``,
                            ``W = (I + P_k) / 2`` (Assran et al., "Stochastic Gradient
                            Push", ICML 2019; Ying et al., NeurIPS 2021)
``random_matching``         a random maximal matching ``M`` of the base graph,
                            ``W = I - 1/2 sum_{(i,j) in M} (e_i - e_j)(e_i - e_j)^T``
                            (Boyd et al., "Randomized gossip algorithms", 2006)
==========================  ===========================================================
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import torch

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology.checks import (
    check_connected,
    check_doubly_stochastic,
    check_symmetric,
    spectral_gap,
)
from nettrain.topology.graphs import GRAPHS, build_graph, edge_array
from nettrain.topology.weights import (
    check_scheme,
    mixing_matrix,
    nonzero_entries,
    sparse_matrix,
    sparse_mixing_matrix,
)

SCHEDULES: tuple[str, ...] = ("static", "edge_drop", "one_peer_exponential", "random_matching")

DESCRIBE_ROUNDS = 20
"""Rounds ``0..DESCRIBE_ROUNDS-1`` that :func:`describe` samples for a time-varying topology."""
SPECTRAL_MAX_AGENTS = 2048
"""Beyond this many agents :func:`describe` leaves out the spectral gaps (an ``O(n^3)``
eigendecomposition of a dense ``n x n`` matrix): ``None``."""


class Topology(ABC):
    """Who talks to whom in round ``t`` and with which weights; pure data.

    Attributes:
        n: number of agents ``0..n-1``.
        name: short label, ``"<graph kind>/<schedule>"``.
        schedule: one of :data:`SCHEDULES`.
        scheme: how weights are set (one of ``WEIGHTS`` or a schedule-specific rule).
        time_varying: whether ``W(t)`` depends on ``t``.
        base_graph: the static graph, or the graph whose edges every round draws from.

    Subclasses implement :meth:`graph` and :meth:`_compute_weights`, which gives ``W(t)``
    as a sparse tensor (``O(n + edges)`` memory, so that a topology of tens of thousands
    of agents is cheap); :meth:`weights` is its dense form, for small networks and
    analysis. Both keep the last round's matrix, so that :meth:`neighbors` over all
    agents of one round builds ``W(t)`` once. The returned tensors are shared: treat
    them as read-only.
    """

    schedule: str
    time_varying: bool

    def __init__(self, base_graph: nx.Graph, *, scheme: str) -> None:
        self.base_graph = base_graph
        self.n = base_graph.number_of_nodes()
        self.scheme = scheme
        self.name = f"{base_graph.graph.get('kind', 'custom')}/{self.schedule}"
        self._last: tuple[int, torch.Tensor] | None = None
        self._last_dense: tuple[int, torch.Tensor] | None = None

    @abstractmethod
    def graph(self, t: int) -> nx.Graph | nx.DiGraph:
        """Return the communication graph active in round ``t``."""

    @abstractmethod
    def _compute_weights(self, t: int) -> torch.Tensor:
        """Return ``W(t)``, a coalesced sparse ``(n, n)`` float64 tensor; ``t`` is already
        validated."""

    def sparse_weights(self, t: int) -> torch.Tensor:
        """Return the doubly stochastic mixing matrix of round ``t``: coalesced sparse COO,
        ``(n, n)`` float64, its entries in row-major order."""
        t = _check_round(t)
        if self._last is None or self._last[0] != t:
            self._last = (t, self._compute_weights(t))
        return self._last[1]

    def weights(self, t: int) -> torch.Tensor:
        """Return the ``(n, n)`` float64 doubly stochastic mixing matrix of round ``t``,
        dense (``n^2`` values: for large networks use :meth:`sparse_weights`)."""
        t = _check_round(t)
        if self._last_dense is None or self._last_dense[0] != t:
            self._last_dense = (t, self.sparse_weights(t).to_dense())
        return self._last_dense[1]

    def neighbors(self, i: int, t: int) -> list[int]:
        """Return the agents ``j != i`` that ``i`` exchanges with in round ``t``, ascending:
        those with ``W_ij(t) != 0`` or ``W_ji(t) != 0``."""
        i = operator.index(i)
        if not 0 <= i < self.n:
            raise ConfigError(f"agent index must be in 0..{self.n - 1}, got {i}")
        rows, cols, _ = nonzero_entries(self.sparse_weights(t))
        talks = (rows != cols) & ((rows == i) | (cols == i))
        other = torch.where(rows == i, cols, rows)[talks]
        return torch.unique(other).tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={self.n}, scheme={self.scheme!r})"


class StaticTopology(Topology):
    """The same graph and ``W = mixing_matrix(graph, scheme)`` every round (computed once)."""

    schedule = "static"
    time_varying = False

    def __init__(self, graph: nx.Graph, scheme: str = "metropolis") -> None:
        super().__init__(graph, scheme=scheme)
        self._weights = mixing_matrix(graph, scheme, sparse=True)  # (n, n)

    def graph(self, t: int) -> nx.Graph:
        _check_round(t)
        return self.base_graph

    def _compute_weights(self, t: int) -> torch.Tensor:
        return self._weights


class EdgeDropSchedule(Topology):
    """Round ``t`` keeps each base edge independently with probability ``1 - drop_prob``.

    ``W(t)`` is ``scheme`` (``metropolis`` or ``max_degree``) on the surviving graph, so it
    stays symmetric doubly stochastic; ``uniform`` is refused because dropped edges make
    the graph irregular. A round's graph may be disconnected; the base graph being
    connected makes the sequence ``B``-connected with high probability for moderate ``B``.
    """

    schedule = "edge_drop"
    time_varying = True

    def __init__(
        self, graph: nx.Graph, drop_prob: float, scheme: str = "metropolis", seed: int = 0
    ) -> None:
        check_scheme(scheme)
        if scheme == "uniform":
            raise ConfigError(
                "edge_drop cannot use uniform weights: dropped edges make the graph irregular "
                "and uniform weights are then not doubly stochastic; use scheme='metropolis'"
            )
        if (
            isinstance(drop_prob, bool)
            or not isinstance(drop_prob, (int, float))
            or not (0.0 <= drop_prob < 1.0)
        ):
            raise ConfigError(f"drop_prob must be a number in [0, 1), got {drop_prob!r}")
        super().__init__(graph, scheme=scheme)
        self.drop_prob = float(drop_prob)
        self.seed = _check_seed(seed)
        self._edges = edge_array(graph)  # (m, 2), sorted: same order in every process

    def _kept_edges(self, t: int) -> np.ndarray:
        """Return the ``(m_t, 2)`` edges surviving round ``t``."""
        rng = np.random.default_rng([self.seed, t])
        keep = rng.random(len(self._edges)) >= self.drop_prob  # (m,)
        return self._edges[keep]

    def graph(self, t: int) -> nx.Graph:
        return _graph_on(self.n, self._kept_edges(_check_round(t)))

    def _compute_weights(self, t: int) -> torch.Tensor:
        return sparse_mixing_matrix(self.n, self._kept_edges(t), self.scheme)


class OnePeerExponential(Topology):
    """Round ``t``: every agent ``i`` sends to ``(i + 2^k) mod n``, ``k = t mod ceil(log2 n)``.

    ``W(t) = (I + P_k) / 2`` with ``P_k[(i + 2^k) mod n, i] = 1``, i.e. agent ``j`` averages
    its value with the one from ``j - 2^k``. ``P_k`` is a permutation, so ``W`` is doubly
    stochastic (symmetric only when ``2^k = n/2``). Every agent sends and receives one
    message per round; over ``ceil(log2 n)`` rounds the union is the exponential graph.
    Assran et al., "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019.
    """

    schedule = "one_peer_exponential"
    time_varying = True

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ConfigError(f"one_peer_exponential needs an integer n >= 2, got {n!r}")
        super().__init__(build_graph("exponential", n), scheme="one_peer_average")
        self.period = (n - 1).bit_length()  # ceil(log2 n)

    def shift(self, t: int) -> int:
        """Return ``2^(t mod ceil(log2 n))``, the offset used in round ``t``."""
        return 2 ** (_check_round(t) % self.period)

    def graph(self, t: int) -> nx.DiGraph:
        """Return the directed graph of messages ``i -> (i + 2^k) mod n`` of round ``t``."""
        s = self.shift(t)
        graph = nx.DiGraph()
        graph.add_nodes_from(range(self.n))
        graph.add_edges_from((i, (i + s) % self.n) for i in range(self.n))
        return graph

    def _compute_weights(self, t: int) -> torch.Tensor:
        agents = torch.arange(self.n, device="cpu")
        receivers = (agents + self.shift(t)) % self.n  # (n,)
        rows, cols = torch.cat([agents, receivers]), torch.cat([agents, agents])
        return sparse_matrix(self.n, rows, cols, torch.full((2 * self.n,), 0.5, device="cpu"))


class RandomMatching(Topology):
    """Round ``t``: a random maximal matching ``M`` of the base graph; matched pairs average.

    ``W(t) = I - 1/2 sum_{(i,j) in M} (e_i - e_j)(e_i - e_j)^T``: ``W_ii = W_jj = W_ij =
    W_ji = 1/2`` for each pair, ``W_kk = 1`` for unmatched agents; symmetric doubly
    stochastic. ``M`` is the greedy matching over the base edges in a uniformly random
    order (random greedy maximal matching; not uniform over all maximal matchings).
    """

    schedule = "random_matching"
    time_varying = True

    def __init__(self, graph: nx.Graph, seed: int = 0) -> None:
        super().__init__(graph, scheme="pairwise_average")
        self.seed = _check_seed(seed)
        self._edges = edge_array(graph)  # (m, 2), sorted: same order in every process

    def matching(self, t: int) -> np.ndarray:
        """Return the ``(|M|, 2)`` matched pairs of round ``t``."""
        rng = np.random.default_rng([self.seed, _check_round(t)])
        rank = np.empty(len(self._edges), dtype=np.int64)  # rank[e]: position of e in order
        rank[rng.permutation(len(self._edges))] = np.arange(len(self._edges))
        return self._edges[greedy_matching(self.n, self._edges, rank)]

    def graph(self, t: int) -> nx.Graph:
        return _graph_on(self.n, self.matching(t))

    def _compute_weights(self, t: int) -> torch.Tensor:
        pairs = torch.from_numpy(self.matching(t))  # (|M|, 2)
        u, v = pairs[:, 0], pairs[:, 1]
        host = torch.device("cpu")  # a topology is host data, whatever the default device
        diagonal = torch.ones(self.n, dtype=torch.float64, device=host)  # unmatched: own value
        diagonal[u] = diagonal[v] = 0.5
        agents = torch.arange(self.n, device=host)
        rows, cols = torch.cat([agents, u, v]), torch.cat([agents, v, u])
        half = torch.full((2 * len(u),), 0.5, dtype=torch.float64, device=host)
        return sparse_matrix(self.n, rows, cols, torch.cat([diagonal, half]))


def greedy_matching(n: int, edges: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the greedy maximal matching of ``edges`` in ``rank`` order.

    Sequential greedy takes each edge in increasing ``rank`` if both endpoints are free.
    This computes the same matching in rounds: every live edge whose rank is the smallest
    among live edges at both endpoints joins, then edges touching a matched agent die.
    The result equals the sequential one and needs ``O(log^2 m)`` rounds with high
    probability for a random order (Blelloch, Fineman & Shun, "Greedy sequential maximal
    independent set and matching are parallel on average", SPAA 2012).

    Args:
        n: number of agents.
        edges: ``(m, 2)`` undirected edges.
        rank: ``(m,)`` distinct integers, the processing order.
    """
    chosen = np.zeros(len(edges), dtype=bool)  # (m,)
    matched = np.zeros(n, dtype=bool)  # (n,)
    live = np.arange(len(edges))  # indices of edges with both endpoints free
    while live.size:
        u, v, r = edges[live, 0], edges[live, 1], rank[live]
        best = np.full(n, np.iinfo(np.int64).max)  # (n,) smallest live rank at each agent
        np.minimum.at(best, u, r)
        np.minimum.at(best, v, r)
        wins = (best[u] == r) & (best[v] == r)
        chosen[live[wins]] = True
        matched[u[wins]] = matched[v[wins]] = True
        live = live[~(matched[u] | matched[v])]
    return chosen


def _graph_on(n: int, edges: np.ndarray) -> nx.Graph:
    """Return the undirected graph on ``0..n-1`` with ``edges``."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges.tolist())
    return graph


def _check_round(t: int) -> int:
    """Return round ``t`` as an int, or raise ConfigError unless it is an integer >= 0."""
    if isinstance(t, bool):
        raise ConfigError(f"round t must be an integer >= 0, got {t!r}")
    try:
        t = operator.index(t)
    except TypeError:
        raise ConfigError(f"round t must be an integer >= 0, got {t!r}") from None
    if t < 0:
        raise ConfigError(f"round t must be an integer >= 0, got {t}")
    return t


def _check_seed(seed: int) -> int:
    """Return ``seed`` as an int, or raise ConfigError unless it is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def build_topology(
    kind: str,
    n: int,
    *,
    seed: int = 0,
    weights: str = "metropolis",
    schedule: str = "static",
    drop_prob: float = 0.0,
    degree: int = 4,
    edge_prob: float | None = None,
    branching: int = 2,
) -> Topology:
    """Build the graph ``kind`` on ``n`` agents and wrap it in ``schedule``.

    ``seed`` drives both the random graph families and the schedule. ``weights`` applies
    to ``static`` and ``edge_drop``; ``random_matching`` and ``one_peer_exponential`` fix
    their own weights (pairwise averages, ``(I + P_k) / 2``) and ignore it. For
    ``one_peer_exponential`` the base graph is always the exponential graph (``kind`` is
    only checked to be a known name). Checks that the base graph is connected and that
    ``W(0)`` is doubly stochastic.

    Raises:
        ConfigError: unknown ``kind``/``schedule``/``weights``, ``drop_prob`` given for a
            schedule other than ``edge_drop``, or an argument out of range.
        TopologyError: the graph cannot be built or is disconnected.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if kind not in GRAPHS:
        raise ConfigError(f"unknown graph kind {kind!r}; choose one of {', '.join(GRAPHS)}")
    if drop_prob != 0.0 and schedule != "edge_drop":
        raise ConfigError(
            f"drop_prob={drop_prob} only applies to schedule='edge_drop' (got {schedule!r})"
        )
    check_scheme(weights)
    if schedule == "one_peer_exponential":
        topology: Topology = OnePeerExponential(n)
    else:
        graph = build_graph(
            kind, n, seed=seed, degree=degree, edge_prob=edge_prob, branching=branching
        )
        topology = _SCHEDULE_BUILDERS[schedule](graph, weights, seed, drop_prob)
    check_connected(topology.base_graph)
    check_doubly_stochastic(topology.sparse_weights(0))
    return topology


# Schedules over a built base graph; one_peer_exponential builds its own.
_SCHEDULE_BUILDERS: dict[str, Callable[[nx.Graph, str, int, float], Topology]] = {
    "static": lambda graph, scheme, seed, p: StaticTopology(graph, scheme),
    "edge_drop": lambda graph, scheme, seed, p: EdgeDropSchedule(graph, p, scheme, seed),
    "random_matching": lambda graph, scheme, seed, p: RandomMatching(graph, seed),
}


def describe(topology: Topology) -> dict[str, Any]:
    """Summarise ``topology`` for logs and run folders (JSON-serialisable values).

    Keys: ``kind``, ``schedule``, ``agents``, ``edges``, ``min_degree``, ``max_degree``
    (all of the base graph), ``spectral_gap`` (``1 - max(|lambda_2|, |lambda_n|)`` of
    ``W(0)``), ``symmetric`` and ``doubly_stochastic`` (of ``W(t)`` for every sampled
    round), ``connected`` (the base graph), ``weights`` (the scheme).

    A time-varying topology is sampled at rounds ``t = 0..DESCRIBE_ROUNDS-1`` and also gets
    ``spectral_gap_expected = 1 - lambda_2(mean_t W(t)^T W(t))``: the ``p`` of Koloskova
    et al. ("A unified theory of decentralized SGD with changing topology and local
    updates", ICML 2020), for which ``E ||W x - x_bar||^2 <= (1 - p) ||x - x_bar||^2``.
    It is on the scale of a squared contraction, not of ``spectral_gap``. Both gaps are
    ``None`` beyond :data:`SPECTRAL_MAX_AGENTS` agents.
    """
    base = topology.base_graph
    degrees = [d for _, d in base.degree()]
    rounds = range(DESCRIBE_ROUNDS if topology.time_varying else 1)
    matrices = [topology.sparse_weights(t) for t in rounds]  # each (n, n), sparse
    spectral = topology.n <= SPECTRAL_MAX_AGENTS
    summary: dict[str, Any] = {
        "kind": base.graph.get("kind", "custom"),
        "schedule": topology.schedule,
        "agents": topology.n,
        "edges": base.number_of_edges(),
        "min_degree": min(degrees),
        "max_degree": max(degrees),
        "spectral_gap": spectral_gap(matrices[0]) if spectral else None,
        "symmetric": all(_passes(check_symmetric, w) for w in matrices),
        "doubly_stochastic": all(_passes(check_doubly_stochastic, w) for w in matrices),
        "connected": _passes(check_connected, base),
        "weights": topology.scheme,
    }
    if topology.time_varying:
        expected = None
        if spectral:
            dense = [w.to_dense() for w in matrices]
            expected = spectral_gap(sum(w.T @ w for w in dense) / len(dense))  # (n, n)
        summary["spectral_gap_expected"] = expected
    return summary


def _passes(check: Callable[[Any], None], value: Any) -> bool:
    """Return whether ``check(value)`` returns without raising TopologyError."""
    try:
        check(value)
    except TopologyError:
        return False
    return True
