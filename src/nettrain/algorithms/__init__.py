"""Algorithms: one module per family, each an explicit state and a round ``step``.

``ALGORITHMS`` maps config names to classes; each class reads its own settings from a
:class:`~nettrain.config.RunConfig` (``from_config``), and :func:`build_algorithm`
picks the class.
"""

from __future__ import annotations

from typing import Any

from nettrain.algorithms.base import Algorithm, AsyncAlgorithm, Method
from nettrain.algorithms.baselines import DPSGD, AllReduceSGD, GradientTracking, LocalSGD
from nettrain.algorithms.next_sca import DGD, NEXT, StepRule
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_direction, sgd_step
from nettrain.algorithms.surrogates import SOLVERS, SURROGATES, SurrogateConfig
from nettrain.algorithms.swarm import ADPSGD, SwarmSGD

ALGORITHMS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (AllReduceSGD, LocalSGD, DPSGD, GradientTracking, NEXT, DGD, SwarmSGD, ADPSGD)
}
ASYNCHRONOUS = tuple(k for k, cls in ALGORITHMS.items() if issubclass(cls, AsyncAlgorithm))


def build_algorithm(cfg: Any) -> Method:
    """The algorithm named by ``cfg.algorithm``, with its settings from ``cfg``."""
    return ALGORITHMS[cfg.algorithm].from_config(cfg)


__all__ = [
    "ADPSGD",
    "ALGORITHMS",
    "ASYNCHRONOUS",
    "DGD",
    "DPSGD",
    "NEXT",
    "SOLVERS",
    "SURROGATES",
    "Algorithm",
    "AllReduceSGD",
    "AsyncAlgorithm",
    "GradientTracking",
    "LocalSGD",
    "Method",
    "SGDConfig",
    "SGDState",
    "StepRule",
    "SurrogateConfig",
    "SwarmSGD",
    "build_algorithm",
    "sgd_direction",
    "sgd_step",
]
