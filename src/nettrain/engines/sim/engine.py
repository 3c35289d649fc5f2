"""The ``sim`` engine: all agents stacked in one process, a virtual clock, determinism.

Each round the algorithm steps the whole stack ``x: (n, d)`` (:mod:`..rounds`;
docs/architecture.md, "One synchronous round"); asynchronous methods go to
:mod:`.events`. Same seed, same numbers, bit for bit on CPU.
"""

from __future__ import annotations

import time
from typing import Any

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult, check_engine
from nettrain.engines.driver import drive
from nettrain.engines.rounds import Rounds
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
        drive(job, folder, rounds, resume, start, rounds.timeline)
        return rounds.result(folder.records)


# Rounds whose notes settle together (Rounds.settle_every): the clock's replay of a round
# is some fifteen small tensor operations, which one pass over the rounds shares (a run
# of 16 agents of digits' MLP took 11% less wall time); at most NOTES_HELD work counts
# are held, so that a large network settles more often.
SETTLE_EVERY = 32
NOTES_HELD = 1 << 18


def settle_rounds(n: int) -> int:
    """Rounds of ``n`` agents whose notes settle together: :data:`SETTLE_EVERY`, at most
    as many as hold :data:`NOTES_HELD` work counts (four an agent a round), at least 1."""
    return max(1, min(SETTLE_EVERY, NOTES_HELD // (4 * n)))


class SimRounds(Rounds):
    """Synchronous rounds of every agent, ``x: (n, d)``; the centre of a method that has
    one on :class:`~nettrain.engines.sim.servers.SimServers`. Notes settle every
    :data:`SETTLE_EVERY` rounds (fewer beyond 2,048 agents: :data:`NOTES_HELD`), so a
    divergence stops the run up to that many rounds after the round it names."""

    def __init__(self, job: Job, resume: Checkpoint | None) -> None:
        n, algo = job.n_agents, job.algorithm
        self.settle_every = settle_rounds(n)
        self.servers = SimServers(job.x0, algo, n, job.cost) if algo.uses_centre else None
        comm = SimCommunicator(job.topology, job.x0.device, job.x0.dtype, self.servers)
        super().__init__(job, list(range(n)), comm, resume)

    def servers_state(self) -> dict[str, Any] | None:
        return self.servers.state_dict() if self.servers is not None else None

    def restore_servers(self, saved: dict[str, Any]) -> None:
        if self.servers is not None:
            self.servers.load_state_dict(saved)
