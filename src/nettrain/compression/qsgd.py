"""QSGD: unbiased stochastic quantisation to ``b``-bit levels with norm scaling.

Paper: Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via
Gradient Quantization and Encoding", NIPS 2017, arXiv 1610.02132.

With ``s = 2^b - 1`` levels and a scale ``c = ||x||`` (the l2 norm as in the paper, or
the max norm), coordinate ``i`` is sent as ``sign(x_i) * l_i`` where, with
``r_i = s |x_i| / c`` and ``l = floor(r_i)``, the level ``l_i`` is ``l + 1`` with
probability ``r_i - l`` and ``l`` otherwise. The receiver sets ``x_hat_i = c sign(x_i) l_i / s``.

Bucketing (the paper's practical variant; its experiments use buckets of 512): with
``bucket = B > 0`` the row is cut into ``ceil(d / B)`` buckets of ``B`` consecutive
coordinates (the last one shorter when ``B`` does not divide ``d``) and each bucket has
its own scale ``c_k = ||x_(k)||``, the norm of its coordinates alone; everything below
holds bucket by bucket with ``d`` replaced by ``B``. A coordinate's error is then bounded
by its own bucket's scale, ``|x_hat_i - x_i| <= c_k / s``, so one large coordinate no
longer coarsens the levels of the whole model. ``bucket = 0`` (the default) is one scale
for the whole row.

* Unbiased: ``E x_hat = x`` (``E l_i = r_i``).
* Variance (Lemma 3.1 of the paper, l2 scaling):
  ``E ||x_hat - x||^2 <= min(d / s^2, sqrt(d) / s) ||x||_2^2``. Each coordinate's
  variance is ``(c / s)^2 p (1 - p) <= (c / s)^2 / 4`` with ``p = r_i - l``, so with max
  scaling ``E ||x_hat - x||^2 <= d ||x||_inf^2 / (4 s^2)``, usually far smaller.

Wire format and byte count: each coordinate is a sign bit plus ``b`` magnitude bits,
packed, and each row has one float32 scale per bucket: ``ceil(d (b + 1) / 8) + 4 k``
bytes a row, with ``k = 1`` without buckets and ``k = ceil(d / B)`` with them (the
scales add ``32 / B`` bits a coordinate: 0.0625 at ``B = 512``). In
memory the signed levels are held in the smallest signed integer dtype that fits them
(int8 for ``b <= 7``, int16 up to 15, int32 for 16); packing them is a reshuffle of bits
the simulator leaves out. The scale is rounded *up* to float32, so it still bounds every
``|x_i|`` and the estimate stays unbiased with respect to what is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nettrain.compression.base import (
    FLOAT32_BYTES,
    Compressor,
    check_int,
    check_ref,
    check_stack,
    packed_bytes,
    per_row,
    require_generator,
)
from nettrain.errors import ConfigError

QSGD_NORMS = ("l2", "linf")
QSGD_MAX_BITS = 16


@dataclass(frozen=True, eq=False)
class QSGDPayload:
    """Signed levels in ``[-s, s]`` and one float32 scale per row, or per bucket of a row."""

    codes: torch.Tensor  # (m, d) int8 / int16 / int32, sign(x_i) * l_i
    # (m,) float32 without buckets, c >= max_i |x_i|; (m, ceil(d / bucket)) with them,
    # c_k >= max |x_i| over bucket k
    scale: torch.Tensor
    dtype: torch.dtype  # the sender's working dtype (shared configuration, not sent)


@dataclass(frozen=True)
class QSGD(Compressor[QSGDPayload]):
    """Stochastic ``bits``-bit quantisation with norm scaling (Alistarh et al., 2017).

    Attributes:
        bits: magnitude bits per coordinate, 1..16 (``s = 2^bits - 1`` levels); a sign bit
            is sent besides. Default 4: 5 bits a coordinate, 6.4x smaller than float32.
        norm: ``"l2"`` scales by ``||x||_2`` (the paper's choice, for its variance bound)
            or ``"linf"`` by ``max_i |x_i|`` (finer levels, the common practical choice).
        bucket: coordinates that share one scale, >= 0. ``0`` (default): one scale for
            the whole row; ``B > 0``: one for each run of ``B`` consecutive coordinates
            (the last run may be shorter), as in the paper's experiments (``B = 512``),
            at ``32 / B`` more bits a coordinate.
    """

    bits: int = 4
    norm: str = "l2"
    bucket: int = 0

    def __post_init__(self) -> None:
        check_int(
            "qsgd bits",
            self.bits,
            1,
            QSGD_MAX_BITS,
            " (magnitude bits per coordinate; a sign bit is sent besides)",
        )
        if self.norm not in QSGD_NORMS:
            raise ConfigError(
                f"qsgd norm={self.norm!r} is unknown; choose one of {', '.join(QSGD_NORMS)}"
            )
        if isinstance(self.bucket, bool) or not isinstance(self.bucket, int) or self.bucket < 0:
            raise ConfigError(
                f"qsgd bucket must be an integer >= 0, got {self.bucket!r} (coordinates that "
                "share one scale; 0 = one scale for the whole row, 512 in the QSGD paper)"
            )

    @property
    def name(self) -> str:
        return "qsgd"

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def levels(self) -> int:
        """``s = 2^bits - 1``, the largest magnitude level."""
        return 2**self.bits - 1

    def buckets(self, d: int) -> int:
        """Scales a row of ``d`` coordinates carries: 1 without buckets, else
        ``ceil(d / bucket)``."""
        return 1 if self.bucket == 0 else -(-d // self.bucket)

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> QSGDPayload:
        check_stack(x, ref)
        gen = require_generator(self.name, generator)
        scale = self._scale(x)  # (m,) or (m, nb) float32
        c = self._per_coordinate(scale.to(x.dtype), x.shape[1])  # (m, 1) or (m, d)
        s = self.levels
        safe = torch.where(c > 0, c, torch.ones_like(c))
        r = (x.abs() / safe * s).clamp_(max=s)  # (m, d) in [0, s]
        low = r.floor()
        u = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        level = low + (u < r - low).to(x.dtype)  # l + 1 with probability r - l
        codes = torch.copysign(level, x).to(_code_dtype(self.bits))  # sign(x_i) l_i
        return QSGDPayload(codes, scale, x.dtype)

    def decode(self, payload: QSGDPayload, ref: torch.Tensor | None = None) -> torch.Tensor:
        check_ref(ref, tuple(payload.codes.shape))
        step = payload.scale.to(payload.dtype) / self.levels  # (m,) or (m, nb)
        d = payload.codes.shape[1]
        # integer codes promote to the working dtype
        return payload.codes * self._per_coordinate(step, d)

    def nbytes(self, payload: QSGDPayload) -> torch.Tensor:
        m, d = payload.codes.shape
        return per_row(m, packed_bytes(d, self.bits + 1) + FLOAT32_BYTES * self.buckets(d))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """Norm of each row, ``(m,)``, or of each bucket of each row, ``(m, nb)`` (the
        row padded with zeros to ``nb * bucket`` coordinates, which change no norm),
        rounded up to float32."""
        order = 2 if self.norm == "l2" else math.inf
        if self.bucket == 0:
            norm = torch.linalg.vector_norm(x, ord=order, dim=1)
        else:
            m, d = x.shape
            nb, width = self.buckets(d), min(self.bucket, d)
            padded = torch.nn.functional.pad(x, (0, nb * width - d))
            norm = torch.linalg.vector_norm(padded.view(m, nb, width), ord=order, dim=2)
        scale = norm.to(torch.float32)
        low = scale < norm  # compared in x's dtype (float64 if x is)
        return torch.where(low, torch.nextafter(scale, torch.full_like(scale, torch.inf)), scale)

    def _per_coordinate(self, per_bucket: torch.Tensor, d: int) -> torch.Tensor:
        """A row's value ``(m,)`` as ``(m, 1)``, or each bucket's ``(m, nb)`` repeated over
        its coordinates, ``(m, d)``."""
        if self.bucket == 0:
            return per_bucket[:, None]
        m, nb = per_bucket.shape
        width = min(self.bucket, d)  # a bucket wider than the row is the row
        spread = per_bucket[:, :, None].expand(m, nb, width)
        return spread.reshape(m, nb * width)[:, :d]


def _code_dtype(bits: int) -> torch.dtype:
    """Smallest signed integer dtype holding levels in ``[-(2^bits - 1), 2^bits - 1]``."""
    if bits <= 7:
        return torch.int8
    if bits <= 15:
        return torch.int16
    return torch.int32
