"""Checks of graphs and mixing matrices: connectivity, symmetry, stochasticity, spectral gap.

Why they matter: gossip ``x <- W @ x`` with a symmetric doubly stochastic ``W`` preserves
the mean of ``x`` and contracts the consensus distance by ``max(|lambda_2|, |lambda_n|)``
per round, which is ``< 1`` exactly when the graph is connected (and ``W_ii > 0``).
Time-varying graphs need only the union of every ``B`` consecutive graphs to be connected
(``B``-connectivity; Nedić & Ozdaglar, "Distributed subgradient methods for multi-agent
optimization", IEEE TAC 2009).
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch

from nettrain.errors import ConfigError, TopologyError


def check_connected(graph: nx.Graph | nx.DiGraph) -> None:
    """Raise TopologyError unless ``graph`` is connected (weakly connected if directed).

    The message names the components (sizes and a few nodes of each).
    """
    if graph.number_of_nodes() == 0:
        raise TopologyError("graph has no agents; build it with at least 2 nodes")
    undirected = graph.to_undirected(as_view=True) if graph.is_directed() else graph
    components = sorted(nx.connected_components(undirected), key=len, reverse=True)
    if len(components) > 1:
        raise TopologyError(
            f"graph is disconnected: {len(components)} components "
            f"{_describe_components(components)}; agents in different components never "
            "reach consensus. Add edges between them or use a denser graph (for "
            "erdos_renyi raise edge_prob)"
        )


def check_symmetric(weights: torch.Tensor | np.ndarray, atol: float = 1e-10) -> None:
    """Raise TopologyError unless ``max_ij |W_ij - W_ji| <= atol``; names the worst pair.
    ``weights`` dense or sparse."""
    w = _as_sparse(weights)
    gap = (w - w.t()).coalesce()
    if gap.values().numel() == 0:
        return
    worst = int(gap.values().abs().argmax())
    i, j = (int(k) for k in gap.indices()[:, worst])
    if abs(gap.values()[worst]) > atol:
        raise TopologyError(
            f"mixing matrix is not symmetric: W[{i},{j}]={_entry(w, i, j):.6g} but "
            f"W[{j},{i}]={_entry(w, j, i):.6g}; build it with mixing_matrix(graph, "
            "'metropolis') on an undirected graph"
        )


def check_doubly_stochastic(weights: torch.Tensor | np.ndarray, atol: float = 1e-10) -> None:
    """Raise TopologyError unless ``W >= 0``, ``W 1 = 1`` and ``1^T W = 1^T`` within ``atol``.
    ``weights`` dense or sparse.

    The message names the most negative entry or the row/column sum farthest from 1.
    """
    w = _as_sparse(weights)
    (rows, cols), values, n = w.indices(), w.values(), w.shape[0]
    fix = "build W with mixing_matrix(graph, 'metropolis')"
    if not torch.isfinite(values).all():
        raise TopologyError(f"mixing matrix has NaN or infinite entries; {fix}")
    if values.numel() and values.min() < -atol:
        low = int(values.argmin())
        i, j = int(rows[low]), int(cols[low])
        raise TopologyError(
            f"mixing matrix has a negative entry W[{i},{j}]={values[low].item():.6g}; {fix}"
        )
    for axis, what in ((rows, "row"), (cols, "column")):
        sums = torch.zeros(n, dtype=values.dtype).index_add_(0, axis, values)
        k = int((sums - 1.0).abs().argmax())
        if abs(sums[k].item() - 1.0) > atol:
            raise TopologyError(
                f"mixing matrix is not doubly stochastic: {what} {k} sums to "
                f"{sums[k].item():.12g} (worst of all {what}s, tolerance {atol:g}); {fix}"
            )


def spectral_gap(weights: torch.Tensor | np.ndarray) -> float:
    """Return ``1 - max(|lambda_2|, |lambda_n|)``: one minus the second largest eigenvalue
    modulus of ``W``.

    For a doubly stochastic ``W`` the largest modulus is ``lambda_1 = 1``, so the gap is in
    ``[0, 1]``; it is 0 for a disconnected graph and 1 for ``W = J/n``. Uses ``eigvalsh``
    when ``W`` is symmetric and ``eigvals`` otherwise (for non-normal ``W`` the modulus
    bounds the asymptotic, not the per-round, contraction). A single agent has gap 1.
    """
    w = _as_square(weights)
    if w.shape[0] == 1:
        return 1.0
    if torch.allclose(w, w.T, rtol=0.0, atol=1e-12):
        eigenvalues = torch.linalg.eigvalsh(w)
    else:
        eigenvalues = torch.linalg.eigvals(w)
    modulus = torch.sort(eigenvalues.abs(), descending=True).values
    return float(1.0 - modulus[1])


def is_b_connected(graphs: Sequence[nx.Graph | nx.DiGraph], window: int) -> bool:
    """Return whether every ``window`` consecutive graphs have a connected union.

    ``graphs[s] ∪ ... ∪ graphs[s + window - 1]`` must be connected for every start ``s``
    (weakly connected for digraphs: edge directions are ignored). All graphs must share
    the same node set.

    Raises:
        ConfigError: ``window < 1`` or fewer than ``window`` graphs.
        TopologyError: the graphs have different node sets.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an integer >= 1, got {window!r}")
    if len(graphs) < window:
        raise ConfigError(f"need at least window={window} graphs, got {len(graphs)}")
    nodes = set(graphs[0].nodes)
    if any(set(g.nodes) != nodes for g in graphs):
        raise TopologyError("all graphs of a schedule must have the same agents")
    for start in range(len(graphs) - window + 1):
        union = nx.Graph()
        union.add_nodes_from(nodes)
        for g in graphs[start : start + window]:
            union.add_edges_from(g.edges())
        if not nx.is_connected(union):
            return False
    return True


def _check_square(w: torch.Tensor) -> torch.Tensor:
    """``w``, after checking it is a non-empty square matrix."""
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(
            f"mixing matrix must be square (n, n) with n >= 1, got {tuple(w.shape)}"
        )
    return w


def _as_square(weights: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``weights`` as a dense float64 tensor, checking it is a non-empty square
    matrix."""
    if isinstance(weights, torch.Tensor) and weights.is_sparse:
        weights = weights.to_dense()
    return _check_square(torch.as_tensor(weights, dtype=torch.float64))


def _entry(w: torch.Tensor, i: int, j: int) -> float:
    """``W[i, j]`` of a coalesced sparse ``w``."""
    (rows, cols), values = w.indices(), w.values()
    return float(values[(rows == i) & (cols == j)].sum())


def _as_sparse(weights: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return ``weights`` as a coalesced sparse float64 tensor (a dense one converted,
    its zeros dropped), checking it is a non-empty square matrix."""
    if isinstance(weights, torch.Tensor) and weights.is_sparse:
        return _check_square(weights.to(torch.float64).coalesce())
    return _as_square(weights).to_sparse().coalesce()


def _describe_components(components: list[set], shown: int = 4, per: int = 6) -> str:
    """Return e.g. ``"of sizes [5, 3] ({0, 1, 2, ...}, {5, 6, 7})"``."""
    sizes = [len(c) for c in components]
    samples = []
    for component in components[:shown]:
        nodes = _sorted_nodes(component)[:per]
        more = ", ..." if len(component) > per else ""
        samples.append("{" + ", ".join(map(str, nodes)) + more + "}")
    if len(components) > shown:
        samples.append("...")
    return f"of sizes {sizes} ({', '.join(samples)})"


def _sorted_nodes(nodes: set) -> list:
    """Return ``nodes`` sorted, by their string form if they are not mutually comparable."""
    try:
        return sorted(nodes)
    except TypeError:
        return sorted(nodes, key=str)
