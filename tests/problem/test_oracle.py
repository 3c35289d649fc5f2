from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import iid_shards, least_squares_problem, regression_data
from nettrain.data import Dataset
from nettrain.errors import ConfigError
from nettrain.problem.flat import FlatSpec, matmul_flops_per_sample
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem


def classification_problem(model: str = "mlp") -> Problem:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(90, 1, 4, 4, generator=gen, dtype=torch.float64)  # (N, C, H, W)
    y = torch.randint(0, 3, (90,), generator=gen)
    data = Dataset("toy", x, y, x[:30], y[:30], n_classes=3)
    net = build_model(model, (1, 4, 4), 3, hidden=(8,)).double()
    return Problem(net, get_loss("cross_entropy"), Regularizer("l2", 0.01), data)


def test_flat_views_round_trip() -> None:
    net = build_model("mlp", 6, 3, hidden=(5,))
    spec = FlatSpec.of(net)
    x = spec.flatten(net)
    assert x.shape == (6 * 5 + 5 + 5 * 3 + 3,) == (spec.dim,)
    views = spec.unflatten(x)
    for p, v in zip(net.parameters(), views.values(), strict=True):
        assert torch.equal(p, v) and v.data_ptr() >= x.data_ptr()  # views, no copies
    assert matmul_flops_per_sample(spec) == 2 * (6 * 5 + 5 * 3)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_vectorised_gradient_equals_per_agent_autograd(model: str) -> None:
    problem = classification_problem(model)
    shards = [torch.arange(0, 25), torch.arange(25, 60), torch.arange(60, 90)]  # unequal sizes
    oracle = problem.oracle(shards, [0, 1, 2], batch_size=0, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, problem.dim, generator=gen, dtype=torch.float64) * 0.3
    loss, g = oracle.grad(x)  # (3,), (3, d)
    for i, s in enumerate(shards):
        net = build_model(model, (1, 4, 4), 3, hidden=(8,)).double()
        problem.spec.load_into(net, x[i])
        out = nn.functional.cross_entropy(net(problem.data.x_train[s]), problem.data.y_train[s])
        out = out + 0.01 * sum(p.square().sum() for p in net.parameters())
        out.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(loss[i], out.detach())
        torch.testing.assert_close(g[i], ref)
    assert oracle.meter.reset().tolist() == [25, 35, 30]


def test_agent_batches_do_not_depend_on_grouping() -> None:
    """Agent 2 draws the same batches alone (one process) as in a stack of four.

    Alone, the gradient takes plain autograd instead of vmap: equal up to float64
    rounding (another batch would change it at the first digit)."""
    problem = least_squares_problem(regression_data())
    shards = iid_shards(120, 4)
    stacked = problem.oracle(shards, range(4), batch_size=5, seed=7)
    alone = problem.oracle(shards[2:3], [2], batch_size=5, seed=7)
    x = problem.initial_params(0).expand(4, -1).clone()
    for _ in range(3):
        _, g_all = stacked.grad(x)
        _, g_one = alone.grad(x[2:3])
        torch.testing.assert_close(g_all[2:3], g_one, rtol=1e-12, atol=1e-12)
    other_seed = problem.oracle(shards[2:3], [2], batch_size=5, seed=8)
    assert not torch.equal(other_seed.grad(x[2:3])[1], g_one)


def test_evaluate_matches_module() -> None:
    problem = classification_problem()
    x = torch.stack([problem.initial_params(s) for s in range(3)])
    ev = problem.evaluate(x, chunk=2)
    for i in range(3):
        net = build_model("mlp", 16, 3, hidden=(8,)).double()
        problem.spec.load_into(net, x[i])
        out = net(problem.data.x_test)
        acc = (out.argmax(1) == problem.data.y_test).double().mean()
        torch.testing.assert_close(ev.accuracy[i], acc.float(), check_dtype=False)
        torch.testing.assert_close(
            ev.loss[i], nn.functional.cross_entropy(out, problem.data.y_test).detach()
        )


def test_initial_params_seeded_and_isolated() -> None:
    problem = classification_problem()
    torch.manual_seed(123)
    before = torch.rand(1)
    a = problem.initial_params(5)
    torch.manual_seed(123)
    problem.initial_params(5)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    assert torch.equal(a, problem.initial_params(5))
    assert not torch.equal(a, problem.initial_params(6))


def test_regularizers() -> None:
    x = torch.tensor([[1.0, -2.0, 0.0]])
    assert Regularizer("l2", 0.5).value(x).item() == pytest.approx(2.5)
    assert Regularizer("l1", 0.5).value(x).item() == pytest.approx(1.5)
    assert Regularizer("l1", 0.5).grad(x).tolist() == [[0.5, -0.5, 0.0]]
    assert torch.equal(Regularizer("l2", 0.5).grad(x), x)
    with pytest.raises(ConfigError, match="reg_lambda"):
        Regularizer("l2", -1.0)


def test_squared_loss_on_class_labels_runs_under_vmap() -> None:
    """``loss=squared`` on a classification set regresses one-hot targets, in the oracle."""
    problem = classification_problem()
    problem.loss = get_loss("squared")
    oracle = problem.oracle(iid_shards(90, 3), range(3), batch_size=0, seed=0)
    x = problem.initial_params(0).expand(3, -1).clone()
    loss, _ = oracle.grad(x, smooth=True)
    data = problem.data
    for i, shard in enumerate(iid_shards(90, 3)):
        out = torch.func.functional_call(
            problem.model, problem.spec.unflatten(x[i]), (data.x_train[shard],)
        )
        target = torch.eye(3, dtype=torch.float64)[data.y_train[shard]]
        assert loss[i] == pytest.approx(float(0.5 * (out - target).square().sum(1).mean()))
