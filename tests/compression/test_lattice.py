"""Lattice quantiser: exact to eps/2 inside the guarantee, wrong by q*eps just outside it."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import generator
from nettrain.compression import QSGD, Lattice
from nettrain.errors import ConfigError

EPS = 2.0**-10  # a power of two: every test point below is exact in float64


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decoding_inside_the_guarantee_is_the_nearest_lattice_point(bits, dtype):
    lat = Lattice.with_bits(bits, eps=1e-3)
    g = generator(bits)
    x = (3 * torch.randn(16, 500, generator=g, dtype=torch.float64)).to(dtype)
    # |x - b| up to 99% of the radius (q - 1) eps / 2, in both directions
    u = 2 * torch.rand(16, 500, generator=g, dtype=torch.float64) - 1
    b = (x.double() + 0.99 * lat.radius * u).to(dtype)
    assert (x - b).abs().max() > 0.9 * lat.radius  # the test reaches the edge

    x_hat = lat.decode(lat.encode(x), b)

    assert x_hat.dtype == dtype
    # exactly what the sender's own rounding gives, whatever the reference ...
    assert torch.equal(x_hat, torch.round(x / lat.eps) * lat.eps)
    # ... hence within eps/2 of x (plus one rounding of the product in the working dtype)
    ulp = torch.finfo(dtype).eps * x.abs()
    assert ((x_hat - x).abs() <= lat.eps / 2 + 2 * ulp).all()


@pytest.mark.parametrize("bits", [8, 16])
def test_guarantee_is_tight(bits):
    """``|x - b| = (q - 1) eps / 2 -+ 2 g eps``: exact inside, off by ``q eps`` outside."""
    lat = Lattice.with_bits(bits, eps=EPS)
    q, g = lat.q, 2.0**-6
    k = torch.randint(-5000, 5000, (4, 64), generator=generator(1)).double()
    side = torch.where(torch.rand(4, 64, generator=generator(2)) < 0.5, -1.0, 1.0).double()
    # x rounds to eps k; it sits eps (1/2 - g) from eps k, on the side of b
    x = EPS * (k + side * (0.5 - g))
    inside = EPS * (k + side * (q / 2 - 3 * g))
    outside = EPS * (k + side * (q / 2 + g))
    torch.testing.assert_close((inside - x).abs(), torch.full_like(x, lat.radius - 2 * g * EPS))
    torch.testing.assert_close((outside - x).abs(), torch.full_like(x, lat.radius + 2 * g * EPS))

    payload = lat.encode(x)
    ok = lat.decode(payload, inside)
    wrong = lat.decode(payload, outside)

    assert torch.equal(ok, EPS * k)
    assert ((ok - x).abs() <= EPS / 2).all()
    assert torch.equal(wrong, EPS * (k + side * q))  # wrapped by exactly one period q eps
    assert ((wrong - x).abs() > (q - 1) * EPS).all()


@pytest.mark.parametrize("q", [2, 3, 5, 200, 256, 257, 4096, 65536])
def test_codes_fit_in_the_advertised_bits(q):
    lat = Lattice(eps=1e-2, q=q)
    x = 1e3 * torch.randn(8, 4000, generator=generator(q), dtype=torch.float64)
    codes = lat.encode(x).codes
    unsigned = torch.remainder(codes.to(torch.int64), 2**16)  # the bits as sent

    assert 2 ** (lat.bits - 1) < q <= 2**lat.bits
    assert codes.dtype == (torch.uint8 if q <= 256 else torch.int16)
    assert unsigned.max() < q
    assert unsigned.min() <= q // 50 and unsigned.max() >= q - 1 - q // 50  # the whole range
    assert int(unsigned.max()).bit_length() <= lat.bits


def test_int16_codes_are_the_uint16_residues():
    lat = Lattice(eps=1.0, q=2**16)
    x = torch.tensor([[0.0, 1.0, 32767.0, 32768.0, 65535.0, 65536.0, -1.0]])
    codes = lat.encode(x).codes
    assert codes.tolist() == [[0, 1, 32767, -32768, -1, 0, -1]]
    # decoding against the right reference recovers every value
    assert torch.equal(lat.decode(lat.encode(x), x), x)


def test_without_reference_zero_is_the_reference():
    lat = Lattice.with_bits(8, eps=EPS)
    small = (lat.radius * 0.99) * (
        2 * torch.rand(2, 300, generator=generator(3), dtype=torch.float64) - 1
    )
    big = small + 5 * lat.q * EPS
    assert torch.equal(lat.decode(lat.encode(small)), torch.round(small / EPS) * EPS)
    # beyond the radius around 0 the value wraps by multiples of q eps
    err = lat.decode(lat.encode(big)) - big
    assert ((err + 5 * lat.q * EPS).abs() <= EPS / 2).all()


def test_a_reference_beats_quantising_without_one_at_the_same_bit_budget():
    """Vectors near the receiver's model: SwarmSGD's claim that the reference helps."""
    g = generator(4)
    b = torch.randn(8, 2000, generator=g, dtype=torch.float64)  # receivers' models
    x = b + 0.1 * (2 * torch.rand(8, 2000, generator=g, dtype=torch.float64) - 1)
    lattice = Lattice.with_bits(8, eps=1e-3)  # radius 0.1275 > 0.1
    qsgd = QSGD(bits=7, norm="linf")  # sign + 7 bits = 8 bits a coordinate, no reference

    def rms(x_hat: torch.Tensor) -> float:
        return float((x_hat - x).square().mean().sqrt())

    with_ref, lat_bytes = lattice.roundtrip(x, b)
    no_ref = lattice.decode(lattice.encode(x))
    unbiased, qsgd_bytes = qsgd.roundtrip(x, generator=generator(5))

    assert ((with_ref - x).abs() <= lattice.eps / 2).all()
    assert (lat_bytes <= qsgd_bytes).all()
    assert 10 * rms(with_ref) < rms(unbiased)
    assert 100 * rms(with_ref) < rms(no_ref)


@pytest.mark.parametrize("eps", [0.0, -1e-3, math.inf, math.nan, True, "1e-3", None])
def test_eps_must_be_a_finite_number_above_zero(eps):
    """``bool`` is refused although it is an ``int``; a string or ``None`` too (not only
    values that compare badly)."""
    with pytest.raises(
        ConfigError,
        match=r"^lattice eps must be a finite number > 0, got .*; it is the quantisation "
        r"step \(error <= eps/2\), e\.g\. 1e-3$",
    ):
        Lattice(eps=eps)


def test_a_whole_number_eps_is_a_number():
    assert Lattice(eps=2, q=4).radius == 3.0  # (q - 1) eps / 2


def test_q_and_bits_messages_name_the_usual_settings():
    with pytest.raises(
        ConfigError, match=r"^give the lattice q or bits \(q = 2\^bits\), not both$"
    ):
        Lattice(q=256, bits=8)
    with pytest.raises(
        ConfigError,
        match=r"^lattice q must be an integer in 2\.\.65536, got 1 "
        r"\(residues per coordinate; 256 for 8 bits, 65536 for 16\)$",
    ):
        Lattice(q=1)


def test_the_default_is_16_bits():
    lat = Lattice()
    assert (lat.q, lat.bits, lat.eps) == (2**16, 16, 1e-3)


@pytest.mark.parametrize("q", [3, 200, 257, 40000, 65536])
def test_decoding_is_exact_far_from_zero(q):
    """float64 values up to ``2^50 eps``, references within 40% of the radius: the decoded
    value is ``eps round(x / eps)`` exactly. ``q = 40000`` does not divide ``2^16``: its
    int16 codes (negative for residues >= 2^15) must be read back modulo ``2^16``."""
    lat = Lattice(eps=1.0, q=q)
    g = generator(q)
    x = 2.0**50 * (2 * torch.rand(4, 500, generator=g, dtype=torch.float64) - 1)
    ref = x + 0.4 * lat.radius * (2 * torch.rand(4, 500, generator=g, dtype=torch.float64) - 1)
    codes = lat.encode(x).codes
    if q == 40000:
        assert (codes < 0).any()  # residues >= 2^15 travel as negative int16
    assert torch.equal(lat.decode(lat.encode(x), ref), torch.round(x))
