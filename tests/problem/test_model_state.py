"""Models with more than parameters: per-agent buffers, seeded dropout, any input shape,
and layers the vectorised oracle cannot run (an error naming the layer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nettrain.data import Dataset
from nettrain.errors import ConfigError
from nettrain.problem.buffers import BufferSpec, for_evaluation, mean
from nettrain.problem.execution import Execution
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Problem
from nettrain.problem.random_layers import SeededDropout, seeded, uniform


class Net(nn.Module):
    """Image in, BatchNorm and dropout inside: everything the oracle must carry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(self.drop(x.flatten(1)))


def image_data(n: int = 60) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return Dataset("images", x, y, x[:20], y[:20], n_classes=3)


def problem(model: nn.Module | None = None, policy: str = "mix") -> Problem:
    net = (model or Net()).double()
    return Problem(net, get_loss("auto"), Regularizer(), image_data(), buffer_policy=policy)


SHARDS = [torch.arange(0, 20), torch.arange(20, 40), torch.arange(40, 60)]


def test_the_stack_equals_each_agent_alone() -> None:
    """Gradient, loss, BatchNorm statistics and dropout masks of an agent do not depend on
    which other agents share its oracle: the simulator's stack (vmap) gives what a
    process holding that agent alone (plain autograd) gives."""
    p = problem()
    stack = p.oracle(SHARDS, [0, 1, 2], batch_size=8, seed=3)
    alone = [p.oracle([SHARDS[i]], [i], batch_size=8, seed=3) for i in range(3)]
    x = p.initial_params(0).expand(3, -1).clone()
    for _ in range(3):  # the buffers and the dropout streams move on each pass
        loss, g = stack.grad(x)
        for i, single in enumerate(alone):
            li, gi = single.grad(x[i : i + 1])
            torch.testing.assert_close(loss[i : i + 1], li)
            torch.testing.assert_close(g[i : i + 1], gi)
            for name, value in single.buffers.items():
                torch.testing.assert_close(stack.buffers[name][i : i + 1], value)
        x = x - 0.1 * g


def test_buffers_follow_batchnorm_running_statistics() -> None:
    """One pass updates agent i's statistics as torch's BatchNorm does on its batch."""
    p = problem()
    oracle = p.oracle(SHARDS, [0, 1, 2], batch_size=0, seed=0)
    x = p.initial_params(0)
    oracle.grad(x.expand(3, -1).clone())
    for i, shard in enumerate(SHARDS):
        ref = Net().double()
        p.spec.load_into(ref, x)
        ref.train()
        ref.bn(ref.conv(p.data.x_train[shard]))
        torch.testing.assert_close(oracle.buffers["bn.running_mean"][i], ref.bn.running_mean)
        torch.testing.assert_close(oracle.buffers["bn.running_var"][i], ref.bn.running_var)
        assert int(oracle.buffers["bn.num_batches_tracked"][i]) == 1
    assert not torch.equal(
        oracle.buffers["bn.running_mean"][0], oracle.buffers["bn.running_mean"][1]
    )


def test_dropout_is_per_agent_seeded_and_active() -> None:
    p = problem()
    x = p.initial_params(0).expand(3, -1).clone()
    a = p.oracle(SHARDS, [0, 1, 2], batch_size=8, seed=1)
    b = p.oracle(SHARDS, [0, 1, 2], batch_size=8, seed=1)
    first, second = a.grad(x)[1], b.grad(x)[1]
    assert torch.equal(first, second)  # same seed, same masks, bit for bit
    c = p.oracle(SHARDS, [0, 1, 2], batch_size=8, seed=2)
    assert not torch.equal(first, c.grad(x)[1])  # another seed: other batches and masks


def test_seeded_uniforms_are_uniform_and_keep_1_minus_p() -> None:
    u = uniform(torch.tensor(12345), 0, torch.Size([200_000]))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    other = uniform(torch.tensor(12346), 0, torch.Size([200_000]))
    assert abs(float(torch.corrcoef(torch.stack([u, other]))[0, 1])) < 0.01
    layer = SeededDropout(nn.Dropout(0.3), 0)
    layer.key = torch.tensor(7)
    out = layer(torch.ones(100_000))
    assert abs(float((out > 0).float().mean()) - 0.7) < 0.01
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]


def test_seeded_copies_and_leaves_the_model_given_alone() -> None:
    net = Net()
    copy, layers = seeded(net)
    assert isinstance(net.drop, nn.Dropout) and isinstance(copy.drop, SeededDropout)
    assert len(layers) == 1 and [n for n, _ in copy.named_parameters()] == [
        n for n, _ in net.named_parameters()
    ]
    plain = nn.Linear(2, 2)
    assert seeded(plain) == (plain, ())


def test_evaluation_uses_mean_or_own_buffers() -> None:
    bufs = {"m": torch.tensor([[1.0], [3.0], [8.0]]), "k": torch.tensor([1, 2, 2])}
    avg = mean(bufs)
    assert avg["m"].tolist() == [[4.0]] and avg["k"].tolist() == [2]  # 5/3 rounded, not cut
    assert avg["m"].dtype == torch.float32 and avg["k"].dtype == torch.int64
    agents = torch.tensor([0, 2])
    assert for_evaluation(bufs, agents, "local")["m"].flatten().tolist() == [4.0, 1.0, 8.0]
    assert for_evaluation(bufs, agents, "mix")["m"].flatten().tolist() == [4.0, 4.0, 4.0]
    assert mean({"v": torch.tensor([[1.0, 2.0], [3.0, 6.0]])})["v"].tolist() == [[2.0, 4.0]]


def test_buffers_flatten_to_float64_rows_and_back_exactly() -> None:
    """Rows ``[running_mean, running_var, num_batches_tracked]`` per agent, in float64;
    back to each buffer's shape and dtype, counters exact up to ``2^53``."""
    spec = BufferSpec.of(nn.BatchNorm1d(2))
    assert spec.names == ("running_mean", "running_var", "num_batches_tracked")
    stacked = spec.stack(nn.BatchNorm1d(2), 3)
    stacked["running_mean"] += torch.tensor([[0.25, -1.5], [2.0, 3.0], [0.1, 0.2]])
    stacked["num_batches_tracked"] += torch.tensor([5, 2**53 - 1, 0])
    flat = spec.flatten(stacked)
    assert flat.dtype == torch.float64 and flat.shape == (3, 5)
    assert flat[1].tolist() == [2.0, 3.0, 1.0, 1.0, float(2**53 - 1)]
    torch.testing.assert_close(flat[:, :2], stacked["running_mean"].double(), rtol=0, atol=0)
    back = spec.unflatten(flat)
    assert all(torch.equal(back[k], stacked[k]) and back[k].dtype == stacked[k].dtype for k in back)


class Counter(nn.Module):
    """A model with one buffer (a step counter), not BatchNorm's three."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def test_a_single_buffer_flattens_to_float64_rows_and_back() -> None:
    """One 0-d int64 buffer per agent: rows of one float64 value, exact to ``2^53 - 1``."""
    spec = BufferSpec.of(Counter())
    assert spec.names == ("steps",)
    stacked = {"steps": torch.tensor([3, 2**53 - 1])}
    flat = spec.flatten(stacked)
    assert flat.dtype == torch.float64 and flat.tolist() == [[3.0], [float(2**53 - 1)]]
    back = spec.unflatten(flat)
    assert back["steps"].dtype == torch.int64 and torch.equal(back["steps"], stacked["steps"])


class ItemBranch(nn.Module):
    """Reads a tensor's value into Python: cannot be vectorised."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        return out if out.sum().item() > 0 else -out


class Noise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


@pytest.mark.parametrize(
    ("model", "layer", "advice"),
    [
        (ItemBranch(), "'ItemBranch' (ItemBranch)", "torch.where instead of if"),
        (nn.Sequential(Noise(), nn.Flatten(), nn.Linear(16, 3)), "'0' (Noise)", "nn.Dropout"),
    ],
)
def test_a_layer_that_cannot_be_vectorised_is_named(model, layer, advice) -> None:
    with pytest.raises(ConfigError) as caught:
        problem(model).check()
    assert layer in str(caught.value) and advice in str(caught.value)


def test_the_rehearsal_needs_two_training_samples_and_no_more() -> None:
    """Two samples are enough to rehearse (and refuse) a model; with one there is
    nothing to run two agents on, and the check is left to the run's own errors."""
    for n, refused in [(2, True), (1, False)]:
        data = image_data(n)
        tiny = Problem(ItemBranch().double(), get_loss("auto"), Regularizer(), data)
        if refused:
            with pytest.raises(ConfigError, match="'ItemBranch'"):
                tiny.check()
        else:
            tiny.check()


def test_a_model_without_parameters_is_refused() -> None:
    """Nothing to train: refused when the problem is built, before any oracle asks for a
    gradient of nothing."""
    message = (
        "the model has no parameters to train (Sequential); give it a layer with weights, "
        "e.g. nn.Linear"
    )
    with pytest.raises(ConfigError) as caught:
        problem(nn.Sequential(nn.Flatten(), nn.Tanh()))
    assert str(caught.value) == message


def test_a_vectorisable_model_passes_the_check() -> None:
    problem().check()


def test_the_rehearsal_keeps_the_models_own_parameters() -> None:
    """The check runs the template's own parameters (``reinitialise=False``): a pretrained
    model is not re-initialised by it."""
    p = problem()
    with torch.no_grad():
        for param in p.model.parameters():
            param.fill_(0.125)
    p.check()
    assert all(bool((param == 0.125).all()) for param in p.model.parameters())


class ItemInEvaluation(nn.Module):
    """Reads its buffer into Python in evaluation mode only: it trains under vmap, but
    cannot be evaluated with a buffer per agent (as the run's metrics evaluate it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        return out if self.training else out * self.scale.item()


def test_the_rehearsal_evaluates_with_the_agents_buffers() -> None:
    """The rehearsal's evaluation passes the oracle's per-agent buffers (not the
    template's, which vmap does not batch): the layer is named, whole message."""
    message = (
        "layer 'ItemInEvaluation' (ItemInEvaluation) cannot run in nettrain's vectorised "
        "oracle (torch.func.vmap over agents): it reads a tensor's value into Python "
        "(.item(), float(t), or an if on a tensor). To fix it: keep values as tensors: "
        "torch.where instead of if, no .item()"
    )
    with pytest.raises(ConfigError) as caught:
        problem(ItemInEvaluation()).check()
    assert str(caught.value) == message


def test_the_rehearsal_runs_eagerly_where_the_run_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile=true``: the check never calls ``torch.compile`` (replaced here by a
    recording identity), while the run's own oracle does."""
    calls: list[object] = []

    def compile(fn: object, **_: object) -> object:
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", compile)
    net = Net().double()
    data, compiling = image_data(), Execution(compile=True)
    p = Problem(net, get_loss("auto"), Regularizer(), data, execution=compiling)
    p.check()
    assert calls == []
    x = p.initial_params(0, reinitialise=False).expand(2, -1)
    p.oracle(SHARDS[:2], [0, 1], batch_size=2, seed=0).grad(x)
    assert len(calls) == 1


class Shapes(nn.Module):
    """Records the mode and the input shape of every forward pass (shapes are static
    under vmap: one agent's ``(B, C, H, W)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 3)
        self.seen: list[tuple[bool, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, tuple(x.shape)))
        return self.lin(x.flatten(1))


def test_the_rehearsal_trains_and_evaluates_on_two_samples() -> None:
    """Training passes on two samples an agent and an evaluation on two test samples (of
    the 20): the cheap rehearsal the docstring describes (shapes only: how often the
    oracle calls the model is its own business)."""
    p = problem(Shapes())
    model = p.model
    assert isinstance(model, Shapes)
    model.seen.clear()
    p.check()
    assert set(model.seen) == {(True, (2, 1, 4, 4)), (False, (2, 1, 4, 4))}
