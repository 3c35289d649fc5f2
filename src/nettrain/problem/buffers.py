"""A model's buffers (BatchNorm running statistics), stacked per agent.

Buffers are the state of a module that is not trained by gradients: BatchNorm's
``running_mean``, ``running_var`` and ``num_batches_tracked``. Every agent keeps its own
copy, stacked on a leading agent axis like the parameters, ``{name: (m, *shape)}`` in
the buffer's own dtype. A forward pass in training mode updates them in place (the
exponential moving average of the batch statistics) and the oracle keeps the result.

Running statistics never enter a training step: in training mode BatchNorm
normalises with the statistics of the batch. They matter when a model is evaluated
or exported. Under doubly-stochastic mixing the network mean of the buffers evolves
exactly as the mean of unmixed local averages (the batch statistics do not depend
on the buffers), so the mean over agents is what mixing the buffers with the
parameters converges to; ``buffers=mix`` evaluates every agent with it,
``buffers=local`` with its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Buffers = dict[str, torch.Tensor]  # name -> (m, *shape)
BUFFER_POLICIES = ("mix", "local")


@dataclass(frozen=True)
class BufferSpec:
    """Names, shapes and dtypes of a module's buffers, in ``named_buffers`` order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, module: nn.Module) -> BufferSpec:
        named = list(module.named_buffers())
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(b.shape for _, b in named),
            dtypes=tuple(b.dtype for _, b in named),
        )

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def numel(self) -> int:
        """Values in one agent's buffers."""
        return sum(s.numel() for s in self.shapes)

    def stack(self, module: nn.Module, m: int) -> Buffers:
        """``m`` copies of the module's current buffers, ``{name: (m, *shape)}``."""
        own = dict(module.named_buffers())
        return {n: own[n].detach().expand(m, *own[n].shape).clone() for n in self.names}

    def flatten(self, buffers: Buffers) -> torch.Tensor:
        """``(m, numel)`` float64 rows, exact for integer counters below ``2^53`` (for
        transport); for a module with buffers."""
        m = buffers[self.names[0]].shape[0]
        return torch.cat([buffers[n].reshape(m, -1).to(torch.float64) for n in self.names], 1)

    def unflatten(self, flat: torch.Tensor) -> Buffers:
        """The inverse of :meth:`flatten`: ``(m, numel)`` back to ``{name: (m, *shape)}``."""
        m = flat.shape[0]
        parts = torch.split(flat, [s.numel() for s in self.shapes], 1)
        names = zip(self.names, parts, self.shapes, self.dtypes, strict=True)
        return {n: p.reshape(m, *s).to(dt) for n, p, s, dt in names}


def rows(buffers: Buffers, index: torch.Tensor | slice) -> Buffers:
    """The rows ``index`` of every buffer."""
    return {n: b[index] for n, b in buffers.items()}


def mean(buffers: Buffers) -> Buffers:
    """The agents' mean ``{name: (1, *shape)}``; integer counters rounded."""
    out = {}
    for n, b in buffers.items():
        avg = b.to(torch.float64).mean(0, keepdim=True)
        out[n] = (avg if b.is_floating_point() else avg.round()).to(b.dtype)
    return out


def for_evaluation(buffers: Buffers, index: torch.Tensor, policy: str) -> Buffers:
    """Buffers to evaluate the mean model and the agents ``index`` with: the mean for the
    mean model, then each agent's own (``local``) or the mean again (``mix``)."""
    avg = mean(buffers)
    if policy == "local":
        return {n: torch.cat([avg[n], b[index]]) for n, b in buffers.items()}
    return {n: avg[n].expand(len(index) + 1, *avg[n].shape[1:]) for n in buffers}
