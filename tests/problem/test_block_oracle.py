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
