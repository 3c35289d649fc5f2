"""The random choices of an asynchronous agent, shared by the engines so both replay them."""

from __future__ import annotations

import numpy as np

from nettrain.algorithms.base import AsyncAlgorithm

CENTRE = -1  # the partner of an exchange with the servers


class Draws:
    """Agent ``i``'s random choices, one stream per kind so that engines replay them.

    Partners from ``(seed, i, 0xA5)``, step counts from ``(seed, i, 0x5E)``, Poisson
    durations from ``(seed, i, 0xC1)`` (NumPy's ``default_rng`` on those seeds).
    """

    def __init__(self, seed: int, agent: int, neighbours: list[int], algo: AsyncAlgorithm) -> None:
        self.neighbours = neighbours
        self.mean_steps = algo.local_steps
        self.geometric = bool(getattr(algo, "geometric", False))
        self._partners = np.random.default_rng([seed, agent, 0xA5])
        self._steps = np.random.default_rng([seed, agent, 0x5E])
        self._times = np.random.default_rng([seed, agent, 0xC1])

    def partner(self) -> int:
        return int(self._partners.choice(self.neighbours)) if self.neighbours else CENTRE

    def steps(self) -> int:
        """Steps of the next phase: ``H``, or geometric on ``{1, 2, ...}`` with mean ``H``."""
        if not self.geometric or self.mean_steps <= 1:
            return self.mean_steps
        return int(self._steps.geometric(1.0 / self.mean_steps))

    def duration(self, mean: float, poisson: bool) -> float:
        return float(self._times.exponential(mean)) if poisson and mean > 0 else mean
