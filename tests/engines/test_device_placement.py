"""Every tensor of the simulator's hot path is made on the state's device.

The bug this guards against: a factory call without ``device=`` (``torch.zeros(n)``,
``torch.arange(n)``, ``torch.tensor(...)``, ``torch.full(...)``, ``torch.randint(...)``)
inside a round makes a CPU tensor whatever device the state lives on. On a CPU-only
machine that is invisible; with ``device=cuda`` the round either fails (a CPU tensor
meets a CUDA one) or copies between host and GPU every round.

The check, on a CPU-only machine: the state, the data and the model are real CPU
tensors, and the round runs inside ``with torch.device("meta"):``, which makes every
factory call that names no device produce a *meta* tensor (shape and dtype, no data)
while every call that says ``device=x.device`` (or ``zeros_like(x)``, ``x.new_zeros``)
still makes a CPU tensor. The meta device stands in for "the default device, which is
not the state's", exactly the situation on a GPU. A tensor made without a device then
cannot go unnoticed:

* an op that mixes it with a CPU tensor raises (PyTorch checks that its operands share
  a device);
* reading it (``.tolist()``, ``.item()``, ``float()``, ``.to("cpu")``) raises: a meta
  tensor holds no data;
* :class:`MixedDevices`, a ``TorchDispatchMode``, raises on every aten op whose tensor
  operands are on both the meta and another device. It closes the one hole found in
  PyTorch's own checks (torch 2.13): indexing a CPU tensor with a meta index tensor
  (``x[idx]``) does not raise, it returns whatever lies in memory.

A tensor deliberately kept on the CPU (the work and traffic counters, the clock, the
event schedule, agent ids, per-agent CPU generators' draws) is made with
``device="cpu"``, like an existing CPU tensor (``zeros_like(counters)``) or on the
device of the CPU tensor it goes with, which the check accepts; that is right on a GPU
too. What the check cannot see: a tensor the host side makes on the CPU whatever the
default device (``torch.from_numpy``, the topology's mixing matrix) and that the hot
path then forgets to move to the state's device; on a CPU-only machine it is where the
state is.

Only the round loop is under the check: each step of the engine's ``advance`` (the
algorithm's ``step`` or ``interact``, the oracle, the communicator, the compressors,
the faults, the bookkeeping of the round's work) and each record (evaluation of every
agent and of the centre, the diagnostics); the setup (data, model, shards, oracle
tables, initial state) legitimately makes CPU tensors and moves them to the device
once, and is left out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import nettrain
from nettrain.engines import driver
from nettrain.engines.rounds import Rounds
from nettrain.engines.sim.events import SimEvents
from nettrain.problem.oracle import Oracle

BASE = {"agents": 4, "rounds": 2, "eval_every": 1, "progress": False, "batch_size": 8}
BASE |= {"dataset": "digits", "model": "mlp", "hidden": [8]}

# One method of each family (mixing, tracking, NEXT, elastic, centre, gossip events,
# local steps, all-reduce, block-asynchronous); every compressor family; the sparse and
# time-varying mixing paths; dropped messages, a split and a crash.
CASES: dict[str, dict[str, Any]] = {
    "dpsgd": {"algorithm": "dpsgd", "momentum": 0.5},
    "dpsgd_qsgd_edge_drop": {
        "algorithm": "dpsgd",
        "quantizer": "qsgd",
        "schedule": "edge_drop",
        "drop_prob": 0.3,
    },
    "dpsgd_sparse_ring_message_drop": {
        "algorithm": "dpsgd",
        "agents": 32,
        "batch_size": 2,
        "eval_agents": 5,
        "message_drop": 0.2,
    },
    "gradient_tracking_lattice": {
        "algorithm": "gradient_tracking",
        "quantizer": "lattice",
        "train_objective": True,
        "regularizer": "l2",
        "reg_lambda": 1e-3,
    },
    "next": {"algorithm": "next", "regularizer": "l1", "reg_lambda": 1e-3, "batch_size": 0},
    "easgd": {"algorithm": "easgd", "tau": 1, "alpha": 0.1},
    "easgd_async_crash": {
        "algorithm": "easgd_async",
        "alpha": 0.1,
        "servers": 2,
        "crash": "1@1",
        "rounds": 3,
    },
    "tree_easgd": {"algorithm": "tree_easgd", "tau": 1, "alpha": 0.1, "topology": "tree"},
    "downpour": {"algorithm": "downpour"},
    "swarm_lattice": {"algorithm": "swarm", "local_steps": 2, "quantizer": "lattice"},
    "swarm_message_drop_split": {"algorithm": "swarm", "message_drop": 0.3, "split": "1:2"},
    "local_sgd": {"algorithm": "local_sgd", "tau": 1},
    "local_sgd_fp16": {"algorithm": "local_sgd", "tau": 1, "quantizer": "fp16"},
    "allreduce_qsgd": {"algorithm": "allreduce", "quantizer": "qsgd"},
    "allreduce_topk": {"algorithm": "allreduce", "quantizer": "topk"},
    "block_async": {"algorithm": "block_async", "blocks": 4, "max_delay": 2, "rounds": 3},
}


class MixedDevices(TorchDispatchMode):
    """Raises on an aten op whose tensor operands are on the meta and another device."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if len(devices) > 1 and torch.device("meta") in devices:
            raise RuntimeError(
                f"{func} mixes devices {sorted(map(str, devices))}: a tensor in the hot "
                "path was made without device= (it landed on the default device, meta)"
            )
        return func(*args, **kwargs)


@contextlib.contextmanager
def default_device_elsewhere() -> Iterator[None]:
    """Factory calls that name no device make meta tensors; mixing them with the state's
    (CPU) tensors raises."""
    with MixedDevices(), torch.device("meta"):
        yield


def checked_advance(advance: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``advance`` whose every step (up to the tick it yields) runs under the check."""

    def run(self: Any, stop: int) -> Iterator[Any]:
        steps = advance(self, stop)
        while True:
            with default_device_elsewhere():
                tick = next(steps, None)
            if tick is None:
                return
            yield tick

    return run


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with default_device_elsewhere():
            return fn(*args, **kwargs)

    return run


def check_hot_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rounds (synchronous and events) and the records run under the check."""
    monkeypatch.setattr(Rounds, "advance", checked_advance(Rounds.advance))
    monkeypatch.setattr(SimEvents, "advance", checked_advance(SimEvents.advance))
    monkeypatch.setattr(driver, "_record", checked(driver._record))


@pytest.fixture
def hot_path_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    check_hot_path(monkeypatch)


class Net(nn.Module):
    """Images in; BatchNorm (buffers kept per agent) and dropout (per-agent keys) inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(2 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(self.drop(x.flatten(1)))


@pytest.fixture(scope="module")
def digit_images() -> nettrain.data.Dataset:
    """A few hundred of scikit-learn's digits as (N, 1, 8, 8) images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(d.target, dtype=torch.int64)
    return nettrain.data.from_tensors(x[:200], y[:200], x[1700:], y[1700:])


def test_the_check_catches_a_tensor_made_without_a_device() -> None:
    """The check itself: a factory call without a device fails when mixed with the state,
    used as an index or read; one with the state's device passes."""
    x = torch.ones(4, 3)
    with default_device_elsewhere():
        assert (x + torch.zeros(4, 3, device=x.device)).device == x.device
        assert x[torch.arange(2, device=x.device)].shape == (2, 3)
        with pytest.raises((RuntimeError, NotImplementedError)):
            x + torch.zeros(4, 3)
        with pytest.raises(RuntimeError, match="mixes devices"):
            x[torch.arange(2)]  # PyTorch alone does not raise here
        with pytest.raises(RuntimeError, match="mixes devices"):
            x[torch.tensor([0, 1])] = 0.0
        with pytest.raises((RuntimeError, NotImplementedError)):
            torch.arange(3).tolist()


def test_a_round_with_a_tensor_made_without_a_device_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check reaches into the rounds: the mini-batch weights made without a device
    pass on the CPU alone and fail under the check."""
    sample = Oracle._sample

    def careless(self: Oracle, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx, w = sample(self, local)
        return idx, torch.full(w.shape, 1.0 / w.shape[1], dtype=w.dtype)  # no device=

    monkeypatch.setattr(Oracle, "_sample", careless)
    config = BASE | CASES["dpsgd"]
    nettrain.run(config)  # harmless while everything is on the CPU
    check_hot_path(monkeypatch)
    with pytest.raises(RuntimeError, match="mixes devices"):
        nettrain.run(config)


@pytest.mark.parametrize("case", list(CASES))
def test_a_round_makes_its_tensors_on_the_state_device(case: str, hot_path_checked: None) -> None:
    config = BASE | CASES[case]
    result = nettrain.run(config)
    assert result.x.device.type == "cpu" and torch.isfinite(result.x).all()
    assert len(result.records) == config["rounds"] + 1  # round 0 too


@pytest.mark.parametrize(
    ("case", "buffers"), [("dpsgd", "mix"), ("swarm_lattice", "local"), ("easgd", "mix")]
)
def test_buffers_and_dropout_on_the_state_device(
    case: str, buffers: str, digit_images: nettrain.data.Dataset, hot_path_checked: None
) -> None:
    """A model with BatchNorm (every agent's buffers) and dropout (every agent's keys)."""
    config = BASE | CASES[case] | {"buffers": buffers}
    result = nettrain.run(config, model=Net(), data=digit_images)
    assert torch.isfinite(result.x).all() and result.buffers is not None
