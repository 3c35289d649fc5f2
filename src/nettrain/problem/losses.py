"""Per-sample losses and regularisers.

Losses map ``(outputs (B, k), targets (B, ...)) -> (B,)``; :func:`per_sample` makes one
of any torch loss. Regularisers are convex
``r(x)`` on the flat vector with a (sub)gradient and a proximal operator.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from nettrain.errors import ConfigError

LOSSES = ("auto", "cross_entropy", "squared")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, ...), (B, ...) -> (B,)
REGULARIZERS = ("none", "l2", "l1")


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-log softmax(out)[y]`` per sample."""
    return F.cross_entropy(out, y, reduction="none")


def squared(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||out - t||^2 / 2`` per sample; ``t`` is one-hot for class labels."""
    if not y.is_floating_point():
        classes = torch.arange(out.shape[-1], device=out.device)
        t = (y[..., None] == classes).to(out.dtype)  # one-hot; F.one_hot cannot run under vmap
    else:
        t = y.reshape(out.shape).to(out.dtype)
    return 0.5 * (out - t).square().sum(-1)


def get_loss(name: str, classification: bool = True) -> Loss:
    """The built-in loss ``name``; ``auto`` is cross-entropy for class labels, squared
    for regression targets."""
    if name == "auto":
        name = "cross_entropy" if classification else "squared"
    if name == "cross_entropy":
        return cross_entropy
    if name == "squared":
        return squared
    raise ConfigError(f"loss={name!r} is unknown; choose one of {', '.join(LOSSES)}")


def per_sample(loss: Callable[..., torch.Tensor]) -> Loss:
    """A user's loss as a per-sample one ``(outputs (B, ...), targets (B, ...)) -> (B,)``.

    A loss with a ``reduction`` argument (``F.cross_entropy``, ``nn.MSELoss()``) is called
    with ``reduction="none"``, and what it gives per element is summed over all but the
    batch axis; any other loss is taken to average its batch and is evaluated on one
    sample at a time (``vmap`` over the batch axis).
    """
    if isinstance(loss, nn.Module) and hasattr(loss, "reduction"):
        module = copy.copy(loss)
        module.reduction = "none"
        return _summed(module)
    try:
        takes_reduction = "reduction" in inspect.signature(loss).parameters
    except (TypeError, ValueError):
        takes_reduction = False
    if takes_reduction:
        return _summed(functools.partial(loss, reduction="none"))

    def one_at_a_time(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return vmap(lambda o, t: loss(o[None], t[None]).reshape(()))(out, y)

    return one_at_a_time


def _summed(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Loss:
    def per_sample_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = loss(out, y)
        return value.reshape(value.shape[0], -1).sum(1) if value.dim() > 1 else value

    return per_sample_sum


@dataclass(frozen=True)
class Regularizer:
    """``r(x) = lam * ||x||_2^2`` (l2), ``lam * ||x||_1`` (l1), or 0 (none)."""

    kind: str = "none"
    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REGULARIZERS:
            raise ConfigError(
                f"regularizer={self.kind!r} is unknown; choose one of {', '.join(REGULARIZERS)}"
            )
        if self.lam < 0:
            raise ConfigError(f"reg_lambda must be >= 0, got {self.lam}")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``r(x)`` for ``x: (..., d)``, shape ``(...)``."""
        if self.kind == "l2":
            return self.lam * x.square().sum(-1)
        if self.kind == "l1":
            return self.lam * x.abs().sum(-1)
        return x.new_zeros(x.shape[:-1])

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``grad r(x)``; for l1 the subgradient ``lam * sign(x)`` (0 at 0)."""
        if self.kind == "l2":
            return 2 * self.lam * x
        if self.kind == "l1":
            return self.lam * torch.sign(x)
        return torch.zeros_like(x)

    def prox(self, v: torch.Tensor, step: float | torch.Tensor) -> torch.Tensor:
        """``prox_{step*r}(v) = argmin_x r(x) + ||x - v||^2 / (2 step)``, elementwise.

        l2: ``v / (1 + 2 lam step)``; l1: soft-thresholding ``sign(v) max(|v| - lam step, 0)``,
        which sets small coordinates exactly to zero; none: ``v``.
        """
        if self.kind == "l2":
            return v / (1 + 2 * self.lam * step)
        if self.kind == "l1":
            return torch.sign(v) * (v.abs() - self.lam * step).clamp_min(0)
        return v
