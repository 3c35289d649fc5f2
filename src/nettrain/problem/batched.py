"""The training pass of a stack of agents as batched kernels, layer by layer (no vmap).

``torch.func.vmap`` runs any model over a stack of agents, but on small layers its
batching rules pick slow kernels: a linear layer's weight gradient comes out
transposed and is copied, and ``log_softmax`` over a short last axis is an order of
magnitude slower than over a leading one. A model built only from the layers below
runs instead as one batched kernel per layer, and plain autograd takes the gradient
of ``sum_i L_i`` with respect to the stacked parameters: agent ``i``'s loss depends
on its own rows only, so row ``i`` of that gradient is ``grad L_i(x_i)``, the same
gradient the vmapped oracle computes (to rounding).

Layouts of the activations (``m`` agents, ``B`` samples each):

* ``rows``: the data as given, ``(m, B, *feature_shape)``;
* ``features``: ``(m, F, B)``, feature-major, so that a linear layer is
  ``baddbmm(b, W, h)`` with ``W: (m, O, F)``, whose weight gradient ``dY h^T`` is
  produced in ``W``'s own layout, and the class axis of the logits is not the last;
* ``images``: ``(B, m * C, H, W)``, channels last in memory, so that a convolution of
  all agents is one convolution with ``m`` times the groups (weights
  ``(m * O, C / g, k, k)``).

Layers run here: ``nn.Sequential`` containers of ``Linear``, ``Conv2d`` (zero
padding), ``MaxPool2d``, ``AvgPool2d``, ``Flatten``, ``Identity``, elementwise
activations and the oracle's :class:`~nettrain.problem.random_layers.SeededDropout`,
whose masks are the ones the vmapped oracle draws (same key, same element counters).
A model with buffers (BatchNorm) or any other layer runs under ``vmap``
(:meth:`BatchedModel.of` returns None). A first ``Conv2d`` with the ``MaxPool2d(2)`` and
``ReLU`` after it runs as one C kernel (:class:`FirstConvPool`), and any other ``Conv2d``
that a ``MaxPool2d`` follows takes its backward pass from the pooled gradient
(:class:`ConvMaxPool`; both :mod:`nettrain.problem.native`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nettrain.problem.losses import cross_entropy
from nettrain.problem.native import ConvPool, PooledConv, available, runs_natively
from nettrain.problem.random_layers import SeededDropout, uniform_at

ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
)
KNOWN = (nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, SeededDropout, *ELEMENTWISE)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The layers of a tree of ``nn.Sequential`` in call order, with their parameter
    prefixes; None if any module is neither a Sequential (or a subclass that keeps its
    forward) nor a known layer."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            inner = _leaves(child, f"{prefix}{name}.")
            if inner is None:
                return None
            out += inner
        return out
    return [(prefix, module)] if isinstance(module, KNOWN) else None


def _layout_after(layer: nn.Module, layout: str) -> str | None:
    """The layout a layer's output takes from its input's, None where this module cannot
    run it (a convolution of vectors, a linear layer of images, a flatten other than
    over all of a sample's axes, channel dropout of vectors, padding other than zeros)."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            return None
        return "images" if layout in ("images", "rows3") else None
    if isinstance(layer, nn.Linear):
        return "features" if layout in ("features", "rows1") else None
    if isinstance(layer, nn.Flatten):
        return "features" if (layer.start_dim, layer.end_dim) == (1, -1) else None
    if isinstance(layer, SeededDropout) and layer.channels:
        return layout if layout == "images" else None
    return layout


def _pool_before_relu(
    layers: list[tuple[str, nn.Module]],
) -> tuple[tuple[str, nn.Module], ...]:
    """``layers`` with every ``ReLU`` that a ``MaxPool2d`` follows moved after the pooling.

    ``maxpool(relu(x)) = relu(maxpool(x))`` because ReLU is nondecreasing, and so are
    the gradients: where a window's maximum is positive both pick the same first
    maximal element; where it is not, ReLU's gradient is zero on either side. The
    ReLU then runs on a quarter of the elements (2x2 pooling), forward and backward.
    """
    out = list(layers)
    for i in range(len(out) - 1):
        if isinstance(out[i][1], nn.ReLU) and isinstance(out[i + 1][1], nn.MaxPool2d):
            out[i], out[i + 1] = out[i + 1], out[i]
    return tuple(out)


class PooledLayers(nn.Module):
    """A ``Conv2d``, the ``MaxPool2d`` after it and the ``ReLU`` after that (if any) as one
    layer: C kernels of :mod:`~nettrain.problem.native` where they run, else the layers
    in turn (:meth:`BatchedModel._fused`)."""

    def __init__(self, conv: nn.Conv2d, pool: nn.MaxPool2d, relu: nn.ReLU | None) -> None:
        super().__init__()
        self.parts = (conv, pool) if relu is None else (conv, pool, relu)


class FirstConvPool(PooledLayers):
    """A model's first ``Conv2d`` (stride 1, zero padding), the ``MaxPool2d(2)`` after it
    and the ``ReLU`` after that (if any; :func:`_pool_before_relu` put it there):
    :class:`~nettrain.problem.native.ConvPool` where it runs
    (:func:`~nettrain.problem.native.runs_natively`)."""

    @classmethod
    def of(cls, layers: tuple[tuple[str, nn.Module], ...]) -> tuple[tuple[str, nn.Module], ...]:
        """``layers`` with its first three fused, where they have that form."""
        (prefix, conv), (_, pool), *rest = (*layers, ("", None))
        fuses = (
            _pooled_conv(conv, pool)
            and (conv.stride, conv.dilation) == ((1, 1), (1, 1))
            and _pair(pool.kernel_size) == _pair(pool.stride) == (2, 2)
            and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode
        )
        if not fuses:
            return layers
        relu = rest[0][1] if isinstance(rest[0][1], nn.ReLU) else None
        after = layers[2 if relu is None else 3 :]
        return ((prefix, cls(conv, pool, relu)), *after)


class ConvMaxPool(PooledLayers):
    """A ``Conv2d`` of one group and zero padding, the ``MaxPool2d`` after it and the
    ``ReLU`` after that (if any), anywhere in the images layout:
    :class:`~nettrain.problem.native.PooledConv` where the kernels run
    (:func:`~nettrain.problem.native.available`)."""

    @classmethod
    def of(cls, layers: tuple[tuple[str, nn.Module], ...]) -> tuple[tuple[str, nn.Module], ...]:
        """``layers`` with each such run of two or three fused."""
        out: list[tuple[str, nn.Module]] = []
        i = 0
        while i < len(layers):
            prefix, conv = layers[i]
            pool = layers[i + 1][1] if i + 1 < len(layers) else None
            if _pooled_conv(conv, pool):
                after = layers[i + 2][1] if i + 2 < len(layers) else None
                relu = after if isinstance(after, nn.ReLU) else None
                out.append((prefix, cls(conv, pool, relu)))
                i += 2 if relu is None else 3
            else:
                out.append(layers[i])
                i += 1
        return tuple(out)


def _pooled_conv(conv: nn.Module, pool: nn.Module | None) -> bool:
    """Whether ``conv`` then ``pool`` are a ``Conv2d`` of one group and numeric zero
    padding and a ``MaxPool2d`` that returns no indices: what both fused layers need."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(pool, nn.MaxPool2d)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and not pool.return_indices
    )


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


@dataclass
class Activation:
    """Activations of ``m`` agents in one of the module's layouts."""

    value: torch.Tensor
    layout: str  # rows | features | images
    m: int
    B: int

    def features(self) -> torch.Tensor:
        """``(m, F, B)``: flattening each sample, as ``nn.Flatten`` does."""
        if self.layout == "features":
            return self.value
        if self.layout == "rows":  # (m, B, *shape): a transposed view, no copy
            return self.value.reshape(self.m, self.B, -1).transpose(1, 2)
        return _ImagesToFeatures.apply(self.value, self.m)

    def images(self) -> torch.Tensor:
        """``(B, m * C, H, W)``, channels last in memory: grouped convolutions and pooling
        over ``m * C`` channels run 1.3x as fast as in the default layout (a round of the
        small CNN, 64 agents, on the CPU)."""
        if self.layout == "images":
            return self.value
        _, _, c, h, w = self.value.shape
        images = self.value.transpose(0, 1).reshape(self.B, self.m * c, h, w)
        return images.contiguous(memory_format=torch.channels_last)


class _ImagesToFeatures(torch.autograd.Function):
    """``(B, m * C, H, W)`` images to ``(m, C * H * W, B)`` features (one copy), whose
    gradient comes back channels last: autograd's own backward of the reshape would
    hand the pooling and convolution layers below a gradient in the default layout,
    which each of them would copy again."""

    @staticmethod
    def forward(images: torch.Tensor, m: int) -> torch.Tensor:  # type: ignore[override]
        B = images.shape[0]
        return images.reshape(B, m, -1).permute(1, 2, 0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:  # type: ignore[override]
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        B, mc, h, w = ctx.shape
        m = grad.shape[0]
        out = torch.empty(
            ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last
        )
        pixels = out.permute(0, 2, 3, 1).view(B, h, w, m, mc // m)  # the memory's own order
        pixels.permute(3, 4, 1, 2, 0).copy_(grad.view(m, mc // m, h, w, B))
        return out, None


def _positions(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """``(rows, cols)`` int64: element ``(r, c)`` is ``r * cols + c``."""
    return torch.arange(rows * cols, device=device).view(rows, cols)


def _dropout(layer: SeededDropout, a: Activation, keys: torch.Tensor) -> torch.Tensor:
    """``x * mask / (1 - p)`` (:meth:`SeededDropout.masked`) with the uniforms of
    :func:`dropout_uniforms`; ``x`` itself when the layer is off."""
    return layer.masked(a.value, dropout_uniforms(layer, a, keys))


def dropout_uniforms(
    layer: SeededDropout, a: Activation, keys: torch.Tensor
) -> torch.Tensor | None:
    """The uniforms of a pass's dropout masks, broadcastable to ``a.value`` (None when the
    layer is off: evaluation, or ``p = 0``). Each agent's are the ones
    :class:`SeededDropout` draws from its key: element ``j`` of the agent's ``(B, *shape)``
    tensor (row-major; ``(B, C)`` for channel dropout) keeps its value when
    ``uniform(key, salt)[j] >= p``."""
    x, m, B = a.value, a.m, a.B
    if not layer.training or layer.p == 0:
        return None
    if a.layout == "images":  # agents on axis 1 of (B, m, C, H, W)
        _, mc, h, w = x.shape
        c = mc // m
        if layer.channels:
            h = w = 1
        counters = _positions(B, c * h * w, x.device).view(B, 1, c, h, w)
        u = uniform_at(keys.view(1, m, 1, 1, 1), layer.salt, counters)  # (B, m, c, h, w)
        return u.view(B, mc, h, w)
    if a.layout == "features":  # (m, F, B): element (f, b) is number b * F + f
        counters = _positions(B, x.shape[1], x.device).T[None]
    else:  # rows (m, B, *shape)
        counters = torch.arange(x[0].numel(), device=x.device).view(1, *x.shape[1:])
    return uniform_at(keys.view(-1, *[1] * (x.dim() - 1)), layer.salt, counters)


@dataclass(frozen=True)
class BatchedModel:
    """A model's forward pass over a stack of agents, one batched kernel per layer."""

    layers: tuple[tuple[str, nn.Module], ...]

    @classmethod
    def of(
        cls, model: nn.Module, feature_shape: tuple[int, ...], native: bool = True
    ) -> BatchedModel | None:
        """The batched form of ``model`` on samples of ``feature_shape``, or None if it has
        buffers or a layer this module does not run (it then runs under vmap), or if its
        output is not one vector a sample. ``native``: a first convolution and max-pooling
        become one :class:`FirstConvPool`, any other convolution that max-pooling follows
        a :class:`ConvMaxPool`."""
        layers = _leaves(model)
        if not layers or list(model.buffers()):
            return None
        layout: str | None = f"rows{len(feature_shape)}"
        for _, layer in layers:
            layout = _layout_after(layer, layout)
            if layout is None:
                return None
        if layout != "features":
            return None
        layers = _pool_before_relu(layers)
        return cls(ConvMaxPool.of(FirstConvPool.of(layers)) if native else layers)

    def forward(
        self, params: dict[str, torch.Tensor], inputs: torch.Tensor, keys: torch.Tensor
    ) -> torch.Tensor:
        """Outputs ``(m, K, B)`` of the agents' models: ``params: {name: (m, *shape)}``,
        ``inputs: (m, B, *feature_shape)``, ``keys: (m,)`` the dropout keys."""
        m, B = inputs.shape[:2]
        a = Activation(inputs, "rows", m, B)
        for prefix, layer in self.layers:
            a = self._layer(prefix, layer, a, params, keys)
        return a.features()

    def _layer(
        self,
        prefix: str,
        layer: nn.Module,
        a: Activation,
        params: dict[str, torch.Tensor],
        keys: torch.Tensor,
    ) -> Activation:
        if isinstance(layer, nn.Linear):
            w = params[prefix + "weight"]  # (m, O, F)
            if layer.bias is None:
                out = torch.bmm(w, a.features())
            else:
                out = torch.baddbmm(params[prefix + "bias"][:, :, None], w, a.features())
            return Activation(out, "features", a.m, a.B)
        if isinstance(layer, nn.Conv2d):
            w = params[prefix + "weight"]  # (m, O, C / g, k, k)
            bias = params[prefix + "bias"].reshape(-1) if layer.bias is not None else None
            out = F.conv2d(
                a.images(),
                w.reshape(-1, *w.shape[2:]),
                bias,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups * a.m,
            )
            return Activation(out, "images", a.m, a.B)
        if isinstance(layer, PooledLayers):
            return self._fused(prefix, layer, a, params, keys)
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            return Activation(layer(a.images()), "images", a.m, a.B)
        if isinstance(layer, nn.Flatten):
            return Activation(a.features(), "features", a.m, a.B)
        if isinstance(layer, SeededDropout):
            return Activation(_dropout(layer, a, keys), a.layout, a.m, a.B)
        return Activation(layer(a.value), a.layout, a.m, a.B)  # elementwise

    def _fused(
        self,
        prefix: str,
        layer: PooledLayers,
        a: Activation,
        params: dict[str, torch.Tensor],
        keys: torch.Tensor,
    ) -> Activation:
        """A convolution, its max-pooling and ReLU by the C kernels, or in turn."""
        conv, pool, *relu = layer.parts
        w = params[prefix + "weight"]
        bias = params[prefix + "bias"] if conv.bias is not None else None
        if isinstance(layer, FirstConvPool) and runs_natively(a.value, w, conv.padding):
            out, _ = ConvPool.apply(a.value, w, bias, conv.padding, bool(relu))
            return Activation(out, "images", a.m, a.B)
        if isinstance(layer, ConvMaxPool) and available(a.value, w):
            geometry = (conv.stride, conv.padding, conv.dilation)
            window = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
            out, _ = PooledConv.apply(a.images(), w, bias, geometry, window, bool(relu))
            return Activation(out, "images", a.m, a.B)
        for part in layer.parts:
            a = self._layer(prefix, part, a, params, keys)
        return a


def batched_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], out: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-sample losses ``(m, B)`` of outputs ``out: (m, K, B)`` and targets
    ``y: (m, B, ...)``: the built-in cross-entropy over the class axis 1 as it lies,
    any other per-sample loss on the ``m * B`` samples as rows."""
    m, k, b = out.shape
    if loss is cross_entropy:
        return F.cross_entropy(out, y, reduction="none")
    rows = out.transpose(1, 2).reshape(m * b, k)
    return loss(rows, y.reshape(m * b, *y.shape[2:])).view(m, b)
