"""One torchrun process of an asynchronous gossip run whose local steps are summed.

``python -m torch.distributed.run --nproc-per-node P conservation_worker.py OUT ALGORITHM``:
``ALGORITHM`` (swarm or adpsgd, uncompressed; 4 agents, ``4 / P`` a process) runs
through ``DistributedEngine`` with
a test-only subclass whose ``local_phase`` adds each phase's displacement
``moved - x`` (in float64) to this process's ``DISPLACEMENT``, and sleeps a little
first, so that the others' exchanges reach this rank while its main thread computes.
The engine's ``Peer`` (every agent's) is replaced by one that counts the events during
which it answered an exchange (``overlapped``): the window between ``take_shift`` and
``publish`` that the shift bookkeeping has to get right. Each rank saves its
displacement and counts to ``OUT/rank<r>.pt``; rank 0 also saves ``x0``, every
agent's final ``x`` and the last record to ``OUT/run.pt``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from nettrain.algorithms.swarm import ADPSGD, SwarmSGD
from nettrain.config import load_config
from nettrain.engines.distributed import events
from nettrain.engines.distributed.engine import DistributedEngine
from nettrain.engines.distributed.gossip import Peer
from nettrain.experiment import build_job
from nettrain.recording import RunFolder

ROUNDS = 20
PHASE_SLEEP_S = 0.005  # widens the window in which the others' exchanges arrive
DISPLACEMENT: list[torch.Tensor] = []  # this process's sum of moved - x, float64 (d,)
PHASES = [0]


class Summing:
    """``local_phase`` of the class it is mixed into, its displacement summed."""

    def local_phase(self, x, agents, steps, oracle):
        time.sleep(PHASE_SLEEP_S)
        moved, loss = super().local_phase(x, agents, steps, oracle)  # SwarmSGD's
        step = (moved.double() - x.double()).sum(0)  # (d,) summed over this rank's rows
        DISPLACEMENT[0] += step
        PHASES[0] += len(agents)  # one phase an agent
        return moved, loss


@dataclasses.dataclass(frozen=True)
class SummingSwarm(Summing, SwarmSGD):
    pass


@dataclasses.dataclass(frozen=True)
class SummingADPSGD(Summing, ADPSGD):
    pass


class WatchedPeer(Peer):
    """A :class:`Peer` that counts the events during which it answered exchanges."""

    overlapped = 0

    def take_shift(self) -> torch.Tensor:
        shift = super().take_shift()
        self.taken = sum(self.answered.values())  # an undercount if one slips in here
        return shift

    def publish(self, x: torch.Tensor) -> None:
        if sum(self.answered.values()) > getattr(self, "taken", 0):
            WatchedPeer.overlapped += 1
        super().publish(x)


def main(out: str, algorithm: str) -> None:
    steps = {"swarm": 3, "adpsgd": 1}[algorithm]
    cfg = load_config(
        {"dataset": "digits", "agents": 4, "hidden": [8], "rounds": ROUNDS, "batch_size": 8}
        | {"algorithm": algorithm, "local_steps": steps, "quantizer": "none", "lr": 0.1}
        | {"eval_every": ROUNDS, "engine": "distributed", "progress": False, "timeout_s": 30}
    )
    job = build_job(cfg)
    algo = job.algorithm
    cls = {"swarm": SummingSwarm, "adpsgd": SummingADPSGD}[algorithm]
    assert type(algo) is cls.__mro__[2], type(algo)  # the configured class, subclassed
    settings = {f.name: getattr(algo, f.name) for f in dataclasses.fields(algo) if f.init}
    job = dataclasses.replace(job, algorithm=cls(**settings))
    DISPLACEMENT.append(torch.zeros(job.problem.dim, dtype=torch.float64))
    events.Peer = WatchedPeer  # the class DistEvents hosts
    engine = DistributedEngine.from_config(cfg)
    folder = RunFolder(None)
    result = engine.run(job, folder)
    rank = int(os.environ["RANK"])
    mine = {"d": DISPLACEMENT[0], "phases": PHASES[0], "overlapped": WatchedPeer.overlapped}
    torch.save(mine, Path(out) / f"rank{rank}.pt")
    if engine.is_main:
        record = {k: v for k, v in folder.records[-1].items() if isinstance(v, int | float)}
        torch.save({"x0": job.x0, "x": result.x, "record": record}, Path(out) / "run.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
