"""The ``sim`` engine: all agents stacked in one process, a virtual clock, determinism.

Each round the algorithm steps the whole stack ``x: (n, d)`` (one vectorised oracle
call, one ``W(t) @ x``); the engine then reads the work counted at the boundaries
(samples at the oracle, messages and bytes at the communicator), advances the virtual
clock by the slowest agent's time, and every ``eval_every`` rounds evaluates and
appends a record. Same seed, same numbers, bit for bit on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from nettrain.checkpoint import Checkpoint, load_state, state_dict
from nettrain.engines.base import (
    Job,
    RunResult,
    account_round,
    check_engine,
    declared,
    work_totals,
)
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.sim.clock import VirtualClock
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
        state, comm, oracle = rounds.state, rounds.comm, rounds.oracle
        centre = job.algorithm.centre(state, comm)
        return RunResult(state.x, folder.records, centre=centre, buffers=oracle.buffers or None)


class SimRounds:
    """Synchronous rounds of the whole stack ``x: (n, d)``, for :func:`drive`."""

    main, measured = True, False

    def __init__(self, job: Job, resume: Checkpoint | None) -> None:
        n = job.n_agents
        self.job, self.label = job, f"{job.algorithm.name} x{n}"
        x = job.x0.expand(n, -1).clone()  # (n, d)
        servers = (
            SimServers(job.x0, job.algorithm, n, job.cost) if job.algorithm.uses_centre else None
        )
        self.comm = comm = SimCommunicator(job.topology, x.device, x.dtype, servers)
        self.oracle = job.problem.oracle(
            job.shards, range(n), batch_size=job.batch_size, seed=job.seed
        )
        self.clock = VirtualClock(job.cost)
        self.faults = job.fault_spec
        self.totals = work_totals(n, self.faults)
        self.talk = declared(comm, job.algorithm, job.seed)  # what the algorithm talks to
        self.state = job.algorithm.init(x, self.oracle, self.talk)
        self._account()  # the initial gradients of tracking methods are work too
        self.round, self.loss = 0, torch.zeros(n)
        if resume is not None:  # the fresh state is the template the saved one fills
            self.state = load_state(self.state, resume.state)
            self.oracle.load_local_state(resume.rng)
            self.clock.now, self.totals = resume.clock, dict(resume.totals)
            self.round = resume.round
            self.talk.load_state_dict(resume.comm)
            if comm.servers is not None and resume.servers is not None:
                comm.servers.load_state_dict(resume.servers)

    def _account(self, t: int = -1) -> None:
        samples = self.oracle.meter.reset()
        messages, nbytes = self.comm.traffic.reset()
        account_round(self.clock, self.totals, self.faults, t, samples, messages, nbytes)

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
        return Checkpoint(
            round=stop,
            state=state_dict(self.state),
            rng=self.oracle.local_state(),
            clock=self.clock.now,
            totals=self.totals,
            records=0,
            wall_time_s=0.0,
            servers=servers.state_dict() if servers else None,
            comm=self.talk.state_dict(),
        )
