"""Seeded dropout's uniforms against SplitMix64 written out in Python integers, its mask's boundary
(``u == p`` keeps the element), evaluation mode and the batched layouts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import GOLDEN, splitmix64
from nettrain.problem.batched import Activation, _dropout
from nettrain.problem.random_layers import SeededDropout, uniform, uniform_at


def reference_uniform(key: int, salt: int, position: int) -> float:
    """The documented draw: ``key + (salt 2^32 + position + 1) golden``, top 24 bits."""
    z = splitmix64(key + ((salt << 32) + position + 1) * GOLDEN)
    return (z >> 40) / 2**24


KEYS = [0, 7, -3, 2**62 + 12345, -(2**63)]


@pytest.mark.parametrize("key", KEYS)
def test_uniforms_are_splitmix64_written_out(key: int) -> None:
    positions = torch.tensor([0, 1, 2, 1000, 2**40])
    for salt in (0, 1, 5):
        got = uniform_at(torch.tensor(key), salt, positions)
        assert got.dtype == torch.float32
        assert got.tolist() == [reference_uniform(key, salt, int(p)) for p in positions]
    torch.set_default_dtype(torch.float64)
    try:  # float32 whatever the default: 24 random bits
        assert uniform_at(torch.tensor(key), 0, positions).dtype == torch.float32
    finally:
        torch.set_default_dtype(torch.float32)
    with torch.device("meta"):  # made on the key's device
        shaped = uniform(torch.tensor(key, device="cpu"), 2, torch.Size([2, 3]))
    assert shaped.shape == (2, 3)
    assert shaped.flatten().tolist() == [reference_uniform(key, 2, p) for p in range(6)]


def boundary_layer(original: nn.Module, key: int) -> SeededDropout:
    """A layer whose rate is exactly the draw of element 0 (a multiple of 2^-24)."""
    layer = SeededDropout(original, salt=1)
    layer.p = reference_uniform(key, 1, 0)
    layer.key = torch.tensor(key)
    return layer


def test_an_element_drawn_exactly_at_the_rate_is_kept() -> None:
    """``keep = u >= p``: the element whose draw equals ``p`` survives, scaled."""
    layer = boundary_layer(nn.Dropout(0.5), 7)
    x = torch.ones(64, dtype=torch.float64)
    out = layer(x)
    u = torch.tensor([reference_uniform(7, 1, j) for j in range(64)], dtype=torch.float64)
    torch.testing.assert_close(out, (u >= layer.p).double() / (1 - layer.p), rtol=0, atol=0)
    assert out[0] == 1 / (1 - layer.p)


def test_channel_dropout_draws_once_per_sample_and_channel() -> None:
    """``Dropout2d``: channel ``(b, c)`` is kept whole when draw number ``b C + c`` is."""
    layer = SeededDropout(nn.Dropout2d(0.5), salt=0)
    layer.key = torch.tensor(3)
    out = layer(torch.ones(4, 5, 2, 3))
    expected = torch.tensor([reference_uniform(3, 0, j) >= 0.5 for j in range(20)]) * 2.0
    torch.testing.assert_close(out, expected.view(4, 5, 1, 1).expand(4, 5, 2, 3))


def test_evaluation_mode_and_a_missing_key() -> None:
    """In evaluation mode the layer is the identity; without a key (outside the oracle)
    it is torch's dropout on the global generator."""
    layer = SeededDropout(nn.Dropout(0.4), salt=0)
    x = torch.randn(50)
    torch.manual_seed(11)
    expected = nn.Dropout(0.4)(x)
    torch.manual_seed(11)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer.key = torch.tensor(5)
    layer.eval()
    assert torch.equal(layer(x), x)


def per_agent(layer: SeededDropout, keys: list[int], rows: list[torch.Tensor]) -> torch.Tensor:
    """The reference: each agent's rows through the layer with that agent's key."""
    outs = []
    for key, row in zip(keys, rows, strict=True):
        layer.key = torch.tensor(key)
        outs.append(layer(row))
    return torch.stack(outs)


@pytest.mark.parametrize(("keys", "B"), [([7, 9], 3), ([7], 1)])
@pytest.mark.parametrize("layout", ["rows", "features", "images"])
def test_batched_dropout_at_the_boundary_and_in_evaluation(
    layout: str, keys: list[int], B: int
) -> None:
    """Every layout of the batched oracle gives each agent the mask of its own layer, also
    for the element drawn exactly at the rate and for one agent with one sample;
    evaluation mode changes nothing. Run under a meta default device: every tensor it
    makes is on the activation's device."""
    m = len(keys)
    channels = layout == "images"
    layer = boundary_layer(nn.Dropout2d(0.5) if channels else nn.Dropout(0.5), keys[0])
    x = torch.randn(m, B, 4, 2, 2) if channels else torch.randn(m, B, 6)
    reference = per_agent(layer, keys, list(x))
    assert reference[0].flatten()[0] != 0  # element 0 of agent 0 sits on the boundary
    if layout == "rows":
        value = x
    elif layout == "features":
        value, reference = x.transpose(1, 2), reference.transpose(1, 2)
    else:
        value = x.transpose(0, 1).reshape(B, m * 4, 2, 2)
        reference = reference.transpose(0, 1).reshape(B, m * 4, 2, 2)
    activation = Activation(value, layout, m, B)
    keys_t = torch.tensor(keys)
    with torch.device("meta"):
        out = _dropout(layer, activation, keys_t)
    torch.testing.assert_close(out, reference)
    layer.p = 1.0
    assert torch.equal(_dropout(layer, activation, keys_t), torch.zeros_like(value))
    layer.eval()
    assert torch.equal(_dropout(layer, activation, keys_t), value)


@pytest.mark.parametrize("original", [nn.Dropout(1.0), nn.Dropout2d(1.0)])
def test_a_rate_of_one_drops_everything_as_torch_does(original: nn.Module) -> None:
    layer = SeededDropout(original, salt=0)
    layer.key = torch.tensor(3)
    x = torch.randn(4, 5, 2, 3)
    assert torch.equal(layer(x), original(x)) and not layer(x).any()
