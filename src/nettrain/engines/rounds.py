"""Synchronous rounds, for :func:`~nettrain.engines.driver.drive`: one loop for the
simulator and the distributed engine (docs/architecture.md, "One synchronous round").

:class:`Rounds` steps the agents this process holds, ``x: (m, d)``, through the
algorithm's own ``step``, and notes each round's work and loss per agent. Notes are
settled together, every ``settle_every`` rounds and at each evaluation or checkpoint:
every agent's notes are gathered, the virtual clock and the work totals replayed in
round order (:func:`~nettrain.engines.base.account_round`; in one pass where nothing
is noted round by round, :func:`~nettrain.engines.base.account_rounds`), and each
round's losses ``(n,)`` handed to the divergence check. An engine says only how rows,
objects and the parameter servers' state are gathered: in the simulator
(:class:`~nettrain.engines.sim.engine.SimRounds`) every agent is here, gathering is the
identity and the rounds settle 32 at a time (fewer for large networks); in the
distributed engine (:class:`~nettrain.engines.distributed.rounds.DistRounds`) one
all-gather settles ``SETTLE_EVERY`` rounds. That all-gather runs while the next rounds
compute (``behind``): started after round ``t``, it is read when the next notes are
due, at round ``t + SETTLE_EVERY`` (or at the next evaluation or checkpoint, which
settles everything); waited for at once, it cost 5 ms each time with 4 processes on 2
cores, 0.2 ms a round.

With a timeline (``timeline=true``, :mod:`nettrain.engines.timeline`), the simulator
notes each round's intervals on the virtual clock as the round is settled, and real
processes note the round's measured span with the communicator's ``talks`` in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import (
    Job,
    RunResult,
    Stack,
    account_round,
    account_rounds,
    take_work,
    work_totals,
)
from nettrain.engines.driver import Counters, Snapshot, Tick
from nettrain.engines.states import gather_buffers, gather_state, own_rows
from nettrain.engines.timeline import Interval, Timeline
from nettrain.patterns import Communicator


class Rounds(Stack):
    """The synchronous rounds of the agents ``agents`` (global ids, this process's rows
    in order), on ``comm``; with ``resume``, from that checkpoint (which holds every
    agent's rows: this process takes its own)."""

    settle_every = 1  # rounds whose notes are gathered together
    behind = False  # gather them while the next rounds run, ticks one settle behind
    slowdown = 1.0  # a slow agent's real slow-down: its round's computing again, in sleep

    def __init__(
        self,
        job: Job,
        agents: list[int],
        comm: Communicator,
        resume: Checkpoint | None,
        label: str = "",
    ) -> None:
        n, device = job.n_agents, job.x0.device
        x = job.x0.expand(len(agents), -1).clone()  # (m, d)
        shards = [job.shards[i] for i in agents]
        oracle = job.problem.oracle(shards, agents, batch_size=job.batch_size, seed=job.seed)
        super().__init__(job, x, oracle, comm, work_totals(n, job.fault_spec))
        self.agents, self.label = agents, f"{job.algorithm.name} x{n}{label}"
        # notes of rounds not yet settled: work (4, m) int64 and loss (m,) of each round
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        # notes whose gather is under way: (their last round, a wait for every agent's)
        self.inflight: tuple[int, Callable[[], torch.Tensor]] | None = None
        self.everyone: tuple[int, Any] | None = None  # (round, every agent's state)
        self.timeline = Timeline.of(job.timeline_rounds, resume, self.gather_events)
        self._note(torch.zeros(len(agents)))  # the initial gradients of tracking methods
        for _ in self._settle(-1):
            pass
        self.round, self.losses = 0, torch.zeros(n)
        if resume is not None:
            self.restore(resume, resume.state, [resume.rng[i] for i in agents])
            self.state = own_rows(self.state, agents, n, device)
            self.round = resume.round
            if resume.comm is not None:  # these agents' rows of what the communicator carries
                rows = {
                    k: None if v is None else v[agents].to(device) for k, v in resume.comm.items()
                }
                self.talk.load_state_dict(rows)
            if resume.servers is not None:
                self.restore_servers(resume.servers)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's rows ``(m, ...)`` -> every agent's ``(n, ...)``, in agent order."""
        return rows

    def start_gather(self, rows: torch.Tensor) -> Callable[[], torch.Tensor]:
        """:meth:`gather` started: a function that waits for it and returns its result."""
        every = self.gather(rows)
        return lambda: every

    def gather_objects(self, objects: list[Any]) -> list[Any]:
        """One picklable object per local agent -> one per agent, in agent order."""
        return objects

    def gather_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every process's timeline intervals, put together (every process calls it)."""
        return events

    def talks(self, more: bool) -> list[Interval]:
        """The communicator's intervals since the last call (real processes only; none
        here); ``more``: whether it goes on noting them."""
        return []

    def servers_state(self) -> dict[str, Any] | None:
        """The parameter servers' state for a checkpoint (None: no servers)."""
        return None

    def restore_servers(self, saved: dict[str, Any]) -> None:
        """Give the parameter servers their saved state back."""

    def _note(self, loss: torch.Tensor) -> None:
        """Note this round's work (samples, messages, bytes, messages within collectives)
        and loss of every local agent."""
        self.pending.append((torch.stack(take_work(self.oracle, self.comm)), loss.detach()))

    def _settle(self, t: int) -> Iterator[Tick]:
        """Every pending round's notes (up to round ``t``), and those in flight before
        them, gathered now: their ticks, in round order (:meth:`_replay`)."""
        yield from self._land()
        yield from self._replay(t, self._start(t)())

    def _launch(self, t: int) -> Iterator[Tick]:
        """The notes in flight, landed (their ticks); then the gather of the pending ones
        (up to round ``t``) started, to land at the next settle: the collective runs while
        the next rounds compute."""
        yield from self._land()
        self.inflight = (t, self._start(t))

    def _land(self) -> Iterator[Tick]:
        """The ticks of the notes in flight, if any (waiting for their gather)."""
        if self.inflight is not None:
            (t, done), self.inflight = self.inflight, None
            yield from self._replay(t, done())

    def _start(self, t: int) -> Callable[[], torch.Tensor]:
        """Start gathering every pending round's notes (up to round ``t``): a wait for
        every agent's ``(n, k, 5)``, agents by rounds by (samples, messages, bytes,
        collective messages, loss)."""
        k = len(self.pending)
        works, losses = zip(*self.pending, strict=True)
        work = torch.stack(works, 2).to(torch.float64)  # (4, m, k)
        loss = torch.stack(losses, 1).to("cpu", torch.float64)[None]  # (1, m, k)
        mine = torch.cat([work, loss]).permute(1, 2, 0).reshape(len(self.agents), -1)  # (m, k * 5)
        self.pending.clear()
        wait = self.start_gather(mine.to(self.job.x0.device))
        return lambda: wait().cpu().view(self.job.n_agents, k, 5)

    def _replay(self, t: int, every: torch.Tensor) -> Iterator[Tick]:
        """Replay the clock and the totals over the gathered notes ``every: (n, k, 5)`` of
        rounds ``t - k + 1 .. t`` in round order, and hand every round's losses ``(n,)``
        to the finiteness check where one of them is not finite (else none: all pass)."""
        k = every.shape[1]
        work = every[:, :, :4].round().to(torch.int64).permute(2, 1, 0)  # (4, k, n)
        virtual = None if self.measured else self.timeline  # real processes: measured
        faults = self.faults
        at_once = virtual is None and not faults.round_by_round
        if at_once:  # nothing to note or check round by round
            account_rounds(self.clock, self.totals, work)
        finite = bool(torch.isfinite(every[:, :, 4]).all())  # else each round's is checked
        for j in range(k):
            if not at_once:
                account_round(self.clock, self.totals, faults, t - k + 1 + j, *work[:, j], virtual)
            yield Tick(t - k + 2 + j, None if finite else every[:, j, 4])
        self.losses = every[:, -1, 4].to(self.job.x0.dtype)

    def advance(self, stop: int) -> Iterator[Tick]:
        """Rounds up to ``stop``; the notes are settled at ``stop`` (an evaluation or a
        checkpoint) and every ``settle_every`` rounds."""
        algo = self.job.algorithm
        for t in range(self.round, stop):
            self.faults.check_synchronous(t, algo.name)  # every process alike
            begin, _ = time.perf_counter(), self.oracle.meter.take_seconds()
            self.state, loss = algo.step(self.state, t, self.oracle, self.talk.at(t))
            if self.slowdown > 1:  # a straggler for real: its round's computing, again
                time.sleep((self.slowdown - 1) * self.oracle.meter.take_seconds())
            self._note(loss)
            self.round = t + 1
            if self.measured and self.timeline is not None and self.timeline.wants(t + 1):
                talks = self.talks(self.timeline.wants(t + 2))
                self.timeline.measured_round(t + 1, self.agents, begin, time.perf_counter(), talks)
            if t + 1 == stop or (len(self.pending) == self.settle_every and not self.behind):
                yield from self._settle(t)
            elif len(self.pending) == self.settle_every:
                yield from self._launch(t)

    def counters(self) -> Counters:
        return Counters(self.totals, self.clock.now, float(self.losses.mean()), self.round)

    def _everyone(self) -> Any:
        """Every agent's state at this round, ``(n, ...)``, gathered once."""
        if self.everyone is None or self.everyone[0] != self.round:
            self.everyone = (self.round, gather_state(self.state, self.gather, len(self.agents)))
        return self.everyone[1]

    def _buffers(self) -> Any:
        return gather_buffers(self.job.problem.buffer_spec, self.oracle.buffers, self.gather)

    def late(self) -> list[tuple[Counters, Snapshot]]:
        return []  # every record is written at its round

    def snapshot(self) -> Snapshot | None:
        everyone, buffers = self._everyone(), self._buffers()
        if not self.main:
            return None
        centre = self.job.algorithm.centre(self.state, self.comm)
        return Snapshot(everyone.x, buffers, everyone, centre)

    def checkpoint(self, stop: int) -> Checkpoint | None:
        """The checkpoint after round ``stop`` (settled), written by the main process:
        every agent's state, oracle state (mini-batches drawn) and communicator rows, the
        servers'."""
        everyone = self._everyone()
        servers = self.servers_state() if self.main else None
        rngs = self.gather_objects(self.oracle.local_state())
        carried = self.talk.state_dict()  # every process has the same wrappers
        if carried is not None:
            carried = {k: None if v is None else self.gather(v) for k, v in carried.items()}
        return (
            self.saved(stop, everyone, rngs, servers=servers, comm=carried) if self.main else None
        )

    def result(self, records: list[dict[str, Any]]) -> RunResult:
        """Every agent's parameters and buffers (and the centre, in the main process)."""
        x, buffers = self.gather(self.state.x), self._buffers()
        centre = self.job.algorithm.centre(self.state, self.comm) if self.main else None
        return RunResult(x, records, centre=centre, buffers=buffers)
