"""The layer-wise batched oracle equals the vmapped one: losses, gradients, dropout masks."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import nettrain.problem.batched as batched_module
from nettrain.data import Dataset
from nettrain.problem.batched import Activation, BatchedModel, FirstConvPool
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem
from nettrain.problem.random_layers import SeededDropout


def images(n: int = 60, classes: int = 3) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return Dataset("toy", x, y, x[:20], y[:20], n_classes=classes)


def vectors(n: int = 60) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return Dataset("toy", x, y, x[:20], y[:20], n_classes=0)


def conv_net() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 4, 3, padding=1),
            act=nn.Tanh(),
            drop2d=nn.Dropout2d(0.3),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(4, 4, 3, stride=1, groups=2, bias=False),
            drop=nn.Dropout(0.2),
            avg=nn.AvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3)),
        )
    )


def sparse_images(n: int = 60, classes: int = 3) -> Dataset:
    """Images that are zero but for one 2x2 patch: the pooling windows of the
    background hold equal values (the convolution's bias), so ties are the rule."""
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 2, 12, 12, dtype=torch.float64)
    x[:, :, 2:4, 4:8] = torch.randn(n, 2, 2, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return Dataset("toy", x, y, x[:20], y[:20], n_classes=classes)


def tied_net() -> nn.Module:
    """ReLU before max-pooling (which the batched form swaps), a LeakyReLU before one
    (which it keeps), a strided, dilated convolution; biases of both signs; 2x2 pixels
    a channel at the flatten."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=2, stride=2, dilation=2),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2, ceil_mode=True),  # (4, 3, 3) -> (4, 2, 2)
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.5, -0.5, 0.0, 0.2]))
    return net


CASES = {
    "mlp": (lambda: build_model("mlp", (2, 6, 6), 3, hidden=(8, 5)), images, "cross_entropy"),
    "linear": (lambda: build_model("linear", (2, 6, 6), 3), images, "cross_entropy"),
    "dropout on the input and hidden units": (
        lambda: nn.Sequential(
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(72, 6),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(6, 3, bias=False),
        ),
        images,
        "cross_entropy",
    ),
    "squared loss on classes": (lambda: build_model("mlp", (2, 6, 6), 3), images, "squared"),
    "regression": (
        lambda: nn.Sequential(nn.Linear(7, 4), nn.Sigmoid(), nn.Linear(4, 2)),
        vectors,
        "squared",
    ),
    "cnn": (lambda: build_model("cnn", (2, 6, 6), 3), images, "cross_entropy"),
    "convolutions, channel dropout, pools": (conv_net, images, "cross_entropy"),
    "ties in the pooling windows": (tied_net, sparse_images, "cross_entropy"),
    "a strided convolution under overlapping max-pooling, inside the model": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(3, 4, 3, stride=2, padding=1),
            nn.MaxPool2d(2, stride=1, padding=1),
            nn.ReLU(),
            nn.Dropout2d(0.2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        ),
        images,
        "cross_entropy",
    ),
    "fused first layer, then channel dropout": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout2d(0.3),
            nn.Flatten(),
            nn.Linear(36, 3),
        ),
        images,
        "cross_entropy",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_batched_oracle_equals_the_vmapped_one(case: str) -> None:
    make, data, loss = CASES[case]
    net, ds = make().double(), data()
    fast = Problem(net, get_loss(loss, ds.n_classes > 0), Regularizer("l2", 0.01), ds)
    slow = Problem(net, get_loss(loss, ds.n_classes > 0), Regularizer("l2", 0.01), ds)
    assert fast.batched is not None
    slow.batched = None
    shards = [torch.arange(i, 60, 4) for i in range(4)]
    x = torch.randn(4, fast.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    oracles = [p.oracle(shards, [0, 1, 2, 3], batch_size=5, seed=3) for p in (fast, slow)]
    for _ in range(2):  # two batches: the streams and dropout keys advance alike
        (lf, gf), (ls, gs) = (o.grad(x) for o in oracles)
        torch.testing.assert_close(lf, ls, rtol=0, atol=1e-12)
        torch.testing.assert_close(gf, gs, rtol=0, atol=1e-12)
    local = torch.tensor([2, 0])
    (lf, gf), (ls, gs) = (o.grad(x[local], local) for o in oracles)
    torch.testing.assert_close(gf, gs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("native", [True, False], ids=["fused first layer", "torch kernels"])
def test_relu_before_max_pooling_runs_after_it_and_gives_the_same_gradient(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched form pools first, then applies the ReLU (on a quarter of the
    elements), the first three layers fused; with every window of the background tied,
    the gradient of each agent is still the one its own model gives through
    ``torch.autograd`` in the order written, by the fused kernel or by torch's."""
    if not native:
        monkeypatch.setattr(batched_module, "runs_natively", lambda *_: False)
    net, ds = tied_net().double(), sparse_images()
    batched = BatchedModel.of(net, (2, 12, 12))
    assert batched is not None
    first, *rest = (layer for _, layer in batched.layers)
    assert isinstance(first, FirstConvPool)
    kinds = [type(layer).__name__ for layer in (*first.parts, *rest)]
    assert kinds[:6] == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "LeakyReLU", "MaxPool2d"]
    problem = Problem(net, get_loss("cross_entropy"), Regularizer(), ds)
    x0 = problem.initial_params(0)
    xs = torch.stack([x0, x0 + 0.1 * torch.randn(x0.shape, dtype=torch.float64)])
    _, g = problem.oracle([torch.arange(60)] * 2, [0, 1], batch_size=0, seed=0).grad(xs)
    for x, gi in zip(xs, g, strict=True):
        model = tied_net().double()
        problem.spec.load_into(model, x)
        loss = nn.functional.cross_entropy(model(ds.x_train), ds.y_train)
        expected = torch.cat(
            [p.flatten() for p in torch.autograd.grad(loss, list(model.parameters()))]
        )
        torch.testing.assert_close(gi, expected, rtol=0, atol=1e-12)


def test_flattening_images_hands_back_a_channels_last_gradient() -> None:
    """Images ``(B, m * C, H, W)`` to features ``(m, C * H * W, B)``: the values of the
    reshape it stands for, and its gradient in the images' own (channels-last) layout."""
    B, m, c, h, w = 3, 2, 4, 2, 5
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(B, m * c, h, w, generator=gen, dtype=torch.float64)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = Activation(images, "images", m, B).features()
    expected = images.reshape(B, m, c * h * w).permute(1, 2, 0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, images, grad_out)
    (grad_expected,) = torch.autograd.grad(expected, images, grad_out)
    torch.testing.assert_close(grad, grad_expected, rtol=0, atol=0)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_dropout_masks_are_drawn_and_differ_per_agent() -> None:
    """The batched dropout is active: equal parameters, different agents' keys, different
    gradients; without dropout layers the same agents agree."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(72, 6), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    ds = images()
    problem = Problem(net, get_loss("cross_entropy"), Regularizer(), ds)
    same = [torch.arange(0, 60)] * 2
    x = problem.initial_params(0).expand(2, -1)
    _, g = problem.oracle(same, [0, 1], batch_size=0, seed=0).grad(x)
    assert not torch.allclose(g[0], g[1])


class Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Doubled(nn.Sequential):
    """A Sequential whose own forward is not its children in a row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize(
    "net, shape",
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(72, 3), Custom()), (2, 6, 6)),  # unknown layer
        (nn.Sequential(nn.Flatten(), nn.BatchNorm1d(72), nn.Linear(72, 3)), (2, 6, 6)),  # buffers
        (nn.Sequential(nn.Linear(6, 3)), (2, 6, 6)),  # a linear layer of images
        (nn.Sequential(nn.Flatten(), nn.Conv2d(2, 2, 3)), (2, 6, 6)),  # a convolution of vectors
        (nn.Sequential(nn.Conv2d(2, 2, 3)), (2, 6, 6)),  # images out
        (
            nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"), nn.Flatten()),
            (2, 6, 6),
        ),
        (nn.Sequential(nn.Flatten(0)), (2, 6, 6)),
        (Doubled(nn.Flatten(), nn.Linear(72, 3)), (2, 6, 6)),  # a forward of its own
        # a convolution of vectors, then back to one vector a sample
        (nn.Sequential(nn.Flatten(), nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(8, 3)), (2, 6, 6)),
        # channel dropout of vectors
        (nn.Sequential(nn.Linear(7, 4), SeededDropout(nn.Dropout2d(0.5), salt=0)), (7,)),
    ],
)
def test_models_the_batched_form_cannot_run_are_left_to_vmap(net: nn.Module, shape) -> None:
    assert BatchedModel.of(net, shape) is None
