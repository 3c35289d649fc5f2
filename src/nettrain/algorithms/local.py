"""Local phases of asynchronous methods: a different number of steps per agent.

An event's local phase makes ``steps[r]`` steps for row ``r`` of a stack of agents.
Step ``s`` takes the rows still active (``steps > s``) as one vectorised oracle call,
so an agent's mini-batch stream is consumed exactly as if it ran alone, and only
the samples of the steps taken are counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nettrain.problem.oracle import Oracle

Tensors = tuple[torch.Tensor, ...]


def local_phase(
    tensors: Tensors,
    agents: torch.Tensor,
    steps: torch.Tensor,
    oracle: Oracle,
    update: Callable[
        [Tensors, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]], Tensors
    ],
) -> tuple[Tensors, torch.Tensor]:
    """``steps[r]`` applications of ``update`` to row ``r`` of every tensor ``(k, d)``.

    ``update(rows, grad)`` returns the new rows; ``grad(point)`` gives the losses and
    gradients of the active agents at ``point`` (Nesterov methods ask at a look-ahead
    point). Returns the new tensors and each agent's last training loss ``(k,)``
    (zero for an agent without steps).
    """
    out = tuple(t.clone() for t in tensors)
    loss = out[0].new_zeros(len(agents))
    steps = steps.to(torch.int64).cpu()
    for s in range(int(steps.max()) if len(steps) else 0):
        active = (steps > s).nonzero().flatten()
        every = len(active) == len(agents)
        rows = out if every else tuple(t[active] for t in out)
        last: list[torch.Tensor] = []
        new = update(rows, _recording(oracle, agents[active], last))
        if every:
            out = new
        else:
            for t, v in zip(out, new, strict=True):
                t[active] = v
        loss[active] = last[-1]
    return out, loss


def _recording(
    oracle: Oracle, agents: torch.Tensor, losses: list[torch.Tensor]
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``grad(point)`` for ``agents`` that appends each call's losses to ``losses``."""

    def grad(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, g = oracle.grad(point, local=agents)
        losses.append(loss)
        return loss, g

    return grad
