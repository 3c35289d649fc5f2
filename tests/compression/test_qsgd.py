"""QSGD: unbiased, within the paper's variance bound, seeded, levels in range."""

from __future__ import annotations

import math
import re

import pytest
import torch

from helpers import generator
from nettrain.compression import QSGD
from nettrain.errors import ConfigError


def scale_of(x: torch.Tensor, norm: str) -> torch.Tensor:
    return x.norm(dim=-1) if norm == "l2" else x.abs().amax(dim=-1)


@pytest.mark.parametrize(("bits", "norm"), [(1, "l2"), (2, "l2"), (3, "linf")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unbiased(bits, norm, dtype):
    """Mean of ``n`` independent decodes is within the Hoeffding radius of ``x``.

    Each decode of coordinate ``i`` takes one of two values ``c/s`` apart, so
    ``P(|mean_i - x_i| >= t) <= 2 exp(-2 n t^2 / (c/s)^2)``; over ``d`` coordinates the
    chance that any exceeds ``t = (c/s) sqrt(log(2 d / delta) / (2 n))`` is below ``delta``.
    """
    qsgd, n, d, delta = QSGD(bits=bits, norm=norm), 20_000, 64, 1e-6
    x = torch.randn(d, generator=generator(0), dtype=torch.float64).to(dtype)
    stack = x.expand(n, d)  # n agents holding the same vector: n independent draws

    x_hat, _ = qsgd.roundtrip(stack, generator=generator(1))

    width = float(scale_of(x.double(), norm)) / qsgd.levels
    t = width * math.sqrt(math.log(2 * d / delta) / (2 * n))
    assert t < width / 20  # far below the bias of deterministic rounding (up to width/2)
    assert (x_hat.double().mean(0) - x.double()).abs().max() < t


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_variance_within_the_papers_bound(bits):
    """``E ||x_hat - x||^2 = sum_i (c/s)^2 p_i (1 - p_i) <= min(d/s^2, sqrt(d)/s) ||x||^2``.

    (Alistarh et al. 2017, Lemma 3.1.) The empirical mean over ``n`` draws matches the exact
    variance within 6 standard errors, and both are within the bound.
    """
    qsgd, n, d = QSGD(bits=bits), 4000, 100
    x = torch.randn(d, generator=generator(2), dtype=torch.float64)
    s, c = qsgd.levels, float(x.norm())
    r = s * x.abs() / c
    p = r - r.floor()
    exact = float(((c / s) ** 2 * p * (1 - p)).sum())
    bound = min(d / s**2, math.sqrt(d) / s) * c**2

    x_hat, _ = qsgd.roundtrip(x.expand(n, d), generator=generator(3))
    sq_err = (x_hat - x).square().sum(1)  # (n,)

    stderr = float(sq_err.std()) / math.sqrt(n)
    assert abs(float(sq_err.mean()) - exact) < 6 * stderr
    assert exact <= bound
    assert float(sq_err.mean()) <= bound


def test_linf_scaling_variance_bound():
    """With max scaling each coordinate's variance is at most ``(c/s)^2 / 4``."""
    qsgd, n, d = QSGD(bits=3, norm="linf"), 4000, 100
    x = torch.randn(d, generator=generator(4), dtype=torch.float64)
    x_hat, _ = qsgd.roundtrip(x.expand(n, d), generator=generator(5))
    per_coord = (x_hat - x).square().mean(0)  # (d,)
    cap = (float(x.abs().max()) / qsgd.levels) ** 2 / 4
    assert (per_coord <= 1.2 * cap).all()  # 4000 draws: relative error of each mean ~ 3%
    assert float((x_hat - x).square().sum(1).mean()) <= d * cap


def test_same_seed_same_bits_and_no_global_rng():
    qsgd = QSGD(bits=4)
    x = torch.randn(5, 300, generator=generator(6))
    before = torch.random.get_rng_state()
    a, b = qsgd.encode(x, generator=generator(7)), qsgd.encode(x, generator=generator(7))
    c = qsgd.encode(x, generator=generator(8))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scale, b.scale)
    assert not torch.equal(a.codes, c.codes)


def test_needs_a_generator():
    message = (
        "the qsgd compressor rounds at random and never uses the global generator; "
        "pass generator=torch.Generator(device=x.device).manual_seed(seed)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        QSGD().encode(torch.ones(2, 3))


CODE_DTYPES = [(1, torch.int8), (7, torch.int8), (8, torch.int16), (15, torch.int16)]


@pytest.mark.parametrize(("bits", "dtype"), [*CODE_DTYPES, (16, torch.int32)])
def test_levels_in_range_and_scale_bounds_every_coordinate(bits, dtype):
    qsgd = QSGD(bits=bits, norm="linf")
    # float64 values whose max is not a float32 number: the scale must round up
    x = torch.randn(6, 200, generator=generator(9), dtype=torch.float64) * (1 + 2.0**-40)
    payload = qsgd.encode(x, generator=generator(10))
    assert payload.codes.dtype == dtype
    assert payload.scale.dtype == torch.float32
    assert (payload.scale.double() >= x.abs().amax(1)).all()
    assert int(payload.codes.abs().max()) <= qsgd.levels
    assert int(payload.codes.abs().max()) == qsgd.levels  # the largest coordinate
    assert (payload.codes.to(torch.int64) * x.sign().to(torch.int64) >= 0).all()  # no flips


def test_zero_rows_decode_to_zero():
    x = torch.zeros(3, 10)
    x[1] = torch.arange(10.0)
    x_hat, _ = QSGD(bits=2).roundtrip(x, generator=generator(11))
    assert torch.isfinite(x_hat).all()
    assert torch.equal(x_hat[0], torch.zeros(10))
    assert torch.equal(x_hat[2], torch.zeros(10))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_levels_are_the_rule_applied_to_the_generators_uniforms(norm, dtype):
    """``r = s |x| / c``, ``l = floor(r)``, level ``l + 1`` when ``u < r - l`` for the
    generator's next uniforms ``u`` of ``x``'s shape and dtype (one draw per coordinate),
    with ``c`` the norm rounded up to float32; ``x_hat = c sign(x) level / s``."""
    qsgd = QSGD(bits=3, norm=norm)
    x = torch.randn(4, 30, generator=generator(12), dtype=dtype)
    x[1] *= 1e-3  # a norm below 1
    x[2, :5] = 0.0
    payload = qsgd.encode(x, generator=generator(13))
    # c is the smallest float32 at or above the norm
    below = torch.nextafter(payload.scale, torch.full_like(payload.scale, -math.inf))
    assert (payload.scale.to(dtype) >= scale_of(x, norm)).all()
    assert (below.to(dtype) < scale_of(x, norm)).all()
    c = payload.scale.to(dtype)[:, None]
    r = x.abs() / c * qsgd.levels
    u = torch.rand(x.shape, generator=generator(13), dtype=dtype)
    level = r.floor() + (u < r - r.floor()).to(dtype)
    assert torch.equal(payload.codes.to(dtype), level * x.sign())
    assert torch.equal(qsgd.decode(payload), payload.codes.to(dtype) * (c / qsgd.levels))


def test_bad_settings_are_named_with_their_meaning():
    message = (
        "qsgd bits must be an integer in 1..16, got 17 (magnitude bits per coordinate; a sign "
        "bit is sent besides)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        QSGD(bits=17)
    message = "qsgd norm='l1' is unknown; choose one of l2, linf"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        QSGD(norm="l1")


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_a_zero_row_is_sent_as_zero_levels(bits: int) -> None:
    """A zero row has scale ``c = 0`` and every level ``0``, within ``[-s, s]`` whatever the
    code dtype (int32 for 16 bits), not only a zero estimate."""
    x = torch.zeros(2, 6, dtype=torch.float64)
    x[1] = torch.tensor([1.0, -2.0, 0.0, 3.0, 0.5, -0.25], dtype=torch.float64)
    payload = QSGD(bits=bits).encode(x, generator=generator(14))
    assert float(payload.scale[0]) == 0.0
    assert torch.equal(payload.codes[0], torch.zeros(6, dtype=payload.codes.dtype))


def test_a_whole_level_is_sent_exactly_whatever_the_uniform() -> None:
    """Where ``r = s |x_i| / c`` is a whole number the level is ``l + 1`` with probability
    ``r - l = 0``: zeros are sent as 0 and ``|x_i| = c`` as ``s``, for every uniform ``u``,
    ``u = 0`` included (``u < 0`` is never true). bfloat16 uniforms have 8 random bits, so
    about 1 in 256 of them is exactly 0: this generator draws some."""
    x = torch.zeros(1, 512, dtype=torch.bfloat16)
    x[0, ::3], x[0, 1::7] = 1.0, -1.0  # linf scale c = 1: r = s there, r = 0 elsewhere
    u = torch.rand(x.shape, generator=generator(19), dtype=torch.bfloat16)
    assert ((u == 0) & (x == 0)).any() and ((u == 0) & (x != 0)).any()
    qsgd = QSGD(bits=4, norm="linf")
    payload = qsgd.encode(x, generator=generator(19))
    assert torch.equal(payload.codes.to(torch.int64), x.to(torch.int64) * qsgd.levels)
