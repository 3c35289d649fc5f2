"""Gradient buckets: the cut covers every column once, and the oracle hands a gradient
out bucket by bucket during the backward pass without changing a number."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from nettrain.data import Dataset
from nettrain.patterns import AtTheEnd, Ready
from nettrain.problem import oracle as oracle_module
from nettrain.problem.buckets import BucketFeed, gradient_buckets
from nettrain.problem.execution import Execution
from nettrain.problem.losses import Regularizer, cross_entropy, per_sample
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem

NUMELS = [
    [30, 5, 15, 3],  # an MLP: weight, bias, weight, bias
    [100352, 128, 1280, 10],  # the Fashion-MNIST MLP 784-128-10
    [7],
    [4, 4, 4, 4, 4],
]


@pytest.mark.parametrize("numels", NUMELS)
@pytest.mark.parametrize("cap", [0, 1, 5, 18, 20, 1000, 10**9])
def test_buckets_cover_every_column_once_last_layers_first(numels: list[int], cap: int) -> None:
    buckets = gradient_buckets(numels, cap)
    d = sum(numels)
    covered = torch.zeros(d, dtype=torch.int64)
    for b in buckets:
        covered[b] += 1
    assert covered.tolist() == [1] * d
    assert [b.stop for b in buckets] == sorted((b.stop for b in buckets), reverse=True)
    assert buckets[0].stop == d and buckets[-1].start == 0  # the last layer first
    ends = set(torch.tensor([0, *numels]).cumsum(0).tolist())
    for b in buckets:  # whole parameters, within the cap unless one parameter is larger
        assert b.start in ends and b.stop in ends
        inside = [
            k for k, s in zip(numels, sorted(ends)[:-1], strict=True) if b.start <= s < b.stop
        ]
        assert cap <= 0 or b.stop - b.start <= cap or len(inside) == 1
    if cap <= 0 or cap >= d:
        assert buckets == (slice(0, d),)


def test_a_bucket_closes_only_before_the_parameter_that_would_pass_the_cap() -> None:
    """From the last parameter: 3 + 15 = 18 fit a cap of 18, the 5 before them does not;
    a parameter larger than the cap is a bucket of its own; no parameters, no bucket."""
    assert gradient_buckets([30, 5, 15, 3], 18) == (slice(35, 53), slice(30, 35), slice(0, 30))
    assert gradient_buckets([30, 5, 15, 3], 17) == (
        slice(50, 53), slice(35, 50), slice(30, 35), slice(0, 30),
    )  # fmt: skip
    assert gradient_buckets([4, 4, 4], 1) == (slice(8, 12), slice(4, 8), slice(0, 4))
    assert gradient_buckets([2, 0, 3], 3) == (slice(2, 5), slice(0, 2))
    assert gradient_buckets([], 5) == () and gradient_buckets([], 0) == ()


def test_the_fashion_mnist_mlp_splits_before_its_first_weight() -> None:
    assert gradient_buckets([100352, 128, 1280, 10], 2000) == (
        slice(100352, 101770),  # the output layer and the hidden bias: 1,418 columns
        slice(0, 100352),
    )


@dataclass
class Recorder:
    """A sink that records what is put, and when, next to the backward pass's calls."""

    bucket_bytes: int
    log: list[str]
    parts: list[tuple[slice, torch.Tensor]] = field(default_factory=list)

    def put(self, cols: slice, part: torch.Tensor) -> None:
        self.log.append("put")
        self.parts.append((cols, part.clone()))


def problem(
    model: nn.Module, regularizer: str = "l2", chunk: int | str = "auto", users_loss: bool = False
) -> Problem:
    """The model on 80 samples of 6 features, 3 classes; cross-entropy, built in or as a
    loss of the user's (``users_loss``: the batched model's gradient by autograd)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=gen)
    data = Dataset("toy", x, y, x[:20], y[:20], n_classes=3)
    reg = Regularizer(regularizer, 0.01 if regularizer != "none" else 0.0)
    loss = per_sample(nn.CrossEntropyLoss(reduction="none")) if users_loss else cross_entropy
    return Problem(model.double(), loss, reg, data, execution=Execution(chunk))


def mlp() -> nn.Module:
    return build_model("mlp", 6, 3, hidden=(5, 4))


def with_batchnorm() -> nn.Module:  # buffers: not the batched kernel, vmap (or autograd alone)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


CASES = {  # model, regulariser, chunk, put during the pass, a loss of the user's
    "batched, hooks": (mlp, "l2", "auto", True, False),
    "batched, l1, hooks": (mlp, "l1", "auto", True, False),
    "batched, no regulariser": (mlp, "none", "auto", True, False),
    "batched, in chunks: after the pass": (mlp, "l2", 2, False, False),
    "batched by autograd, hooks": (mlp, "l2", "auto", True, True),
    "batched by autograd, in chunks: after the pass": (mlp, "l2", 2, False, True),
    "vmap: after the pass": (with_batchnorm, "l2", "auto", False, False),
    "one agent, its module, hooks": (mlp, "l2", "auto", True, True),
    "one agent, l1, its module, hooks": (mlp, "l1", "auto", True, True),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("cap_elements", [0, 8, 40])
def test_the_oracle_puts_every_bucket_once_and_changes_no_number(
    name: str, cap_elements: int, monkeypatch
) -> None:
    build, reg, chunk, during, users_loss = CASES[name]
    torch.manual_seed(0)
    prob = problem(build(), reg, chunk, users_loss)
    n = 1 if name.startswith("one agent") else 4
    shards = [torch.arange(k * 20, k * 20 + 20) for k in range(n)]
    plain = prob.oracle(shards, range(n), batch_size=5, seed=3)
    fed = prob.oracle(shards, range(n), batch_size=5, seed=3)
    if users_loss:  # by autograd: the layer-wise batched model, or one agent's module
        assert prob.batched is not None and not fed._by_hand
        assert (fed._kernel(n) == fed._module_grad) == (n == 1)
    x = torch.randn(n, prob.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log: list[str] = []

    def logged(backward):  # autograd's, or the perceptron's written out
        def run(*args, **kwargs):
            log.append("backward")
            out = backward(*args, **kwargs)
            log.append("returned")
            return out

        return run

    monkeypatch.setattr(torch.autograd, "grad", logged(torch.autograd.grad))
    monkeypatch.setattr(oracle_module, "losses_and_grads", logged(oracle_module.losses_and_grads))
    for _ in range(2):  # two rounds: the second batch too
        sink = Recorder(cap_elements * 8, log)
        log.clear()
        loss0, g0 = plain.grad(x)
        loss1, g1 = fed.grad(x, sink=sink)
        assert torch.equal(loss0, loss1) and torch.equal(g0, g1)  # bit for bit
        assert [c for c, _ in sink.parts] == list(gradient_buckets(prob.spec.numels, cap_elements))
        for cols, part in sink.parts:
            assert torch.equal(part, g1[:, cols])
        if during and len(sink.parts) > 1:  # put from the hooks, before backward returned
            assert log[-1] == "returned" and log.count("put") == len(sink.parts)
        else:
            assert log[-len(sink.parts) :] == ["put"] * len(sink.parts)
        x = x - 0.1 * g0
    assert torch.equal(plain.meter.reset(), fed.meter.reset())


def test_the_output_layer_is_put_before_the_first_layers_gradient_exists(monkeypatch) -> None:
    """Buckets go out during the backward pass: the output layer's bucket is put before
    the first layer's weight gradient is computed."""
    prob = problem(mlp(), "none")
    oracle = prob.oracle([torch.arange(20)], [0], batch_size=5, seed=0)
    x = torch.randn(1, prob.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    log: list[str] = []
    original = BucketFeed.hook

    def hook(self: BucketFeed, j: int):
        inner = original(self, j)

        def logged(grad: torch.Tensor) -> None:
            log.append(f"grad {j}")
            inner(grad)

        return logged

    monkeypatch.setattr(BucketFeed, "hook", hook)
    sink = Recorder(8, log)  # one parameter a bucket
    oracle.grad(x, sink=sink)
    last = len(prob.spec.numels) - 1
    assert log.index("put") < log.index("grad 0")  # the output layer's bucket, first
    assert sink.parts[0][0] == prob.spec.slices[last]
    assert log.count("put") == last + 1 and log[-1] == "put"  # the first layer's, last


def test_at_the_end_is_the_plain_mean() -> None:
    x = torch.randn(3, 5)
    handle = AtTheEnd(lambda v: Ready(v.mean(0, keepdim=True).expand_as(v).clone()))
    handle.put(slice(0, 5), x)  # ignored: everything is sent at wait
    assert torch.equal(handle.wait(x), x.mean(0, keepdim=True).expand_as(x))


@pytest.mark.parametrize("chunk", ["auto", 2])
@pytest.mark.parametrize("smooth", [True, False])
def test_a_fed_gradient_is_the_plain_one_with_dropout_and_without_the_regulariser(
    chunk: int | str, smooth: bool
) -> None:
    """With dropout (each agent's key reaches the hooked pass) and with ``smooth=True``
    (methods that apply the regulariser's prox: no regulariser in any bucket), fed from
    the hooks (one chunk) or after the pass (chunks of 2), bit for bit."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.4), nn.Linear(5, 3))
    prob = problem(net, "l2", chunk)
    shards = [torch.arange(k * 20, k * 20 + 20) for k in range(4)]
    plain, fed = (prob.oracle(shards, range(4), batch_size=5, seed=3) for _ in range(2))
    x = torch.randn(4, prob.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sink = Recorder(8 * 8, [])
    loss0, g0 = plain.grad(x, smooth=smooth)
    loss1, g1 = fed.grad(x, smooth=smooth, sink=sink)
    assert torch.equal(loss0, loss1) and torch.equal(g0, g1)
    assert len(sink.parts) > 1


def test_buckets_smaller_than_one_element_hold_one_parameter_each() -> None:
    """A sink asking for fewer bytes than one element (1 or 4 bytes of float64) gets the
    smallest buckets there are, one parameter each, as for 8 bytes; never the whole
    gradient. 16 bytes hold the two last parameters of one element."""
    out = torch.zeros(2, 5, dtype=torch.float64)
    params = (slice(0, 3), slice(3, 4), slice(4, 5))
    for bucket_bytes in (1, 4, 8):
        feed = BucketFeed(out, params, Recorder(bucket_bytes, []))
        assert feed.buckets == (slice(4, 5), slice(3, 4), slice(0, 3)) and feed.hooked
    assert BucketFeed(out, params, Recorder(16, [])).buckets == (slice(3, 5), slice(0, 3))
    assert not BucketFeed(out, params, Recorder(0, [])).hooked
