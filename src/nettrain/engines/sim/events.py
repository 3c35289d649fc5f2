"""Asynchronous methods in the simulator: events in virtual time.

The model (every agent's local phases and interactions, the servers' queues, batches
of events on disjoint agents, what a round is) is docs/async-simulation.md's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import cast

import torch

from nettrain.algorithms.base import AsyncAlgorithm, GossipAlgorithm
from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult, Stack, take_work
from nettrain.engines.draws import CENTRE, Draws
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.servers import SimServers
from nettrain.engines.timeline import Timeline
from nettrain.errors import ConfigError, FaultError
from nettrain.faults import Faults
from nettrain.patterns import Losses
from nettrain.recording import RunFolder
from nettrain.wrappers import losing


def run_events(
    job: Job, folder: RunFolder, max_batch: int = 0, resume: Checkpoint | None = None
) -> RunResult:
    """Run the asynchronous ``job.algorithm``; ``max_batch`` caps a batch (0 = no cap; 1
    runs the events one by one, which the tests compare with batches); with ``resume``,
    continue from that checkpoint."""
    if job.algorithm.schedule != "events":
        raise TypeError(f"{job.algorithm.name} is not an event-driven algorithm")
    start = time.perf_counter()
    events = SimEvents(job, max_batch, resume)
    drive(job, folder, events, resume, start, events.timeline)
    return events.result(folder.records)


class SimEvents(Stack):
    """Every agent's events in virtual time, in batches (docs/async-simulation.md), for
    :func:`drive`: round ``r`` ends after ``events_at(r)`` events."""

    def __init__(self, job: Job, max_batch: int, resume: Checkpoint | None) -> None:
        algo = cast(AsyncAlgorithm, job.algorithm)  # schedule "events" (run_events)
        n, self.algo, self.max_batch = job.n_agents, algo, max_batch
        self.label = f"{algo.name} x{n} (events)"
        x = job.x0.expand(n, -1).clone()  # (n, d)
        neighbours: list[list[int]] = [[] for _ in range(n)]
        if not algo.uses_centre:
            neighbours = [sorted(job.topology.base_graph.neighbors(i)) for i in range(n)]
            if any(not nb for nb in neighbours):
                raise ConfigError(
                    "an agent without neighbours cannot interact; use a connected graph"
                )
        oracle = job.problem.oracle(job.shards, range(n), batch_size=job.batch_size, seed=job.seed)
        self.neighbours = neighbours  # sorted; a gossip agent's rejoin_model=neighbour source
        drop = job.fault_spec.drop
        self.draws = [Draws(job.seed, i, neighbours[i], algo, drop) for i in range(n)]
        self.generator = torch.Generator(device=x.device).manual_seed(job.seed)  # codes

        per_step = oracle.sizes if job.batch_size == 0 else torch.full((n,), job.batch_size)
        # exchanges go over rpc in the distributed engine: its latency (a profile's)
        self.cost = cost = job.cost.over_rpc()
        self.step_s = cost.compute_seconds(per_step).tolist()  # o included: every step computes
        self.poisson = job.phase == "poisson"
        # (steps, duration) of the running phase, and of the one after it, drawn in advance
        self.current = [self.draw_phase(a) for a in range(n)]
        self.upcoming = [self.draw_phase(a) for a in range(n)]
        faults = job.fault_spec  # a phase that starts away starts when its window opens
        ends = [faults.phase_end(a, 0.0, c[1]) for a, c in enumerate(self.current)]
        self.ends = torch.tensor(ends, dtype=torch.float64)  # (n,)
        self.servers = None  # they read the event times in self.ends, updated in place
        if algo.uses_centre:
            self.servers = SimServers(job.x0, algo, n, cost, event_times=self.ends)
        comm = SimCommunicator(job.topology, x.device, x.dtype, self.servers)
        self.partner = torch.tensor([d.partner() for d in self.draws])
        keys = ("samples", "messages", "bytes", "lost")
        totals = {k: torch.zeros(n, dtype=torch.int64) for k in keys}
        super().__init__(job, x, oracle, comm, totals, stream=self.generator)
        take_work(oracle, comm)  # the initial work is not counted
        self.timeline = Timeline.of(job.timeline_rounds, resume)
        self.began: dict[int, float] = {}  # with a timeline: when each agent's phase began
        if self.timeline is not None and self.servers is not None:
            self.servers.served = []

        self.per_round = algo.events_per_round(n)
        self.total = max(1, round(job.rounds * self.per_round))
        # fault changes, by the event count where they take effect
        self.changes = {
            self.events_at(r) if r else 0: r for r in self.faults.changes() if r < job.rounds
        }
        self.done, self.fault_round = 0, -1
        self.losses: list[torch.Tensor] = []
        if resume is not None:
            extra = resume.events
            assert extra is not None
            self.restore(resume, resume.state, resume.rng)
            self.done, self.fault_round = extra["done"], extra["fault_round"]
            self.current, self.upcoming = extra["current"], extra["upcoming"]
            self.ends.copy_(extra["ends"])  # in place: the servers read it
            self.partner = extra["partner"].clone()
            for d, saved in zip(self.draws, extra["draws"], strict=True):
                d.load_state_dict(saved)
            self.generator.set_state(extra["generator"])
            self.losses = [extra["losses"]] if len(extra["losses"]) else []
            if self.servers is not None:
                self.servers.load_state_dict(resume.servers)
        elif 0 in self.changes:
            self.fault_round = 0
            self.apply_faults(0)

    def events_at(self, r: int) -> int:
        """The events done at the end of round ``r`` (at least one after round 0)."""
        return min(self.total, max(1, round(r * self.per_round))) if r else 0

    def draw_phase(self, a: int) -> tuple[int, float]:
        h = self.draws[a].steps()
        return h, self.draws[a].duration(h * self.step_s[a], self.poisson)

    def apply_faults(self, r: int) -> None:
        """From round ``r`` on: a crashed agent stops; one back resumes its phase now, with
        the state it had or, a gossip agent with ``rejoin_model=neighbour``, with the model
        of its first neighbour (sorted) not down in round ``r``, taken now
        (:meth:`~nettrain.algorithms.base.GossipAlgorithm.rejoin`; with every neighbour
        down it keeps its own)."""
        if self.algo.partner == "neighbour":
            gossip = cast(GossipAlgorithm, self.algo)
            for a in self.faults.rejoining(r):
                source = self.faults.rejoin_source(a, r, self.neighbours[a])
                if source is not None:
                    self.state = gossip.rejoin(self.state, a, self.state.x[source])
        for a in range(self.job.n_agents):
            if self.faults.down(a, r) and math.isfinite(self.ends[a]):
                self.ends[a] = math.inf
            elif not self.faults.down(a, r) and not math.isfinite(self.ends[a]):
                self.ends[a] = self.faults.phase_end(a, self.clock.now, self.current[a][1])

    def advance(self, stop: int) -> Iterator[Tick]:
        """The events up to round ``stop``, batches cut where the faults change."""
        end = self.events_at(stop)
        for mark in [*sorted(m for m in self.changes if self.done < m < end), end]:
            while self.done < mark:
                self._batch(mark)
                reached = int(self.done // self.per_round)
                yield Tick(reached, self.losses[-1], at=reached)
            if mark in self.changes:
                self.fault_round = self.changes[mark]
                self.apply_faults(self.fault_round)

    def _batch(self, mark: int) -> None:
        """One batch of events on distinct agents, none past event ``mark``."""
        algo, cost, faults, draws = self.algo, self.cost, self.faults, self.draws
        current, upcoming, ends, servers = self.current, self.upcoming, self.ends, self.servers
        horizon = ends + cost.latency_s + torch.tensor([u[1] for u in upcoming], device=ends.device)
        limit = min(mark - self.done, self.max_batch or mark)
        pairs = _batch(ends, self.partner, limit, horizon)
        if not len(pairs):  # every agent down for good: crashed, or no window left
            raise FaultError(
                f"no agent can make an event after virtual time {self.clock.now:.6g} s (every "
                "one crashed or past its last availability window) with "
                f"{self.total - self.done} events to go; give the trace later windows, or "
                "fewer rounds"
            )
        i, j = pairs[:, 0], pairs[:, 1]
        steps = torch.tensor(
            [[current[a][0], current[b][0] if b != CENTRE else 0] for a, b in pairs.tolist()],
            device=pairs.device,
        )
        lost = _losses(pairs, draws, faults, self.fault_round, ends)
        talk = losing(self.talk, lost)
        self.state, loss = algo.interact(self.state, pairs, self.oracle, talk, steps)
        self.losses.append(loss)
        samples, messages, nbytes, _ = take_work(self.oracle, self.comm)  # no collectives
        for key, value in (("samples", samples), ("messages", messages), ("bytes", nbytes)):
            self.totals[key] += value
        self.totals["lost"][i] += lost.reply.to(torch.int64)
        sent = cost.send_seconds(messages, nbytes)
        if servers is not None:  # the last reply is in, or the worker gave up on it
            resume_at = servers.resume[i].clone()
            resume_at[lost.reply] = ends[i][lost.reply] + faults.resend_s
            restart = i
        elif algo.blocking:  # both wait for the later phase, then both start anew
            met = torch.maximum(ends[i], ends[j])
            resume_at = torch.cat([met + sent[i], met + sent[j]])
            restart = torch.cat([i, j])
        else:  # the initiator goes on from the average: once the partner's reply is in
            resume_at = ends[i] + sent[i] + sent[j]
            restart = i
        if self.timeline is not None and self.timeline.wants(self._round(self.done)):
            self._trace(pairs, lost, restart.tolist(), resume_at.tolist())
        self.clock.now = max(self.clock.now, float(ends[restart].max()))
        for a, at in zip(restart.tolist(), resume_at.tolist(), strict=True):
            current[a], upcoming[a] = upcoming[a], self.draw_phase(a)
            ends[a] = faults.phase_end(a, at, current[a][1])
            self.partner[a] = draws[a].partner()
        self.done += len(pairs)

    def _trace(
        self, pairs: torch.Tensor, lost: Losses, restart: list[int], resume_at: list[float]
    ) -> None:
        """Note a batch in the timeline (docs/async-simulation.md's timing): each restarted
        agent computed its local phase up to its event time, then sent (non-blocking
        gossip); waited for its partner's phase to end, then sent (blocking); or sent,
        waited in the servers' queue, and had its reply back (centre: the server whose
        reply came last; a lost reply, waited until the worker gave up). Servers serve."""
        timeline, ends, n = self.timeline, self.ends.tolist(), self.job.n_agents
        assert timeline is not None
        latency, again = self.cost.latency_s, dict(zip(restart, resume_at, strict=True))
        served: dict[int, list[tuple[int, float, float, float]]] = {}
        for s, w, begin, end, reply in self.servers.served if self.servers is not None else []:
            served.setdefault(w, []).append((s, begin, end, reply))
        for k, (a, b) in enumerate(pairs.tolist()):
            r = self._round(self.done + k)
            if not timeline.wants(r):
                continue
            for c in (a, b) if b in again else (a,):
                phase = max(self.began.get(c, -math.inf), ends[c] - self.current[c][1])
                if b == CENTRE and not bool(lost.reply[k]):
                    begin = max(served[c], key=lambda msg: msg[3])[1]  # the last reply
                    talk = [("send", ends[c] + latency), ("wait", begin), ("send", again[c])]
                elif b == CENTRE:
                    talk = [("send", ends[c] + latency), ("wait", again[c])]
                else:  # the later phase end of a blocking pair: sending starts there
                    met = max(ends[a], ends[b]) if b in again else ends[c]
                    talk = [("wait", met), ("send", again[c])]
                timeline.tile(c, r, phase, [("compute", ends[c]), *talk])
            for s, begin, end, _ in served.get(a, []):
                timeline.add(n + s, "serve", begin, end, r)
        self.began |= again
        if self.servers is not None:  # what the next batch serves, while it is wanted
            more = timeline.wants(self._round(self.done + len(pairs)))
            self.servers.served = [] if more else None

    def _round(self, k: int) -> int:
        """The round of event ``k`` (from 0), counted from 1."""
        return int(k // self.per_round) + 1

    def counters(self) -> Counters:
        totals = {k: v for k, v in self.totals.items() if k != "lost"}
        loss = float(torch.cat(self.losses).mean()) if self.losses else math.nan
        self.losses.clear()
        return Counters(totals, self.clock.now, loss, math.ceil(self.done / self.per_round - 1e-9))

    def late(self) -> list[tuple[Counters, Snapshot]]:
        return []  # every record is written at its round

    def snapshot(self) -> Snapshot:
        fields: dict[str, object] = {"events": self.done}
        if self.faults.any:
            fields["exchanges_lost"] = int(self.totals["lost"].sum())
        centre = None
        if self.servers is not None:
            fields |= self.servers.take_staleness()
            centre = self.servers.centre()
        return Snapshot(self.state.x, self.oracle.buffers, self.state, centre, fields)

    def checkpoint(self, stop: int) -> Checkpoint:
        servers = self.servers.state_dict() if self.servers is not None else None
        events = {
            "done": self.done,
            "fault_round": self.fault_round,
            "current": self.current,
            "upcoming": self.upcoming,
            "ends": self.ends.clone(),
            "partner": self.partner,
            "draws": [d.state_dict() for d in self.draws],
            "generator": self.generator.get_state(),
            "losses": torch.cat(self.losses) if self.losses else torch.zeros(0),
        }
        return self.saved(
            stop, self.state, self.oracle.local_state(), servers=servers, events=events
        )


def _losses(
    pairs: torch.Tensor, draws: list[Draws], faults: Faults, t: int, ends: torch.Tensor
) -> Losses:
    """What the batch's exchanges lose: each initiator's drawn drops, and every request to a
    down partner or across the split (the faults as they stand since round ``t``), or to a
    partner away at the event's time ``ends[initiator]``."""
    request, reply = [], []
    for a, b in pairs.tolist():
        req, rep = draws[a].losses(faults.unreachable(a, b, t, float(ends[a])))
        request.append(req)
        reply.append(rep)
    on = {"dtype": torch.bool, "device": pairs.device}
    return Losses(torch.tensor(request, **on), torch.tensor(reply, **on))


def _batch(
    ends: torch.Tensor,
    partner: torch.Tensor,
    limit: int,
    horizon: torch.Tensor | None = None,
) -> torch.Tensor:
    """The longest time-ordered prefix of events on distinct agents, at most ``limit``.

    ``horizon[a]``: the earliest time agent ``a``'s next event could come after this
    one; the prefix stops before an event that is not earlier than the horizon of an
    event already in it (that agent could act again first). Returns ``(k, 2)`` pairs
    (initiator, partner; ``CENTRE`` for the servers); ties go to the lower agent id.
    """
    order = torch.argsort(ends, stable=True).tolist()
    busy: set[int] = set()
    pairs: list[tuple[int, int]] = []
    before = math.inf
    for a in order:
        b = int(partner[a])
        late = float(ends[a]) >= before or not math.isfinite(float(ends[a]))  # or down
        if a in busy or b in busy or len(pairs) == limit or late:
            break
        busy.update((a, b) if b != CENTRE else (a,))
        pairs.append((a, b))
        if horizon is not None:
            before = min(before, float(horizon[a]))
            if b != CENTRE:
                before = min(before, float(horizon[b]))
    return torch.tensor(pairs, dtype=torch.int64, device=ends.device)
