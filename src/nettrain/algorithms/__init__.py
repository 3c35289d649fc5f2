"""Algorithms: one module per family, each an explicit state and a round ``step``.

``ALGORITHMS`` maps config names to classes. Each class is a frozen dataclass of its
settings, checked where it is defined (``DPSGD(lr=0.1, momentum=0.9)``,
``SwarmSGD(local_steps=2, compressor=Lattice.with_bits(8))``); the configuration maps
its keys onto those fields by name (:func:`nettrain.config.build_algorithm`). A method
written outside the package is named ``module:Class``
(``algorithm=mymethods:ChocoSGD``; the working directory is importable) or registered
under an entry point of the group ``nettrain.algorithms``; :func:`resolve` finds it.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
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
from nettrain.algorithms.sgd import LocalStep, SGDConfig, SGDState, sgd_direction, sgd_step
from nettrain.algorithms.surrogates import SOLVERS, SURROGATES, SurrogateConfig
from nettrain.algorithms.swarm import ADPSGD, SwarmSGD
from nettrain.errors import ConfigError

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


ENTRY_POINTS = "nettrain.algorithms"


def resolve(name: str) -> type[Method]:
    """The method class called ``name``: a built-in name, an entry point of the group
    ``nettrain.algorithms``, or ``module:Class``. Unknown names raise a ConfigError that
    lists the choices."""
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    found = entry_points(group=ENTRY_POINTS).select(name=name)
    if found:
        cls = next(iter(found)).load()
    elif ":" in name:
        cls = _import(name)
    else:
        plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINTS))
        raise ConfigError(
            f"algorithm={name!r} is not allowed; choose one of {', '.join([*ALGORITHMS, *plugins])}"
            ", or name your own class as module:Class"
        )
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(
            f"algorithm={name!r} is {cls!r}, not a nettrain method: subclass "
            "nettrain.algorithms.Algorithm (synchronous) or AsyncAlgorithm"
        )
    return cls


def _import(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` does: the working directory's modules
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"algorithm={name!r}: cannot import module {module_name!r} ({err}); run from the "
            "folder that holds it or put it on PYTHONPATH"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"algorithm={name!r}: module {module_name!r} has no {attr!r}") from None


def algorithm_name(method: Method) -> str:
    """The name a config gives ``method``'s class: its built-in name, else
    ``module:Class``."""
    cls = type(method)
    if ALGORITHMS.get(getattr(cls, "name", "")) is cls:
        return cls.name
    return f"{cls.__module__}:{cls.__qualname__}"


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
    "LocalStep",
    "Method",
    "MomentumDownpour",
    "SGDConfig",
    "SGDState",
    "StepRule",
    "SurrogateConfig",
    "SwarmSGD",
    "TreeEASGD",
    "algorithm_name",
    "resolve",
    "sgd_direction",
    "sgd_step",
]
