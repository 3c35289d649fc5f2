"""Synchronous rounds of the distributed engine, with checkpoints and resume: the
simulator's rounds, one agent per rank (docs/architecture.md, "One synchronous round").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult, Stack, account_round, take_work, work_totals
from nettrain.engines.distributed.comm import DistCommunicator, guarded
from nettrain.engines.distributed.states import (
    all_gather_rows,
    gather_buffers,
    gather_state,
    own_rows,
)
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.errors import ConfigError
from nettrain.recording import RunFolder

# Rounds whose work counters (samples, messages, bytes, loss) are gathered together: one
# small all-gather per 32 rounds (or per evaluation or checkpoint) replays the
# simulator's virtual clock on every rank, instead of a second collective every round.
# Divergence is then seen up to 32 rounds late, by every rank at the same round.
SETTLE_EVERY = 32


def run_rounds(
    job: Job,
    folder: RunFolder,
    rank: int,
    comm: DistCommunicator,
    resume: Checkpoint | None = None,
) -> RunResult:
    """Synchronous rounds, from round 0 or from ``resume.round`` (:class:`DistRounds`)."""
    start = time.perf_counter()
    rounds = DistRounds(job, rank, comm, resume)
    drive(job, folder, rounds, resume, start)
    everyone = rounds.gather(rounds.state.x)
    buffers = gather_buffers(job.problem.buffer_spec, rounds.oracle.buffers, rounds.gather)
    centre = job.algorithm.centre(rounds.state, comm) if rounds.main else None
    return RunResult(everyone, folder.records, centre=centre, buffers=buffers)


class DistRounds(Stack):
    """This rank's agent in synchronous rounds, for :func:`drive`.

    Every ``checkpoint_every`` rounds rank 0 writes the simulator's checkpoint, the same
    keys and shapes: the settled clock and totals, every agent's gathered state and
    mini-batch generator, the parameter servers' slices of the centre. Resuming, each
    rank takes its own rows and generator back.
    """

    comm: DistCommunicator
    measured = True

    def __init__(
        self, job: Job, rank: int, comm: DistCommunicator, resume: Checkpoint | None
    ) -> None:
        n, device = job.n_agents, job.x0.device
        x = job.x0[None, :].clone()  # (1, d)
        oracle = job.problem.oracle(
            [job.shards[rank]], [rank], batch_size=job.batch_size, seed=job.seed
        )
        super().__init__(job, x, oracle, comm, work_totals(n, job.fault_spec))
        self.rank, self.main = rank, rank == 0
        self.label = f"{job.algorithm.name} x{n} (distributed)"
        self.gather = partial(all_gather_rows, group=comm.group)
        self.slowdown = float(job.cost.slowdown[rank])
        self.pending: list[torch.Tensor] = []  # this rank's rows of rounds not yet settled
        self.everyone: tuple[int, Any] | None = None  # (round, every agent's state)
        self._account(torch.zeros(1))  # the initial gradients of tracking methods are work
        for _ in self._settle(-1):
            pass
        self.round, self.losses = 0, torch.zeros(n)
        if resume is not None:
            self.restore(resume, resume.state, [resume.rng[rank]])
            self.state = own_rows(self.state, rank, n, device)
            self.round = resume.round
            if resume.comm is not None:  # this rank's rows of what the communicator carries
                saved = {
                    k: None if v is None else v[rank : rank + 1].to(device)
                    for k, v in resume.comm.items()
                }
                self.talk.load_state_dict(saved)
            if resume.servers is not None:
                restore_servers(comm, resume.servers, self.main)

    def _account(self, loss: torch.Tensor) -> None:
        """Note this round's work and loss of the local agent."""
        samples, messages, nbytes = take_work(self.oracle, self.comm)
        row = [samples[0], messages[0], nbytes[0], float(loss[0])]
        self.pending.append(torch.tensor(row, dtype=torch.float64))

    def _settle(self, t: int) -> Iterator[Tick]:
        """One all-gather for every pending round: replay the clock and the totals in
        round order, and hand every round's losses ``(n,)`` to the finiteness check."""
        n, k = self.job.n_agents, len(self.pending)
        mine = torch.stack(self.pending).reshape(1, -1)
        every = self.gather(mine.to(self.job.x0.device)).cpu().view(n, k, 4)  # agents, rounds
        self.pending.clear()
        for j in range(k):
            work = every[:, j, :3].round().to(torch.int64).unbind(1)
            account_round(self.clock, self.totals, self.faults, t - k + 1 + j, *work)
            yield Tick(t - k + 2 + j, every[:, j, 3])
        self.losses = every[:, -1, 3].to(self.job.x0.dtype)

    def advance(self, stop: int) -> Iterator[Tick]:
        """Rounds up to ``stop``; the counters are settled at ``stop`` (an evaluation or a
        checkpoint) and every ``SETTLE_EVERY`` rounds."""
        algo = self.job.algorithm
        for t in range(self.round, stop):
            self.faults.check_synchronous(t, algo.name)  # every rank alike
            begin = time.perf_counter()
            self.state, loss = algo.step(self.state, t, self.oracle, self.talk.at(t))
            if self.slowdown > 1:  # a straggler for real: its round (mostly compute) again
                time.sleep((self.slowdown - 1) * (time.perf_counter() - begin))
            self._account(loss)
            self.round = t + 1
            if t + 1 == stop or len(self.pending) == SETTLE_EVERY:
                yield from self._settle(t)

    def counters(self) -> Counters:
        return Counters(self.totals, self.clock.now, float(self.losses.mean()), self.round)

    def _everyone(self) -> Any:
        """Every agent's state at this round, ``(n, ...)``, gathered once."""
        if self.everyone is None or self.everyone[0] != self.round:
            self.everyone = (self.round, gather_state(self.state, self.gather))
        return self.everyone[1]

    def snapshot(self) -> Snapshot | None:
        everyone = self._everyone()
        buffers = gather_buffers(self.job.problem.buffer_spec, self.oracle.buffers, self.gather)
        if not self.main:
            return None
        centre = self.job.algorithm.centre(self.state, self.comm)
        return Snapshot(everyone.x, buffers, everyone, centre)

    def checkpoint(self, stop: int) -> Checkpoint | None:
        """The checkpoint after round ``stop`` (settled), written by rank 0 alone."""
        everyone = self._everyone()
        # After the gather every worker is done with round t; rank 0 reads the servers
        # before it joins the next collective, so no worker's round t + 1 exchange can
        # reach a server first.
        comm = self.comm
        servers = servers_state(comm) if self.main and comm.server_ranks else None
        rngs: list[Any] = [None] * self.job.n_agents  # every agent's generator, rank order
        mine = self.oracle.local_state()[0]
        guarded(
            "gathering the mini-batch generators for a checkpoint",
            lambda: dist.all_gather_object(rngs, mine, group=comm.group),
        )
        carried = self.talk.state_dict()  # every rank has the same wrappers
        if carried is not None:
            carried = {k: None if v is None else self.gather(v) for k, v in carried.items()}
        return (
            self.saved(stop, everyone, rngs, servers=servers, comm=carried) if self.main else None
        )


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
    worker's communicator was built with the servers' round (:func:`servers_round`),
    which :meth:`CentreShard.exchange_sync` waits for. A barrier then keeps every worker's
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
    guarded("the barrier after restoring the servers", lambda: dist.barrier(comm.group))


def servers_round(resume: Checkpoint | None) -> int:
    """The parameter servers' next synchronous round in ``resume`` (0 without one): what
    every worker numbers its next synchronous exchange with."""
    shards = resume.servers["shards"] if resume is not None and resume.servers else []
    return shards[0]["sync_round"] if shards else 0
