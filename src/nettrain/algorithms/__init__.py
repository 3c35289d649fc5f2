"""Algorithms: one module per family, each an explicit state and a round ``step``.

``ALGORITHMS`` maps config names to classes; :func:`build_algorithm` makes one from a
:class:`~nettrain.config.RunConfig`.
"""

from __future__ import annotations

from collections.abc import Callable

from nettrain.algorithms.base import Algorithm
from nettrain.algorithms.baselines import DPSGD, AllReduceSGD, GradientTracking, LocalSGD
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_direction, sgd_step

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (AllReduceSGD, LocalSGD, DPSGD, GradientTracking)
}


def build_algorithm(name: str, sgd: SGDConfig, *, tau: int = 4) -> Algorithm:
    """The algorithm called ``name`` with local step ``sgd`` and its own settings."""
    factories: dict[str, Callable[[], Algorithm]] = {
        "allreduce": lambda: AllReduceSGD(sgd),
        "local_sgd": lambda: LocalSGD(sgd, tau=tau),
        "dpsgd": lambda: DPSGD(sgd),
        "gradient_tracking": lambda: GradientTracking(sgd),
    }
    return factories[name]()


__all__ = [
    "ALGORITHMS",
    "DPSGD",
    "Algorithm",
    "AllReduceSGD",
    "GradientTracking",
    "LocalSGD",
    "SGDConfig",
    "SGDState",
    "build_algorithm",
    "sgd_direction",
    "sgd_step",
]
