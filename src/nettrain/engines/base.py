"""What every engine receives (a :class:`Job`) and returns (a :class:`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from nettrain.algorithms.base import Algorithm
from nettrain.checkpoint import Checkpoint
from nettrain.engines.sim.clock import CostModel
from nettrain.evaluation import model_metrics
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder
from nettrain.topology import Topology


@dataclass(frozen=True)
class Job:
    """A fully built run: the engine decides only where agents live and when they talk."""

    problem: Problem
    shards: list[torch.Tensor]  # training indices of agent i, for every agent
    topology: Topology
    algorithm: Algorithm
    x0: torch.Tensor  # (d,) common starting point of every agent
    rounds: int
    batch_size: int
    seed: int
    eval_every: int
    cost: CostModel
    eval_agents: int = 0  # 0 = evaluate every agent
    train_objective: bool = False  # records carry the social objective on the training set
    checkpoint_every: int = 0  # rounds between checkpoints; 0 = none
    progress: bool = False

    @property
    def n_agents(self) -> int:
        return len(self.shards)

    def metrics(self, x: torch.Tensor) -> dict[str, Any]:
        """What a record says about every agent's parameters ``x: (n, d)``."""
        shards = self.shards if self.train_objective else None
        return model_metrics(self.problem, x, self.eval_agents, shards)


@dataclass(frozen=True)
class RunResult:
    x: torch.Tensor  # (n, d) final parameters of every agent
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult: ...
