"""Dense formats: send every coordinate, as is (``none``) or in 16-bit floats (``fp16``, ``bf16``).

Byte counts: ``element_size * d`` per row, no header; ``4 d`` for float32, ``8 d`` for
float64, ``2 d`` for both half formats.

Error of the half formats (round to nearest, IEEE 754): for ``|x_i|`` in the normal range
of the format, ``|fl(x_i) - x_i| <= u |x_i|`` with unit roundoff ``u = 2^-11`` for fp16
(11-bit significand, normal range ``[2^-14, 65504]``) and ``u = 2^-8`` for bf16 (8-bit
significand, float32's exponent range). Beyond 65504 fp16 gives ``inf``, as ``x.half()``
does; use bf16 for vectors with large entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.compression.base import Compressor, check_ref, check_stack, per_row
from nettrain.errors import ConfigError

HALF_DTYPES: dict[torch.dtype, str] = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True, eq=False)
class DensePayload:
    """Every coordinate, in the wire dtype."""

    values: torch.Tensor  # (m, d) wire dtype
    dtype: torch.dtype  # the sender's working dtype (shared configuration, not sent)


@dataclass(frozen=True)
class Identity(Compressor[DensePayload]):
    """No compression: the payload is ``x`` itself (no copy); ``element_size * d`` bytes a row."""

    @property
    def name(self) -> str:
        return "none"

    @property
    def columnwise(self) -> bool:
        return True

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> DensePayload:
        check_stack(x, ref)
        return DensePayload(x, x.dtype)

    def decode(self, payload: DensePayload, ref: torch.Tensor | None = None) -> torch.Tensor:
        check_ref(ref, tuple(payload.values.shape))
        return payload.values

    def nbytes(self, payload: DensePayload) -> torch.Tensor:
        m, d = payload.values.shape
        return per_row(m, payload.values.element_size() * d)


@dataclass(frozen=True)
class HalfPrecision(Compressor[DensePayload]):
    """Round every coordinate to a 16-bit float: ``x_hat = fl16(x)``, 2 bytes a coordinate.

    ``dtype`` is ``torch.float16`` (IEEE binary16, name ``fp16``) or ``torch.bfloat16``
    (brain float, name ``bf16``); the error bounds are in the module docstring.
    """

    dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        if self.dtype not in HALF_DTYPES:
            raise ConfigError(
                f"HalfPrecision dtype must be torch.float16 or torch.bfloat16, got {self.dtype}"
            )

    @property
    def name(self) -> str:
        return HALF_DTYPES[self.dtype]

    @property
    def columnwise(self) -> bool:
        return True

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> DensePayload:
        check_stack(x, ref)
        return DensePayload(x.to(self.dtype), x.dtype)

    def decode(self, payload: DensePayload, ref: torch.Tensor | None = None) -> torch.Tensor:
        check_ref(ref, tuple(payload.values.shape))
        return payload.values.to(payload.dtype)

    def nbytes(self, payload: DensePayload) -> torch.Tensor:
        m, d = payload.values.shape
        return per_row(m, payload.values.element_size() * d)
