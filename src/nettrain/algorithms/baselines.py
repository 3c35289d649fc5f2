"""The baselines every comparison needs: all-reduce SGD, local SGD, D-PSGD, DIGing.

Each is a few lines against the communication patterns; the local step is
:func:`~nettrain.algorithms.sgd.sgd_step` (momentum, Nesterov, weight decay). All-reduce
SGD, local SGD and D-PSGD take ``lr_warmup`` (:class:`~nettrain.algorithms.sgd.WarmedStep`):
round ``t`` steps ``lr_t = lr * min(1, (t + 1) / lr_warmup)`` in place of ``lr``, the
gradual warm-up of Goyal et al. 2017 that goes with the linear scaling rule.

Compression (``quantizer=`` in a config, a :class:`~nettrain.compression.Compressor` in
code; ``None`` sends as is) is a setting the engine reads: it wraps the communicator
(:class:`~nettrain.wrappers.Compressed`), so the steps below are the uncompressed ones.
D-PSGD, local SGD and gradient tracking send models (and trackers), each decoded against
the receiver's own copy (the lattice quantiser's reference), so ``Q(x_j)`` replaces
``x_j`` in the mixing; all-reduce SGD sends gradients, through error feedback when
``error_feedback`` (:class:`~nettrain.wrappers.ErrorFeedback`). With a doubly stochastic
``W`` uncompressed mixing keeps the mean of the models; compressed, the mean moves by at
most the coding error (``eps / 2`` a coordinate for the lattice quantiser within its
guarantee). The simulator draws random codes (``qsgd``) for the whole stack at once, so
it and the distributed engine agree on deterministic compressors only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nettrain.algorithms.base import Algorithm
from nettrain.algorithms.sgd import LocalStep, SGDState, WarmedStep, sgd_direction, sgd_step
from nettrain.algorithms.shared import SharedDataParallel
from nettrain.compression import Compressor, TopK
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle


def refuse_sparsified_models(name: str, compressor: Compressor | None) -> None:
    """Raise a ConfigError for top-k on a method that sends models."""
    if isinstance(compressor, TopK):
        raise ConfigError(
            "quantizer=topk keeps the largest 1% of the coordinates and zeros the rest: it "
            f"is meant for gradients under error feedback (algorithm=allreduce); {name} "
            "sends models, which it would shrink towards 0. Use quantizer=lattice, qsgd, "
            "fp16 or bf16"
        )


@dataclass(frozen=True)
class SGDRunState:
    x: torch.Tensor  # (m, d)
    sgd: SGDState


@dataclass(frozen=True)
class AllReduceSGD(WarmedStep, SharedDataParallel, Algorithm[SGDRunState]):
    """Synchronous data-parallel SGD (what DDP does): ``x <- x - lr_t * mean_i g_i(x)``.

    Every agent holds the same ``x``; the gradients are averaged by an all-reduce each
    round (Goyal et al. 2017, "Accurate, Large Minibatch SGD"). With a ``compressor``
    the all-reduce is an all-gather of encoded gradients, through error feedback when
    ``error_feedback`` (:class:`~nettrain.wrappers.ErrorFeedback`)::

        p_i = encode(g_i + e_i),   e_i <- g_i + e_i - decode(p_i),
        x <- x - lr * (1/n) sum_j decode(p_j)

    so ``decode(p_i) + e_new == g_i + e_old``: nothing is dropped, only delayed. Every
    agent still holds the same ``x`` when decoding ignores the reference (QSGD, top-k,
    fp16/bf16); the lattice quantiser decodes a gradient against the receiver's own,
    so it needs gradients within its radius of each other. The mean's all-reduce is
    started bucket by bucket as the backward pass finishes each layer's gradient
    (:meth:`~nettrain.patterns.Communicator.start_mean_parts`), as DDP overlaps it; the
    numbers are those of ``comm.mean(g)``. On ``engine=shared_memory``
    its workers share one model (:class:`~nettrain.algorithms.shared.SharedDataParallel`).
    ``lr_t`` is ``lr`` after the warm-up of ``lr_warmup`` rounds
    (:class:`~nettrain.algorithms.sgd.WarmedStep`): with the linear scaling rule
    (``lr`` x k for a k times larger batch) it is Goyal et al.'s large-batch treatment.
    """

    uses_graph = False  # an all-reduce, not the graph
    compressor: Compressor | None = None  # of the gradients averaged
    error_feedback: bool = True  # with a compressor: carry what it drops
    name = "allreduce"
    compresses = True

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0, SGDState())

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        mean = comm.start_mean_parts(state.x)  # fed bucket by bucket by the backward pass
        loss, g = oracle.grad(state.x, sink=mean)  # (m,), (m, d)
        x, sgd = sgd_step(state.x, mean.wait(g), state.sgd, self.sgd_at(t), owned=True)
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class LocalSGD(WarmedStep, Algorithm[SGDRunState]):
    """Local SGD / periodic averaging: ``tau`` local steps, then ``x_i <- mean_j x_j``.

    ``x_i <- x_i - lr_t * g_i(x_i)`` every round (``lr_t``: ``lr`` after the warm-up of
    ``lr_warmup`` rounds, :class:`~nettrain.algorithms.sgd.WarmedStep`); models averaged
    by an all-reduce after rounds ``tau, 2 tau, ...``; momentum buffers stay local (Stich
    2019, "Local SGD Converges Fast and Communicates Little"). ``tau = 1`` is model
    averaging every step. A plain step (no momentum, no weight decay) is taken in place
    by :meth:`~nettrain.problem.oracle.Oracle.descend`, on the copy of ``x0`` that
    ``init`` makes: a step consumes its state.
    """

    uses_graph = False  # an all-reduce, not the graph
    tau: int = 4
    compressor: Compressor | None = None  # of the models averaged
    name = "local_sgd"
    compresses = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau < 1:
            raise ConfigError(f"tau must be >= 1 (local steps between averagings), got {self.tau}")
        refuse_sparsified_models(self.name, self.compressor)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0.clone(), SGDState())  # its own: the steps write into it

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        step = self.sgd_at(t)
        if step.momentum or step.weight_decay:  # a direction other than g
            loss, g = oracle.grad(state.x)
            x, sgd = sgd_step(state.x, g, state.sgd, step, owned=True)  # g is new
        else:  # x <- x - lr g, in place
            loss, x, sgd = oracle.descend(state.x, step.lr), state.x, state.sgd
        if (t + 1) % self.tau == 0:  # compressed: decoded against each agent's own x_i
            x = comm.mean(x)
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class DPSGD(WarmedStep, Algorithm[SGDRunState]):
    """Decentralized parallel SGD: ``x_i <- sum_j W_ij(t) x_j - lr_t * g_i(x_i)``.

    Combine-then-adapt form of Lian et al. 2017 ("Can Decentralized Algorithms
    Outperform Centralized Algorithms?"): the gradient is taken at the pre-mixing
    point, so the neighbour exchange overlaps the gradient computation. With momentum
    or weight decay the local step's direction ``d`` replaces ``g``; ``lr_t`` is ``lr``
    after the warm-up of ``lr_warmup`` rounds (:class:`~nettrain.algorithms.sgd.WarmedStep`).
    """

    compressor: Compressor | None = None  # of the models mixed
    name = "dpsgd"
    compresses = True

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_sparsified_models(self.name, self.compressor)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SGDRunState:
        return SGDRunState(x0, SGDState())

    def step(self, state: SGDRunState, t: int, oracle: Oracle, comm: Communicator):
        mixing = comm.start_mix(state.x, t)  # overlaps the gradient below
        loss, g = oracle.grad(state.x)
        step = self.sgd_at(t)
        direction, sgd = sgd_direction(state.x, g, state.sgd, step)
        x = mixing.wait().add_(direction, alpha=-step.lr)  # the mix is this round's own
        return SGDRunState(x, sgd), loss


@dataclass(frozen=True)
class TrackingState:
    x: torch.Tensor  # (m, d) parameters
    y: torch.Tensor  # (m, d) tracker of the network-average gradient
    g: torch.Tensor  # (m, d) last local gradient, g_i(x_i)
    sgd: SGDState


@dataclass(frozen=True)
class GradientTracking(LocalStep, Algorithm[TrackingState]):
    """Gradient tracking, DIGing (Nedic, Olshevsky, Shi 2017)::

        x_i <- sum_j W_ij(t) x_j - lr * y_i
        y_i <- sum_j W_ij(t) y_j + g_i(x_i_new) - g_i(x_i_old),   y_i[0] = g_i(x_i[0])

    With doubly-stochastic ``W(t)`` the invariant ``sum_i y_i = sum_i g_i`` holds every
    round, so each ``y_i`` tracks the average gradient and a constant step converges to
    the exact optimum (full batch). With momentum, ``y`` is the local step's gradient.

    With a ``compressor`` both exchanges are compressed (``x`` and ``y`` each decoded
    against the receiver's own); the invariant then holds up to the coding errors, so
    the constant step stops at a distance of the optimum of the order of those errors.
    """

    compressor: Compressor | None = None  # of the models and trackers mixed
    name = "gradient_tracking"
    compresses = True

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_sparsified_models(self.name, self.compressor)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> TrackingState:
        _, g = oracle.grad(x0)
        return TrackingState(x0, g, g, SGDState())

    def step(self, state: TrackingState, t: int, oracle: Oracle, comm: Communicator):
        mix_x = comm.start_mix(state.x, t)
        mix_y = comm.start_mix(state.y, t)
        direction, sgd = sgd_direction(state.x, state.y, state.sgd, self.sgd)
        x = mix_x.wait().add_(direction, alpha=-self.sgd.lr)  # the mix is this round's own
        loss, g = oracle.grad(x)  # overlaps the tracker's exchange
        y = mix_y.wait().add_(g).sub_(state.g)
        return TrackingState(x, y, g, sgd), loss

    def diagnostics(self, state: TrackingState) -> dict[str, Any]:
        """``tracking_error = ||sum_i y_i - sum_i g_i||``, zero up to rounding."""
        return {"tracking_error": float((state.y.sum(0) - state.g.sum(0)).norm())}
