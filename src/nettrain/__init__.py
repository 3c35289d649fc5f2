"""nettrain: training neural networks across a network of agents.

One algorithm code path runs in a deterministic in-process simulator of many agents
(``engine=sim``, the default) and, through :mod:`torch.distributed`, on real
processes. The Python API in three lines::

    import nettrain
    cfg = nettrain.load_config(overrides={"algorithm": "dpsgd", "agents": 16, "rounds": 300})
    result = nettrain.run(cfg, out="runs/dpsgd")   # result.x: (n, d), result.summary
"""

from nettrain.config import RunConfig, load_config
from nettrain.errors import (
    ConfigError,
    DataError,
    DivergenceError,
    NettrainError,
    TopologyError,
)
from nettrain.experiment import build_job, compare, resume, run

__all__ = [
    "ConfigError",
    "DataError",
    "DivergenceError",
    "NettrainError",
    "RunConfig",
    "TopologyError",
    "build_job",
    "compare",
    "load_config",
    "resume",
    "run",
]
