"""Synchronous rounds of the distributed engine, with checkpoints and resume.

Each round every rank steps the same algorithm code as the simulator on its stack
``x: (1, d)``, communicating through a :class:`DistCommunicator`. Each rank notes its
rounds' work (samples, messages, bytes), loss and wall time; one small ``all_gather``
every ``SETTLE_EVERY`` rounds (and at each evaluation or checkpoint) lets every rank
replay the same virtual clock as the simulator
(:class:`~nettrain.engines.sim.clock.CostModel`) and stop together on divergence,
without a second collective in every round. Every ``eval_every`` rounds the states are
gathered and rank 0 evaluates exactly what the simulator evaluates and writes the
record.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from nettrain.checkpoint import Checkpoint, load_state, state_dict
from nettrain.engines.base import (
    Job,
    RunResult,
    account_round,
    centre_fields,
    check_finite,
    status_line,
    traffic_fields,
    work_totals,
)
from nettrain.engines.distributed.comm import DistCommunicator, guarded
from nettrain.engines.distributed.states import (
    all_gather_rows,
    gather_buffers,
    gather_state,
    own_rows,
)
from nettrain.engines.sim.clock import VirtualClock
from nettrain.errors import ConfigError, DivergenceError
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder

# Rounds whose work counters are gathered together: one small all-gather per 32 rounds
# (or per evaluation) instead of a second collective every round. Divergence is then
# seen up to 32 rounds late, by every rank at the same round.
SETTLE_EVERY = 32


def run_rounds(
    job: Job,
    folder: RunFolder,
    rank: int,
    comm: DistCommunicator,
    resume: Checkpoint | None = None,
) -> RunResult:
    """Synchronous rounds, from round 0 or from ``resume.round``.

    Every ``checkpoint_every`` rounds, rank 0 writes the simulator's checkpoint, with
    every agent's rows (one format for both engines, so a checkpoint has the same keys
    and shapes whichever engine wrote it): the ranks settle their work counters first
    (the virtual clock and the totals must be those of that round), then gather every
    agent's state and mini-batch generator (the next batches depend on it), and rank 0
    reads the parameter servers' slices of the centre. Resuming undoes each step:
    each rank takes its own rows and generator, the clock and the totals.
    """
    n, problem, device = job.n_agents, job.problem, job.x0.device
    gather = partial(all_gather_rows, group=comm.group)
    x = job.x0[None, :].clone()  # (1, d)
    oracle = problem.oracle([job.shards[rank]], [rank], batch_size=job.batch_size, seed=job.seed)
    clock = VirtualClock(job.cost)
    main = rank == 0
    faults = job.fault_spec
    totals = work_totals(n, faults)
    slowdown = float(job.cost.slowdown[rank])

    pending: list[torch.Tensor] = []  # this rank's rows of rounds not yet settled

    def account(loss: torch.Tensor, seconds: float) -> None:
        """Note this round's work, loss and wall time of the local agent."""
        samples = oracle.meter.reset()
        messages, nbytes = comm.traffic.reset()
        row = [samples[0], messages[0], nbytes[0], float(loss[0]), seconds]
        pending.append(torch.tensor(row, dtype=torch.float64))

    def settle(t: int) -> tuple[torch.Tensor, float]:
        """One all-gather for every pending round: replay the clock, the totals and the
        finiteness check in round order; return the last round's losses and max wall time.
        """
        k = len(pending)
        mine = torch.stack(pending).reshape(1, -1)
        every = gather(mine.to(device)).cpu().view(n, k, 5)  # (agents, rounds, fields)
        pending.clear()
        for j in range(k):
            work = every[:, j, :3].round().to(torch.int64).unbind(1)
            account_round(clock, totals, faults, t - k + 1 + j, *work)
            check_finite(every[:, j, 3], t - k + 1 + j, job.algorithm.stability_hint)
        return every[:, -1, 3].to(x.dtype), float(every[:, -1, 4].max())

    def save(t: int, everyone: Any) -> None:
        """The checkpoint after round ``t`` (settled), written by rank 0 alone."""
        # After the gather every worker is done with round t; rank 0 reads the servers
        # before it joins the next collective, so no worker's round t + 1 exchange can
        # reach a server first.
        servers = servers_state(comm) if main and comm.server_ranks else None
        rngs: list[Any] = [None] * n  # every agent's mini-batch generator, rank order
        mine = oracle.local_state()[0]
        guarded(
            "gathering the mini-batch generators for a checkpoint",
            lambda: dist.all_gather_object(rngs, mine, group=comm.group),
        )
        if main:
            folder.checkpoint(
                Checkpoint(
                    round=t + 1,
                    state=state_dict(everyone),
                    rng=rngs,
                    clock=clock.now,
                    totals=totals,
                    records=len(folder.records),
                    wall_time_s=time.perf_counter() - start,
                    servers=servers,
                )
            )

    start = time.perf_counter()
    state = job.algorithm.init(x, oracle, comm)
    account(torch.zeros(1), 0.0)  # the initial gradients of tracking methods are work too
    settle(-1)
    first, saved = 0, None  # saved: the round of the last checkpoint
    if resume is not None:  # the fresh state is the template the saved one fills
        state = own_rows(load_state(state, resume.state), rank, n, device)
        oracle.load_local_state([resume.rng[rank]])
        clock.now = resume.clock
        totals = {k: v.clone() for k, v in resume.totals.items()}
        first, saved = resume.round, resume.round
        start -= resume.wall_time_s
        if resume.servers is not None:
            restore_servers(comm, resume.servers, main)
    name = f"{job.algorithm.name} x{n} (distributed)"
    with progress_bar(job.rounds, name, job.progress and main) as advance:
        advance(first, "")
        for t in range(first, job.rounds):
            faults.check_synchronous(t, job.algorithm.name)  # every rank alike
            begin = time.perf_counter()
            state, loss = job.algorithm.step(state, t, oracle, comm)
            if slowdown > 1:  # a straggler for real: its round (mostly compute) again
                time.sleep((slowdown - 1) * (time.perf_counter() - begin))
            account(loss, time.perf_counter() - begin)
            evaluate = (t + 1) % job.eval_every == 0 or t + 1 == job.rounds
            checkpoint = job.checkpoint_every > 0 and (t + 1) % job.checkpoint_every == 0
            if evaluate or checkpoint or len(pending) == SETTLE_EVERY:
                try:
                    losses, round_s = settle(t)
                except DivergenceError as err:  # every rank alike; rank 0 names the folder
                    raise DivergenceError(f"{err}{folder.checkpoint_hint(saved)}") from None
            status = ""
            if evaluate or checkpoint:
                everyone = gather_state(state, gather)  # every agent's state, (n, ...)
                buffers = gather_buffers(problem.buffer_spec, oracle.buffers, gather)
                if evaluate and main:
                    record = {
                        "round": t + 1,
                        "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                        "virtual_time_s": clock.now,
                        "wall_time_s": time.perf_counter() - start,
                        "round_wall_time_s": round_s,
                        **traffic_fields(totals),
                        "train_loss": float(losses.mean()),
                        **job.metrics(everyone.x, buffers),
                        **job.algorithm.diagnostics(everyone),
                        **centre_fields(job, job.algorithm.centre(state, comm), buffers),
                    }
                    folder.append(record)
                    status = status_line(record)
                if checkpoint:  # after the round's record, as in the simulator
                    save(t, everyone)
                    saved = t + 1
            advance(1, status)
    everyone = gather(state.x)
    buffers = gather_buffers(problem.buffer_spec, oracle.buffers, gather)
    centre = job.algorithm.centre(state, comm) if main else None
    return RunResult(everyone, folder.records, centre=centre, buffers=buffers)


def servers_state(comm: DistCommunicator) -> dict[str, Any]:
    """Every parameter server's slice of the centre and its counters, read over rpc, in
    the format of :meth:`~nettrain.engines.sim.servers.SimServers.state_dict`. Call it
    between synchronous rounds: with no exchange in flight."""
    assert comm.rpc is not None
    remote = comm.rpc.remote
    return {"shards": [remote(r, "centre").rpc_sync("state_dict") for r in comm.server_ranks]}


def restore_servers(comm: DistCommunicator, saved: dict[str, Any], main: bool) -> None:
    """Resume the parameter servers (every worker calls it, before its first round).

    Rank 0 gives each server its slice back (:meth:`CentreShard.load_state_dict`); every
    worker numbers its next synchronous exchange with the servers' round, which
    :meth:`CentreShard.exchange_sync` waits for. A barrier then keeps every worker's
    first exchange from reaching a server before its slice is back.
    """
    assert comm.rpc is not None
    shards = saved["shards"]
    if len(shards) != len(comm.server_ranks):
        raise ConfigError(
            f"the checkpoint holds the centre of {len(shards)} parameter servers, this run has "
            f"servers={len(comm.server_ranks)}: resume with servers={len(shards)}"
        )
    if main:
        for rank, shard in zip(comm.server_ranks, shards, strict=True):
            comm.rpc.remote(rank, "centre").rpc_sync("load_state_dict", shard)
    comm.sync_rounds = shards[0]["sync_round"] if shards else 0
    guarded("the barrier after restoring the servers", lambda: dist.barrier(comm.group))
