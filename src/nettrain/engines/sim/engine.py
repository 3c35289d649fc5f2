"""The ``sim`` engine: all agents stacked in one process, a virtual clock, determinism.

Each round the algorithm steps the whole stack ``x: (n, d)`` (docs/architecture.md,
"One synchronous round"); asynchronous methods go to :mod:`.events`. Same seed, same
numbers, bit for bit on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import (
    Job,
    RunResult,
    Stack,
    account_round,
    check_engine,
    take_work,
    work_totals,
)
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.events import run_events
from nettrain.engines.sim.servers import SimServers
from nettrain.recording import RunFolder


class SimEngine:
    """Runs a :class:`Job` with every agent in this process."""

    name = "sim"

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult:
        """Run ``job``; with ``resume``, continue from that checkpoint's round."""
        check_engine(self.name, job.algorithm)
        if job.algorithm.schedule == "events":
            return run_events(job, folder, resume=resume)
        start = time.perf_counter()
        rounds = SimRounds(job, resume)
        drive(job, folder, rounds, resume, start)
        return rounds.result(folder.records)


class SimRounds(Stack):
    """Synchronous rounds of the whole stack ``x: (n, d)``, for :func:`drive`."""

    def __init__(self, job: Job, resume: Checkpoint | None) -> None:
        n, algo = job.n_agents, job.algorithm
        x = job.x0.expand(n, -1).clone()  # (n, d)
        servers = SimServers(job.x0, algo, n, job.cost) if algo.uses_centre else None
        comm = SimCommunicator(job.topology, x.device, x.dtype, servers)
        oracle = job.problem.oracle(job.shards, range(n), batch_size=job.batch_size, seed=job.seed)
        super().__init__(job, x, oracle, comm, work_totals(n, job.fault_spec))
        self.label = f"{algo.name} x{n}"
        self._account()  # the initial gradients of tracking methods are work too
        self.round, self.loss = 0, torch.zeros(n)
        if resume is not None:
            self.restore(resume, resume.state, resume.rng)
            self.round = resume.round
            self.talk.load_state_dict(resume.comm)
            if servers is not None and resume.servers is not None:
                servers.load_state_dict(resume.servers)

    def _account(self, t: int = -1) -> None:
        work = take_work(self.oracle, self.comm)
        account_round(self.clock, self.totals, self.faults, t, *work)

    def advance(self, stop: int) -> Iterator[Tick]:
        algo = self.job.algorithm
        for t in range(self.round, stop):
            self.faults.check_synchronous(t, algo.name)
            self.state, self.loss = algo.step(self.state, t, self.oracle, self.talk.at(t))
            self._account(t)
            self.round = t + 1
            yield Tick(t + 1, self.loss)

    def counters(self) -> Counters:
        return Counters(self.totals, self.clock.now, float(self.loss.mean()), self.round)

    def snapshot(self) -> Snapshot:
        centre = self.job.algorithm.centre(self.state, self.comm)
        return Snapshot(self.state.x, self.oracle.buffers, self.state, centre)

    def checkpoint(self, stop: int) -> Checkpoint:
        servers = self.comm.servers
        servers_state = servers.state_dict() if servers else None
        rng, comm = self.oracle.local_state(), self.talk.state_dict()
        return self.saved(stop, self.state, rng, servers=servers_state, comm=comm)
