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
from typing import Any

import torch

from nettrain.algorithms.base import AsyncAlgorithm
from nettrain.checkpoint import Checkpoint, load_state, state_dict
from nettrain.engines.base import (
    Job,
    RunResult,
    centre_fields,
    check_finite,
    status_line,
    traffic_fields,
)
from nettrain.engines.draws import CENTRE, Draws
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.servers import SimServers
from nettrain.errors import ConfigError
from nettrain.faults import Faults
from nettrain.patterns import Losses
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder


def run_events(
    job: Job, folder: RunFolder, max_batch: int = 0, resume: Checkpoint | None = None
) -> RunResult:
    """Run the asynchronous ``job.algorithm``; ``max_batch`` caps a batch (0 = no cap);
    with ``resume``, continue from that checkpoint."""
    algo = job.algorithm
    if not isinstance(algo, AsyncAlgorithm):
        raise TypeError(f"{type(algo).__name__} is not an asynchronous algorithm")
    n, problem, cost, faults = job.n_agents, job.problem, job.cost, job.fault_spec
    x = job.x0.expand(n, -1).clone()  # (n, d)
    comm = SimCommunicator(job.topology, x.device, x.dtype)
    servers = None
    if algo.uses_centre:
        servers = comm.servers = SimServers(job.x0, algo, n, cost)
        neighbours: list[list[int]] = [[] for _ in range(n)]
    else:
        neighbours = [sorted(job.topology.base_graph.neighbors(i)) for i in range(n)]
        if any(not nb for nb in neighbours):
            raise ConfigError("an agent without neighbours cannot interact; use a connected graph")
    oracle = problem.oracle(job.shards, range(n), batch_size=job.batch_size, seed=job.seed)
    draws = [Draws(job.seed, i, neighbours[i], algo, faults.drop) for i in range(n)]
    generator = torch.Generator(device=x.device).manual_seed(job.seed)  # stochastic codes

    per_step = oracle.sizes if job.batch_size == 0 else torch.full((n,), job.batch_size)
    step_s = (per_step.double() * cost.seconds_per_sample * cost.slowdown).tolist()
    poisson = job.phase == "poisson"

    def draw_phase(a: int) -> tuple[int, float]:
        h = draws[a].steps()
        return h, draws[a].duration(h * step_s[a], poisson)

    current = [draw_phase(a) for a in range(n)]  # (steps, duration) of the running phase
    upcoming = [draw_phase(a) for a in range(n)]  # the phase after it, drawn in advance
    ends = torch.tensor([c[1] for c in current], dtype=torch.float64)  # (n,) event times
    partner = torch.tensor([d.partner() for d in draws])
    totals = {
        k: torch.zeros(n, dtype=torch.int64) for k in ("samples", "messages", "bytes", "lost")
    }
    state = algo.init(x, oracle, comm)
    oracle.meter.reset()
    comm.traffic.reset()

    per_round = algo.events_per_round(n)
    total = max(1, round(job.rounds * per_round))

    def events_at(r: int) -> int:
        return min(total, max(1, round(r * per_round)))

    records = {events_at(r) for r in range(job.eval_every, job.rounds, job.eval_every)} | {total}
    saves = {}  # events -> round of a checkpoint
    if job.checkpoint_every:
        saves = {
            events_at(r): r
            for r in range(job.checkpoint_every, job.rounds + 1, job.checkpoint_every)
        }
    changes = {events_at(r) if r else 0: r for r in faults.changes() if r < job.rounds}
    marks = sorted((records | set(saves) | set(changes)) - {0})
    start, now, done, fault_round = time.perf_counter(), 0.0, 0, -1
    losses: list[torch.Tensor] = []
    if resume is not None:
        extra = resume.events
        state = load_state(state, resume.state)
        oracle.load_local_state(resume.rng)
        now, totals = resume.clock, dict(resume.totals)
        done, fault_round = extra["done"], extra["fault_round"]
        current, upcoming = extra["current"], extra["upcoming"]
        ends, partner = extra["ends"].clone(), extra["partner"].clone()
        for d, saved in zip(draws, extra["draws"], strict=True):
            d.load_state_dict(saved)
        generator.set_state(extra["generator"])
        losses = [extra["losses"]] if len(extra["losses"]) else []
        if servers is not None:
            servers.load_state_dict(resume.servers)
        start -= resume.wall_time_s
        marks = [m for m in marks if m > done]

    def apply_faults(r: int) -> None:
        """From round ``r`` on: a crashed agent stops; one back resumes its phase now."""
        for a in range(n):
            if faults.down(a, r) and math.isfinite(ends[a]):
                ends[a] = math.inf
            elif not faults.down(a, r) and not math.isfinite(ends[a]):
                ends[a] = now + current[a][1]

    if 0 in changes and resume is None:
        fault_round = 0
        apply_faults(0)

    def checkpoint(r: int) -> None:
        folder.checkpoint(
            Checkpoint(
                round=r,
                state=state_dict(state),
                rng=oracle.local_state(),
                clock=now,
                totals=totals,
                records=len(folder.records),
                wall_time_s=time.perf_counter() - start,
                servers=servers.state_dict() if servers is not None else None,
                events={
                    "done": done,
                    "fault_round": fault_round,
                    "current": current,
                    "upcoming": upcoming,
                    "ends": ends,
                    "partner": partner,
                    "draws": [d.state_dict() for d in draws],
                    "generator": generator.get_state(),
                    "losses": torch.cat(losses) if losses else torch.zeros(0),
                },
            )
        )

    with progress_bar(job.rounds, f"{algo.name} x{n} (events)", job.progress) as advance:
        advance(int(done // per_round), "")
        for mark in marks:
            while done < mark:
                horizon = ends + cost.latency_s + torch.tensor([u[1] for u in upcoming])
                pairs = _batch(ends, partner, min(mark - done, max_batch or mark), horizon)
                i, j = pairs[:, 0], pairs[:, 1]
                steps = torch.tensor(
                    [
                        [current[a][0], current[b][0] if b != CENTRE else 0]
                        for a, b in pairs.tolist()
                    ]
                )
                lost = _losses(pairs, draws, faults, fault_round)
                if servers is not None:
                    servers.event_times = ends
                with comm.losing(lost if lost.any else None):
                    state, loss = algo.interact(state, pairs, oracle, comm, generator, steps)
                losses.append(loss)
                samples = oracle.meter.reset()
                messages, nbytes = comm.traffic.reset()
                totals["samples"] += samples
                totals["messages"] += messages
                totals["bytes"] += nbytes
                totals["lost"][i] += lost.reply.to(torch.int64)
                sent = (
                    cost.latency_s * messages.double()
                    + nbytes.double() / cost.bandwidth_bytes_per_s
                )
                if servers is not None:  # the last reply is in, or the worker gave up on it
                    resume_at = servers.resume[i].clone()
                    resume_at[lost.reply] = ends[i][lost.reply] + faults.resend_s
                    now = max(now, float(ends[i].max()))
                    restart = i
                elif algo.blocking:  # both wait for the later phase, then both start anew
                    met = torch.maximum(ends[i], ends[j])
                    now = max(now, float(met.max()))
                    resume_at = torch.cat([met + sent[i], met + sent[j]])
                    restart = torch.cat([i, j])
                else:
                    now = max(now, float(ends[i].max()))
                    resume_at = ends[i] + sent[i]
                    restart = i
                for a, at in zip(restart.tolist(), resume_at.tolist(), strict=True):
                    current[a], upcoming[a] = upcoming[a], draw_phase(a)
                    ends[a] = at + current[a][1]
                    partner[a] = draws[a].partner()
                before, done = done, done + len(pairs)
                check_finite(loss, int(done // per_round), algo.stability_hint)
                advance(int(done // per_round) - int(before // per_round), "")
            if mark in changes:
                fault_round = changes[mark]
                apply_faults(fault_round)
            if mark in records:
                record: dict[str, Any] = {
                    "round": math.ceil(done / per_round - 1e-9),
                    "events": done,
                    "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                    "virtual_time_s": now,
                    "wall_time_s": time.perf_counter() - start,
                    **traffic_fields(totals),
                    "train_loss": float(torch.cat(losses).mean()),
                    **job.metrics(state.x, oracle.buffers),
                    **algo.diagnostics(state),
                }
                if faults.any:
                    record["exchanges_lost"] = int(totals["lost"].sum())
                if servers is not None:
                    record |= servers.take_staleness() | centre_fields(
                        job, servers.centre(), oracle.buffers
                    )
                losses.clear()
                folder.append(record)
                advance(0, status_line(record))
            if mark in saves:
                checkpoint(saves[mark])
    centre = algo.centre(state, comm)
    return RunResult(state.x, folder.records, centre=centre, buffers=oracle.buffers or None)


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
