"""Every agent's gradient through the layer-wise batched model by the chain rule written
out, layer by layer, without autograd: the training pass of the multilayer perceptrons.

A model whose layers are all ``Linear``, ``Flatten``, ``Identity``, element-wise
activations (``ReLU``, ``LeakyReLU``, ``ELU``, ``GELU``, ``SiLU``, ``Tanh``, ``Sigmoid``,
``Softplus``) or element-wise :class:`~nettrain.problem.random_layers.SeededDropout`,
trained with the built-in cross-entropy or squared loss, runs here
(:func:`runs_by_hand`). Per agent ``i``, with ``L_i = sum_b w_ib loss(z_ib, y_ib)``,
``dY = dL_i/dY`` for a layer's output ``Y: (m, O, B)`` and ``h: (m, F, B)`` its input
(the batched model's ``features`` layout):

* cross-entropy, ``z`` the logits: ``dz = w (softmax(z) - onehot(y))``;
* squared, ``||z - t||^2 / 2`` (``t`` one-hot for class labels): ``dz = w (z - t)``;
* ``Y = W h + b``: ``dW = dY h^T``, ``db = sum_b dY``, ``dh = W^T dY`` (not for the
  first linear layer, whose input is the data);
* an activation ``Y = s(h)``: ``dh = dY s'(h)`` by torch's own backward kernel of the
  layer (``ReLU``: ``dY [Y > 0]``, ``Tanh``: ``dY (1 - Y^2)``, ``Sigmoid``:
  ``dY Y (1 - Y)`` from the saved output; the others from the saved input);
* dropout: ``dh = dY [u >= p] / (1 - p)``, the pass's own uniforms ``u``.

These are the products autograd forms for the same graph, so the gradient is the
autograd oracle's to rounding. What is saved: autograd's graph of a few dozen nodes,
their views and bookkeeping, the loss's separate kernels. A pass of MLP 64-32-10 for 256
agents of 16 samples took 0.68 against 0.81 ms with autograd, one agent of MLP
784-128-10 0.21 to 0.30 against 0.33 to 0.41 ms by its module (CPU,
benchmarks/README.md); on the large layers of 256 such agents 21.8 against 29.0 ms, the
weight gradients written straight into the stack (:func:`weight_grad`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nettrain.problem.batched import Activation, BatchedModel, dropout_uniforms
from nettrain.problem.losses import cross_entropy, squared
from nettrain.problem.random_layers import SeededDropout

_aten = torch.ops.aten
BLOCK_BYTES = 8 * 2**20  # small weight gradients made at a time before their copy into the stack
DIRECT_BYTES = 256 * 2**10  # an agent's weight gradient written straight into the stack


@dataclass(frozen=True)
class Rule:
    """An element-wise layer's ``Y = forward(layer, h)`` (never in place: what the
    backward pass reads is kept) and ``dh = backward(layer, dY, kept)``, where ``kept`` is
    the output ``Y`` (``from_output``) or the input ``h``: the backward kernels autograd
    runs for the layer."""

    forward: Callable[[Any, torch.Tensor], torch.Tensor]
    backward: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]
    from_output: bool


ACTIVATIONS: dict[type[nn.Module], Rule] = {
    nn.ReLU: Rule(
        lambda _, h: torch.relu(h), lambda _, dy, y: _aten.threshold_backward(dy, y, 0), True
    ),
    nn.Tanh: Rule(lambda _, h: torch.tanh(h), lambda _, dy, y: _aten.tanh_backward(dy, y), True),
    nn.Sigmoid: Rule(
        lambda _, h: torch.sigmoid(h), lambda _, dy, y: _aten.sigmoid_backward(dy, y), True
    ),
    nn.LeakyReLU: Rule(
        lambda a, h: F.leaky_relu(h, a.negative_slope),
        lambda a, dy, h: _aten.leaky_relu_backward(dy, h, a.negative_slope, False),
        False,
    ),
    nn.GELU: Rule(
        lambda a, h: F.gelu(h, approximate=a.approximate),
        lambda a, dy, h: _aten.gelu_backward(dy, h, approximate=a.approximate),
        False,
    ),
    nn.SiLU: Rule(lambda _, h: F.silu(h), lambda _, dy, h: _aten.silu_backward(dy, h), False),
    nn.ELU: Rule(
        lambda a, h: F.elu(h, a.alpha),
        lambda a, dy, h: _aten.elu_backward(dy, a.alpha, 1, 1, False, h),
        False,
    ),
    nn.Softplus: Rule(
        lambda a, h: F.softplus(h, a.beta, a.threshold),
        lambda a, dy, h: _aten.softplus_backward(dy, h, a.beta, a.threshold),
        False,
    ),
}
PASSED = (nn.Flatten, nn.Identity)  # no arithmetic in the features layout


def runs_by_hand(model: BatchedModel, loss: Callable[..., torch.Tensor]) -> bool:
    """Whether :func:`losses_and_grads` takes the gradient of ``model`` under ``loss``."""
    if loss is not cross_entropy and loss is not squared:
        return False
    if not any(isinstance(layer, nn.Linear) for _, layer in model.layers):
        return False
    return all(
        type(layer) in (nn.Linear, *PASSED, *ACTIVATIONS)
        or (type(layer) is SeededDropout and not layer.channels)
        for _, layer in model.layers
    )


def losses_and_grads(
    model: BatchedModel,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    keys: torch.Tensor,
    loss: Callable[..., torch.Tensor],
    ready: Callable[[str, torch.Tensor], None] | None = None,
    into: dict[str, torch.Tensor] | None = None,
    alpha: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L: (m,)`` and ``{name: dL_i/dparam, (m, *shape)}`` (module docstring) at
    ``params: {name: (m, *shape)}`` on ``inputs: (m, B, ...)``, targets ``y: (m, B, ...)``,
    sample weights ``w: (m, B)`` and dropout ``keys: (m,)``. ``ready(name, grad)`` is
    called for each parameter as soon as its gradient is made (the last layer's first).
    With ``into`` (``{name: (m, *shape)}``, views of the columns of a gradient stack) each
    gradient is written there (:func:`weight_grad`) and the views are returned; with
    ``alpha`` too, added there scaled, ``into[name] += alpha * grad``, where ``into`` may
    be ``params`` itself (an SGD step in place: a layer's weight is read by the backward
    pass before its gradient is added to it)."""
    m, B = inputs.shape[:2]
    a = Activation(inputs, "rows", m, B)
    tape: list[tuple[str, nn.Module, torch.Tensor | None]] = []  # what each backward reads
    for prefix, layer in model.layers:
        if isinstance(layer, SeededDropout):
            u = dropout_uniforms(layer, a, keys)
            tape.append((prefix, layer, u))
            a = Activation(layer.masked(a.value, u), a.layout, m, B)
            continue
        if type(layer) in ACTIVATIONS:
            rule = ACTIVATIONS[type(layer)]
            h, a = a.value, Activation(rule.forward(layer, a.value), a.layout, m, B)
            tape.append((prefix, layer, a.value if rule.from_output else h))
            continue
        saved = a.features() if isinstance(layer, nn.Linear) else None  # dW reads h
        a = model._layer(prefix, layer, a, params, keys)
        tape.append((prefix, layer, saved))
    losses, dy = _loss_and_grad(a.features(), y, w, loss)
    first = next(i for i, (_, layer, _) in enumerate(tape) if isinstance(layer, nn.Linear))
    grads: dict[str, torch.Tensor] = {}
    dest = into or {}
    for i in range(len(tape) - 1, first - 1, -1):
        prefix, layer, saved = tape[i]
        if isinstance(layer, nn.Linear):
            assert saved is not None
            weight = params[prefix + "weight"]
            below = torch.bmm(weight.transpose(1, 2), dy) if i > first else dy  # before dW lands
            made = {prefix + "weight": weight_grad(dy, saved, dest.get(prefix + "weight"), alpha)}
            if layer.bias is not None:
                made[prefix + "bias"] = bias_grad(dy, dest.get(prefix + "bias"), alpha)
            for name, grad in made.items():
                grads[name] = grad
                if ready is not None:
                    ready(name, grad)
            dy = below
        elif isinstance(layer, SeededDropout):
            dy = layer.masked(dy, saved)
        elif not isinstance(layer, PASSED):
            assert saved is not None
            dy = ACTIVATIONS[type(layer)].backward(layer, dy, saved)
    return losses, grads


def weight_grad(
    dy: torch.Tensor, h: torch.Tensor, out: torch.Tensor | None, alpha: float | None = None
) -> torch.Tensor:
    """``dW = dY h^T``, ``(m, O, F)``, of ``dy: (m, O, B)`` and ``h: (m, F, B)``, into
    ``out`` where given: strided, each agent's matrix a few columns of its row of the
    stack. On the CPU the batched product into such an output runs one product per
    agent, so only matrices of :data:`DIRECT_BYTES` or more are written there at once;
    smaller ones, whose per-product overhead would dominate, are made
    :data:`BLOCK_BYTES` of agents at a time into one contiguous scratch block, copied
    into ``out`` while it is in cache. Straight, the first layer of MLP 784-128-10 (392
    KiB an agent) took 0.78 to 0.81 of the block's time, that of MLP 64-32-10 (8 KiB)
    1.68 to 1.96 (CPU, ``benchmarks/weight_grad_paths.py``). A GPU writes them straight.
    No temporary of the stack's size either way (D-PSGD on 65,536 agents of MLP 64-32-10
    peaked at 3.1 to 3.7 instead of 4.2 to 4.8 GB without one); each agent's product is
    the same either way.

    With ``alpha``, ``out += alpha * dW`` instead, by blocks on every device: each
    block's product added from the cache, so ``out`` is read and written once, with the
    numbers of ``torch.add(out, dW, alpha=alpha)`` bit for bit."""
    if out is None:
        return torch.bmm(dy, h.transpose(1, 2))
    m, o, f = out.shape
    matrix = max(1, o * f * out.element_size())
    if alpha is None and (out.device.type != "cpu" or matrix >= DIRECT_BYTES):
        return torch.bmm(dy, h.transpose(1, 2), out=out)
    block = max(1, min(m, BLOCK_BYTES // matrix))
    if block == m:  # one block: the product itself
        return _land(out, torch.bmm(dy, h.transpose(1, 2)), alpha)
    scratch = out.new_empty(block, o, f)
    for start in range(0, m, block):
        end = min(start + block, m)
        part = scratch[: end - start]
        torch.bmm(dy[start:end], h[start:end].transpose(1, 2), out=part)
        _land(out[start:end], part, alpha)
    return out


def bias_grad(dy: torch.Tensor, out: torch.Tensor | None, alpha: float | None) -> torch.Tensor:
    """``db = sum_b dY``, ``(m, O)``, into ``out`` where given (added scaled with ``alpha``)."""
    if alpha is None or out is None:
        return torch.sum(dy, 2, out=out)
    return _land(out, dy.sum(2), alpha)


def _land(out: torch.Tensor, made: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """``made`` copied into ``out``, or with ``alpha`` added scaled: ``out += alpha * made``."""
    return out.copy_(made) if alpha is None else out.add_(made, alpha=alpha)


def _loss_and_grad(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, loss: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_i = sum_b w_ib loss(z_ib, y_ib)``, ``(m,)``, and ``dL_i/dz``, ``(m, K, B)``, of
    outputs ``z: (m, K, B)``."""
    m, k, b = z.shape
    if loss is cross_entropy:
        logp = torch.log_softmax(z, 1)
        picked = logp.gather(1, y[:, None, :])  # (m, 1, B)
        losses = -torch.bmm(picked, w[:, :, None]).view(m)
        dz = logp.exp_().mul_(w[:, None, :])
        return losses, dz.scatter_add_(1, y[:, None, :], -w[:, None, :])
    if y.is_floating_point():  # regression targets (m, B, K)
        t = y.reshape(m, b, k).transpose(1, 2).to(z.dtype)
    else:  # one-hot class labels
        t = torch.zeros_like(z).scatter_(1, y[:, None, :], 1.0)
    dz = z - t
    losses = 0.5 * (dz.square().sum(1) * w).sum(1)
    return losses, dz.mul_(w[:, None, :])
