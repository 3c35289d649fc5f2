"""Top-k sparsification: keep the ``k`` coordinates of largest magnitude, zero the rest.

``x_hat_i = x_i`` for the ``k`` indices of largest ``|x_i|`` in the row, ``0`` elsewhere
(Aji and Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017;
Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS 2018). It is biased and
deterministic, so it is meant for gradients under error feedback
(:mod:`nettrain.compression.error_feedback`). Ties in magnitude are broken by
:func:`torch.topk`.

Byte count: the ``k`` values in the working dtype plus ``k`` int32 indices,
``k (element_size + 4)`` bytes a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.compression.base import INDEX_BYTES, Compressor, check_ref, check_stack, per_row
from nettrain.errors import ConfigError


@dataclass(frozen=True, eq=False)
class SparsePayload:
    """``k`` values and their coordinates per row."""

    values: torch.Tensor  # (m, k) working dtype
    indices: torch.Tensor  # (m, k) int32
    d: int  # row length (shared configuration, not sent)


@dataclass(frozen=True)
class TopK(Compressor[SparsePayload]):
    """Keep the ``k`` largest-magnitude coordinates of each row.

    Give exactly one of ``k`` (a count, at most ``d`` when encoding) or ``ratio`` (a
    fraction in ``(0, 1]``; ``k = max(1, round(ratio * d))``).
    """

    k: int | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.k is None) == (self.ratio is None):
            raise ConfigError(
                f"TopK needs exactly one of k (a count) or ratio (a fraction of d), "
                f"got k={self.k!r}, ratio={self.ratio!r}"
            )
        if self.k is not None and (
            isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1
        ):
            raise ConfigError(f"topk k must be an integer >= 1, got {self.k!r}")
        if self.ratio is not None and (
            isinstance(self.ratio, bool)
            or not isinstance(self.ratio, (int, float))
            or not 0 < self.ratio <= 1
        ):
            raise ConfigError(
                f"topk k_ratio must be a fraction in (0, 1], got {self.ratio!r}; "
                "e.g. 0.01 keeps 1% of the coordinates"
            )

    @property
    def name(self) -> str:
        return "topk"

    def k_of(self, d: int) -> int:
        """The number of coordinates kept in a row of length ``d``."""
        if self.ratio is not None:
            return max(1, min(d, round(self.ratio * d)))
        assert self.k is not None  # __post_init__ asks for exactly one of the two
        if self.k > d:
            raise ConfigError(
                f"topk k={self.k} exceeds the row length d={d}; use k <= d or a ratio"
            )
        return self.k

    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> SparsePayload:
        check_stack(x, ref)
        d = x.shape[1]
        if d > torch.iinfo(torch.int32).max:
            raise ConfigError(f"topk sends int32 indices; d={d} exceeds 2^31 - 1")
        idx = x.abs().topk(self.k_of(d), dim=1, sorted=False).indices  # (m, k) int64
        return SparsePayload(x.gather(1, idx), idx.to(torch.int32), d)

    def decode(self, payload: SparsePayload, ref: torch.Tensor | None = None) -> torch.Tensor:
        m = payload.values.shape[0]
        check_ref(ref, (m, payload.d))
        out = payload.values.new_zeros(m, payload.d)
        return out.scatter_(1, payload.indices.to(torch.int64), payload.values)

    def nbytes(self, payload: SparsePayload) -> torch.Tensor:
        m, k = payload.values.shape
        return per_row(m, k * (payload.values.element_size() + INDEX_BYTES))
