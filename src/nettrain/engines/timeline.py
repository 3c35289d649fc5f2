"""What an engine notes for the per-agent timeline (``timeline=true``; the format is
:mod:`nettrain.report.timeline`'s).

An engine holds a :class:`Timeline` only when the run asks for one, so a run without
it pays nothing. The engines note their intervals in three ways:

* the simulator's synchronous rounds, from the virtual clock (:meth:`Timeline.sync_round`):
  round ``r`` runs from ``T_{r-1}`` to ``T_r = T_{r-1} + max_i busy_i``; agent ``i``
  computes ``s_i c samples_i``, then sends ``latency messages_i + bytes_i / bandwidth``
  (plus resends), then waits up to ``T_r``;
* the simulator's events, from the event times (:meth:`Timeline.tile`: an agent's local
  phase, its message, its wait for a blocking partner or a server's queue);
* real processes, from ``time.perf_counter()`` (:meth:`Timeline.measured_round`): a
  round's span, with the communicator's own intervals in it and computing in between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from nettrain.checkpoint import Checkpoint

Interval = tuple[str, float, float]  # (kind, start, end)
Gather = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]  # every process's intervals


class Timeline:
    """The intervals of rounds ``since .. rounds`` (a resumed run starts after its
    checkpoint's round); ``gather`` puts every process's intervals together (every
    process calls :meth:`take`; the identity in one process)."""

    def __init__(
        self,
        rounds: int,
        since: int = 0,
        gather: Gather | None = None,
    ) -> None:
        self.rounds, self.since = rounds, since
        self.gather = gather or (lambda events: events)
        self.events: list[dict[str, Any]] = []
        self.origin = 0.0  # subtracted from measured times
        self.taken = False

    @classmethod
    def of(
        cls,
        rounds: int,
        resume: Checkpoint | None,
        gather: Gather | None = None,
    ) -> Timeline | None:
        """A run's timeline of its first ``rounds`` rounds (0: None, no timeline); a run
        resumed from ``resume`` notes the rounds after its checkpoint's."""
        if not rounds:
            return None
        return cls(rounds, resume.round + 1 if resume is not None else 0, gather)

    def wants(self, r: int) -> bool:
        """Whether round ``r``'s intervals are to be noted."""
        return not self.taken and self.since <= r <= self.rounds

    def add(self, agent: int, kind: str, start: float, end: float, r: int) -> None:
        """Note one interval; an empty one (``end <= start``) is left out."""
        if end > start:
            self.events.append(
                {"agent": agent, "kind": kind, "start": start, "end": end, "round": r}
            )

    def tile(self, agent: int, r: int, start: float, parts: Iterable[tuple[str, float]]) -> None:
        """Consecutive intervals of ``agent`` from ``start``: each ``(kind, end)`` of
        ``parts`` runs from where the one before ended (never back in time)."""
        merged: list[list[Any]] = []  # [kind, start, end]: one interval of adjacent same kinds
        for kind, end in parts:
            end = max(end, start)
            if merged and merged[-1][0] == kind:
                merged[-1][2] = end
            elif end > start:
                merged.append([kind, start, end])
            start = end
        for kind, begin, finish in merged:
            self.add(agent, kind, begin, finish, r)

    def sync_round(
        self, r: int, start: float, end: float, compute: torch.Tensor, send: torch.Tensor
    ) -> None:
        """A synchronous round from ``start`` to ``end`` on the virtual clock: agent ``i``
        computes for ``compute[i]`` seconds, sends for ``send[i]``, then waits until
        ``end`` (``end - start = max_i (compute_i + send_i)``; intervals clipped to it)."""
        if not self.wants(r):
            return
        for i, (c, s) in enumerate(zip(compute.tolist(), send.tolist(), strict=True)):
            busy = min(start + c, end)
            self.tile(i, r, start, [("compute", busy), ("send", min(busy + s, end)), ("wait", end)])

    def measured_round(
        self, r: int, agents: Sequence[int], start: float, end: float, talks: list[Interval]
    ) -> None:
        """A round measured from ``start`` to ``end`` (``time.perf_counter()`` seconds)
        in which the communicator noted ``talks``; the rest of it is computing. Every
        agent in ``agents`` (one process's) gets the same intervals."""
        if not self.wants(r):
            return
        parts: list[tuple[str, float]] = []
        at = start
        for kind, begin, finish in sorted(talks, key=lambda talk: talk[1]):
            begin, finish = min(max(begin, at), end), min(finish, end)
            if finish > begin:
                parts += [("compute", begin), (kind, finish)]
                at = finish
        parts.append(("compute", end))
        for agent in agents:
            self.tile(agent, r, start - self.origin, [(k, e - self.origin) for k, e in parts])

    def take(self) -> list[dict[str, Any]]:
        """Every process's intervals, once (then no more are noted)."""
        events, self.events, self.taken = self.gather(self.events), [], True
        return events
