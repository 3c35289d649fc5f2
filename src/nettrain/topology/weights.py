"""Mixing matrices ``W`` for gossip ``x <- W @ x`` on an undirected graph.

With ``d_i`` the degree of agent ``i`` and ``N(i)`` its neighbours, every scheme sets
``W_ij = 0`` for non-edges and puts the remainder on the diagonal, ``W_ii = 1 - sum_j W_ij``:

================  =========================================  =========================
scheme            ``W_ij`` for ``j in N(i)``                 doubly stochastic on
================  =========================================  =========================
``metropolis``    ``1 / (1 + max(d_i, d_j))``                every graph
``uniform``       ``1 / (1 + d_i)`` (also ``W_ii``)          regular graphs only
``max_degree``    ``1 / (1 + d_max)``                        every graph
================  =========================================  =========================

Metropolis-Hastings and max-degree weights are symmetric with nonnegative diagonal, hence
symmetric doubly stochastic (Xiao & Boyd, "Fast linear iterations for distributed
averaging", 2004; Xiao, Boyd & Lall, 2005). Uniform weights are row stochastic; they are
symmetric (hence doubly stochastic) exactly when all degrees are equal.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np
import torch

from nettrain.errors import ConfigError, TopologyError
from nettrain.topology.graphs import edge_array

WEIGHTS: tuple[str, ...] = ("metropolis", "uniform", "max_degree")


def mixing_matrix(
    graph: nx.Graph, scheme: str = "metropolis", *, sparse: bool = False
) -> torch.Tensor:
    """Return the ``(n, n)`` float64 mixing matrix of ``graph`` under ``scheme``, dense or
    (``sparse=True``) as :func:`sparse_mixing_matrix` gives it.

    ``W[i, j]`` is the weight agent ``i`` gives to the value of agent ``j``; see the module
    docstring for the formulas. The result is symmetric and doubly stochastic.

    Raises:
        ConfigError: unknown ``scheme``.
        TopologyError: ``graph`` is directed, its nodes are not ``0..n-1``, or ``uniform``
            is asked for on an irregular graph.
    """
    check_scheme(scheme)
    if graph.is_directed():
        raise TopologyError("mixing weights need an undirected graph; pass graph.to_undirected()")
    w = sparse_mixing_matrix(graph.number_of_nodes(), edge_array(graph), scheme)
    return w if sparse else w.to_dense()


def sparse_mixing_matrix(n: int, edges: np.ndarray, scheme: str) -> torch.Tensor:
    """Return the mixing matrix of the graph on ``0..n-1`` with undirected ``edges`` as a
    coalesced sparse COO tensor ``(n, n)`` float64: ``2 m + n`` entries, never ``n^2``.

    Vectorised over the edge list: degrees by ``bincount``, one weight per edge, each
    edge in both directions, then the diagonal remainder ``1 - sum_j W_ij``.

    Args:
        n: number of agents.
        edges: ``(m, 2)`` integer array, each undirected edge once, no self-loops (as
            returned by :func:`nettrain.topology.graphs.edge_array`).
        scheme: one of :data:`WEIGHTS`.
    """
    check_scheme(scheme)
    edges = _check_edges(n, edges)
    u, v = edges[:, 0], edges[:, 1]  # (m,), (m,)
    degree = np.bincount(edges.ravel(), minlength=n)  # (n,)
    w = _EDGE_WEIGHTS[scheme](degree, u, v)  # (m,)
    off = np.bincount(np.concatenate([u, v]), weights=np.concatenate([w, w]), minlength=n)
    agents = np.arange(n)
    rows = np.concatenate([u, v, agents])
    cols = np.concatenate([v, u, agents])
    values = np.concatenate([w, w, 1.0 - off])
    return sparse_matrix(n, rows, cols, values)


def sparse_matrix(
    n: int,
    rows: np.ndarray | torch.Tensor,
    cols: np.ndarray | torch.Tensor,
    values: np.ndarray | torch.Tensor,
) -> torch.Tensor:
    """The coalesced ``(n, n)`` float64 COO tensor with ``values`` at ``(rows, cols)``
    (entries at the same place summed)."""
    host = torch.device("cpu")  # a topology is host data, whatever the default device
    index = torch.stack([torch.as_tensor(rows, device=host), torch.as_tensor(cols, device=host)])
    values = torch.as_tensor(values, dtype=torch.float64, device=host)
    sparse = torch.sparse_coo_tensor(
        index.to(torch.int64), values, (n, n), device=host, check_invariants=True
    )
    return sparse.coalesce()


def nonzero_entries(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, values)`` of the nonzero entries of a coalesced sparse ``w``, in
    row-major order."""
    (rows, cols), values = w.indices(), w.values()
    keep = values != 0
    return rows[keep], cols[keep], values[keep]


def check_scheme(scheme: str) -> None:
    """Raise ConfigError unless ``scheme`` is one of :data:`WEIGHTS`."""
    if scheme not in _EDGE_WEIGHTS:
        raise ConfigError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(WEIGHTS)}")


def _check_edges(n: int, edges: np.ndarray) -> np.ndarray:
    """Return ``edges`` as an ``(m, 2)`` int64 array after checking labels and self-loops."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise TopologyError(f"edge endpoints must be agent ids in 0..{n - 1}")
    if np.any(edges[:, 0] == edges[:, 1]):
        raise TopologyError("edges must not contain self-loops; W_ii is set by the scheme")
    return edges


def _metropolis(degree: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``W_uv = 1 / (1 + max(d_u, d_v))``."""
    return 1.0 / (1.0 + np.maximum(degree[u], degree[v]))


def _uniform(degree: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``W_uv = 1 / (1 + d_u)``; refuses irregular graphs, where it is not doubly stochastic."""
    if degree.size and degree.min() != degree.max():
        raise TopologyError(
            f"uniform weights 1/(1+d_i) are doubly stochastic only on regular graphs; this "
            f"graph has degrees from {degree.min()} to {degree.max()}. Use scheme='metropolis' "
            "(or 'max_degree')"
        )
    return 1.0 / (1.0 + degree[u].astype(np.float64))


def _max_degree(degree: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``W_uv = 1 / (1 + d_max)`` on every edge."""
    d_max = int(degree.max()) if degree.size else 0
    return np.full(u.shape, 1.0 / (1.0 + d_max))


_EDGE_WEIGHTS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "metropolis": _metropolis,
    "uniform": _uniform,
    "max_degree": _max_degree,
}
