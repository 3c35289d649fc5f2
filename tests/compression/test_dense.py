"""Identity is exact; fp16 and bf16 meet (and reach) their unit-roundoff bounds."""

from __future__ import annotations

import pytest
import torch

from nettrain.compression import HalfPrecision, Identity


def normal_range_values(dtype: torch.dtype) -> torch.Tensor:
    """Magnitudes spread over ``[2^-10, 2^10]`` (normal in fp16 and bf16), random signs."""
    g = torch.Generator().manual_seed(0)
    exponent = 20 * torch.rand(8, 2000, generator=g, dtype=torch.float64) - 10
    sign = torch.where(torch.rand(8, 2000, generator=g) < 0.5, -1.0, 1.0).double()
    return (sign * 2.0**exponent).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_is_exact(dtype):
    x = normal_range_values(dtype)
    x_hat, _ = Identity().roundtrip(x)
    assert torch.equal(x_hat, x)
    assert x_hat.dtype == dtype


@pytest.mark.parametrize(("half", "u"), [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_half_precision_relative_error_is_the_unit_roundoff(half, u, dtype):
    x = normal_range_values(dtype)
    comp = HalfPrecision(half)
    payload = comp.encode(x)
    x_hat = comp.decode(payload)

    assert payload.values.dtype == half
    assert x_hat.dtype == dtype
    rel = ((x_hat.double() - x.double()) / x.double()).abs()
    assert rel.max() <= u
    assert rel.max() > 0.9 * u  # the bound is reached: the format is the one claimed


def test_fp16_overflows_to_inf_and_bf16_does_not():
    x = torch.tensor([[1e5, -1e5]])
    assert torch.isinf(HalfPrecision(torch.float16).roundtrip(x)[0]).all()
    torch.testing.assert_close(HalfPrecision(torch.bfloat16).roundtrip(x)[0], x, rtol=2**-8, atol=0)
