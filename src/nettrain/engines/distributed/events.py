"""Asynchronous runs of the distributed engine: each rank makes its events at its own pace.

The simulator's event engine (:mod:`nettrain.engines.sim.events`) with one agent per
process: the same draws (:class:`~nettrain.engines.draws.Draws`), exchanges over rpc
(:mod:`.gossip` for pairwise gossip, :mod:`~nettrain.engines.centre` for the parameter
servers), and an end agreed in the rendezvous store that survives dead workers
(:mod:`.finish`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

import torch

from nettrain.algorithms.base import AsyncAlgorithm, GossipAlgorithm
from nettrain.engines.base import (
    Job,
    RunResult,
    centre_fields,
    check_finite,
    staleness_fields,
    traffic_fields,
)
from nettrain.engines.distributed.comm import DistCommunicator
from nettrain.engines.distributed.finish import DEAD_AFTER_S, Finish, events_prefix
from nettrain.engines.distributed.gossip import Peer
from nettrain.engines.distributed.states import stack_buffers, stack_states
from nettrain.engines.draws import Draws
from nettrain.errors import DivergenceError, PeerError
from nettrain.patterns import Losses
from nettrain.problem.oracle import agent_seed
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder


def run_events(
    job: Job, folder: RunFolder, rank: int, comm: DistCommunicator, timeout_s: float
) -> RunResult:
    """An asynchronous algorithm: this rank makes its events at its own pace.

    Gossip (``rounds`` events, event ``e`` in this agent's round ``e``): add what
    exchanges answered since the last event to the iterate, draw a neighbour (the
    simulator's draw for this agent), ``interact`` (local phase, then one exchange
    over rpc), publish. Centre (``rounds / tau`` events, event ``e`` in round
    ``e tau``): local phase, then one exchange with every server.

    Faults (:mod:`nettrain.faults`, the simulator's semantics): in a round where
    this agent is down it makes no event and draws nothing; its peer refuses the
    others' exchanges, and it idles as long as its average event so far (so that
    the window lasts about as long in wall time as the events it misses). Otherwise
    the exchange loses its request, its reply or neither by this agent's own draw
    (:meth:`Draws.losses`, drawn every event), and its request when the partner is
    down or across the split in this agent's round, or found dead (its rpc failed).
    A straggler (``slowdown > 1``) sleeps ``slowdown - 1`` times its measured
    compute after each event, so it really is that much slower.

    The end survives dead workers (:mod:`.finish`): every worker posts that it is
    done, rank 0 decides which died, the survivors hand their final state over
    through the store, and rank 0 checks that every exchange one survivor delivered
    to another was answered (gossip) or applied by every server (centre) exactly
    once. The record names the dead ranks (``crashed_ranks``) and evaluates the
    survivors' models only (a dead rank's last model is gone with it); rank 0
    returns those rows, the others their own row. Where a rank died, this rank's rpc
    session is left without waiting for everyone (``session.graceful`` is False).
    """
    algo = job.algorithm
    assert isinstance(algo, AsyncAlgorithm) and comm.rpc is not None
    n, problem, session, faults = job.n_agents, job.problem, comm.rpc, job.fault_spec
    store = session.store
    assert store is not None
    x = job.x0[None, :].clone()  # (1, d)
    oracle = problem.oracle([job.shards[rank]], [rank], batch_size=job.batch_size, seed=job.seed)
    peer = None
    if isinstance(algo, GossipAlgorithm):
        peer = Peer(algo, x[0], torch.Generator().manual_seed(agent_seed(job.seed, rank, 1)))
        session.host("peer", peer)
        neighbours = sorted(job.topology.base_graph.neighbors(rank))
        events, tau = job.rounds, 1
    else:
        neighbours, tau = [], algo.local_steps
        events = max(1, round(job.rounds / tau))
    draws = Draws(job.seed, rank, neighbours, algo, faults.drop)
    generator = torch.Generator().manual_seed(agent_seed(job.seed, rank, 2))
    slowdown = float(job.cost.slowdown[rank])
    finish = Finish(store, rank, n, events_prefix(session.serial), min(DEAD_AFTER_S, timeout_s))
    made, busy_s, loss_sum, loss_count = 0, 0.0, 0.0, 0
    start = time.perf_counter()
    state = algo.init(x, oracle, comm)
    name = f"{algo.name} x{n} (distributed, asynchronous)"
    with progress_bar(events, name, job.progress and rank == 0) as advance:
        for e in range(events):
            t = e * tau  # this agent's own round
            if peer is not None:
                peer.set_down(faults.down(rank, t))
            if faults.down(rank, t):  # no local steps, no exchange, no draws
                time.sleep(busy_s / made if made else 0.0)
                advance(1, "")
                continue
            partner, steps = draws.partner(), draws.steps()
            request, reply = draws.losses(faults.unreachable(rank, partner, t))
            lost = Losses(torch.tensor([request]), torch.tensor([reply]))
            if peer is not None:
                state = dataclasses.replace(state, x=state.x + peer.take_shift()[None])
            begin, talk_s = time.perf_counter(), comm.talk_s
            with comm.losing(lost if reply else None):
                state, loss = algo.interact(
                    state,
                    torch.tensor([[rank, partner]]),
                    oracle,
                    comm,
                    generator,
                    torch.tensor([[steps, 0]]),
                )
            if slowdown > 1:  # compute = the event's time but the rpc waits
                compute_s = time.perf_counter() - begin - (comm.talk_s - talk_s)
                time.sleep((slowdown - 1) * max(compute_s, 0.0))
            busy_s += time.perf_counter() - begin
            if peer is not None:
                peer.publish(state.x[0])
            made, loss_count = made + 1, loss_count + loss.numel()
            loss_sum += float(loss.sum())
            if not bool(torch.isfinite(loss).all()):
                named = loss.new_zeros(n)  # (n,): the message names this agent
                named[rank] = loss[0]
                try:
                    check_finite(named, t, algo.stability_hint)
                except DivergenceError as err:  # the others learn it from the verdict
                    finish.fail(str(err))
                    break
            advance(1, "")
    finish.done()
    verdict = finish.verdict()  # meanwhile the rpc threads answer the others
    if verdict.crashed:
        session.graceful = False  # a dead rank never reaches the graceful shutdown
    if verdict.error is not None:
        raise DivergenceError(verdict.error)
    if rank in verdict.crashed:
        raise PeerError(
            f"rank {rank}: rank 0 took this rank for dead (its heartbeat stopped for "
            f"{finish.dead_after_s} s) and finished the run without it"
        )
    answered = torch.zeros(n, dtype=torch.int64)
    reply_bytes = 0
    if peer is not None:
        peer.close()  # every survivor is done: nothing is in flight any more
        answered = torch.tensor([peer.answered[r] for r in range(n)], dtype=torch.int64)
        reply_bytes = peer.reply_bytes
        state = dataclasses.replace(
            state,
            x=state.x + peer.take_shift()[None],
            interactions=state.interactions + answered.sum(),
        )
    samples = oracle.meter.reset()
    messages, nbytes = comm.traffic.reset()
    mine = {
        "state": state,
        "work": torch.cat([samples, messages + answered.sum(), nbytes + reply_bytes]),
        "delivered": torch.tensor([comm.delivered[r] for r in range(n)], dtype=torch.int64),
        "answered": answered,
        "lost": comm.lost,
        "events": made,
        "loss": (loss_sum, loss_count),
        "staleness": comm.staleness,
        "buffers": oracle.buffers,
    }
    if rank != 0:
        finish.post(mine)
        return RunResult(state.x, folder.records)
    survivors = [r for r in range(n) if r not in verdict.crashed]
    finals = {0: mine} | finish.collect(survivors[1:], job.x0.device)
    rows = [finals[r] for r in survivors]
    work = torch.stack([f["work"] for f in rows])  # (s, 3) samples, messages, bytes
    totals = dict(zip(("samples", "messages", "bytes"), work.unbind(1), strict=True))
    delivered = torch.stack([f["delivered"] for f in rows])  # (s, n): [k, j] k's to j
    got = torch.stack([f["answered"] for f in rows])  # (s, n): [k, i] k answered i's
    everyone = stack_states([f["state"] for f in rows])  # (s, ...)
    loss_sum, loss_count = (sum(f["loss"][k] for f in rows) for k in (0, 1))
    record: dict[str, Any] = {
        "round": job.rounds,
        "events": sum(f["events"] for f in rows),
        "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
        "wall_time_s": time.perf_counter() - start,
        **traffic_fields(totals),
        "train_loss": loss_sum / loss_count if loss_count else float("nan"),
    }
    centre = None
    if peer is not None:  # among survivors: a dead rank's counts are gone with it
        record["interactions_answered"] = int(got.sum())
        record["interactions_unmatched"] = int(
            (delivered[:, survivors].T - got[:, survivors]).abs().sum()
        )
    else:
        initiated = torch.zeros(n, dtype=torch.int64)
        initiated[survivors] = delivered[torch.arange(len(survivors)), survivors]
        record["exchanges_unmatched"] = unapplied_exchanges(comm, initiated, survivors)
        record |= staleness_fields(sum((f["staleness"] for f in rows), Counter()))
        centre = comm.centre()
    lost = sum(f["lost"] for f in rows)
    if faults.any or verdict.crashed or lost:
        record["exchanges_lost"] = lost
    if verdict.crashed:
        record["crashed_ranks"] = list(verdict.crashed)
    judged = job
    if verdict.crashed:
        judged = dataclasses.replace(job, shards=[job.shards[r] for r in survivors])
    buffers = stack_buffers([f["buffers"] for f in rows])
    record |= judged.metrics(everyone.x, buffers) | algo.diagnostics(everyone)
    folder.append(record | centre_fields(job, centre, buffers))
    return RunResult(everyone.x, folder.records, centre=centre, buffers=buffers)


def unapplied_exchanges(
    comm: DistCommunicator, initiated: torch.Tensor, workers: list[int] | None = None
) -> int:
    """``sum_s sum_w |applied_s[w] - initiated[w]|`` over ``workers`` (default: all):
    exchanges a server lost or doubled. ``initiated[w]``: worker ``w``'s exchanges whose
    request reached the servers."""
    assert comm.rpc is not None
    if workers is None:
        workers = list(range(len(initiated)))
    off = 0
    for rank in comm.server_ranks:
        applied = comm.rpc.remote(rank, "centre").rpc_sync("counts")
        off += sum(abs(applied.get(w, 0) - int(initiated[w])) for w in workers)
    return off
