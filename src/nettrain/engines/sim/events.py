"""Asynchronous methods in the simulator: events in virtual time (docs/async-simulation.md).

Every agent alternates a local phase and one interaction. Agent ``i``'s phase of
``h`` local steps (``h = H``, or geometric with mean ``H``) lasts
``h * samples_per_step_i * c * s_i`` virtual seconds (``s_i`` its straggler
slow-down), or with Poisson clocks an exponential time of that mean. When it ends,
``i`` interacts: with a neighbour drawn uniformly from the base graph (gossip), or
with the centre held by the parameter servers (the EASGD family). Each agent draws
its partners, step counts and durations from streams of its own, seeded by
``(seed, i)``, so the distributed engine replays the same draws.

* Gossip, non-blocking: the partner answers without stopping; the initiator starts
  its next phase once its message is sent (latency + bytes / bandwidth). Blocking:
  the initiator waits for the partner's phase to end, both exchange, both start anew.
* Centre: each server is a FIFO queue. Worker ``w``'s message to server ``s`` reaches
  it ``latency`` after the event, waits for the server's link to be free, occupies it
  for ``bytes_s / bandwidth``, and the reply comes back ``latency + bytes_s /
  bandwidth`` later; the worker's next phase starts when the last reply is in. The
  staleness of an exchange is the number of centre updates by other workers since this
  worker's previous exchange (recorded as mean, max and histogram).

A fast agent therefore interacts more often than a slow one, and nobody waits for a
straggler except its blocking partners.

Events are processed in time order, in batches: the longest prefix of the time-ordered
events in which no agent appears twice (as initiator or partner) and which ends
before any of its agents' next events could come. The events of a batch then touch
disjoint state (the centre's exchanges are applied one by one in time order), so
running them as one vectorised ``interact`` gives what running them one by one gives;
``max_batch = 1`` runs them one by one (the tests compare both). ``rounds`` scales the
number of events: a round is ``n`` gossip events (every agent interacts about once) or
``n / tau`` centre exchanges (every worker makes about one local step); records come
every ``eval_every`` rounds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import cast

import torch

from nettrain.algorithms.base import AsyncAlgorithm
from nettrain.checkpoint import Checkpoint, load_state, state_dict
from nettrain.engines.base import Job, RunResult, declared
from nettrain.engines.draws import CENTRE, Draws
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.servers import SimServers
from nettrain.errors import ConfigError
from nettrain.faults import Faults
from nettrain.patterns import Losses
from nettrain.recording import RunFolder
from nettrain.wrappers import losing


def run_events(
    job: Job, folder: RunFolder, max_batch: int = 0, resume: Checkpoint | None = None
) -> RunResult:
    """Run the asynchronous ``job.algorithm``; ``max_batch`` caps a batch (0 = no cap);
    with ``resume``, continue from that checkpoint."""
    if job.algorithm.schedule != "events":
        raise TypeError(f"{job.algorithm.name} is not an event-driven algorithm")
    start = time.perf_counter()
    events = SimEvents(job, max_batch, resume)
    drive(job, folder, events, resume, start)
    state, oracle = events.state, events.oracle
    centre = job.algorithm.centre(state, events.comm)
    return RunResult(state.x, folder.records, centre=centre, buffers=oracle.buffers or None)


class SimEvents:
    """Every agent's events in virtual time, in batches (module docstring), for
    :func:`drive`: round ``r`` ends after ``events_at(r)`` events."""

    main, measured = True, False

    def __init__(self, job: Job, max_batch: int, resume: Checkpoint | None) -> None:
        algo = cast(AsyncAlgorithm, job.algorithm)  # schedule "events" (run_events)
        n, faults = job.n_agents, job.fault_spec
        self.job, self.algo, self.faults, self.max_batch = job, algo, faults, max_batch
        self.label = f"{algo.name} x{n} (events)"
        x = job.x0.expand(n, -1).clone()  # (n, d)
        if algo.uses_centre:
            neighbours: list[list[int]] = [[] for _ in range(n)]
        else:
            neighbours = [sorted(job.topology.base_graph.neighbors(i)) for i in range(n)]
            if any(not nb for nb in neighbours):
                raise ConfigError(
                    "an agent without neighbours cannot interact; use a connected graph"
                )
        self.oracle = oracle = job.problem.oracle(
            job.shards, range(n), batch_size=job.batch_size, seed=job.seed
        )
        self.draws = [Draws(job.seed, i, neighbours[i], algo, faults.drop) for i in range(n)]
        self.generator = torch.Generator(device=x.device).manual_seed(job.seed)  # codes

        per_step = oracle.sizes if job.batch_size == 0 else torch.full((n,), job.batch_size)
        cost = job.cost
        self.step_s = (per_step.double() * cost.seconds_per_sample * cost.slowdown).tolist()
        self.poisson = job.phase == "poisson"
        # (steps, duration) of the running phase, and of the one after it, drawn in advance
        self.current = [self.draw_phase(a) for a in range(n)]
        self.upcoming = [self.draw_phase(a) for a in range(n)]
        self.ends = torch.tensor([c[1] for c in self.current], dtype=torch.float64)  # (n,)
        self.servers = None  # they read the event times in self.ends, updated in place
        if algo.uses_centre:
            self.servers = SimServers(job.x0, algo, n, job.cost, event_times=self.ends)
        self.comm = comm = SimCommunicator(job.topology, x.device, x.dtype, self.servers)
        self.partner = torch.tensor([d.partner() for d in self.draws])
        keys = ("samples", "messages", "bytes", "lost")
        self.totals = {k: torch.zeros(n, dtype=torch.int64) for k in keys}
        self.talk = declared(comm, algo, job.seed, stream=self.generator)  # the algorithm's
        self.state = algo.init(x, oracle, self.talk)
        oracle.meter.reset()
        comm.traffic.reset()

        self.per_round = algo.events_per_round(n)
        self.total = max(1, round(job.rounds * self.per_round))
        # fault changes, by the event count where they take effect
        self.changes = {
            self.events_at(r) if r else 0: r for r in faults.changes() if r < job.rounds
        }
        self.now, self.done, self.fault_round = 0.0, 0, -1
        self.losses: list[torch.Tensor] = []
        if resume is not None:
            extra = resume.events
            assert extra is not None
            self.state = load_state(self.state, resume.state)
            oracle.load_local_state(resume.rng)
            self.now, self.totals = resume.clock, dict(resume.totals)
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
        """The events done at the end of round ``r``."""
        return min(self.total, max(1, round(r * self.per_round)))

    def draw_phase(self, a: int) -> tuple[int, float]:
        h = self.draws[a].steps()
        return h, self.draws[a].duration(h * self.step_s[a], self.poisson)

    def apply_faults(self, r: int) -> None:
        """From round ``r`` on: a crashed agent stops; one back resumes its phase now."""
        for a in range(self.job.n_agents):
            if self.faults.down(a, r) and math.isfinite(self.ends[a]):
                self.ends[a] = math.inf
            elif not self.faults.down(a, r) and not math.isfinite(self.ends[a]):
                self.ends[a] = self.now + self.current[a][1]

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
        algo, cost, faults, draws = self.algo, self.job.cost, self.faults, self.draws
        current, upcoming, ends, servers = self.current, self.upcoming, self.ends, self.servers
        horizon = ends + cost.latency_s + torch.tensor([u[1] for u in upcoming])
        limit = min(mark - self.done, self.max_batch or mark)
        pairs = _batch(ends, self.partner, limit, horizon)
        i, j = pairs[:, 0], pairs[:, 1]
        steps = torch.tensor(
            [[current[a][0], current[b][0] if b != CENTRE else 0] for a, b in pairs.tolist()]
        )
        lost = _losses(pairs, draws, faults, self.fault_round)
        talk = losing(self.talk, lost)
        self.state, loss = algo.interact(self.state, pairs, self.oracle, talk, steps)
        self.losses.append(loss)
        samples = self.oracle.meter.reset()
        messages, nbytes = self.comm.traffic.reset()
        totals = self.totals
        totals["samples"] += samples
        totals["messages"] += messages
        totals["bytes"] += nbytes
        totals["lost"][i] += lost.reply.to(torch.int64)
        sent = cost.latency_s * messages.double() + nbytes.double() / cost.bandwidth_bytes_per_s
        if servers is not None:  # the last reply is in, or the worker gave up on it
            resume_at = servers.resume[i].clone()
            resume_at[lost.reply] = ends[i][lost.reply] + faults.resend_s
            self.now = max(self.now, float(ends[i].max()))
            restart = i
        elif algo.blocking:  # both wait for the later phase, then both start anew
            met = torch.maximum(ends[i], ends[j])
            self.now = max(self.now, float(met.max()))
            resume_at = torch.cat([met + sent[i], met + sent[j]])
            restart = torch.cat([i, j])
        else:
            self.now = max(self.now, float(ends[i].max()))
            resume_at = ends[i] + sent[i]
            restart = i
        for a, at in zip(restart.tolist(), resume_at.tolist(), strict=True):
            current[a], upcoming[a] = upcoming[a], self.draw_phase(a)
            ends[a] = at + current[a][1]
            self.partner[a] = draws[a].partner()
        self.done += len(pairs)

    def counters(self) -> Counters:
        totals = {k: v for k, v in self.totals.items() if k != "lost"}
        loss = float(torch.cat(self.losses).mean())
        self.losses.clear()
        return Counters(totals, self.now, loss, math.ceil(self.done / self.per_round - 1e-9))

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
        return Checkpoint(
            round=stop,
            state=state_dict(self.state),
            rng=self.oracle.local_state(),
            clock=self.now,
            totals=self.totals,
            records=0,
            wall_time_s=0.0,
            servers=self.servers.state_dict() if self.servers is not None else None,
            events={
                "done": self.done,
                "fault_round": self.fault_round,
                "current": self.current,
                "upcoming": self.upcoming,
                "ends": self.ends.clone(),
                "partner": self.partner,
                "draws": [d.state_dict() for d in self.draws],
                "generator": self.generator.get_state(),
                "losses": torch.cat(self.losses) if self.losses else torch.zeros(0),
            },
        )


def _losses(pairs: torch.Tensor, draws: list[Draws], faults: Faults, t: int) -> Losses:
    """What the batch's exchanges lose: each initiator's drawn drops, and every request to a
    down partner or across the split (the faults as they stand since round ``t``)."""
    request, reply = [], []
    for a, b in pairs.tolist():
        req, rep = draws[a].losses(faults.unreachable(a, b, t))
        request.append(req)
        reply.append(rep)
    return Losses(torch.tensor(request, dtype=torch.bool), torch.tensor(reply, dtype=torch.bool))


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
    return torch.tensor(pairs, dtype=torch.int64)
