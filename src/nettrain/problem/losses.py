"""Per-sample losses and regularisers.

Losses map ``(outputs (B, k), targets (B,)) -> (B,)``. Regularisers are convex
``r(x)`` on the flat vector with a (sub)gradient and a proximal operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nettrain.errors import ConfigError

LOSSES = ("cross_entropy", "squared")
REGULARIZERS = ("none", "l2", "l1")


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-log softmax(out)[y]`` per sample."""
    return F.cross_entropy(out, y, reduction="none")


def squared(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||out - t||^2 / 2`` per sample; ``t`` is one-hot for class labels."""
    if y.dtype in (torch.int64, torch.int32):
        classes = torch.arange(out.shape[-1], device=out.device)
        t = (y[..., None] == classes).to(out.dtype)  # one-hot; F.one_hot cannot run under vmap
    else:
        t = y.reshape(out.shape).to(out.dtype)
    return 0.5 * (out - t).square().sum(-1)


def get_loss(name: str):
    if name == "cross_entropy":
        return cross_entropy
    if name == "squared":
        return squared
    raise ConfigError(f"loss={name!r} is unknown; choose one of {', '.join(LOSSES)}")


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
