"""The local SGD step shared by every algorithm, as explicit state and a pure function.

Update rule (``torch.optim.SGD`` with ``dampening = 0``; Sutskever et al. 2013 for
Nesterov)::

    g <- g + wd * x
    b <- g                        at the first step, else   b <- mu * b + g
    d <- g + mu * b  (Nesterov)   or   d <- b  (heavy ball)   or   d <- g  (mu = 0)
    x <- x - lr * d

:func:`sgd_direction` computes ``d`` (and the new buffer); decentralized methods apply
it to the mixed point, ``x <- W x - lr * d``. Each line is one fused tensor operation
(``torch.add(..., alpha=)``): at 256 agents of a 100k-parameter model these passes
over memory, not the arithmetic, dominate a round. It works elementwise, so a stack
``x: (m, d)`` of agents is stepped at once; the test suite checks it against
``torch.optim.SGD`` step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.errors import ConfigError


@dataclass(frozen=True)
class SGDConfig:
    """Hyper-parameters of the local step; validated like ``torch.optim.SGD``."""

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=true needs momentum > 0 (e.g. momentum=0.9)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True)
class LocalStep:
    """The local step's settings as flat fields of an algorithm: ``DPSGD(lr=0.1,
    momentum=0.9)``. A method inherits them (first, so they are its leading fields) and
    reads them back as one :class:`SGDConfig`, ``self.sgd``, validated on construction."""

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.sgd  # noqa: B018 (validates like torch.optim.SGD)

    @property
    def sgd(self) -> SGDConfig:
        return SGDConfig(self.lr, self.momentum, self.nesterov, self.weight_decay)

    def refuse_momentum(self, hint: str) -> None:
        """For methods whose local steps are plain SGD: a ConfigError if ``momentum`` is set."""
        if self.momentum:
            name = getattr(self, "name", type(self).__name__)
            raise ConfigError(f"{name} takes plain SGD steps; set momentum=0 {hint}")


@dataclass(frozen=True)
class WarmedStep(LocalStep):
    """:class:`LocalStep` with a gradual linear warm-up of the learning rate, ``lr_warmup``
    rounds (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
    section 2.2, gradual warm-up). The step of round ``t`` (0-based) is::

        lr_t = lr * (t + 1) / lr_warmup    for t < lr_warmup
        lr_t = lr                          for t >= lr_warmup

    so round 0 steps ``lr / lr_warmup``, round ``lr_warmup - 1`` the full ``lr``;
    ``lr_warmup = 0`` (the default) keeps ``lr`` from round 0, bit for bit. The step is a
    pure function of the round: a run resumed from a checkpoint takes the same steps.
    """

    lr_warmup: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_warmup < 0:
            raise ConfigError(f"lr_warmup must be >= 0 (rounds; 0 = none), got {self.lr_warmup}")

    def lr_at(self, t: int) -> float:
        """The learning rate of round ``t``: ``lr * min(1, (t + 1) / lr_warmup)``."""
        if t >= self.lr_warmup:
            return self.lr
        return self.lr * (t + 1) / self.lr_warmup

    def sgd_at(self, t: int) -> SGDConfig:
        """The local step's settings in round ``t``: :attr:`sgd` with ``lr`` :meth:`lr_at`."""
        if t >= self.lr_warmup:
            return self.sgd
        return SGDConfig(self.lr_at(t), self.momentum, self.nesterov, self.weight_decay)


@dataclass(frozen=True)
class SGDState:
    """Momentum buffer ``(m, d)``; ``None`` before the first step or without momentum."""

    buf: torch.Tensor | None = None


def decayed(g: torch.Tensor, x: torch.Tensor, weight_decay: float) -> torch.Tensor:
    """The gradient of ``f(x) + (weight_decay / 2) ||x||^2``: ``g + weight_decay * x``."""
    return torch.add(g, x, alpha=weight_decay) if weight_decay else g


def sgd_direction(
    x: torch.Tensor, g: torch.Tensor, state: SGDState, cfg: SGDConfig
) -> tuple[torch.Tensor, SGDState]:
    """The step direction ``d: (m, d)`` for gradient ``g`` at ``x``, and the new state."""
    g = decayed(g, x, cfg.weight_decay)
    if cfg.momentum == 0:
        return g, state
    buf = g.clone() if state.buf is None else torch.add(g, state.buf, alpha=cfg.momentum)
    direction = torch.add(g, buf, alpha=cfg.momentum) if cfg.nesterov else buf
    return direction, SGDState(buf)


def masked_direction(
    x: torch.Tensor, g: torch.Tensor, u: torch.Tensor, mask: torch.Tensor, cfg: SGDConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sgd_direction` of a step that writes only where ``mask`` is true: the
    direction, and the momentum ``u`` moved only there (elsewhere it is kept)."""
    direction, state = sgd_direction(x, g, SGDState(u), cfg)
    if state.buf is None:
        return direction, u
    return direction, torch.where(mask, state.buf, u)


def sgd_step(
    x: torch.Tensor, g: torch.Tensor, state: SGDState, cfg: SGDConfig, *, owned: bool = False
) -> tuple[torch.Tensor, SGDState]:
    """One SGD step on the stack ``x: (m, d)``: ``x - lr * d``; returns new tensors.

    ``owned``: ``g`` is the caller's to overwrite (a communicator's result,
    :class:`~nettrain.patterns.Handle`, or the oracle's gradient); where the direction is
    ``g`` itself (no momentum or weight decay) the new ``x`` is written into ``g``'s
    memory, so the step allocates nothing and touches two stacks instead of three
    (all-reduce SGD on the Fashion-MNIST MLP, one agent a process: 2% of its round; local
    SGD on 256 agents of it in the simulator: 26 instead of 33 ms a round,
    benchmarks/README.md). Where no gradient is needed besides the step, the oracle can
    take it without writing one: :meth:`~nettrain.problem.oracle.Oracle.descend` (local
    SGD's plain steps)."""
    direction, state = sgd_direction(x, g, state, cfg)
    if owned and direction is g:
        return torch.add(x, g, alpha=-cfg.lr, out=g), state
    return torch.add(x, direction, alpha=-cfg.lr), state
