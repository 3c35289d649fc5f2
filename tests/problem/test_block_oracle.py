"""The single-agent block oracle of the shared-memory workers (``BlockGradient``)."""

from __future__ import annotations

import torch

from nettrain.problem.block_oracle import BlockGradient
from nettrain.problem.flat import FlatSpec
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import agent_seed


def test_the_gradient_is_exact_on_the_tensors_touching_the_blocks_and_zero_elsewhere() -> None:
    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y_train = torch.randint(0, 3, (40,), generator=gen)
    net = build_model("mlp", 6, 3, hidden=(5,)).double()
    loss, reg = get_loss("cross_entropy"), Regularizer("l2", 0.01)
    spec, pool = FlatSpec.of(net), torch.arange(5, 35)
    x = spec.flatten(net)
    oracle = BlockGradient(net, loss, reg, x_train, y_train, pool, 8, 4, seed=3, agent=2)
    value, g = oracle(x, (3,))  # the last block: the last layer's bias and part of its weight
    draws = torch.Generator().manual_seed(agent_seed(3, 2))
    idx = pool[torch.randint(len(pool), (8,), generator=draws)]  # the stream (seed, agent)
    p = x.clone().requires_grad_(True)
    full = loss(torch.func.functional_call(net, spec.unflatten(p), (x_train[idx],)), y_train[idx])
    expected = torch.autograd.grad(full.mean() + reg.value(p), p)[0]
    needed = torch.cat(
        [torch.full((n,), need) for n, need in zip(spec.numels, oracle.needed((3,)), strict=True)]
    )
    assert oracle.needed((3,)) == (False, False, True, True) and oracle.samples == 8
    torch.testing.assert_close(g[needed], expected[needed], rtol=0, atol=1e-12)
    assert torch.equal(g[~needed], reg.grad(x)[~needed])  # only the regulariser there
    assert abs(value - float(full.detach().mean() + reg.value(x))) < 1e-12


def test_a_parameter_is_needed_exactly_when_its_range_meets_a_block() -> None:
    """Parameters of 4, 2, 2 and 1 values over 3 blocks of 3: blocks end where a
    parameter begins (value 6) and begin where one ends (value 6), which must not count
    as meeting; checked against the intersection of index sets. Without regulariser the
    gradient is the loss's alone."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)).double()
    x_train, y_train = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    oracle = BlockGradient(
        net, get_loss("squared"), Regularizer(), x_train, y_train, torch.arange(6), 0, 3, 0, 0
    )
    ranges = [range(0, 4), range(4, 6), range(6, 8), range(8, 9)]
    blocks = [range(0, 3), range(3, 6), range(6, 9)]
    for chosen in [(0,), (1,), (2,), (0, 2), (1, 2)]:
        covered = set().union(*(blocks[b] for b in chosen))
        assert oracle.needed(chosen) == tuple(bool(covered & set(r)) for r in ranges)
    assert oracle.needed((1,)) == (True, True, False, False)
    assert oracle.needed((2,)) == (False, False, True, True)
    x = FlatSpec.of(net).flatten(net)
    value, g = oracle(x, (1,))
    p = x.clone().requires_grad_(True)
    out = torch.func.functional_call(net, FlatSpec.of(net).unflatten(p), (x_train,))
    full = get_loss("squared")(out, y_train).mean()
    expected = torch.autograd.grad(full, p)[0]
    torch.testing.assert_close(g[:6], expected[:6], rtol=0, atol=1e-12)
    assert torch.equal(g[6:], torch.zeros(3, dtype=torch.float64))
    assert value == float(full.detach())
