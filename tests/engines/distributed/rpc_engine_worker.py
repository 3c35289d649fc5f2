"""One torchrun process: the distributed engine opens and closes an rpc session itself.

``python -m torch.distributed.run --nproc-per-node N rpc_engine_worker.py OUT``: an
algorithm that declares ``uses_rpc`` (all-reduce SGD that also posts its parameters
to a mailbox hosted on rank 0 every round) runs through ``DistributedEngine``; once
``run`` returns, the engine has shut the rpc session down gracefully, so rank 0's
mailbox holds every message, and rank 0 saves the counts to ``OUT``.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from rpc_mailbox import Mailbox

from nettrain.algorithms.baselines import AllReduceSGD, SGDRunState
from nettrain.config import load_config
from nettrain.engines.distributed.engine import DistributedEngine
from nettrain.experiment import build_job
from nettrain.recording import RunFolder

MAILBOX = Mailbox()
ROUNDS = 7


@dataclasses.dataclass(frozen=True)
class PostingSGD(AllReduceSGD):
    uses_rpc = True

    def init(self, x0, oracle, comm):
        if int(comm.agents[0]) == 0:
            comm.rpc.host("mailbox", MAILBOX)
        return super().init(x0, oracle, comm)

    def step(self, state: SGDRunState, t: int, oracle, comm):
        box = comm.rpc.remote(0, "mailbox")
        future = box.rpc_async("post", int(comm.agents[0]), state.x[0].clone())
        out = super().step(state, t, oracle, comm)
        comm.rpc.wait([future], "posting the parameters")
        return out


def main(out: str) -> None:
    cfg = load_config(
        {"dataset": "digits", "agents": 4, "hidden": [8], "rounds": ROUNDS, "batch_size": 8}
        | {"engine": "distributed", "progress": False, "timeout_s": 30}
    )
    job = build_job(cfg)
    job = dataclasses.replace(job, algorithm=PostingSGD(lr=job.algorithm.lr))
    engine = DistributedEngine.from_config(cfg)
    result = engine.run(job, RunFolder(None))
    if engine.is_main:
        counts = {k: (v.messages, v.bytes) for k, v in MAILBOX.received().items()}
        torch.save({"counts": counts, "d": job.problem.dim, "x": result.x}, out)


if __name__ == "__main__":
    main(sys.argv[1])
