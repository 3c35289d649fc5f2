"""QSGD: unbiased, within the paper's variance bound, seeded, levels in range."""

from __future__ import annotations

import math
import re

import pytest
import torch

from helpers import generator
from nettrain.compression import QSGD
from nettrain.config import build_algorithm, load_config
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


# Buckets (Alistarh et al. 2017 use 512): one scale per run of ``bucket`` coordinates.


def bucket_scales(x: torch.Tensor, bucket: int, norm: str) -> torch.Tensor:
    """Each bucket's norm, ``(m, nb)``, by a loop over buckets (the rule, not the code)."""
    return torch.stack(
        [scale_of(x[:, k : k + bucket], norm) for k in range(0, x.shape[1], bucket)], dim=1
    )


def per_coordinate(scales: torch.Tensor, bucket: int, d: int) -> torch.Tensor:
    return scales.repeat_interleave(bucket, dim=1)[:, :d]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bucketed_decodes_are_unbiased(norm: str) -> None:
    """As :func:`test_unbiased`, with each coordinate's width ``c_k / s`` that of its own
    bucket; ``d = 70`` is not a multiple of the bucket (16, 16, 16, 16, 6)."""
    qsgd, n, d, delta = QSGD(bits=2, norm=norm, bucket=16), 20_000, 70, 1e-6
    x = torch.randn(d, generator=generator(20), dtype=torch.float64)
    x[16:32] *= 100.0  # buckets of very different sizes
    x_hat, _ = qsgd.roundtrip(x.expand(n, d), generator=generator(21))

    width = per_coordinate(bucket_scales(x[None], 16, norm), 16, d)[0] / qsgd.levels
    t = width * math.sqrt(math.log(2 * d / delta) / (2 * n))
    assert ((x_hat.mean(0) - x).abs() < t).all()


@pytest.mark.parametrize(("bits", "bucket", "d"), [(7, 512, 1300), (3, 5, 23), (1, 4, 4)])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_each_bucket_has_its_own_scale_and_error_bound(
    bits: int, bucket: int, d: int, norm: str
) -> None:
    """The payload has ``ceil(d / bucket)`` float32 scales a row, each the smallest float32
    at or above its bucket's norm (the last bucket shorter); the levels lie in ``[-s, s]``
    and follow the rule with the coordinate's own bucket scale; every coordinate's error
    is below its own bucket's step ``c_k / s``."""
    qsgd = QSGD(bits=bits, norm=norm, bucket=bucket)
    x = torch.randn(3, d, generator=generator(22), dtype=torch.float64) * (1 + 2.0**-40)
    x[1, :bucket] *= 1e-4
    payload = qsgd.encode(x, generator=generator(23))
    nb = -(-d // bucket)
    assert payload.scale.shape == (3, nb) and payload.scale.dtype == torch.float32
    want = bucket_scales(x, bucket, norm)
    below = torch.nextafter(payload.scale, torch.full_like(payload.scale, -math.inf))
    assert (payload.scale.double() >= want).all() and (below.double() < want).all()
    assert int(payload.codes.abs().max()) <= qsgd.levels

    c = per_coordinate(payload.scale.double(), bucket, d)
    r = x.abs() / c * qsgd.levels
    u = torch.rand(x.shape, generator=generator(23), dtype=torch.float64)
    level = r.floor() + (u < r - r.floor()).double()
    assert torch.equal(payload.codes.double(), level * x.sign())
    x_hat = qsgd.decode(payload)
    assert torch.equal(x_hat, payload.codes.double() * (c / qsgd.levels))
    assert ((x_hat - x).abs() <= c / qsgd.levels).all()


def test_a_bucket_of_small_values_is_quantised_finely_beside_a_huge_one() -> None:
    """The point of buckets: with one scale for the row the huge bucket sets the step of
    every coordinate, ``||x|| / 127`` (about 180 here), and values of 1e-3 are sent as 0 or
    +-step; with buckets of 512 the small bucket's step is its own norm / 127 (about 2e-4)."""
    d, bucket = 1024, 512
    x = torch.randn(1, d, generator=generator(24), dtype=torch.float64)
    x[0, :bucket] *= 1e-3  # small bucket
    x[0, bucket:] *= 1e3  # huge bucket
    small = slice(0, bucket)
    errors = {}
    for b in (0, bucket):
        qsgd = QSGD(bits=7, bucket=b)
        x_hat, _ = qsgd.roundtrip(x.expand(200, d), generator=generator(25))
        errors[b] = float((x_hat[:, small] - x[:, small]).square().sum(1).mean())
    step = float(x[0, small].norm()) / 127  # the bucketed step of the small bucket
    assert errors[bucket] <= bucket * step**2 / 4  # p (1 - p) <= 1/4 a coordinate
    assert errors[bucket] * 1e6 < errors[0]  # the whole row's step is ~1e6 x coarser


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bucket_zero_and_a_bucket_as_wide_as_the_row_are_one_scale(norm: str) -> None:
    """``bucket=0`` is one scale a row, ``(m,)`` (the format without buckets); a bucket
    at least as wide as the row gives the same levels and estimate, with scales ``(m, 1)``
    and the same byte count."""
    x = torch.randn(4, 37, generator=generator(26))
    whole = QSGD(bits=5, norm=norm)
    assert whole.bucket == 0
    a = whole.encode(x, generator=generator(27))
    assert a.scale.shape == (4,)
    for bucket in (37, 64):
        wide = QSGD(bits=5, norm=norm, bucket=bucket)
        b = wide.encode(x, generator=generator(27))
        assert b.scale.shape == (4, 1) and torch.equal(b.scale[:, 0], a.scale)
        assert torch.equal(b.codes, a.codes)
        assert torch.equal(wide.decode(b), whole.decode(a))
        assert torch.equal(wide.nbytes(b), whole.nbytes(a))


@pytest.mark.parametrize("bucket", [-1, -512, 1.5, True, "512"])
def test_a_bucket_must_be_a_whole_number_at_least_zero(bucket: object) -> None:
    message = (
        f"qsgd bucket must be an integer >= 0, got {bucket!r} (coordinates that share one "
        "scale; 0 = one scale for the whole row, 512 in the QSGD paper)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        QSGD(bucket=bucket)  # type: ignore[arg-type]


def test_the_qsgd_bucket_key_builds_a_bucketed_compressor() -> None:
    keys = {"algorithm": "swarm", "quantizer": "qsgd", "bits": 7}
    assert build_algorithm(load_config(keys | {"qsgd_bucket": 512})).compressor == QSGD(
        bits=7, bucket=512
    )
    assert build_algorithm(load_config(keys)).compressor == QSGD(bits=7)  # default 0
    with pytest.raises(ConfigError, match=r"^qsgd_bucket must be >= 0, got -1$"):
        load_config(keys | {"qsgd_bucket": -1})
