"""The virtual clock: how long a round would take on the modelled hardware.

Agent ``i`` in a synchronous round spends ``s_i * c * samples_i + o`` computing (``c``
seconds per sample, ``s_i`` its slow-down, ``o`` the engine's own cost of a step: 0
unless a profile measured it) and ``latency * messages_i + bytes_i / bandwidth_i``
communicating. A synchronous round ends when the slowest agent is done::

    T_round = max_i ( s_i c samples_i + o + latency messages_i + bytes_i / bandwidth_i )

``s_i = straggler_i / speed_i``: stragglers are a seeded random subset of agents with
``straggler_i = straggler_slowdown`` (1 for the others), ``speed_i`` the agent's speed
factor (``speed=``, ``trace=``: :mod:`nettrain.heterogeneity`; 1 by default).
``bandwidth_i = bandwidth * f_i``, ``f_i`` the agent's bandwidth factor (``bandwidth=``,
``trace=``; None: every ``f_i = 1``, the same numbers bit for bit). The constants
``c``, ``latency`` and ``bandwidth`` are the config's, or measured ones
(``cost_model=PATH``: a calibration :class:`~nettrain.engines.sim.profile.Profile`,
kept as :attr:`CostModel.profile`; its ``latency`` is the link's plus the distributed
engine's own work of a neighbour message, ``message_overhead_s``). A profile also gives
a message's latency within a collective (an all-reduce's messages,
:attr:`CostModel.collective_latency_s`) and over rpc, which the asynchronous methods'
exchanges take in the distributed engine (gossip and parameter servers,
:meth:`CostModel.over_rpc`); without one both are ``latency``.
Its ``o`` is the synchronous round's, and an asynchronous event's apart
(:attr:`CostModel.event_overhead_s`); without a profile ``o = 0``.

A profile's ``c`` is a pass measured with its ``processes`` busy at once, which on
machines with fewer cores than processes includes waiting for a core. A slow agent's
extra computing is its own device's, and takes no core from the others (the
distributed engine enacts it by sleeping: :class:`~nettrain.problem.oracle.Meter`), so
the clock charges it at the profile's pass alone ``c'``
(:attr:`CostModel.alone_seconds_per_sample`): ``(c + (s_i - 1) c') samples_i`` for
``s_i > 1``. With one process a core ``c' = c`` and this is ``s_i c samples_i``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from nettrain.engines.sim.profile import Profile


@dataclass(frozen=True)
class CostModel:
    seconds_per_sample: float  # c
    latency_s: float
    bandwidth_bytes_per_s: float
    slowdown: torch.Tensor  # (n,) float64 > 0: straggler slow-down / speed factor
    bandwidth_factor: torch.Tensor | None = None  # (n,) float64 > 0 f_i; None = all 1
    profile: Profile | None = None  # where the constants were measured (cost_model=PATH)
    rpc_latency_s: float | None = None  # a message's latency over rpc; None = latency_s
    collective_latency_s: float | None = None  # within a collective; None = latency_s
    step_overhead_s: float = 0.0  # o: the engine's own cost of a step (a profile's)
    event_overhead_s: float | None = None  # o of an asynchronous event; None = step's
    # c' of a slow agent's extra computing (a profile's pass alone); None: c
    alone_seconds_per_sample: float | None = None

    def over_rpc(self) -> CostModel:
        """The cost model of the asynchronous methods, whose exchanges go over rpc in the
        distributed engine: :attr:`rpc_latency_s` as the latency and
        :attr:`event_overhead_s` as a step's ``o``, where a profile measured them."""
        changes: dict[str, float] = {}
        if self.rpc_latency_s is not None:
            changes["latency_s"] = self.rpc_latency_s
        if self.event_overhead_s is not None:
            changes["step_overhead_s"] = self.event_overhead_s
        return dataclasses.replace(self, **changes) if changes else self

    @staticmethod
    def straggler_slowdown(n: int, fraction: float, factor: float, seed: int) -> torch.Tensor:
        """``(n,)`` factors: ``round(fraction * n)`` agents chosen by ``seed`` get ``factor``."""
        s = torch.ones(n, dtype=torch.float64)
        k = round(fraction * n)
        if k:
            chosen = np.random.default_rng([seed, 0x57A6]).choice(n, size=k, replace=False)
            s[torch.as_tensor(chosen)] = factor
        return s

    def compute_seconds(self, samples: torch.Tensor) -> torch.Tensor:
        """Computing time ``(n,)`` of each agent: ``s_i * c * samples_i``, plus ``o`` for
        an agent that computed; with :attr:`alone_seconds_per_sample` ``c'``, a slow
        agent's (``s_i > 1``) is ``(c + (s_i - 1) c') samples_i`` instead."""
        seconds = self.slowdown * self.seconds_per_sample * samples.double()
        if self.alone_seconds_per_sample is not None:
            slow = self.seconds_per_sample + (self.slowdown - 1) * self.alone_seconds_per_sample
            seconds = torch.where(self.slowdown > 1, slow * samples.double(), seconds)
        if self.step_overhead_s:
            seconds += self.step_overhead_s * (samples > 0).double()
        return seconds

    def send_seconds(
        self, messages: torch.Tensor, nbytes: torch.Tensor, collective: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sending time ``(n,)`` of each agent: ``latency * messages_i + bytes_i /
        bandwidth_i``, the ``collective_i`` of those messages sent within collectives at
        :attr:`collective_latency_s` instead."""
        seconds = self.latency_s * messages.double() + nbytes.double() / self.agent_bandwidth()
        if collective is not None and self.collective_latency_s is not None:
            seconds += (self.collective_latency_s - self.latency_s) * collective.double()
        return seconds

    def agent_bandwidth(self) -> torch.Tensor | float:
        """Each agent's link bandwidth ``bandwidth * f_i`` in bytes/s, ``(n,)``; the one
        bandwidth (a float) when every ``f_i`` is 1."""
        if self.bandwidth_factor is None:
            return self.bandwidth_bytes_per_s
        return self.bandwidth_bytes_per_s * self.bandwidth_factor

    def link_bytes_per_s(self, agent: int) -> float:
        """The bandwidth of a transfer between ``agent`` and a parameter server: the slower
        end's (a server has the base bandwidth)."""
        if self.bandwidth_factor is None:
            return self.bandwidth_bytes_per_s
        return self.bandwidth_bytes_per_s * min(1.0, float(self.bandwidth_factor[agent]))

    def agent_seconds(
        self,
        samples: torch.Tensor,
        messages: torch.Tensor,
        nbytes: torch.Tensor,
        collective: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Busy time ``(n,)`` of each agent for the given per-agent work: computing plus
        sending."""
        return self.compute_seconds(samples) + self.send_seconds(messages, nbytes, collective)


@dataclass
class VirtualClock:
    """Virtual time in seconds, advanced by the engine only."""

    cost: CostModel
    now: float = 0.0

    def sync_round(
        self,
        samples: torch.Tensor,
        messages: torch.Tensor,
        nbytes: torch.Tensor,
        extra: torch.Tensor | None = None,
        collective: torch.Tensor | None = None,
    ) -> float:
        """Advance by one synchronous round (the slowest agent's time, with ``extra[i]``
        seconds more for agent ``i``: resent messages; ``collective``: the messages sent
        within collectives) and return it."""
        busy = self.cost.agent_seconds(samples, messages, nbytes, collective)
        dt = float((busy if extra is None else busy + extra).max())
        self.now += dt
        return dt

    def sync_rounds(
        self,
        samples: torch.Tensor,
        messages: torch.Tensor,
        nbytes: torch.Tensor,
        collective: torch.Tensor | None = None,
    ) -> None:
        """Advance by ``k`` synchronous rounds of work ``(k, n)`` each (a row a round, in
        round order), nothing resent: :meth:`sync_round` row after row, in one pass over
        the rows (the same elementwise arithmetic and the same sums, in order)."""
        busy = self.cost.agent_seconds(samples, messages, nbytes, collective)
        for dt in busy.amax(1).tolist():
            self.now += dt
