"""The network linearised at a point: what the Gauss-Newton-type NEXT surrogates need.

For agent ``i`` at ``x_i`` and its batch ``(a_b, t_b)`` with weights ``w_b``
(``1/|batch|``), the network's outputs are replaced by their first-order expansion
``out_b(x_i + v) ~ out_b + J_b v``, where ``J_b = d out_b / d x`` (Scardapane and Di
Lorenzo 2017, Sec. 4: "linearised network inside the loss"). The loss of the
expansion ``sum_b w_b loss(out_b + J_b v, t_b)`` is convex in ``v`` for the squared
and cross-entropy losses. Nothing here forms ``J`` unless asked. The forward pass
is taken once, with its pull-back ``u -> J^T u`` (``torch.func.vjp`` of the model's
``functional_call``, vectorised over the local agents with ``vmap``); ``J v`` is the
pull-back of that linear map (reverse mode twice), not forward-mode AD, whose dual
level is process-global state and breaks when block solves run on several threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap

from nettrain.problem.flat import FlatSpec


class Network(Protocol):
    """What a linearisation needs of a :class:`~nettrain.problem.oracle.Problem`."""

    model: nn.Module  # the template, run on views of a flat vector
    spec: FlatSpec
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, o), (B,) -> (B,)


@dataclass(frozen=True)
class Linearization:
    """``out(x + v) ~ out + J v`` for ``k`` agents, each on its own batch of ``B`` samples."""

    problem: Network
    x: torch.Tensor  # (k, d) expansion points
    inputs: torch.Tensor  # (k, B, F)
    targets: torch.Tensor  # (k, B)
    weights: torch.Tensor  # (k, B), 0 on padding
    out: torch.Tensor  # (k, B, o) outputs at x
    pullback: Callable[[torch.Tensor], tuple[torch.Tensor]]  # u (k, B, o) -> (J^T u,)

    @classmethod
    def at(
        cls,
        problem: Network,
        x: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
    ) -> Linearization:
        forward = vmap(_forward(problem))
        out, pullback = vjp(lambda p: forward(p, inputs), x)
        return cls(problem, x, inputs, targets, weights, out.detach(), pullback)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v``: ``(k, d) -> (k, B, o)``, the pull-back of the linear map ``u -> J^T u``."""
        _, transpose = vjp(lambda u: self.pullback(u)[0], torch.zeros_like(self.out))
        return transpose(v)[0]

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """``J^T u``: ``(k, B, o) -> (k, d)``."""
        return self.pullback(u)[0]

    def jacobian(self) -> torch.Tensor:
        """``J`` itself, ``(k, B * o, d)`` (rows sample-major); costs ``B * o`` backward passes."""
        forward = _forward(self.problem)
        J = vmap(jacrev(lambda p, a: forward(p, a)))(self.x, self.inputs)  # (k, B, o, d)
        return J.flatten(1, 2)

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        """``sum_b w_b loss(out_b, t_b)`` per agent: ``(k, B, o) -> (k,)``."""
        k, B, o = out.shape
        per_sample = self.problem.loss(out.reshape(k * B, o), self.targets.reshape(k * B))
        return (per_sample.view(k, B) * self.weights).sum(1)

    def loss_grad(self, out: torch.Tensor) -> torch.Tensor:
        """``d/d out`` of :meth:`loss`: ``(k, B, o) -> (k, B, o)``."""
        with torch.enable_grad():
            o = out.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss(o).sum(), o)
        return g

    def grad(self) -> torch.Tensor:
        """Gradient of the weighted loss at ``x`` (no regulariser): ``J^T dloss/dout``."""
        return self.vjp(self.loss_grad(self.out))


def _forward(problem: Network):
    """``(x: (d,), a: (B, F)) -> (B, o)``: the model on views of one flat vector."""

    def forward(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return functional_call(problem.model, problem.spec.unflatten(x), (a,))

    return forward
