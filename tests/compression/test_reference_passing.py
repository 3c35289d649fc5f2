"""``roundtrip`` and error feedback hand the receivers' reference to ``encode`` as well.

No built-in compressor but the lattice reads ``ref`` when encoding, and the lattice only
checks it there, so the contract ``roundtrip(x, ref) = decode(encode(x, ref), ref)`` (and
``payload = encode(x + e, ref)`` of error feedback) is checked here with a compressor of
the tests' own that sends the difference to the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.compression import ef_init, ef_step
from nettrain.compression.base import Compressor, per_row


@dataclass(frozen=True)
class Delta(Compressor[torch.Tensor]):
    """Sends ``x - ref``; the receiver adds its ``ref`` back (a reference is required)."""

    @property
    def name(self) -> str:
        return "delta"

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        assert ref is not None, "Delta needs the receivers' reference"
        return x - ref

    def decode(self, payload: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        assert ref is not None, "Delta needs the receivers' reference"
        return payload + ref

    def nbytes(self, payload: torch.Tensor) -> torch.Tensor:
        return per_row(payload.shape[0], payload.shape[1] * payload.element_size())


X = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
REF = torch.tensor([[0.5, -1.0], [2.0, 8.0]], dtype=torch.float64)


def test_roundtrip_encodes_with_the_reference() -> None:
    """``roundtrip(x, ref)`` is ``decode(encode(x, ref), ref)``: ``x`` back exactly."""
    x_hat, nbytes = Delta().roundtrip(X, REF)
    assert torch.equal(x_hat, X)
    assert torch.equal(nbytes, torch.tensor([16, 16]))


def test_error_feedback_encodes_with_the_reference() -> None:
    """With ``e = 0``: ``payload = encode(x, ref) = x - ref``, ``x_hat = x``, ``e_new = 0``."""
    payload, x_hat, state = ef_step(Delta(), X, ef_init(X), REF)
    assert torch.equal(payload, X - REF)
    assert torch.equal(x_hat, X)
    assert torch.equal(state.residual, torch.zeros(2, 2, dtype=torch.float64))
