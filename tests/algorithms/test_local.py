"""The local phases of the asynchronous methods: ``steps[r]`` updates of row ``r``."""

from __future__ import annotations

import pytest
import torch

from helpers import identity_quadratics
from nettrain.algorithms.local import local_phase


def test_an_empty_phase_calls_nothing_and_returns_copies() -> None:
    """No agents (``k = 0``): no step is taken, so neither ``update`` nor the oracle is
    called; the tensors come back as copies and the losses are ``(0,)``."""
    calls = []

    def update(rows, grad):
        calls.append(rows)
        return rows

    x = torch.zeros(0, 3, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.int64)
    (out,), loss = local_phase((x,), empty, empty, None, update)  # type: ignore[arg-type]
    assert calls == []
    assert out.shape == (0, 3) and out is not x
    assert loss.shape == (0,) and loss.dtype == torch.float64


def test_an_update_that_drops_a_tensor_is_an_error() -> None:
    """``update`` must return as many rows as it got: one that returns ``(x,)`` for
    ``(x, v)`` in a step where only some agents are active (agent 1 makes no step)
    raises instead of silently keeping the old ``v``."""
    targets = torch.randn(2, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    problem, shards = identity_quadratics(targets)
    oracle = problem.oracle(shards, range(2), batch_size=0, seed=0)

    def update(rows, grad):
        x, _ = rows
        _, g = grad(x)
        return (x - 0.1 * g,)

    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        local_phase((x, x.clone()), torch.arange(2), torch.tensor([1, 0]), oracle, update)
