"""Elastic averaging SGD: synchronous and asynchronous EASGD, EAMSGD and tree EASGD.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD" (NIPS 2015,
arXiv 1412.6651) and Zhang's thesis (2016, arXiv 1605.02216). Each worker ``i`` keeps
its own ``x_i``, tied to a centre variable ``x~`` by the elastic force of
``(rho/2)||x_i - x~||^2``; ``alpha = lr * rho`` is the moving rate and
``beta = n alpha`` (default ``alpha = 0.9 / n``, the paper's ``beta = 0.9``).

* Synchronous EASGD (``easgd``), every ``tau`` rounds (plain local SGD in between)::

      x_i <- x_i - lr g_i(x_i) - alpha (x_i - x~)
      x~  <- x~ + alpha sum_i (x_i - x~) = (1 - beta) x~ + beta mean_i x_i

* Asynchronous EASGD (``easgd_async``): worker ``i`` makes ``tau`` local steps, then
  one atomic exchange with the servers::

      d = alpha (x_i - x~);   x_i <- x_i - d;   x~ <- x~ + d

* EAMSGD (``eamsgd``): the same exchange, Nesterov momentum ``delta`` in the local
  steps: ``v <- delta v - lr g(x + delta v)``, ``x <- x + v``.
* Tree EASGD (``tree_easgd``, simulator only): the workers are the leaves of a tree of
  fan-out ``b``; inner nodes hold centre variables; a node of level ``l`` makes the
  symmetric elastic exchange with its parent every ``p_l`` rounds (``tree_periods``,
  default ``tau * b^l``), all children of a parent at once. The root is the centre.

The elastic exchange is symmetric: it preserves ``x_i + x~`` (the tests check it).
The centre lives on the parameter servers (:meth:`~nettrain.patterns.Communicator.
centre_exchange`), sharded over ``servers``; a server replies with the centre it held
before the exchange and computes ``x~ + d`` itself.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from nettrain.algorithms.base import Algorithm, CentreAlgorithm, CentreRule
from nettrain.algorithms.local import Tensors, local_phase
from nettrain.algorithms.sgd import LocalStep, SGDConfig, decayed
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle

BETA = 0.9  # the paper's beta = n alpha, giving the default alpha = 0.9 / n


def moving_rate(alpha: float, fan_in: int, name: str) -> float:
    """``alpha`` as given, or ``0.9 / fan_in`` for ``alpha=0`` (the default); checked."""
    alpha = alpha if alpha > 0 else BETA / fan_in
    check_moving_rate(alpha, fan_in, name)
    return alpha


def check_settings(method: Any) -> None:
    """``alpha >= 0`` (0: the default), ``tau >= 1``, ``servers >= 1``: a ConfigError else."""
    if getattr(method, "alpha", 0.0) < 0:
        raise ConfigError(f"alpha must be >= 0 (0 = 0.9 / agents), got {method.alpha}")
    for key in ("tau", "servers"):
        if getattr(method, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(method, key)}")


def check_moving_rate(alpha: float, fan_in: int, name: str) -> None:
    """Refuse a moving rate with which the centre update cannot be stable."""
    if alpha == 0:
        raise ConfigError(
            f"{name}: alpha=0 stands for 0.9 / agents, fixed when the run is built "
            "(nettrain.run, or the method's for_network(n) in your own loop)"
        )
    if not 0 < alpha * fan_in < 2:
        raise ConfigError(
            f"{name}: alpha={alpha} with {fan_in} workers per centre gives beta = "
            f"{alpha * fan_in:.3g}; the centre's update x~ <- (1 - beta) x~ + beta mean x is "
            f"unstable unless 0 < beta < 2. Use alpha < {2 / fan_in:.3g} (default 0.9/{fan_in})"
        )


@dataclass(frozen=True)
class ElasticState:
    x: torch.Tensor  # (m, d) every worker's parameters
    v: torch.Tensor  # (m, d) Nesterov velocity (zeros without momentum)
    exchanges: torch.Tensor  # (m,) int64, exchanges with the centre


class ElasticRule(CentreRule):
    """What EASGD's synchronous and asynchronous forms share: the start and the server.

    ``alpha = 0`` (the default) stands for ``0.9 / n``, fixed once the network is known
    (:meth:`for_network`)."""

    alpha: float
    name: str

    def for_network(self, n_agents: int) -> ElasticRule:
        alpha = moving_rate(self.alpha, n_agents, self.name)
        return dataclasses.replace(self, alpha=alpha)  # type: ignore[type-var]

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> ElasticState:
        check_moving_rate(self.alpha, comm.n_agents, self.name)
        zeros = torch.zeros(x0.shape[0], dtype=torch.int64)
        return ElasticState(x0, torch.zeros_like(x0), zeros)

    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The elastic exchange on a slice: ``x~ + alpha (x_i - x~)``; reply ``x~``."""
        centre = rows[0]
        return torch.add(centre, sent - centre, alpha=self.alpha)[None], centre.clone()


@dataclass(frozen=True)
class EASGD(LocalStep, ElasticRule, Algorithm[ElasticState]):
    """Synchronous EASGD; see the module docstring."""

    alpha: float = 0.0
    tau: int = 1
    servers: int = 1
    name = "easgd"
    uses_rpc = True
    stability_hint = "Lower the learning rate (lr=) or the moving rate (alpha=)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_momentum("(eamsgd has momentum)")
        check_settings(self)

    def step(self, state: ElasticState, t: int, oracle: Oracle, comm: Communicator):
        loss, g = oracle.grad(state.x)
        g = decayed(g, state.x, self.weight_decay)
        x = torch.add(state.x, g, alpha=-self.sgd.lr)
        exchanges = state.exchanges
        if t % self.tau == 0:
            centre = comm.centre_exchange(state.x, comm.agents, synchronous=True)
            x = torch.add(x, state.x - centre, alpha=-self.alpha)
            exchanges = exchanges + 1
        return ElasticState(x, state.v, exchanges), loss


def nesterov_steps(sgd: SGDConfig, delta: float):
    """The local step of EASGD (``delta = 0``) and EAMSGD: ``v <- delta v - lr g(x + delta v);
    x <- x + v`` on rows ``(x, v, ...)``; other rows pass through."""

    def update(rows: Tensors, grad) -> Tensors:
        x, v, *rest = rows
        point = torch.add(x, v, alpha=delta) if delta else x
        _, g = grad(point)
        g = decayed(g, point, sgd.weight_decay)
        v = torch.add(v * delta, g, alpha=-sgd.lr) if delta else -sgd.lr * g
        return (x + v, v, *rest)

    return update


@dataclass(frozen=True)
class EASGDAsync(LocalStep, ElasticRule, CentreAlgorithm[ElasticState]):
    """Asynchronous EASGD; EAMSGD is its subclass with ``delta = momentum > 0``. See the
    module docstring."""

    alpha: float = 0.0
    tau: int = 1
    servers: int = 1
    name = "easgd_async"
    tolerates_faults = True
    stability_hint = "Lower the learning rate (lr=) or the moving rate (alpha=)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_momentum("(algorithm=eamsgd has momentum)")
        check_settings(self)

    @property
    def delta(self) -> float:
        """Nesterov momentum of the local steps: none in EASGD."""
        return 0.0

    def interact(self, state, pairs, oracle, comm, steps):
        rows = comm.local_rows(pairs[:, 0])
        (x, v), loss = local_phase(
            (state.x[rows], state.v[rows]),
            rows,
            steps[:, 0],
            oracle,
            nesterov_steps(self.sgd, self.delta),
        )
        centre = comm.centre_exchange(x, pairs[:, 0])
        new_x, new_v, count = state.x.clone(), state.v.clone(), state.exchanges.clone()
        new_x[rows] = torch.add(x, x - centre, alpha=-self.alpha)
        new_v[rows] = v
        count[rows] += 1
        return ElasticState(new_x, new_v, count), loss


class MomentumIsDelta:
    """For a method whose ``momentum`` setting is its Nesterov ``delta`` (EAMSGD on the
    workers, momentum DOWNPOUR on the server): ``delta > 0``, and the local steps are
    plain SGD, with the rate and weight decay only."""

    lr: float
    momentum: float
    weight_decay: float
    name: str
    delta_hint: str  # what the error for momentum=0 suggests

    def __post_init__(self) -> None:
        LocalStep.__post_init__(self)  # type: ignore[arg-type]
        if self.momentum == 0:
            raise ConfigError(f"{self.name} needs momentum > 0 ({self.delta_hint})")
        check_settings(self)

    @property
    def delta(self) -> float:
        return self.momentum

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class EAMSGD(MomentumIsDelta, EASGDAsync):
    """EAMSGD: asynchronous EASGD with Nesterov momentum ``delta`` (``momentum``, > 0)."""

    name = "eamsgd"
    delta_hint = "its delta; the paper uses momentum=0.99"


@dataclass(frozen=True)
class TreeState:
    x: torch.Tensor  # (n, d) the leaves (workers)
    nodes: torch.Tensor  # (N, d) inner nodes, level by level from the leaves' parents; root last


@dataclass(frozen=True)
class TreeEASGD(LocalStep, Algorithm[TreeState]):
    """Tree EASGD; see the module docstring. Runs in the simulator (all agents here).
    ``alpha = 0`` stands for ``0.9 / branching``; ``tree_periods = ()`` for ``tau * b^l``."""

    alpha: float = 0.0
    branching: int = 2
    tau: int = 1
    tree_periods: tuple[int, ...] = ()  # per level, leaves first
    name = "tree_easgd"
    uses_graph = False  # its own tree (branching), not the topology
    stability_hint = "Lower the learning rate (lr=) or the moving rate (alpha=)"
    engines = frozenset({"sim"})
    engines_note = "runs in engine=sim only (the tree's inner nodes live in one process)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_momentum("(the tree's exchanges are elastic averaging)")
        if self.branching < 2:
            raise ConfigError(
                f"tree_easgd needs branching >= 2 children per node, got {self.branching}"
            )
        if self.tau < 1 or any(p < 1 for p in self.tree_periods):
            raise ConfigError(
                f"tau and tree_periods must be >= 1, got {self.tau} and {self.tree_periods}"
            )
        object.__setattr__(self, "alpha", moving_rate(self.alpha, self.branching, self.name))

    def levels(self, n: int) -> list[int]:
        """Nodes per level above the leaves, up to the root: ``ceil(n / b^l)``."""
        sizes, k = [], n
        while k > 1:
            k = math.ceil(k / self.branching)
            sizes.append(k)
        return sizes or [1]

    def period(self, level: int) -> int:
        """Rounds between the exchanges of level ``level`` (0 = leaves) with its parents."""
        periods = self.tree_periods or (self.tau,)
        if level < len(periods):
            return periods[level]
        return periods[-1] * self.branching ** (level - len(periods) + 1)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> TreeState:
        if comm.agents.numel() != comm.n_agents:
            raise ConfigError(
                "tree_easgd runs in engine=sim (it keeps the whole tree in one process)"
            )
        inner = sum(self.levels(comm.n_agents))
        return TreeState(x0, x0[:1].expand(inner, -1).clone())

    def step(self, state: TreeState, t: int, oracle: Oracle, comm: Communicator):
        loss, g = oracle.grad(state.x)
        g = decayed(g, state.x, self.weight_decay)
        x = torch.add(state.x, g, alpha=-self.sgd.lr)
        nodes = state.nodes.clone()
        below, offset = x, 0  # the level whose nodes exchange with their parents
        for level, size in enumerate(self.levels(comm.n_agents)):
            parents = nodes[offset : offset + size]
            if (t + 1) % self.period(level) == 0:
                parent = torch.arange(len(below), device=x.device) // self.branching
                pull = self.alpha * (below - parents[parent])  # (children, d)
                below -= pull
                parents.index_add_(0, parent, pull)
                if level == 0:
                    comm.traffic.add(
                        torch.ones_like(comm.traffic.messages),
                        torch.full_like(comm.traffic.bytes, x.shape[1] * x.element_size()),
                    )
            below, offset = parents, offset + size
        return TreeState(x, nodes), loss

    def centre(self, state: TreeState, comm: Communicator) -> torch.Tensor:
        return state.nodes[-1].clone()
