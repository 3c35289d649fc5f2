"""Top-k: exactly the k largest magnitudes survive, everything else is zero."""

from __future__ import annotations

import pytest
import torch

from nettrain.compression import TopK
from nettrain.errors import ConfigError


def distinct_magnitudes(m: int, d: int, seed: int) -> torch.Tensor:
    """Rows that are random permutations of ``+-1..d``: no ties in magnitude."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.stack([torch.randperm(d, generator=g) + 1 for _ in range(m)]).double()
    signs = torch.where(torch.rand(m, d, generator=g) < 0.5, -1.0, 1.0).double()
    return mags * signs


@pytest.mark.parametrize("k", [1, 7, 50])
def test_keeps_exactly_the_k_largest_magnitudes(k):
    m, d = 6, 50
    x = distinct_magnitudes(m, d, seed=k)
    x_hat = TopK(k=k).decode(TopK(k=k).encode(x))

    kept = x_hat != 0
    # in a row of +-1..d the k largest magnitudes are exactly those above d - k
    assert torch.equal(kept, x.abs() > d - k)
    assert torch.equal(x_hat[kept], x[kept])
    assert (kept.sum(1) == k).all()


def test_ratio_sets_k_from_the_row_length():
    assert TopK(ratio=0.05).k_of(100) == 5
    assert TopK(ratio=1.0).k_of(100) == 100
    assert TopK(ratio=1e-6).k_of(100) == 1  # at least one coordinate
    assert TopK(ratio=0.07).k_of(100) == 7  # not 8: no ceil of 7.000000000000001
    x = distinct_magnitudes(3, 40, seed=0)
    assert TopK(ratio=0.25).encode(x).values.shape == (3, 10)


def test_indices_are_int32_and_decode_ignores_ref():
    x = distinct_magnitudes(2, 30, seed=1)
    topk = TopK(k=4)
    payload = topk.encode(x)
    assert payload.indices.dtype == torch.int32
    assert payload.values.dtype == x.dtype
    assert torch.equal(topk.decode(payload), topk.decode(payload, ref=torch.randn(2, 30).double()))


def test_k_larger_than_d_is_refused():
    with pytest.raises(ConfigError, match=r"k=11 exceeds the row length d=10"):
        TopK(k=11).encode(torch.ones(2, 10))


@pytest.mark.parametrize("setting", [{"k": True}, {"ratio": True}])
def test_a_boolean_k_or_ratio_is_refused(setting):
    with pytest.raises(ConfigError, match="got True"):
        TopK(**setting)


def test_rows_up_to_2_to_the_31_minus_1_fit_int32_indices():
    """Shapes only, on the meta device (no memory): the longest row int32 can index is
    encoded, one coordinate more is refused with the reason."""
    longest = torch.empty(1, 2**31 - 1, device="meta")
    assert TopK(k=3).encode(longest).indices.shape == (1, 3)
    with pytest.raises(
        ConfigError, match=r"^topk sends int32 indices; d=2147483648 exceeds 2\^31 - 1$"
    ):
        TopK(k=3).encode(torch.empty(1, 2**31, device="meta"))
