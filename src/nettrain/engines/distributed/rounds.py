"""Synchronous rounds of the distributed engine: the simulator's rounds
(:class:`~nettrain.engines.rounds.Rounds`) over each process's agents, with checkpoints
and resume (docs/architecture.md, "One synchronous round").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult
from nettrain.engines.distributed.comm import DistCommunicator, guarded
from nettrain.engines.distributed.placement import Placement
from nettrain.engines.driver import drive
from nettrain.engines.rounds import Rounds
from nettrain.engines.timeline import Interval
from nettrain.errors import ConfigError
from nettrain.recording import RunFolder

# Rounds whose notes (samples, messages, bytes, loss) are gathered together: one small
# all-gather per 32 rounds (or per evaluation or checkpoint) replays the simulator's
# virtual clock on every rank, instead of a second collective every round. It runs
# while the next 32 rounds compute (Rounds.behind), so divergence is seen up to 64
# rounds late, by every rank at the same round. The engine gives it a group of its own.
SETTLE_EVERY = 32


def run_rounds(
    job: Job,
    folder: RunFolder,
    rank: int,
    comm: DistCommunicator,
    resume: Checkpoint | None = None,
    notes: dist.ProcessGroup | None = None,
) -> RunResult:
    """Synchronous rounds, from round 0 or from ``resume.round`` (:class:`DistRounds`;
    ``notes``: the group its notes are gathered on, default the communicator's)."""
    start = time.perf_counter()
    rounds = DistRounds(job, rank, comm, resume, notes)
    drive(job, folder, rounds, resume, start, rounds.timeline)
    return rounds.result(folder.records)


def all_gather_rows(
    t: torch.Tensor, placement: Placement, group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Each process's rows ``(m_r, ...)`` (its agents') -> every agent's ``(n, ...)``, in
    agent order; rows are padded to the largest ``m_r`` for the all-gather."""
    return start_all_gather_rows(t, placement, group)()


def start_all_gather_rows(
    t: torch.Tensor, placement: Placement, group: dist.ProcessGroup | None = None
) -> Callable[[], torch.Tensor]:
    """:func:`all_gather_rows` started (an asynchronous all-gather): a function that
    waits for it and returns every agent's rows."""
    largest = placement.largest
    padded = t.new_zeros(largest, *t.shape[1:])
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(placement.processes)]
    what = "an all-gather of the engine"
    work = guarded(what, lambda: dist.all_gather(parts, padded, group=group, async_op=True))

    def rows() -> torch.Tensor:
        guarded(what, work.wait)
        every = torch.cat([p[: len(g)] for p, g in zip(parts, placement.groups, strict=True)])
        return every[placement.position.to(every.device)]

    return rows


class DistRounds(Rounds):
    """This rank's agents in synchronous rounds. Rank 0 writes the checkpoint, the
    simulator's (the same keys and shapes), and reads the parameter servers' slices of
    the centre over rpc; a process that holds a slow agent (a straggler, or a speed
    below 1) sleeps its slow-down for real: the slowest of its agents' ``s - 1`` times the
    round's computing (the oracle's passes). The notes are gathered on ``notes``, a
    group apart from the algorithm's exchanges where the engine gives one."""

    comm: DistCommunicator
    measured, settle_every, behind = True, SETTLE_EVERY, True

    def __init__(
        self,
        job: Job,
        rank: int,
        comm: DistCommunicator,
        resume: Checkpoint | None,
        notes: dist.ProcessGroup | None = None,
    ) -> None:
        agents = comm.agents.tolist()
        self.notes = notes if notes is not None else comm.group
        self.main, self.slowdown = rank == 0, float(job.cost.slowdown[agents].max())
        super().__init__(job, agents, comm, resume, " (distributed)")
        if self.timeline is not None and self.timeline.wants(self.round + 1):
            # the initial all-gather has just lined the processes up
            comm.talks, self.timeline.origin = [], time.perf_counter()

    def talks(self, more: bool) -> list[Interval]:
        talks = self.comm.talks or []
        self.comm.talks = [] if more else None
        return talks

    def gather_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parts: list[Any] = [None] * self.comm.placement.processes
        guarded(
            "gathering the timeline",
            lambda: dist.all_gather_object(parts, events, group=self.comm.group),
        )
        return [e for part in parts for e in part]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(rows, self.comm.placement, self.comm.group)

    def start_gather(self, rows: torch.Tensor) -> Callable[[], torch.Tensor]:
        return start_all_gather_rows(rows, self.comm.placement, self.notes)

    def gather_objects(self, objects: list[Any]) -> list[Any]:
        parts: list[Any] = [None] * self.comm.placement.processes  # rank order
        guarded(
            "gathering the oracles' local states for a checkpoint",
            lambda: dist.all_gather_object(parts, objects, group=self.comm.group),
        )
        every = [o for part in parts for o in part]  # process order
        return [every[k] for k in self.comm.placement.position.tolist()]

    def result(self, records: list[dict[str, Any]]) -> RunResult:
        """The simulator's result, and in its summary what crossed process boundaries:
        ``process_messages`` and ``process_bytes`` sent by all processes together."""
        out = super().result(records)
        wire = self.comm.wire
        sent = torch.tensor([wire["messages"], wire["bytes"]], dtype=torch.int64)
        guarded(
            "summing the traffic between processes",
            lambda: dist.all_reduce(sent, group=self.comm.group),
        )
        out.summary.update(process_messages=int(sent[0]), process_bytes=int(sent[1]))
        return out

    def servers_state(self) -> dict[str, Any] | None:
        # Called after the state's gather, when every worker is done with round t: rank
        # 0 reads the servers before it joins the next collective, so no worker's round
        # t + 1 exchange can reach a server first.
        return servers_state(self.comm) if self.comm.server_ranks else None

    def restore_servers(self, saved: dict[str, Any]) -> None:
        restore_servers(self.comm, saved, self.main)


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
