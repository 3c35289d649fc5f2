"""Algorithms: one module per family, each an explicit state and a round ``step``.

``ALGORITHMS`` maps config names to classes; each class reads its own settings from a
:class:`~nettrain.config.RunConfig` (``from_config``), and :func:`build_algorithm`
picks the class.
"""

from __future__ import annotations

from typing import Any

from nettrain.algorithms.base import (
    Algorithm,
    AsyncAlgorithm,
    CentreAlgorithm,
    GossipAlgorithm,
    Method,
)
from nettrain.algorithms.baselines import DPSGD, AllReduceSGD, GradientTracking, LocalSGD
from nettrain.algorithms.block_async import BlockAsyncSGD, Hogwild
from nettrain.algorithms.downpour import ADMM, Downpour, MomentumDownpour
from nettrain.algorithms.elastic import EAMSGD, EASGD, EASGDAsync, TreeEASGD
from nettrain.algorithms.next_sca import DGD, NEXT, StepRule
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_direction, sgd_step
from nettrain.algorithms.surrogates import SOLVERS, SURROGATES, SurrogateConfig
from nettrain.algorithms.swarm import ADPSGD, SwarmSGD

ALGORITHMS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        AllReduceSGD,
        LocalSGD,
        DPSGD,
        GradientTracking,
        NEXT,
        DGD,
        SwarmSGD,
        ADPSGD,
        EASGD,
        EASGDAsync,
        EAMSGD,
        TreeEASGD,
        Downpour,
        MomentumDownpour,
        ADMM,
    )
}
ALGORITHMS |= {cls.name: cls for cls in (BlockAsyncSGD, Hogwild)}
ASYNCHRONOUS = tuple(k for k, cls in ALGORITHMS.items() if issubclass(cls, AsyncAlgorithm))


def build_algorithm(cfg: Any) -> Method:
    """The algorithm named by ``cfg.algorithm``, with its settings from ``cfg``."""
    return ALGORITHMS[cfg.algorithm].from_config(cfg)


__all__ = [
    "ADMM",
    "ADPSGD",
    "ALGORITHMS",
    "ASYNCHRONOUS",
    "DGD",
    "DPSGD",
    "EAMSGD",
    "EASGD",
    "NEXT",
    "SOLVERS",
    "SURROGATES",
    "Algorithm",
    "AllReduceSGD",
    "AsyncAlgorithm",
    "BlockAsyncSGD",
    "CentreAlgorithm",
    "Downpour",
    "EASGDAsync",
    "GossipAlgorithm",
    "GradientTracking",
    "Hogwild",
    "LocalSGD",
    "Method",
    "MomentumDownpour",
    "SGDConfig",
    "SGDState",
    "StepRule",
    "SurrogateConfig",
    "SwarmSGD",
    "TreeEASGD",
    "build_algorithm",
    "sgd_direction",
    "sgd_step",
]
