"""One agent's oracle for the parameters that touch some blocks of its flat vector.

The shared-memory engine's workers take the gradient of a single model ``x: (d,)`` cut
into :func:`~nettrain.problem.flat.block_slices`, and a step only needs the blocks it
will write. Parameter tensors that intersect none of them get no gradient (their
entries of ``g`` stay 0): autograd skips their weight gradients, and the whole backward
pass below the lowest needed layer (a worker that owns only the last layers stops
there).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from nettrain.problem.flat import FlatSpec, block_slices
from nettrain.problem.losses import Regularizer
from nettrain.problem.oracle import agent_seed


class BlockGradient:
    """Agent ``agent``'s mini-batch oracle
    (:class:`~nettrain.algorithms.base.BlockOracle`): each call draws its next
    mini-batch, uniformly with replacement from ``pool`` with the generator of the stream
    ``(seed, agent)`` (the whole pool when ``batch_size == 0``), and gives the loss and
    gradient at ``x: (d,)`` for the parameters that touch some of ``blocks`` blocks."""

    def __init__(
        self,
        model: nn.Module,  # template: its parameters are replaced by views of x
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # (B, k), (B,) -> (B,)
        regularizer: Regularizer,
        x_train: torch.Tensor,  # (N, F)
        y_train: torch.Tensor,  # (N,)
        pool: torch.Tensor,  # (M,) the training indices drawn from
        batch_size: int,  # 0 = every sample of the pool
        blocks: int,
        seed: int,
        agent: int,
    ) -> None:
        self.model, self.loss, self.regularizer = model, loss, regularizer
        self.x_train, self.y_train, self.pool, self.batch_size = x_train, y_train, pool, batch_size
        self.samples = batch_size or len(pool)  # read by each call
        self.generator = torch.Generator().manual_seed(agent_seed(seed, agent))
        self.flat = FlatSpec.of(model)
        starts = torch.tensor((0, *self.flat.numels)).cumsum(0).tolist()
        self.ranges = list(itertools.pairwise(starts))  # per parameter tensor
        self.slices = block_slices(self.flat.dim, blocks)
        self._need: dict[tuple[int, ...], tuple[bool, ...]] = {}

    def needed(self, blocks: tuple[int, ...]) -> tuple[bool, ...]:
        """Which parameter tensors intersect ``blocks`` (cached per set of blocks)."""
        if blocks not in self._need:
            spans = [(self.slices[b].start, self.slices[b].stop) for b in blocks]
            self._need[blocks] = tuple(
                any(a < e and s < b for s, e in spans) for a, b in self.ranges
            )
        return self._need[blocks]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch (the whole pool when ``batch_size == 0``)."""
        idx = self.pool
        if self.batch_size:
            idx = idx[torch.randint(len(idx), (self.batch_size,), generator=self.generator)]
        return self.x_train[idx], self.y_train[idx]

    def __call__(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, torch.Tensor]:
        xb, yb = self.batch()
        params, leaves, where = {}, [], []
        for name, shape, (a, b), need in zip(
            self.flat.names, self.flat.shapes, self.ranges, self.needed(blocks), strict=True
        ):
            view = x[a:b].view(shape)
            if need:
                view = view.detach().requires_grad_(True)
                leaves.append(view)
                where.append((a, b))
            params[name] = view
        with torch.enable_grad():
            out = functional_call(self.model, params, (xb,))
            loss = self.loss(out, yb).mean()
            grads = torch.autograd.grad(loss, leaves)
        g = torch.zeros_like(x)  # (d,)
        for (a, b), gp in zip(where, grads, strict=True):
            g[a:b] = gp.reshape(-1)
        g += self.regularizer.grad(x)
        return float(loss.detach()) + float(self.regularizer.value(x)), g
