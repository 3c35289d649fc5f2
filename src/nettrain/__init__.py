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

from nettrain import algorithms, data
from nettrain.config import RunConfig, load_config
from nettrain.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    NettrainError,
    TopologyError,
)
from nettrain.experiment import build_job, compare, resume, run
from nettrain.result import Result, load
from nettrain.version import __version__

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
]
