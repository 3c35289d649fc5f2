"""Payloads as rows and as bytes: what engines need to route encoded vectors.

Every payload (:class:`~nettrain.compression.DensePayload`,
:class:`~nettrain.compression.QSGDPayload`, :class:`~nettrain.compression.SparsePayload`,
:class:`~nettrain.compression.LatticePayload`) is a frozen dataclass whose tensor fields
all have the agent axis first (``codes: (m, d)``, ``scale: (m,)``, ``values: (m, k)``)
and whose other fields (the working dtype, ``d``) are configuration both sides share.
So, without knowing the compressor:

* :func:`take_rows` picks senders' rows (the simulator decodes one row per edge) and
  :func:`cat_rows` joins the rows of several (:func:`cat_columns` the column slices of
  a columnwise compressor's payload);
* :func:`pack` lays one agent's payload out as one ``uint8`` buffer (one message on the
  wire) and :func:`unpack` reads it back given the receiver's own payload as a template.
  Given ``d`` and the compressor, the buffer has the same length on every agent, so a
  receiver can post its ``irecv`` before anything arrives.

The buffer is the payloads' in-memory layout (QSGD's 5-bit codes travel in int8), which
can be larger than the exact packed size that :meth:`Compressor.nbytes` reports and
engines count; packing bits is a reshuffle the engines leave out.

:func:`reads_reference` says whether decoding depends on the receiver's reference (only
the lattice quantiser's does); engines use it to decode once per sender instead of once
per receiver when it does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

from nettrain.compression.base import Compressor
from nettrain.compression.lattice import Lattice

P = TypeVar("P")


def tensor_fields(payload: Any) -> dict[str, torch.Tensor]:
    """The tensor fields of ``payload`` by name, in declaration order."""
    return {
        f.name: getattr(payload, f.name)
        for f in dataclasses.fields(payload)
        if isinstance(getattr(payload, f.name), torch.Tensor)
    }


def take_rows(payload: P, rows: torch.Tensor) -> P:
    """``payload`` restricted to ``rows: (k,)`` (int64 indices, repeats allowed)."""
    picked = {name: t[rows] for name, t in tensor_fields(payload).items()}
    return dataclasses.replace(payload, **picked)  # type: ignore[type-var]


def cat_rows(payloads: list[P], dim: int = 0) -> P:
    """The payloads' rows one after another (the first payload's other fields); with
    ``dim=1`` their columns instead (:func:`cat_columns`)."""
    fields = [tensor_fields(p) for p in payloads]
    joined = {name: torch.cat([f[name] for f in fields], dim) for name in fields[0]}
    return dataclasses.replace(payloads[0], **joined)  # type: ignore[type-var]


def cat_columns(payloads: list[P]) -> P:
    """The payloads of consecutive column slices of one stack joined into the stack's
    payload, for a compressor that is :attr:`~nettrain.compression.Compressor.columnwise`
    (every tensor field ``(m, columns)``)."""
    return cat_rows(payloads, 1)


def pack(payload: Any) -> torch.Tensor:
    """A payload (one agent's, or the rows of several) as one flat ``uint8`` buffer."""
    parts = [t.contiguous().view(torch.uint8).reshape(-1) for t in tensor_fields(payload).values()]
    return torch.cat(parts)


def unpack(buffer: torch.Tensor, like: P) -> P:
    """The payload :func:`pack` made ``buffer`` from; ``like`` is a payload of the same
    compressor and shape (the receiver's own), giving the dtypes and shapes."""
    fields, offset = {}, 0
    for name, t in tensor_fields(like).items():
        size = t.numel() * t.element_size()
        raw = buffer[offset : offset + size].clone()  # offset 0, so any dtype can view it
        fields[name] = raw.view(t.dtype).reshape(t.shape)
        offset += size
    if offset != buffer.numel():
        raise ValueError(f"a payload buffer of {buffer.numel()} bytes for a {offset}-byte layout")
    return dataclasses.replace(like, **fields)  # type: ignore[type-var]


def reads_reference(compressor: Compressor[Any]) -> bool:
    """True when ``decode(payload, ref)`` depends on ``ref`` (the lattice quantiser)."""
    return isinstance(compressor, Lattice)
