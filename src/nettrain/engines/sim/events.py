"""Asynchronous methods in the simulator: events in virtual time (docs/async-simulation.md).

Every agent alternates a local phase and one interaction. Agent ``i``'s phase of
``H`` steps lasts ``H * samples_per_step_i * c * s_i`` virtual seconds (``s_i`` its
straggler slow-down); when it ends, ``i`` interacts with a neighbour drawn uniformly
from the base graph by its own generator (seeded by ``(seed, i)``), then starts its
next phase once its messages are sent (latency + bytes / bandwidth). Non-blocking:
the partner answers without stopping. Blocking: the initiator waits for the
partner's phase to end, both exchange, both start anew. A fast agent therefore
interacts more often than a slow one, and nobody waits for a straggler except its
blocking partners.

Events are processed in time order. The engine takes the longest prefix of the
time-ordered events in which no agent appears twice (as initiator or partner): those
events touch disjoint state, so running them as one vectorised ``interact`` gives what
running them one by one gives. ``max_batch = 1`` runs them one by one (the tests
compare both). ``rounds`` counts ``n`` events each (an epoch multiplier: every agent
interacts about once per round); records come every ``eval_every`` rounds.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from nettrain.algorithms.base import AsyncAlgorithm
from nettrain.engines.base import Job, RunResult, check_finite, status_line, traffic_fields
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.errors import ConfigError
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder


def run_events(job: Job, folder: RunFolder, max_batch: int = 0) -> RunResult:
    """Run the asynchronous ``job.algorithm``; ``max_batch`` caps a batch (0 = no cap)."""
    algo = job.algorithm
    if not isinstance(algo, AsyncAlgorithm):
        raise TypeError(f"{type(algo).__name__} is not an asynchronous algorithm")
    n, problem = job.n_agents, job.problem
    x = job.x0.expand(n, -1).clone()  # (n, d)
    comm = SimCommunicator(job.topology, x.device, x.dtype)
    oracle = problem.oracle(job.shards, range(n), batch_size=job.batch_size, seed=job.seed)
    neighbours = [sorted(job.topology.base_graph.neighbors(i)) for i in range(n)]
    if any(not nb for nb in neighbours):
        raise ConfigError("an agent without neighbours cannot interact; use a connected graph")
    draws = [np.random.default_rng([job.seed, i, 0xA5]) for i in range(n)]
    generator = torch.Generator(device=x.device).manual_seed(job.seed)  # stochastic codes

    cost = job.cost
    per_step = oracle.sizes if job.batch_size == 0 else torch.full((n,), job.batch_size)
    phase = algo.local_steps * per_step.double() * cost.seconds_per_sample * cost.slowdown
    ends = phase.clone()  # (n,) float64: when each agent's current phase ends
    partner = torch.tensor([int(draws[i].choice(neighbours[i])) for i in range(n)])
    totals = {k: torch.zeros(n, dtype=torch.int64) for k in ("samples", "messages", "bytes")}
    state = algo.init(x, oracle, comm)
    oracle.meter.reset()
    comm.traffic.reset()

    start, now, done = time.perf_counter(), 0.0, 0
    total, every = job.rounds * n, job.eval_every * n
    losses: list[torch.Tensor] = []
    with progress_bar(job.rounds, f"{algo.name} x{n} (events)", job.progress) as advance:
        while done < total:
            room = min(total, (done // every + 1) * every) - done  # stop at the next record
            pairs = _batch(ends, partner, min(room, max_batch or room))
            i, j = pairs[:, 0], pairs[:, 1]
            state, loss = algo.interact(state, pairs, oracle, comm, generator)
            losses.append(loss)
            samples = oracle.meter.reset()
            messages, nbytes = comm.traffic.reset()
            for k, v in zip(totals, (samples, messages, nbytes), strict=True):
                totals[k] += v
            sent = cost.latency_s * messages.double() + nbytes.double() / cost.bandwidth_bytes_per_s
            if algo.blocking:  # both wait for the later phase, then both start anew
                met = torch.maximum(ends[i], ends[j])
                now = max(now, float(met.max()))
                ends[i] = met + sent[i] + phase[i]
                ends[j] = met + sent[j] + phase[j]
                redraw = torch.cat([i, j])
            else:
                now = max(now, float(ends[i].max()))
                ends[i] = ends[i] + sent[i] + phase[i]
                redraw = i
            for a in redraw.tolist():
                partner[a] = int(draws[a].choice(neighbours[a]))
            before, done = done, done + len(pairs)
            check_finite(loss, done // n, algo.stability_hint)
            status = ""
            if done % every == 0 or done == total:
                record = {
                    "round": done // n,
                    "events": done,
                    "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                    "virtual_time_s": now,
                    "wall_time_s": time.perf_counter() - start,
                    **traffic_fields(totals),
                    "train_loss": float(torch.cat(losses).mean()),
                    **job.metrics(state.x),
                    **algo.diagnostics(state),
                }
                losses.clear()
                folder.append(record)
                status = status_line(record)
            advance(done // n - before // n, status)
    return RunResult(state.x, folder.records)


def _batch(ends: torch.Tensor, partner: torch.Tensor, limit: int) -> torch.Tensor:
    """The longest time-ordered prefix of events on distinct agents, at most ``limit``.

    Returns ``(k, 2)`` pairs (initiator, partner); ties in time go to the lower agent id.
    """
    order = torch.argsort(ends, stable=True).tolist()
    busy: set[int] = set()
    pairs = []
    for a in order:
        b = int(partner[a])
        if a in busy or b in busy or len(pairs) == limit:
            break
        busy.update((a, b))
        pairs.append((a, b))
    return torch.tensor(pairs, dtype=torch.int64)
