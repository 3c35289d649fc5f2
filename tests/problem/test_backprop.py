"""The backward pass written out for perceptrons gives autograd's losses and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nettrain.data import Dataset
from nettrain.problem.backprop import runs_by_hand
from nettrain.problem.losses import Regularizer, get_loss, per_sample
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Oracle, Problem


def data(classes: int) -> Dataset:
    """60 samples of 7 features; class labels, or 2 regression targets (``classes=0``)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 7, generator=gen, dtype=torch.float64)
    if classes:
        y = torch.randint(0, classes, (60,), generator=gen)
    else:
        y = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    return Dataset("toy", x, y, x[:20], y[:20], n_classes=classes)


CASES = {
    "relu, cross-entropy": (lambda: build_model("mlp", 7, 3, hidden=(6, 5)), 3, "cross_entropy"),
    "tanh, sigmoid, identity": (
        lambda: nn.Sequential(
            nn.Linear(7, 6),
            nn.Tanh(),
            nn.Identity(),
            nn.Linear(6, 4),
            nn.Sigmoid(),
            nn.Linear(4, 3),
        ),
        3,
        "cross_entropy",
    ),
    "dropout, no bias, in-place relu": (
        lambda: nn.Sequential(
            nn.Dropout(0.3),
            nn.Linear(7, 6, bias=False),
            nn.ReLU(inplace=True),
            nn.Tanh(),
            nn.Dropout(0.5),
            nn.Linear(6, 3),
        ),
        3,
        "cross_entropy",
    ),
    "gelu, leaky relu, elu": (
        lambda: nn.Sequential(
            nn.Linear(7, 6),
            nn.GELU(approximate="tanh"),
            nn.Linear(6, 6),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(6, 5),
            nn.ELU(0.7),
            nn.Linear(5, 3),
        ),
        3,
        "cross_entropy",
    ),
    "silu, softplus, plain gelu": (
        lambda: nn.Sequential(
            nn.Linear(7, 6),
            nn.SiLU(),
            nn.Linear(6, 5),
            nn.Softplus(2.0, 1.0),
            nn.GELU(),
            nn.Linear(5, 3),
        ),
        3,
        "squared",
    ),
    "squared loss on classes": (lambda: build_model("mlp", 7, 3, hidden=(5,)), 3, "squared"),
    "regression": (lambda: build_model("mlp", 7, 2, hidden=(5,)), 0, "squared"),
    "one linear layer": (lambda: build_model("linear", 7, 3), 3, "cross_entropy"),
    "an activation of the inputs": (
        lambda: nn.Sequential(nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)),
        3,
        "cross_entropy",
    ),
}


def oracle(case: str, by_hand: bool) -> Oracle:
    make, classes, loss = CASES[case]
    torch.manual_seed(0)
    ds = data(classes)
    prob = Problem(make().double(), get_loss(loss, classes > 0), Regularizer("l2", 0.01), ds)
    out = prob.oracle([torch.arange(i, 60, 4) for i in range(4)], range(4), batch_size=5, seed=3)
    assert out._by_hand  # every case runs by hand unless told not to
    out.__dict__["_by_hand"] = by_hand  # the cached property, set
    return out


@pytest.mark.parametrize("case", CASES)
def test_the_written_out_backward_pass_gives_autograds_numbers(case: str) -> None:
    hand, auto = oracle(case, True), oracle(case, False)
    x = torch.randn(4, hand.problem.dim, generator=torch.Generator().manual_seed(1)).double()
    for _ in range(3):  # three batches: the streams and dropout keys advance alike
        (lh, gh), (la, ga) = hand.grad(x), auto.grad(x)
        torch.testing.assert_close(lh, la, rtol=0, atol=1e-12)
        torch.testing.assert_close(gh, ga, rtol=0, atol=1e-12)
        assert gh.abs().sum(1).min() > 0  # every agent has a gradient
        x = x - 0.5 * gh
    local = torch.tensor([3, 1])
    torch.testing.assert_close(hand.grad(x[local], local), auto.grad(x[local], local))


def test_regression_targets_of_another_dtype_than_the_model() -> None:
    """float64 targets (NumPy's default) on a float32 model: the written-out pass takes
    ``z - t`` in the model's dtype, as autograd's gradient comes out."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 7, generator=gen)
    y = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    ds = Dataset("toy", x, y, x[:20], y[:20], n_classes=0)
    out = []
    for by_hand in (True, False):
        torch.manual_seed(0)
        model = build_model("mlp", 7, 2, hidden=(5,))
        prob = Problem(model, get_loss("squared", False), Regularizer(), ds)
        shards = [torch.arange(i, 60, 4) for i in range(4)]
        oracle = prob.oracle(shards, range(4), batch_size=5, seed=3)
        assert oracle._by_hand
        oracle.__dict__["_by_hand"] = by_hand
        out.append(oracle.grad(prob.initial_params(0).expand(4, -1).clone()))
    (lh, gh), (la, ga) = out
    assert lh.dtype == gh.dtype == torch.float32
    torch.testing.assert_close(lh, la.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, ga, rtol=1e-6, atol=1e-6)


def test_a_convolution_goes_through_autograd_with_the_same_batched_model() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 6, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=gen)
    images = Dataset("toy", x, y, x[:20], y[:20], n_classes=3)
    prob = Problem(
        build_model("cnn", (1, 6, 6), 3).double(), get_loss("cross_entropy"), Regularizer(), images
    )
    assert prob.batched is not None and not runs_by_hand(prob.batched, prob.loss)


def test_a_loss_of_the_users_goes_through_autograd() -> None:
    prob = Problem(
        build_model("mlp", 7, 3).double(), get_loss("cross_entropy"), Regularizer(), data(3)
    )
    assert prob.batched is not None and runs_by_hand(prob.batched, prob.loss)
    own = per_sample(nn.CrossEntropyLoss(reduction="none"))
    assert not runs_by_hand(prob.batched, own)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_weight_gradients_written_into_the_stack_are_the_products(monkeypatch, dtype) -> None:
    """``dY h^T`` written into strided columns of a stack, straight there or through the
    scratch block with 1, 2, 3 or all 5 agents at a time, is the batched product bit for
    bit; added with ``alpha``, it is ``torch.add`` of the product; the columns around are
    left."""
    from nettrain.problem import backprop

    gen = torch.Generator().manual_seed(0)
    dy, h = (torch.randn(5, o, 4, generator=gen, dtype=dtype) for o in (3, 6))
    expected = torch.bmm(dy, h.transpose(1, 2))  # (5, 3, 6)
    for direct, agents in ((True, 5), (False, 1), (False, 2), (False, 3), (False, 5)):
        stack = torch.full((5, 2 + 18 + 7), -1.0, dtype=dtype)
        view = stack[:, 2:20].view(5, 3, 6)
        monkeypatch.setattr(backprop, "DIRECT_BYTES", 0 if direct else 2**40)
        monkeypatch.setattr(backprop, "BLOCK_BYTES", agents * 18 * stack.element_size())
        assert backprop.weight_grad(dy, h, view) is view
        assert torch.equal(view, expected)
        assert bool((stack[:, :2] == -1).all() and (stack[:, 20:] == -1).all())
        start = view.clone()
        assert backprop.weight_grad(dy, h, view, alpha=-0.7) is view
        assert torch.equal(view, torch.add(start, expected, alpha=-0.7))
        assert bool((stack[:, :2] == -1).all() and (stack[:, 20:] == -1).all())


@pytest.mark.parametrize("way", ("direct", "blocks"))
def test_the_oracle_writes_the_gradient_into_its_stack_either_way_alike(monkeypatch, way) -> None:
    """Weight gradients written straight into the stack, or one agent's at a time through
    the scratch block, give the numbers of the default."""
    from nettrain.problem import backprop

    whole, other = oracle("relu, cross-entropy", True), oracle("relu, cross-entropy", True)
    x = torch.randn(4, whole.problem.dim, generator=torch.Generator().manual_seed(1)).double()
    expected = whole.grad(x)
    if way == "direct":
        monkeypatch.setattr(backprop, "DIRECT_BYTES", 0)
    else:
        monkeypatch.setattr(backprop, "BLOCK_BYTES", 1)
    got = other.grad(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
