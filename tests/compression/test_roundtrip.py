"""Invariants every compressor keeps: shapes, dtypes, rows independent, projections idempotent."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import generator
from nettrain.compression import QSGD, Compressor, HalfPrecision, Identity, Lattice, TopK
from nettrain.errors import ConfigError

ALL: list[Compressor] = [
    Identity(),
    HalfPrecision(torch.float16),
    HalfPrecision(torch.bfloat16),
    QSGD(bits=4),
    QSGD(bits=8, norm="linf"),
    QSGD(bits=7, bucket=16),
    TopK(k=5),
    TopK(ratio=0.3),
    Lattice.with_bits(8, eps=0.01),
    Lattice.with_bits(16),
]
DETERMINISTIC = [c for c in ALL if not c.stochastic]
DTYPES = [torch.float32, torch.float64]


def ids(comp: Compressor) -> str:
    return repr(comp)


def stack(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x: (5, 40)`` and a reference within 0.5 of it (inside both lattices' radius)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 40, generator=g, dtype=torch.float64)
    ref = x + 0.5 * (2 * torch.rand(5, 40, generator=g, dtype=torch.float64) - 1)
    return x.to(dtype), ref.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", ALL, ids=ids)
def test_decode_has_the_shape_dtype_and_device_of_x(comp, dtype):
    x, ref = stack(dtype)
    x_hat, nbytes = comp.roundtrip(x, ref, generator=generator(1))
    assert x_hat.shape == x.shape
    assert x_hat.dtype == dtype
    assert x_hat.device == x.device
    assert torch.isfinite(x_hat).all()
    assert nbytes.shape == (5,) and nbytes.dtype == torch.int64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", DETERMINISTIC, ids=ids)
def test_rows_are_encoded_independently(comp, dtype):
    """The vectorised stack gives what encoding each agent alone gives."""
    x, ref = stack(dtype, seed=2)
    whole = comp.roundtrip(x, ref)[0]
    rows = torch.cat([comp.roundtrip(x[i : i + 1], ref[i : i + 1])[0] for i in range(len(x))])
    assert torch.equal(whole, rows)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", DETERMINISTIC, ids=ids)
def test_deterministic_compressors_are_idempotent(comp, dtype):
    """``C(C(x)) == C(x)``: a decoded vector is a fixed point (it is on the grid already)."""
    x, ref = stack(dtype, seed=3)
    once = comp.roundtrip(x, ref)[0]
    twice = comp.roundtrip(once, ref)[0]
    assert torch.equal(twice, once)


@pytest.mark.parametrize("comp", [c for c in ALL if c.stochastic], ids=ids)
def test_stochastic_rounding_lands_on_a_neighbouring_level(comp):
    """Each decoded coordinate is one of the two levels around ``x_i``: never further
    (the levels of its row, or of its bucket when the scales are per bucket)."""
    x, _ = stack(torch.float64, seed=4)
    payload = comp.encode(x, generator=generator(1))
    scale = payload.scale.double()
    if scale.ndim == 2:  # (m, nb): one scale per bucket of comp.bucket coordinates
        scale = scale.repeat_interleave(comp.bucket, dim=1)[:, : x.shape[1]]
    else:
        scale = scale[:, None]  # (m, 1)
    step = scale / comp.levels
    assert ((comp.decode(payload) - x).abs() < step).all()


def test_only_the_lattice_uses_the_reference():
    x, ref = stack(torch.float64, seed=5)
    far = ref + 1e3
    for comp in ALL:
        same = torch.equal(
            comp.roundtrip(x, ref, generator=generator(1))[0],
            comp.roundtrip(x, far, generator=generator(1))[0],
        )
        assert same != isinstance(comp, Lattice), comp


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("comp", ALL, ids=ids)
def test_cuda_matches_cpu(comp):
    x, ref = stack(torch.float32, seed=6)
    gen = torch.Generator(device="cuda").manual_seed(1)
    on_gpu, nbytes = comp.roundtrip(x.cuda(), ref.cuda(), generator=gen)
    assert on_gpu.device.type == "cuda"
    assert nbytes.device.type == "cpu"
    if not comp.stochastic:
        torch.testing.assert_close(on_gpu.cpu(), comp.roundtrip(x, ref)[0], rtol=0, atol=0)


@pytest.mark.parametrize("comp", ALL, ids=ids)
def test_a_reference_of_another_shape_or_dtype_is_refused(comp):
    """Every compressor checks ``ref``, also those whose codes do not depend on it: a
    caller passing the wrong rows learns it at once, whichever compressor is configured."""
    x, ref = stack(torch.float64)
    payload = comp.encode(x, ref, generator=generator(1))
    shape = re.escape(
        "ref must have the shape of the encoded stack (5, 40), got (5, 39); pass the "
        "receivers' own vectors, one row per encoded row"
    )
    with pytest.raises(ConfigError, match=shape):
        comp.encode(x, ref[:, :-1], generator=generator(1))
    with pytest.raises(ConfigError, match=shape):
        comp.decode(payload, ref[:, :-1])
    with pytest.raises(ConfigError, match=r"ref must be floating point, got dtype torch\.int64"):
        comp.decode(payload, ref.to(torch.int64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("comp", ALL, ids=ids)
def test_a_payload_names_the_senders_working_dtype(comp, dtype):
    """The payloads that carry ``dtype`` (shared configuration, not sent) carry ``x``'s."""
    x, ref = stack(dtype)
    payload = comp.encode(x, ref, generator=generator(1))
    assert getattr(payload, "dtype", dtype) == dtype


@pytest.mark.parametrize("comp", ALL, ids=ids)
def test_codes_are_made_where_x_is_whatever_the_default_device(comp):
    """Under ``torch.device("meta")`` (a default device that holds no values) every
    tensor a compressor makes without ``device=`` would land on the meta device: the
    round trip of a CPU stack must give the same numbers there."""
    x, ref = stack(torch.float64)
    expected = comp.roundtrip(x, ref, generator=generator(1))
    with torch.device("meta"):
        got = comp.roundtrip(x, ref, generator=generator(1))
    assert got[0].device == x.device and torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])
