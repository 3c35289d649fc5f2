"""The ``sim`` engine: all agents stacked in one process, a virtual clock, determinism.

Each round the algorithm steps the whole stack ``x: (n, d)`` (one vectorised oracle
call, one ``W(t) @ x``); the engine then reads the work counted at the boundaries
(samples at the oracle, messages and bytes at the communicator), advances the virtual
clock by the slowest agent's time, and every ``eval_every`` rounds evaluates and
appends a record. Same seed, same numbers, bit for bit on CPU.
"""

from __future__ import annotations

import time

import torch

from nettrain.algorithms.base import AsyncAlgorithm
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
from nettrain.engines.sim.clock import VirtualClock
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.events import run_events
from nettrain.engines.sim.servers import SimServers
from nettrain.errors import DivergenceError
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder


class SimEngine:
    """Runs a :class:`Job` with every agent in this process."""

    name = "sim"

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult:
        """Run ``job``; with ``resume``, continue from that checkpoint's round."""
        if isinstance(job.algorithm, AsyncAlgorithm):
            return run_events(job, folder, resume=resume)
        n, problem = job.n_agents, job.problem
        x = job.x0.expand(n, -1).clone()  # (n, d)
        comm = SimCommunicator(job.topology, x.device, x.dtype)
        if job.algorithm.uses_centre:
            comm.servers = SimServers(job.x0, job.algorithm, n, job.cost)
        oracle = problem.oracle(job.shards, range(n), batch_size=job.batch_size, seed=job.seed)
        clock = VirtualClock(job.cost)
        faults = job.fault_spec
        totals = work_totals(n, faults)

        def account(t: int = -1) -> None:
            samples = oracle.meter.reset()
            messages, nbytes = comm.traffic.reset()
            account_round(clock, totals, faults, t, samples, messages, nbytes)

        start = time.perf_counter()
        state = job.algorithm.init(x, oracle, comm)
        account()  # the initial gradients of tracking methods are work too
        first, saved = 0, None
        if resume is not None:  # the fresh state is the template the saved one fills
            state = load_state(state, resume.state)
            oracle.load_local_state(resume.rng)
            clock.now, totals = resume.clock, dict(resume.totals)
            first, saved = resume.round, resume.round
            if comm.servers is not None and resume.servers is not None:
                comm.servers.load_state_dict(resume.servers)
            start -= resume.wall_time_s
        loss = torch.zeros(n)
        with progress_bar(job.rounds, f"{job.algorithm.name} x{n}", job.progress) as advance:
            advance(first, "")
            for t in range(first, job.rounds):
                faults.check_synchronous(t, job.algorithm.name)
                state, loss = job.algorithm.step(state, t, oracle, comm)
                account(t)
                try:
                    check_finite(loss, t, job.algorithm.stability_hint)
                except DivergenceError as err:
                    raise DivergenceError(f"{err}{folder.checkpoint_hint(saved)}") from None
                status = ""
                if (t + 1) % job.eval_every == 0 or t + 1 == job.rounds:
                    record = {
                        "round": t + 1,
                        "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                        "virtual_time_s": clock.now,
                        "wall_time_s": time.perf_counter() - start,
                        **traffic_fields(totals),
                        "train_loss": float(loss.mean()),
                        **job.metrics(state.x, oracle.buffers),
                        **job.algorithm.diagnostics(state),
                        **centre_fields(job, job.algorithm.centre(state, comm), oracle.buffers),
                    }
                    folder.append(record)
                    status = status_line(record)
                if job.checkpoint_every and (t + 1) % job.checkpoint_every == 0:
                    folder.checkpoint(
                        Checkpoint(
                            round=t + 1,
                            state=state_dict(state),
                            rng=oracle.local_state(),
                            clock=clock.now,
                            totals=totals,
                            records=len(folder.records),
                            wall_time_s=time.perf_counter() - start,
                            servers=comm.servers.state_dict() if comm.servers else None,
                        )
                    )
                    saved = t + 1
                advance(1, status)
        centre = job.algorithm.centre(state, comm)
        return RunResult(state.x, folder.records, centre=centre, buffers=oracle.buffers or None)
