"""Exact byte counts, worked out by hand for a stack of m = 3 rows of d = 10 coordinates."""

from __future__ import annotations

import pytest
import torch

from nettrain.compression import QSGD, Compressor, HalfPrecision, Identity, Lattice, TopK
from nettrain.compression.base import packed_bytes

M, D = 3, 10

CASES = [
    # (compressor, working dtype, bytes a row, how)
    (Identity(), torch.float32, 40, "10 x 4"),
    (Identity(), torch.float64, 80, "10 x 8"),
    (HalfPrecision(torch.float16), torch.float32, 20, "10 x 2"),
    (HalfPrecision(torch.bfloat16), torch.float64, 20, "10 x 2"),
    (QSGD(bits=1), torch.float32, 3 + 4, "10 x (1 + 1) = 20 bits -> 3 bytes, + float32 scale"),
    (QSGD(bits=2), torch.float32, 4 + 4, "10 x 3 = 30 bits -> 4 bytes, + 4"),
    (QSGD(bits=4), torch.float64, 7 + 4, "10 x 5 = 50 bits -> 7 bytes, + 4"),
    (QSGD(bits=7), torch.float32, 10 + 4, "10 x 8 = 80 bits = 10 bytes, + 4"),
    (QSGD(bits=8), torch.float32, 12 + 4, "10 x 9 = 90 bits -> 12 bytes, + 4"),
    (QSGD(bits=7, bucket=4), torch.float32, 10 + 3 * 4, "buckets 4 + 4 + 2: 3 scales"),
    (QSGD(bits=4, bucket=3), torch.float64, 7 + 4 * 4, "buckets 3 + 3 + 3 + 1: 4 scales"),
    (QSGD(bits=2, bucket=5), torch.float32, 4 + 2 * 4, "buckets 5 + 5: 2 scales"),
    (QSGD(bits=1, bucket=10), torch.float32, 3 + 4, "one bucket of 10: 1 scale"),
    (QSGD(bits=1, bucket=512), torch.float32, 3 + 4, "a bucket wider than the row: 1 scale"),
    (TopK(k=3), torch.float32, 3 * 4 + 3 * 4, "3 float32 values + 3 int32 indices"),
    (TopK(k=3), torch.float64, 3 * 8 + 3 * 4, "3 float64 values + 3 int32 indices"),
    (TopK(ratio=0.5), torch.float32, 5 * 4 + 5 * 4, "k = 5"),
    (Lattice.with_bits(8), torch.float32, 10, "10 x 8 bits"),
    (Lattice.with_bits(16), torch.float64, 20, "10 x 16 bits"),
    (Lattice(q=3), torch.float32, 3, "q = 3 needs 2 bits: 20 bits -> 3 bytes"),
    (Lattice(q=200), torch.float32, 10, "q = 200 needs 8 bits"),
    (Lattice(q=257), torch.float32, 12, "q = 257 needs 9 bits: 90 bits -> 12 bytes"),
]


@pytest.mark.parametrize(("comp", "dtype", "expected", "how"), CASES, ids=[c[3] for c in CASES])
def test_bytes_a_row(comp: Compressor, dtype: torch.dtype, expected: int, how: str):
    x = torch.randn(M, D, generator=torch.Generator().manual_seed(0)).to(dtype)
    payload = comp.encode(x, generator=torch.Generator().manual_seed(1))
    nbytes = comp.nbytes(payload)
    assert nbytes.dtype == torch.int64
    assert nbytes.device.type == "cpu"
    assert nbytes.tolist() == [expected] * M
    assert torch.equal(comp.roundtrip(x, generator=torch.Generator().manual_seed(1))[1], nbytes)


def test_in_memory_codes_match_the_wire_for_whole_byte_formats():
    """Where the wire format is whole bytes a code, the payload tensors are that size."""
    x = torch.randn(M, D)
    for comp, per_row in [(Lattice.with_bits(8), D), (Lattice.with_bits(16), 2 * D)]:
        codes = comp.encode(x).codes
        assert codes.element_size() * codes.shape[1] == per_row
    half = HalfPrecision().encode(x).values
    assert half.element_size() * half.shape[1] == 2 * D


@pytest.mark.parametrize(("d", "bits", "expected"), [(10, 5, 7), (8, 1, 1), (9, 1, 2), (3, 8, 3)])
def test_packed_bytes_are_whole_bytes_rounded_up(d: int, bits: int, expected: int):
    assert type(packed_bytes(d, bits)) is int and packed_bytes(d, bits) == expected
