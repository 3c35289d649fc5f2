"""Topology: who talks to whom, with which weights, in every round. Pure data.

A :class:`Topology` gives the communication graph ``graph(t)``, the doubly stochastic
mixing matrix ``weights(t)`` of gossip ``x <- W(t) @ x`` and ``neighbors(i, t)``; it never
creates a process group. Build one with :func:`build_topology`::

    topo = build_topology("ring", 16, weights="metropolis")
    topo.weights(0)            # (16, 16) float64, symmetric doubly stochastic
    describe(topo)["spectral_gap"]

Modules: :mod:`~nettrain.topology.graphs` (graph families), :mod:`~nettrain.topology.weights`
(Metropolis, uniform, max-degree weights), :mod:`~nettrain.topology.checks` (connectivity,
stochasticity, spectral gap, B-connectivity), :mod:`~nettrain.topology.schedules`
(static and time-varying topologies).
"""

from __future__ import annotations

from nettrain.topology.checks import (
    check_connected,
    check_doubly_stochastic,
    check_symmetric,
    is_b_connected,
    spectral_gap,
)
from nettrain.topology.graphs import GRAPHS, build_graph
from nettrain.topology.schedules import (
    SCHEDULES,
    EdgeDropSchedule,
    OnePeerExponential,
    RandomMatching,
    StaticTopology,
    Topology,
    build_topology,
    describe,
)
from nettrain.topology.weights import WEIGHTS, mixing_matrix

__all__ = [
    "GRAPHS",
    "SCHEDULES",
    "WEIGHTS",
    "EdgeDropSchedule",
    "OnePeerExponential",
    "RandomMatching",
    "StaticTopology",
    "Topology",
    "build_graph",
    "build_topology",
    "check_connected",
    "check_doubly_stochastic",
    "check_symmetric",
    "describe",
    "is_b_connected",
    "mixing_matrix",
    "spectral_gap",
]
