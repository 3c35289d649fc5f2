"""Lattice quantisation decoded against a reference the receiver holds (SwarmSGD).

Paper: Nadiradze, Sabour, Davies, Li, Alistarh, "Asynchronous Decentralized SGD with
Quantized and Local Updates", NeurIPS 2021, arXiv 1910.12308.

Per coordinate, with step ``eps`` and ``q`` residues:

* encode: ``k = round(x / eps)`` (the nearest point of the lattice ``eps Z``) and send
  ``Q = k mod q`` in ``ceil(log2 q)`` bits;
* decode with reference ``b``: ``x_hat = eps Q + q eps round((b - eps Q) / (q eps))``, the
  point of ``eps (Q + q Z)`` nearest ``b``.

Guarantee (proved per coordinate). Write ``k = Q + q j``. The decoder's wrap count is
``round((b / eps - Q) / q) = j + round((b / eps - k) / q)``, which equals ``j`` exactly when
``|b - eps k| < q eps / 2``. Then ``x_hat = eps k`` and ``|x_hat - x| <= eps / 2``. Since
``|x - eps k| <= eps / 2``, a sufficient condition on the inputs is

    ``|x - b|_inf < (q - 1) eps / 2``   (:attr:`Lattice.radius`),

and it is tight: ``x = eps (k + 1/2 - g)``, ``b = eps (k + q/2 + g)`` with small ``g > 0``
are ``(q - 1) eps / 2 + 2 g eps`` apart and decode to ``eps (k + q)``, off by about
``q eps``. Whatever the reference, ``x_hat - eps k`` is a whole multiple of ``q eps``.

Without a reference (``ref=None``) the decoder uses ``b = 0``: exact to ``eps / 2`` only for
``|x| < (q - 1) eps / 2`` and wrapped by multiples of ``q eps`` beyond. That is the
"quantising without a reference does worse" comparison of the paper; the fair
reference-free quantiser at the same bit budget is
:class:`~nettrain.compression.qsgd.QSGD` (``bits - 1`` magnitude bits plus a sign).

Defaults: ``q = 2^16`` and 8 bits are the paper's public and aggressive settings. The
paper's ``eps = sigma / n`` depends on the run, so ``eps`` is a parameter here; the default
``1e-3`` bounds the error per coordinate by ``5e-4``, small beside the ``O(0.01 - 1)``
weights of the networks nettrain trains, and covers ``|x - b| < 32.8`` at 16 bits or
``< 0.1275`` at 8 bits.

Byte count: ``ceil(d * ceil(log2 q) / 8)`` a row (``d`` bytes at 8 bits, ``2 d`` at 16),
no header: ``eps`` and ``q`` are configuration both sides share. In memory the codes are
uint8 for ``q <= 256`` and int16 (the two's-complement view of the uint16 code, same bits)
for ``q <= 65536``. Inputs must be finite with ``|x / eps| < 2^63``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nettrain.compression.base import (
    Compressor,
    check_int,
    check_ref,
    check_stack,
    packed_bytes,
    per_row,
)
from nettrain.errors import ConfigError

LATTICE_MAX_BITS = 16
DEFAULT_EPS = 1e-3  # see the module docstring


@dataclass(frozen=True, eq=False)
class LatticePayload:
    """The residues ``Q = round(x / eps) mod q`` of every coordinate."""

    codes: torch.Tensor  # (m, d) uint8 (q <= 256) or int16 (two's complement of uint16)
    dtype: torch.dtype  # the sender's working dtype (shared configuration, not sent)


@dataclass(frozen=True, init=False)
class Lattice(Compressor[LatticePayload]):
    """Lattice quantiser with step ``eps`` and ``q`` residues, decoded against a reference.

    Attributes:
        eps: lattice step, > 0; the decoding error is at most ``eps / 2`` inside the
            guarantee.
        q: number of residues, 2..65536; ``ceil(log2 q)`` bits a coordinate.
        bits: given instead of ``q``: ``q = 2^bits`` (``Lattice(bits=8)``), 1..16.
    """

    eps: float = DEFAULT_EPS
    q: int = 2**LATTICE_MAX_BITS

    def __init__(
        self, eps: float = DEFAULT_EPS, q: int | None = None, *, bits: int | None = None
    ) -> None:
        if bits is not None:
            if q is not None:
                raise ConfigError("give the lattice q or bits (q = 2^bits), not both")
            check_int(
                "lattice bits", bits, 1, LATTICE_MAX_BITS, " (8 and 16 are the usual settings)"
            )
            q = 2**bits
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "q", 2**LATTICE_MAX_BITS if q is None else q)
        self.__post_init__()

    def __post_init__(self) -> None:
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, (int, float))
            or not math.isfinite(self.eps)
            or self.eps <= 0
        ):
            raise ConfigError(
                f"lattice eps must be a finite number > 0, got {self.eps!r}; it is the "
                "quantisation step (error <= eps/2), e.g. 1e-3"
            )
        check_int(
            "lattice q",
            self.q,
            2,
            2**LATTICE_MAX_BITS,
            " (residues per coordinate; 256 for 8 bits, 65536 for 16)",
        )

    @classmethod
    def with_bits(cls, bits: int, eps: float = DEFAULT_EPS) -> Lattice:
        """The lattice quantiser with ``q = 2^bits`` residues, ``bits`` in 1..16."""
        return cls(eps=eps, bits=bits)

    @property
    def name(self) -> str:
        return "lattice"

    @property
    def bits(self) -> int:
        """Bits a coordinate: ``ceil(log2 q)``."""
        return (self.q - 1).bit_length()

    @property
    def radius(self) -> float:
        """``(q - 1) eps / 2``: decoding is within ``eps / 2`` when ``|x - ref|_inf < radius``."""
        return (self.q - 1) * self.eps / 2

    @property
    def columnwise(self) -> bool:
        return True

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> LatticePayload:
        check_stack(x, ref)
        k = torch.round(x / self.eps).to(torch.int64)  # (m, d) nearest lattice points
        residue = torch.remainder(k, self.q)  # (m, d) in [0, q)
        if self.q <= 256:
            codes = residue.to(torch.uint8)
        else:
            codes = torch.where(residue >= 2**15, residue - 2**16, residue).to(torch.int16)
        return LatticePayload(codes, x.dtype)

    def decode(self, payload: LatticePayload, ref: torch.Tensor | None = None) -> torch.Tensor:
        check_ref(ref, tuple(payload.codes.shape))
        residue = torch.remainder(payload.codes.to(torch.int64), 2**16)  # (m, d) in [0, q)
        dtype = payload.dtype
        if ref is None:
            wraps = torch.round(-residue.to(dtype) / self.q)
        else:
            wraps = torch.round((ref.to(dtype) / self.eps - residue.to(dtype)) / self.q)
        k = residue + self.q * wraps.to(torch.int64)  # (m, d) lattice points nearest ref
        return k.to(dtype) * self.eps

    def nbytes(self, payload: LatticePayload) -> torch.Tensor:
        m, d = payload.codes.shape
        return per_row(m, packed_bytes(d, self.bits))
