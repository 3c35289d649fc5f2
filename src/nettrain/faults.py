"""Fault injection: one spec, read by every engine and every rank alike (docs/faults.md).

Every fault is a function of the config and the seed, so the simulator and each
process of the distributed engine see the same faults at the same rounds:

* stragglers (``stragglers=F straggler_slowdown=S``): a seeded ``F`` of the agents
  compute ``S`` times slower (:class:`~nettrain.engines.sim.clock.CostModel`);
* message drops (``message_drop=p``): every message is lost with probability ``p``;
* crashes (``crash=A@R`` or ``crash=A@R:J``, comma-separated): agent ``A`` stops
  before round ``R`` and, with ``:J``, comes back before round ``J`` with the state
  it had when it stopped (``rejoin_model=own``) or, in the simulator's asynchronous
  gossip methods, with its first live neighbour's model (``rejoin_model=neighbour``,
  :meth:`Faults.rejoin_source`);
* a network split (``split=R:J``): from round ``R`` to round ``J`` (excluded) agents
  ``[0, n/2)`` and ``[n/2, n)`` cannot reach each other (servers are on the first side);
* availability windows (``trace=PATH``, :mod:`nettrain.heterogeneity`): in virtual
  seconds, not rounds; an agent outside all its windows is away, as if crashed, and
  comes back with its state when its next window opens.

What the methods do with them:

* asynchronous methods that tolerate faults (SwarmSGD, AD-PSGD, asynchronous EASGD,
  EAMSGD: :attr:`~nettrain.algorithms.base.Method.tolerates_faults`) skip a lost
  exchange. An exchange is a request and a reply, each lost with probability ``p``;
  the request is also lost when the partner is down or across the split. A lost
  request changes nobody; a lost reply leaves the initiator as it was while the
  partner (or the server) has taken the request in. A down agent makes no events.
  Neighbours do not renormalise anything: they keep drawing partners uniformly from
  the graph and lose the exchanges with a down one. An agent away (outside its
  availability windows) is down the same way: its local phase, if a window's closing
  interrupts it, starts again when its next window opens, so that its events all fall
  inside its windows; a request to it at a time it is away is lost.
* synchronous methods need every agent every round: a crash or a split stops the run
  with a :class:`FaultError` naming the agents, at the round it starts; so does a round
  (on the virtual clock) that is not inside a window of every agent. A dropped
  message is resent after ``resend_s`` virtual seconds (a reliable transport's
  retransmission timeout): the numbers are those of a run without drops, the rounds
  take longer on the virtual clock. The round waits for the agent that lost most
  (``resend_s`` per lost message): a lower bound for a ring all-reduce, whose
  dependent steps would each wait for a loss anywhere on the ring.
* a gossip initiator is non-blocking: it never waits for a reply, so a lost exchange
  costs it no time; a centre worker waits ``resend_s`` for a reply that does not come.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nettrain.errors import ConfigError, FaultError
from nettrain.heterogeneity import Availability, availability

CENTRE = -1  # the servers' side of an exchange (engines/draws.py)
_CRASH = re.compile(r"^(\d+)@(\d+)(?::(\d+))?$")
_SPLIT = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class Crash:
    agent: int
    at: int  # the first round it misses
    rejoin: int | None = None  # the first round it is back; None = never


@dataclass(frozen=True)
class Faults:
    """The faults of a run of ``n`` agents (stragglers live in the cost model)."""

    n: int
    seed: int = 0
    drop: float = 0.0
    crashes: tuple[Crash, ...] = ()
    split: tuple[int, int] | None = None
    resend_s: float = 0.01
    availability: Availability | None = None  # a trace's windows, virtual seconds
    rejoin_model: str = "own"  # "own" or "neighbour": the model a crashed agent comes back with

    @classmethod
    def from_config(cls, cfg: Any) -> Faults:
        return cls(
            cfg.agents,
            cfg.seed,
            cfg.message_drop,
            parse_crashes(cfg.crash, cfg.agents),
            parse_split(cfg.split),
            cfg.resend_s,
            availability(cfg.trace, cfg.agents),
            cfg.rejoin_model,
        )

    @property
    def any(self) -> bool:
        """Whether anything but stragglers is injected."""
        return bool(self.drop or self.crashes or self.split or self.availability)

    def down(self, agent: int, t: int) -> bool:
        """Whether ``agent`` is crashed in round ``t`` (0-based)."""
        return any(
            c.agent == agent and c.at <= t and (c.rejoin is None or t < c.rejoin)
            for c in self.crashes
        )

    def rejoining(self, t: int) -> list[int]:
        """The agents whose crash ends at round ``t`` (``crash=A@R:J`` with ``J = t``)."""
        return sorted(c.agent for c in self.crashes if c.rejoin == t)

    def rejoin_source(self, agent: int, t: int, neighbours: list[int]) -> int | None:
        """Whose model ``agent``, back from its crash at round ``t``, takes: its first
        neighbour in ``neighbours`` (sorted) that is not down in round ``t`` with
        ``rejoin_model=neighbour``; ``None`` (it keeps its own) with ``rejoin_model=own``
        or when every neighbour is down."""
        if self.rejoin_model != "neighbour":
            return None
        return next((b for b in sorted(neighbours) if not self.down(b, t)), None)

    def split_in(self, t: int) -> bool:
        return self.split is not None and self.split[0] <= t < self.split[1]

    def side(self, agent: int) -> int:
        """0 for agents ``[0, n/2)`` and the servers, 1 for the others."""
        return 0 if agent == CENTRE or agent < self.n // 2 else 1

    def away(self, agent: int, at: float) -> bool:
        """Whether ``agent`` is outside its availability windows at virtual time ``at``."""
        return self.availability is not None and not self.availability.available(agent, at)

    def phase_end(self, agent: int, start: float, duration: float) -> float:
        """When ``agent``'s local phase of ``duration`` virtual seconds from ``start`` ends
        (:meth:`Availability.phase_end`: restarted when a window closes on it; ``inf``
        when no window is left); ``start + duration`` without windows."""
        if self.availability is None:
            return start + duration
        return self.availability.phase_end(agent, start, duration)

    def unreachable(self, initiator: int, partner: int, t: int, at: float | None = None) -> bool:
        """Whether a request from ``initiator`` to ``partner`` fails in round ``t`` (at
        virtual time ``at``, where the availability windows count)."""
        if partner != CENTRE and self.down(partner, t):
            return True
        if at is not None and partner != CENTRE and self.away(partner, at):
            return True
        return self.split_in(t) and self.side(initiator) != self.side(partner)

    def changes(self) -> list[int]:
        """Rounds at which the set of down agents or the split changes."""
        out = {c.at for c in self.crashes} | {c.rejoin for c in self.crashes if c.rejoin}
        return sorted(out | set(self.split or ()))

    def check_synchronous(self, t: int, method: str) -> None:
        """Stop a synchronous method that would need a crashed or cut-off agent in round ``t``."""
        down = [c.agent for c in self.crashes if self.down(c.agent, t)]
        if down:
            raise FaultError(
                f"agent(s) {', '.join(map(str, sorted(set(down))))} crashed before round "
                f"{t + 1}: algorithm={method} is synchronous and needs every agent every "
                "round. Use an asynchronous method (swarm, adpsgd, easgd_async, eamsgd) to "
                "carry on without it, or drop crash="
            )
        if self.split_in(t):
            half = self.n // 2
            raise FaultError(
                f"the network is split in round {t + 1}: agents 0..{half - 1} and "
                f"{half}..{self.n - 1} cannot reach each other, and algorithm={method} is "
                "synchronous. Use an asynchronous method, or drop split="
            )

    @property
    def round_by_round(self) -> bool:
        """Whether a synchronous round's accounting depends on the round: messages
        dropped and resent (:meth:`resent`, drawn for round ``t``) or availability
        windows (:meth:`check_available`). Without them the rounds of a settle are
        replayed in one pass (:func:`~nettrain.engines.base.account_rounds`)."""
        return bool(self.drop) or self.availability is not None

    def check_available(self, t: int, start: float, end: float) -> None:
        """Stop a synchronous run whose round ``t`` (0-based; -1: the start) spans the
        virtual times ``[start, end]`` and is not inside a window of every agent."""
        if self.availability is None:
            return
        away = [a for a in range(self.n) if not self.availability.covers(a, start, end)]
        if away:
            when = "at the start" if t < 0 else f"in round {t + 1}"
            raise FaultError(
                f"agent(s) {', '.join(map(str, away))} away {when} (virtual time {start:.6g} "
                f"to {end:.6g} s is outside their availability windows in trace=): a "
                "synchronous method needs every agent every round. Use an asynchronous method "
                "(swarm, adpsgd, easgd_async, eamsgd) to carry on without them, or widen "
                "their windows in the trace"
            )

    def resent(self, messages: torch.Tensor, t: int) -> torch.Tensor:
        """``(n,)`` messages each agent resends in synchronous round ``t`` (each costs
        ``resend_s``): each of agent ``i``'s ``messages[i]`` messages is lost with
        probability ``drop`` (draws seeded by ``(seed, t)``; ``t = -1`` is the start)."""
        if not self.drop:
            return torch.zeros_like(messages, dtype=torch.int64)
        rng = np.random.default_rng([self.seed, t + 1, 0xD2])
        return torch.as_tensor(
            rng.binomial(messages.numpy(), self.drop), dtype=torch.int64, device=messages.device
        )


def parse_crashes(text: str, n: int) -> tuple[Crash, ...]:
    """``"3@100:200,5@150"`` -> crashes; a malformed or impossible item is a ConfigError."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _CRASH.match(item)
        if m is None:
            raise ConfigError(
                f"crash={item!r} is not AGENT@ROUND or AGENT@ROUND:REJOIN "
                "(e.g. crash=3@100 or crash=3@100:200)"
            )
        agent, at, rejoin = int(m[1]), int(m[2]), m[3] and int(m[3])
        if agent >= n:
            raise ConfigError(f"crash={item!r}: there are only agents 0..{n - 1}")
        if rejoin is not None and rejoin <= at:
            raise ConfigError(f"crash={item!r}: the agent must rejoin after it crashes")
        out.append(Crash(agent, at, rejoin))
    agents = [c.agent for c in out]
    if len(set(agents)) != len(agents):
        raise ConfigError(f"crash={text!r} names an agent twice; one crash per agent")
    if out and len(agents) >= n:
        raise ConfigError(f"crash={text!r} crashes every agent; leave at least one")
    return tuple(out)


def parse_split(text: str) -> tuple[int, int] | None:
    """``"100:200"`` -> ``(100, 200)``; empty -> None."""
    if not text.strip():
        return None
    m = _SPLIT.match(text.strip())
    if m is None or int(m[2]) <= int(m[1]):
        raise ConfigError(
            f"split={text!r} is not FROM:TO rounds with FROM < TO (e.g. split=100:200)"
        )
    return int(m[1]), int(m[2])
