"""The baselines every comparison needs: all-reduce SGD, local SGD, D-PSGD, DIGing.

Each is a few lines against the communication patterns; the local step is
:func:`~nettrain.algorithms.sgd.sgd_step` (momentum, Nesterov, weight decay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nettrain.algorithms.base import Algorithm
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_direction, sgd_step
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle


@dataclass(frozen=True)
class SGDRunState:
    x: torch.Tensor  # (m, d)
    sgd: SGDState


@dataclass(frozen=True)
class AllReduceSGD(Algorithm[SGDRunState]):
    """Synchronous data-parallel SGD (what DDP does): ``x <- x - lr * mean_i g_i(x)``.

    Every agent holds the same ``x``; the gradients are averaged by an all-reduce each
    round (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    """

    sgd: SGDConfig
    name = "allreduce"

    @classmethod
    def from_config(cls, cfg: Any) -> AllReduceSGD:
        return cls(SGDConfig.from_config(cfg))

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0, SGDState())

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        loss, g = oracle.grad(state.x)  # (m,), (m, d)
        g = comm.mean(g)
        x, sgd = sgd_step(state.x, g, state.sgd, self.sgd)
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class LocalSGD(Algorithm[SGDRunState]):
    """Local SGD / periodic averaging: ``tau`` local steps, then ``x_i <- mean_j x_j``.

    ``x_i <- x_i - lr * g_i(x_i)`` every round; models averaged by an all-reduce after
    rounds ``tau, 2 tau, ...``; momentum buffers stay local (Stich 2019, "Local SGD
    Converges Fast and Communicates Little"). ``tau = 1`` is model averaging every step.
    """

    sgd: SGDConfig
    tau: int = 4
    name = "local_sgd"

    @classmethod
    def from_config(cls, cfg: Any) -> LocalSGD:
        return cls(SGDConfig.from_config(cfg), tau=cfg.tau)

    def __post_init__(self) -> None:
        if self.tau < 1:
            raise ConfigError(f"tau must be >= 1 (local steps between averagings), got {self.tau}")

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0, SGDState())

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        loss, g = oracle.grad(state.x)
        x, sgd = sgd_step(state.x, g, state.sgd, self.sgd)
        if (t + 1) % self.tau == 0:
            x = comm.mean(x)
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class DPSGD(Algorithm[SGDRunState]):
    """Decentralized parallel SGD: ``x_i <- sum_j W_ij(t) x_j - lr * g_i(x_i)``.

    Combine-then-adapt form of Lian et al. 2017 ("Can Decentralized Algorithms
    Outperform Centralized Algorithms?"): the gradient is taken at the pre-mixing
    point, so the neighbour exchange overlaps the gradient computation. With momentum
    or weight decay the local step's direction ``d`` replaces ``g``.
    """

    sgd: SGDConfig
    name = "dpsgd"

    @classmethod
    def from_config(cls, cfg: Any) -> DPSGD:
        return cls(SGDConfig.from_config(cfg))

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0, SGDState())

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        mixing = comm.start_mix(state.x, t)  # overlaps the gradient below
        loss, g = oracle.grad(state.x)
        direction, sgd = sgd_direction(state.x, g, state.sgd, self.sgd)
        x = torch.add(mixing.wait(), direction, alpha=-self.sgd.lr)
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class TrackingState:
    x: torch.Tensor  # (m, d) parameters
    y: torch.Tensor  # (m, d) tracker of the network-average gradient
    g: torch.Tensor  # (m, d) last local gradient, g_i(x_i)
    sgd: SGDState


@dataclass(frozen=True)
class GradientTracking(Algorithm[TrackingState]):
    """Gradient tracking, DIGing (Nedic, Olshevsky, Shi 2017)::

        x_i <- sum_j W_ij(t) x_j - lr * y_i
        y_i <- sum_j W_ij(t) y_j + g_i(x_i_new) - g_i(x_i_old),   y_i[0] = g_i(x_i[0])

    With doubly-stochastic ``W(t)`` the invariant ``sum_i y_i = sum_i g_i`` holds every
    round, so each ``y_i`` tracks the average gradient and a constant step converges to
    the exact optimum (full batch). With momentum, ``y`` is the local step's gradient.
    """

    sgd: SGDConfig
    name = "gradient_tracking"

    @classmethod
    def from_config(cls, cfg: Any) -> GradientTracking:
        return cls(SGDConfig.from_config(cfg))

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> TrackingState:
        _, g = oracle.grad(x0)
        return TrackingState(x0, g, g, SGDState())

    def step(self, state: TrackingState, t: int, oracle: Oracle, comm: Communicator):
        mix_x = comm.start_mix(state.x, t)
        mix_y = comm.start_mix(state.y, t)
        direction, sgd = sgd_direction(state.x, state.y, state.sgd, self.sgd)
        x = torch.add(mix_x.wait(), direction, alpha=-self.sgd.lr)
        loss, g = oracle.grad(x)  # overlaps the tracker's exchange
        y = mix_y.wait().add_(g).sub_(state.g)
        return TrackingState(x, y, g, sgd), loss

    def diagnostics(self, state: TrackingState) -> dict[str, Any]:
        """``tracking_error = ||sum_i y_i - sum_i g_i||``, zero up to rounding."""
        return {"tracking_error": float((state.y.sum(0) - state.g.sum(0)).norm())}
