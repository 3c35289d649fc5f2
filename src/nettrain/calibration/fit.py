"""The link's model fitted to measured one-way times: ``t = latency + bytes / bandwidth``.

Least squares on the relative residuals: size ``i`` (``b_i`` bytes, ``t_i`` seconds)
counts as ``((t_i - a - c b_i) / t_i)^2``, i.e. rows ``[1, b_i] / t_i`` against ``1``.
Plain least squares would weigh the large messages' milliseconds so much more than the
small messages' microseconds that the latency ``a`` would be whatever the large
messages' noise leaves; relative weights let the small messages set the latency and
the large ones the bandwidth ``1 / c``. The fit is constrained to ``a >= 0`` (else the
best fit with ``a = 0``); a slope ``c <= 0`` (times that do not grow with the size)
has no bandwidth and is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nettrain.errors import ConfigError


@dataclass(frozen=True)
class LinkFit:
    """The fitted ``latency_s`` and ``bandwidth_bytes_per_s``, and the points fitted."""

    latency_s: float
    bandwidth_bytes_per_s: float
    nbytes: tuple[int, ...]
    measured_s: tuple[float, ...]

    def seconds(self, nbytes: float) -> float:
        """The model's one-way time of a message of ``nbytes`` bytes."""
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s

    def fitted_s(self) -> list[float]:
        """The model's one-way time of each message size."""
        return [self.seconds(b) for b in self.nbytes]

    def residuals(self) -> list[float]:
        """Relative residual ``(measured - fitted) / measured`` of each message size."""
        return [(t - f) / t for t, f in zip(self.measured_s, self.fitted_s(), strict=True)]


def fit_link(nbytes: Sequence[int], seconds: Sequence[float]) -> LinkFit:
    """Fit ``seconds ~ latency + nbytes / bandwidth`` (the module says how)."""
    b = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if b.shape != t.shape or len(b) < 2 or len(np.unique(b)) < 2:
        raise ConfigError(
            f"fitting a latency and a bandwidth needs times of at least 2 message sizes, got "
            f"{len(np.unique(b))}; measure more sizes (--min-bytes, --max-bytes)"
        )
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ConfigError(f"the measured one-way times must be finite and > 0, got {t.tolist()}")
    rows = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (a, c), *_ = np.linalg.lstsq(rows, np.ones_like(t), rcond=None)
    if a < 0:  # the best fit through the origin: min sum (1 - c b_i / t_i)^2
        x = b / t
        a, c = 0.0, float(x.sum() / (x * x).sum())
    if c <= 0:
        raise ConfigError(
            "the measured one-way times do not grow with the message size, so no bandwidth "
            f"can be fitted (sizes {b.astype(int).tolist()} bytes, times {t.tolist()} s); "
            "measure larger messages (--max-bytes)"
        )
    return LinkFit(float(a), float(1 / c), tuple(int(v) for v in b), tuple(float(v) for v in t))
