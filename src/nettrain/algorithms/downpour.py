"""DOWNPOUR and momentum DOWNPOUR, and round-robin ADMM: the EASGD paper's baselines.

* DOWNPOUR (Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012; the form
  of Zhang et al. 2015, Algorithm 3): worker ``i`` steps ``x_i <- x_i - lr g(x_i)`` and
  accumulates ``D = x_i - x_pulled``; every ``tau`` steps it pushes ``D`` (server:
  ``x~ <- x~ + D``) and pulls ``x_i <- x~``. ``tau = 1`` is asynchronous SGD.
* Momentum DOWNPOUR (``mdownpour``): Nesterov momentum ``delta`` on the server, which
  keeps a velocity ``v~``: ``v~ <- delta v~ + D``, ``x~ <- x~ + v~``, and the worker
  pulls the look-ahead point ``x~ + delta v~``, where its gradients are taken (with
  ``tau = 1`` and one worker, Nesterov's method on ``x~``).
* Round-robin ADMM (the comparison of Zhang's thesis), asynchronous: worker ``i`` makes
  ``tau`` gradient steps on its augmented Lagrangian
  ``f_i(x) - l_i (x - x~_i) + (rho/2)||x - x~_i||^2`` (``x~_i`` the centre it last
  pulled, ``rho = alpha / lr``), then ``l_i <- l_i - rho (x_i - x~_i)`` and sends the
  change of its term ``u_i = x_i - l_i / rho`` divided by ``n``; the server adds it, so
  ``x~ = mean_j u_j`` at all times, and the worker pulls the new ``x~``. With workers
  of equal speed the exchanges come in turn, 0, 1, ..., n-1: the round-robin scheme.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from nettrain.algorithms.base import CentreAlgorithm
from nettrain.algorithms.elastic import (
    MomentumIsDelta,
    check_settings,
    moving_rate,
    nesterov_steps,
)
from nettrain.algorithms.local import Tensors, local_phase
from nettrain.algorithms.sgd import LocalStep, decayed
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle


@dataclass(frozen=True)
class PulledState:
    x: torch.Tensor  # (m, d) every worker's parameters
    pulled: torch.Tensor  # (m, d) the centre as the worker last pulled it
    exchanges: torch.Tensor  # (m,) int64


@dataclass(frozen=True)
class Downpour(LocalStep, CentreAlgorithm[PulledState]):
    """DOWNPOUR; see the module docstring."""

    tau: int = 1
    servers: int = 1
    name = "downpour"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_momentum("on the workers (algorithm=mdownpour has momentum on the server)")
        check_settings(self)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> PulledState:
        return PulledState(x0, x0.clone(), torch.zeros(x0.shape[0], dtype=torch.int64))

    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x~ <- x~ + D``; reply the new ``x~``."""
        centre = rows[0] + sent
        return centre[None], centre.clone()

    def interact(self, state, pairs, oracle, comm, steps):
        rows = comm.local_rows(pairs[:, 0])
        update = nesterov_steps(self.sgd, 0.0)
        (x, _), loss = local_phase(
            (state.x[rows], torch.zeros_like(state.x[rows])), rows, steps[:, 0], oracle, update
        )
        pulled = comm.centre_exchange(x - state.pulled[rows], pairs[:, 0])
        new_x, new_pulled, count = state.x.clone(), state.pulled.clone(), state.exchanges.clone()
        new_x[rows] = pulled
        new_pulled[rows] = pulled
        count[rows] += 1
        return PulledState(new_x, new_pulled, count), loss


@dataclass(frozen=True)
class MomentumDownpour(MomentumIsDelta, Downpour):
    """Momentum DOWNPOUR: Nesterov momentum ``delta`` (``momentum``, > 0) on the server
    (module docstring); the workers take plain SGD steps."""

    momentum: float = 0.9
    name = "mdownpour"
    delta_hint = "the server's Nesterov delta, e.g. 0.9"
    centre_rows = 2  # x~ and its velocity

    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``v~ <- delta v~ + D; x~ <- x~ + v~``; reply the look-ahead ``x~ + delta v~``."""
        velocity = torch.add(sent, rows[1], alpha=self.delta)
        centre = rows[0] + velocity
        return torch.stack([centre, velocity]), torch.add(centre, velocity, alpha=self.delta)


@dataclass(frozen=True)
class ADMMState:
    x: torch.Tensor  # (m, d)
    dual: torch.Tensor  # (m, d) the multipliers l_i
    term: torch.Tensor  # (m, d) u_i = x_i - l_i / rho as the centre last counted it
    pulled: torch.Tensor  # (m, d) the centre as the worker last pulled it
    exchanges: torch.Tensor  # (m,) int64


@dataclass(frozen=True)
class ADMM(LocalStep, CentreAlgorithm[ADMMState]):
    """Round-robin ADMM; see the module docstring. ``rho = alpha / lr``; ``alpha = 0``
    stands for ``0.9 / n`` (:meth:`for_network`)."""

    alpha: float = 0.0
    tau: int = 1
    servers: int = 1
    name = "admm"
    stability_hint = "Lower the learning rate (lr=) or change the penalty (alpha=, rho = alpha/lr)"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_momentum("on the workers")
        check_settings(self)

    def for_network(self, n_agents: int) -> ADMM:
        alpha = moving_rate(self.alpha, n_agents, self.name)
        return dataclasses.replace(self, alpha=alpha)

    @property
    def rho(self) -> float:
        """The penalty ``rho = alpha / lr``."""
        if not self.alpha > 0:
            raise ConfigError(
                "admm's penalty rho = alpha / lr needs alpha > 0 (for_network sets it)"
            )
        return self.alpha / self.lr

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> ADMMState:
        zeros = torch.zeros_like(x0)
        return ADMMState(
            x0, zeros, x0.clone(), x0.clone(), torch.zeros(x0.shape[0], dtype=torch.int64)
        )

    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x~ <- x~ + (u_i' - u_i) / n``; reply the new ``x~``."""
        centre = rows[0] + sent
        return centre[None], centre.clone()

    def interact(self, state, pairs, oracle, comm, steps):
        rows = comm.local_rows(pairs[:, 0])
        sgd, rho = self.sgd, self.rho

        def update(r: Tensors, grad) -> Tensors:
            x, dual, pulled = r
            _, g = grad(x)
            g = decayed(g - dual + rho * (x - pulled), x, sgd.weight_decay)
            return (torch.add(x, g, alpha=-sgd.lr), dual, pulled)

        (x, dual, pulled), loss = local_phase(
            (state.x[rows], state.dual[rows], state.pulled[rows]), rows, steps[:, 0], oracle, update
        )
        dual = dual - rho * (x - pulled)
        term = x - dual / rho
        centre = comm.centre_exchange((term - state.term[rows]) / comm.n_agents, pairs[:, 0])
        new = {k: getattr(state, k).clone() for k in ("x", "dual", "term", "pulled", "exchanges")}
        new["x"][rows], new["dual"][rows], new["term"][rows] = x, dual, term
        new["pulled"][rows] = centre
        new["exchanges"][rows] += 1
        return ADMMState(**new), loss
