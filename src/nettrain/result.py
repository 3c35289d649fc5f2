"""What a run gives back: every agent's parameters, records, and the models they make.

``nettrain.run`` returns a :class:`Result`; ``nettrain.load(folder, model=...)`` builds
the same from a finished run folder. The flat parameter vectors turn back into the
user's own module class::

    net = result.mean_model()        # the agents' average parameters and buffers
    net_i = result.agent_model(3)    # agent 3's own
    result.records                   # metrics.jsonl's records

Under ``engine=distributed`` every rank gets a result. Rank 0's (``result.is_main``)
holds the records, the summary and every agent; the others hold every agent after a
synchronous method and only their own after an asynchronous one (whose ranks finish
at their own pace and hand their states to rank 0 alone). Models come back in
evaluation mode
(dropout off, BatchNorm on its running statistics), ready to evaluate; call
``.train()`` to train them further.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nettrain.errors import DataError
from nettrain.problem.buffers import Buffers, BufferSpec, mean
from nettrain.problem.flat import FlatSpec
from nettrain.recording import read_records


@dataclass(frozen=True)
class Result:
    """A finished run: ``x: (n, d)``, the records and summary, the centre (centre-based
    methods), every agent's buffers, and the model template that gives them a shape."""

    x: torch.Tensor  # (n, d) every agent's final parameters
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    centre: torch.Tensor | None = None  # (d,) a centre-based method's centre variable
    buffers: Buffers | None = None  # {name: (n, ...)} every agent's buffers, if any
    model: nn.Module | None = None  # the template: its class and shapes, not its values
    is_main: bool = True  # engine=distributed: rank 0, the one holding records and summary

    @property
    def n_agents(self) -> int:
        return int(self.x.shape[0])

    def mean_model(self) -> nn.Module:
        """A copy of the model holding the agents' average parameters ``mean_i x_i`` and
        average buffers: the model the records' ``test_accuracy`` evaluates."""
        return self._module(self.x.mean(0), mean(self.buffers) if self.buffers else None)

    def agent_model(self, i: int) -> nn.Module:
        """A copy of the model holding agent ``i``'s own parameters and buffers."""
        if not -self.n_agents <= i < self.n_agents:
            raise IndexError(f"agent {i} does not exist: the run had {self.n_agents} agents")
        own = {k: v[i : i + 1] for k, v in self.buffers.items()} if self.buffers else None
        return self._module(self.x[i], own)

    def centre_model(self) -> nn.Module:
        """A copy of the model holding the centre variable (EASGD family, DOWNPOUR), with
        the agents' average buffers."""
        if self.centre is None:
            raise DataError("this run's method keeps no centre variable; use mean_model()")
        return self._module(self.centre, mean(self.buffers) if self.buffers else None)

    def _module(self, x: torch.Tensor, buffers: Buffers | None) -> nn.Module:
        if self.model is None:
            raise DataError(
                "this result has no model template: pass the model, e.g. "
                "nettrain.load(folder, model=MyNet())"
            )
        net = copy.deepcopy(self.model)
        spec = FlatSpec.of(net)
        if spec.dim != x.numel():
            raise DataError(
                f"{type(net).__name__} has {spec.dim} parameters but the run's agents have "
                f"{x.numel()}: pass the model the run was trained with"
            )
        spec.load_into(net, x.to(next(net.parameters()).device))
        if buffers:
            own = dict(net.named_buffers())
            missing = set(buffers) - set(own)
            if missing:
                raise DataError(
                    f"{type(net).__name__} has no buffers {sorted(missing)}: pass the model "
                    "the run was trained with"
                )
            with torch.no_grad():
                for name, value in buffers.items():
                    own[name].copy_(value[0])
        return net.eval()


def load(folder: str | Path, model: nn.Module | None = None) -> Result:
    """The :class:`Result` of the finished run in ``folder``; ``model`` (an instance of the
    class the run trained, any parameter values) makes :meth:`Result.mean_model` and
    :meth:`Result.agent_model` work."""
    path = Path(folder)
    if not (path / "final.pt").is_file():
        raise DataError(f"{path} holds no finished run (no final.pt); a run writes it when it ends")
    x = torch.load(path / "final.pt", weights_only=True)
    centre = _optional(path / "centre.pt")
    buffers = _optional(path / "buffers.pt")
    summary = json.loads((path / "summary.json").read_text())
    records = read_records(path) if (path / "metrics.jsonl").is_file() else []
    if model is not None and buffers is None and BufferSpec.of(model):
        raise DataError(f"{path} has no buffers.pt but {type(model).__name__} has buffers")
    return Result(x, records, summary, centre, buffers, model)


def _optional(path: Path) -> Any:
    return torch.load(path, weights_only=True) if path.is_file() else None
