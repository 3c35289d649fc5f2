from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from nettrain.algorithms.sgd import LocalStep, SGDConfig, SGDState, sgd_step
from nettrain.errors import ConfigError


@pytest.mark.parametrize(
    "cfg",
    [
        SGDConfig(lr=0.1),
        SGDConfig(lr=0.05, momentum=0.9),
        SGDConfig(lr=0.05, momentum=0.9, nesterov=True),
        SGDConfig(lr=0.02, momentum=0.5, weight_decay=0.01),
    ],
)
@pytest.mark.parametrize("owned", [None, False, True])
def test_sgd_step_equals_torch_optim_sgd(cfg: SGDConfig, owned: bool | None) -> None:
    """Also where the gradient is the caller's to overwrite (``owned``): a plain step then
    writes the new parameters into its memory, the others leave it alone, as every step
    does by default (``None``: not passed)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    ref = x.clone().requires_grad_(True)
    opt = torch.optim.SGD(
        [ref],
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    state = SGDState()
    for _ in range(5):
        g = torch.randn(4, 7, generator=gen, dtype=torch.float64)
        given = g.clone()
        options = {} if owned is None else {"owned": owned}
        x, state = sgd_step(x, given, state, cfg, **options)
        overwritten = bool(owned) and cfg.momentum == 0 and cfg.weight_decay == 0
        assert (x.data_ptr() == given.data_ptr()) == overwritten
        assert overwritten or torch.equal(given, g)
        ref.grad = g.clone()
        opt.step()
        torch.testing.assert_close(x, ref.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be > 0"),
        ({"lr": 0.1, "momentum": 1.0}, "momentum must be in"),
        ({"lr": 0.1, "nesterov": True}, "nesterov=true needs momentum"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_sgd_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SGDConfig(**kwargs)


def test_nesterov_without_momentum_is_refused_with_the_fix() -> None:
    message = "nesterov=true needs momentum > 0 (e.g. momentum=0.9)"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SGDConfig(lr=0.1, nesterov=True)


@dataclass(frozen=True)
class Unnamed(LocalStep):
    """A method of the user's own without a ``name``."""


def test_refusing_momentum_names_a_method_without_a_name_by_its_class() -> None:
    message = "Unnamed takes plain SGD steps; set momentum=0 (a hint)"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Unnamed(momentum=0.9).refuse_momentum("(a hint)")
    Unnamed(momentum=0.0).refuse_momentum("(a hint)")  # nothing to refuse
