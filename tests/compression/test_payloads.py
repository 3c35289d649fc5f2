"""Payloads as rows and as bytes: picking, joining, packing and unpacking every format."""

from __future__ import annotations

import re

import pytest
import torch

from nettrain.compression import QSGD, Compressor, HalfPrecision, Identity, Lattice, TopK
from nettrain.compression.payloads import (
    cat_columns,
    cat_rows,
    pack,
    reads_reference,
    take_rows,
    tensor_fields,
    unpack,
)

FORMATS: list[Compressor] = [
    Identity(),
    HalfPrecision(torch.bfloat16),
    QSGD(bits=4),
    QSGD(bits=7, bucket=4),  # scales (m, 3): buckets of 4, 4 and 2 coordinates
    TopK(k=3),
    Lattice.with_bits(8, eps=0.01),
]
FIELDS = {  # the tensor fields of each payload, in declaration order, and their dtypes
    "none": {"values": torch.float64},
    "bf16": {"values": torch.bfloat16},
    "qsgd": {"codes": torch.int8, "scale": torch.float32},
    "topk": {"values": torch.float64, "indices": torch.int32},
    "lattice": {"codes": torch.uint8},
}


def ids(comp: Compressor) -> str:
    bucket = getattr(comp, "bucket", 0)
    return f"{comp.name}-bucket{bucket}" if bucket else comp.name


def encoded(comp: Compressor, rows: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 10, generator=g, dtype=torch.float64)
    return x, comp.encode(x, x, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("comp", FORMATS, ids=ids)
def test_tensor_fields_are_the_payloads_tensors_in_order(comp: Compressor) -> None:
    _, payload = encoded(comp)
    fields = tensor_fields(payload)
    assert {name: t.dtype for name, t in fields.items()} == FIELDS[comp.name]
    assert list(fields) == list(FIELDS[comp.name])
    assert all(t.shape[0] == 4 for t in fields.values())
    if getattr(comp, "bucket", 0):
        assert fields["scale"].shape == (4, 3)  # one scale per bucket of each row


@pytest.mark.parametrize("comp", FORMATS, ids=ids)
def test_rows_picked_and_joined_decode_to_those_rows(comp: Compressor) -> None:
    """``take_rows`` with repeats and ``cat_rows`` of two payloads decode, row for row, to
    the rows of the whole payload they came from."""
    x, payload = encoded(comp)
    whole = comp.decode(payload, x)
    rows = torch.tensor([3, 0, 3])
    picked = take_rows(payload, rows)
    assert torch.equal(comp.decode(picked, x[rows]), whole[rows])
    joined = cat_rows([take_rows(payload, torch.tensor([1])), picked])
    order = torch.tensor([1, 3, 0, 3])
    assert torch.equal(comp.decode(joined, x[order]), whole[order])
    assert all(
        getattr(joined, k) == getattr(payload, k) for k in ("dtype", "d") if hasattr(payload, k)
    )
    alone = cat_rows([payload])  # one payload joined is itself
    assert all(
        torch.equal(a, b)
        for a, b in zip(tensor_fields(alone).values(), tensor_fields(payload).values(), strict=True)
    )


@pytest.mark.parametrize("comp", FORMATS, ids=ids)
def test_a_packed_payload_is_its_bytes_and_unpacks_to_itself(comp: Compressor) -> None:
    x, payload = encoded(comp)
    mine = take_rows(payload, torch.tensor([0, 1]))
    theirs = take_rows(payload, torch.tensor([2, 3]))
    buffer = pack(theirs)
    sizes = [t.numel() * t.element_size() for t in tensor_fields(theirs).values()]
    assert buffer.dtype == torch.uint8 and buffer.shape == (sum(sizes),)
    first = next(iter(tensor_fields(theirs).values()))
    assert torch.equal(buffer[: sizes[0]], first.contiguous().view(torch.uint8).reshape(-1))
    back = unpack(buffer, mine)  # the receiver's own payload as the template
    for name, t in tensor_fields(theirs).items():
        assert torch.equal(getattr(back, name), t) and getattr(back, name).dtype == t.dtype
    assert torch.equal(comp.decode(back, x[2:]), comp.decode(payload, x)[2:])
    message = f"a payload buffer of {sum(sizes) + 1} bytes for a {sum(sizes)}-byte layout"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        unpack(torch.cat([buffer, buffer[:1]]), mine)


def test_only_the_lattice_decodes_against_a_reference() -> None:
    assert [reads_reference(c) for c in FORMATS] == [False, False, False, False, False, True]


def test_only_compressors_that_encode_each_coordinate_alone_are_columnwise() -> None:
    """A norm, a top-k or random levels see the whole vector."""
    assert [c.name for c in FORMATS if c.columnwise] == ["none", "bf16", "lattice"]


@pytest.mark.parametrize("comp", [c for c in FORMATS if c.columnwise], ids=ids)
def test_a_columnwise_compressors_slices_join_into_the_whole_payload(comp: Compressor) -> None:
    """Slices encoded apart (the last columns first, as gradient buckets come) and joined
    by ``cat_columns`` are the whole vector's payload, field for field, and decode to the
    whole's estimate."""
    x, payload = encoded(comp)
    cuts = [slice(7, 10), slice(3, 7), slice(0, 3)]
    parts = {c.start: comp.encode(x[:, c], x[:, c]) for c in cuts}
    joined = cat_columns([parts[start] for start in sorted(parts)])
    for name, t in tensor_fields(payload).items():
        assert torch.equal(getattr(joined, name), t), name
    assert torch.equal(comp.decode(joined, x), comp.decode(payload, x))
