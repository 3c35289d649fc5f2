"""nettrain: training neural networks across a network of agents.

One algorithm code path runs in a deterministic in-process simulator of many agents
(``engine=sim``, the default) and, through :mod:`torch.distributed`, on real
processes. From Python, with your own model, data and loss::

    import nettrain, torch
    result = nettrain.run(
        {"algorithm": "dpsgd", "agents": 8, "topology": "ring", "rounds": 30},
        model=MyNet(),                                   # any nn.Module, copied per agent
        data=nettrain.data.from_tensors(x_train, y_train, x_test, y_test),
        loss=torch.nn.functional.cross_entropy,          # optional
        out="runs/mine",
    )
    net = result.mean_model()        # a MyNet with the agents' average parameters
    loaded = nettrain.load("runs/mine", model=MyNet())
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nettrain.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    NettrainError,
    TopologyError,
)
from nettrain.version import __version__

if TYPE_CHECKING:
    from nettrain import algorithms, data
    from nettrain.config import RunConfig, load_config
    from nettrain.experiment import build_job, compare, resume, run
    from nettrain.result import Result, load
    from nettrain.sweeps import sweep

# Imported on first use (PEP 562), so that `nettrain --help` does not wait for torch.
_LAZY = {
    "algorithms": "nettrain.algorithms",
    "data": "nettrain.data",
    "RunConfig": "nettrain.config",
    "load_config": "nettrain.config",
    "build_job": "nettrain.experiment",
    "compare": "nettrain.experiment",
    "resume": "nettrain.experiment",
    "run": "nettrain.experiment",
    "Result": "nettrain.result",
    "load": "nettrain.result",
    "sweep": "nettrain.sweeps",
}


def __getattr__(name: str) -> Any:
    """The public names that need torch, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nettrain' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module == f"nettrain.{name}" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConfigError",
    "DataError",
    "DivergenceError",
    "NettrainError",
    "Result",
    "RunConfig",
    "TopologyError",
    "__version__",
    "algorithms",
    "build_job",
    "compare",
    "data",
    "load",
    "load_config",
    "resume",
    "run",
    "sweep",
]
