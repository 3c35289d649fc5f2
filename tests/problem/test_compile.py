"""The compiled oracle (``compile=true``): the eager numbers, one compilation per shape,
and an eager fallback with a one-line warning where compilation fails.

``torch.compile`` costs seconds per graph on a CPU: the tests share tiny models and
shapes, so that the run at the end finds the oracle test's graph in dynamo's cache.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nettrain
from nettrain.config import FROZEN_ON_RESUME, load_config
from nettrain.data import Dataset, from_tensors
from nettrain.errors import ConfigError
from nettrain.problem.execution import Execution
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Oracle, Problem

# inductor imports torch.utils.mkldnn, which declares a deprecated TorchScript method
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

AGENTS, BATCH = 4, 4


def data() -> Dataset:
    """40 images ``(1, 4, 4)`` of 3 classes, as ``nettrain.data.from_tensors`` stores them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (40,), generator=gen)
    return from_tensors(x, y, x[:8], y[:8])


def mlp() -> nn.Module:
    """Runs as the batched model (with seeded dropout: the compiled hash must agree)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)
    )


def batchnorm() -> nn.Module:
    """Has buffers: runs under vmap."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )


def oracle(net: nn.Module, compile: bool) -> Oracle:
    problem = Problem(
        net, get_loss("auto"), Regularizer("l2", 0.01), data(), execution=Execution(compile=compile)
    )
    shards = [torch.arange(i, 40, AGENTS) for i in range(AGENTS)]
    return problem.oracle(shards, range(AGENTS), batch_size=BATCH, seed=2)


def params(o: Oracle) -> torch.Tensor:
    """``(AGENTS, d)``: PyTorch's initialisation, a different perturbation for each agent."""
    noise = torch.randn(AGENTS, o.problem.dim, generator=torch.Generator().manual_seed(1))
    return o.problem.initial_params(0) + 0.1 * noise


def assert_same(eager: Oracle, compiled: Oracle, x: torch.Tensor, local=None) -> None:
    """One call of each oracle: losses, gradients and buffers equal to 1e-6."""
    expected, got = eager.grad(x, local), compiled.grad(x, local)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for name, value in eager.buffers.items():
        torch.testing.assert_close(compiled.buffers[name], value, rtol=0, atol=1e-6)


def test_compiled_batched_oracle_gives_the_eager_numbers_and_compiles_once_per_shape() -> None:
    """float32: the first round compiles, the next rounds run under "fail_on_recompile";
    a subset of agents (another shape) compiles once more, then serves other sizes."""
    eager, compiled = oracle(mlp(), False), oracle(mlp(), True)
    assert compiled.problem.batched is not None
    x = params(eager)
    assert_same(eager, compiled, x)  # compiles
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(3):
            assert_same(eager, compiled, x)
    assert_same(eager, compiled, x[:3], torch.tensor([2, 0, 3]))  # k = 3: compiles again
    with torch.compiler.set_stance("fail_on_recompile"):
        assert_same(eager, compiled, x[:2], torch.tensor([1, 3]))  # k = 2: no compilation
        assert_same(eager, compiled, x)
    assert compiled._compiled_batched.failed is None


def test_compiled_vmap_oracle_gives_the_eager_numbers_and_buffers() -> None:
    eager, compiled = oracle(batchnorm(), False), oracle(batchnorm(), True)
    assert compiled.problem.batched is None
    x = params(eager)
    assert_same(eager, compiled, x)  # compiles
    with torch.compiler.set_stance("fail_on_recompile"):
        assert_same(eager, compiled, x)
    assert compiled._compiled_vmap.failed is None


def test_a_failing_compiler_warns_once_in_one_line_and_the_oracle_runs_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compiler that raises on the first call (here: the message of a machine without
    a C++ compiler): one warning naming the cause; every round equals the eager one."""

    def compile(fn, **options):
        def fail(*args):
            raise RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: no working C++")

        return fail

    monkeypatch.setattr(torch, "compile", compile)
    eager, compiled = oracle(mlp(), False), oracle(mlp(), True)
    x = params(eager)
    with pytest.warns(RuntimeWarning) as caught:
        for _ in range(3):
            expected, got = eager.grad(x), compiled.grad(x)
            assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "\n" not in text
    assert "torch.compile failed (RuntimeError: backend='inductor' raised: InvalidCxxCompiler" in (
        text
    )
    assert text.endswith("nettrain continues without compiling")


def test_past_the_recompile_limit_the_oracle_warns_and_runs_eagerly() -> None:
    """Dynamo's limit of graphs per kernel (here 1): a new shape (one agent) fails to
    compile, the oracle warns and gives the eager numbers from then on."""
    eager, compiled = oracle(mlp(), False), oracle(mlp(), True)
    x = params(eager)
    assert_same(eager, compiled, x)  # the graph of the first test, or compiles
    with torch._dynamo.config.patch(recompile_limit=1), pytest.warns(RuntimeWarning) as caught:
        assert_same(eager, compiled, x[1:2], torch.tensor([1]))
        assert_same(eager, compiled, x)
    assert len(caught) == 1 and "recompile" in str(caught[0].message).lower()


def test_compile_key_reaches_the_execution_settings() -> None:
    cfg = load_config({"compile": "true"})
    assert cfg.compile is True
    assert load_config().compile is False
    assert Execution.parse("auto", 0.0, cfg.compile) == Execution(compile=True)
    assert "compile" not in FROZEN_ON_RESUME  # how the oracle runs, not what it computes
    with pytest.raises(ConfigError, match="compile must be true or false"):
        Execution(compile="yes")  # type: ignore[arg-type]


def test_a_compiled_run_ends_where_the_eager_run_ends() -> None:
    """D-PSGD, 3 rounds, the oracle test's model and shapes (its graph, if that test ran
    first): the same final parameters to rounding."""
    config = {"algorithm": "dpsgd", "agents": AGENTS, "topology": "ring", "rounds": 3}
    config |= {"batch_size": BATCH, "eval_every": 3, "progress": False}
    eager = nettrain.run(config, model=mlp(), data=data())
    compiled = nettrain.run(config | {"compile": True}, model=mlp(), data=data())
    torch.testing.assert_close(compiled.x, eager.x, rtol=0, atol=1e-6)
