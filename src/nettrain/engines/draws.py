"""The random choices of an asynchronous agent, shared by the engines so both replay them."""

from __future__ import annotations

import numpy as np

from nettrain.algorithms.base import Method
from nettrain.faults import CENTRE  # the partner of an exchange with the servers


class Draws:
    """Agent ``i``'s random choices, one stream per kind so that engines replay them.

    Partners from ``(seed, i, 0xA5)``, step counts from ``(seed, i, 0x5E)``, Poisson
    durations from ``(seed, i, 0xC1)``, message losses from ``(seed, i, 0xD7)`` (NumPy's
    ``default_rng`` on those seeds).
    """

    def __init__(
        self,
        seed: int,
        agent: int,
        neighbours: list[int],
        algo: Method,
        drop: float = 0.0,
    ) -> None:
        self.neighbours = neighbours
        self.mean_steps: int = algo.local_steps  # type: ignore[attr-defined]
        self.geometric = algo.geometric_phases
        self.drop = drop
        self._partners = np.random.default_rng([seed, agent, 0xA5])
        self._steps = np.random.default_rng([seed, agent, 0x5E])
        self._times = np.random.default_rng([seed, agent, 0xC1])
        self._losses = np.random.default_rng([seed, agent, 0xD7])

    def partner(self) -> int:
        return int(self._partners.choice(self.neighbours)) if self.neighbours else CENTRE

    def steps(self) -> int:
        """Steps of the next phase: ``H``, or geometric on ``{1, 2, ...}`` with mean ``H``."""
        if not self.geometric or self.mean_steps <= 1:
            return self.mean_steps
        return int(self._steps.geometric(1.0 / self.mean_steps))

    def duration(self, mean: float, poisson: bool) -> float:
        return float(self._times.exponential(mean)) if poisson and mean > 0 else mean

    def losses(self, unreachable: bool = False) -> tuple[bool, bool]:
        """Whether this agent's next exchange loses its request, and its reply: each drawn
        every event (so the streams stay aligned) and true with ``drop``; the request is
        also lost when the partner is ``unreachable`` (down, across the split); a lost
        request gets no reply."""
        request = reply = False
        if self.drop:
            request, reply = (bool(v) for v in self._losses.random(2) < self.drop)
        request = request or unreachable
        return request, request or reply

    def state_dict(self) -> dict[str, dict]:
        """The streams' positions, for checkpoints."""
        streams = ("_partners", "_steps", "_times", "_losses")
        return {k: getattr(self, k).bit_generator.state for k in streams}

    def load_state_dict(self, saved: dict[str, dict]) -> None:
        for k, state in saved.items():
            getattr(self, k).bit_generator.state = state
