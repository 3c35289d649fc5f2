"""One machine of the cross-machine tests of the shared-memory engine (under torchrun).

``python -m torch.distributed.run --nproc-per-node 2 shared_memory_machines.py OUT``:
each rank is one machine on loopback (gloo). It checks two things and saves what it
saw to ``OUT/rank<r>.pt``:

1. An averaging while the local workers keep writing: ``x = r + 1`` on a shared
   tensor; between the start of the all-reduce and its end this machine adds
   ``10 (r + 1)`` to ``x[:2]``; afterwards ``x`` must be the mean plus that write.
2. A run of ``engine=shared_memory`` with one worker per machine and ``average_every``:
   the engine uses the group it finds; both machines end with the same model.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from nettrain.config import load_config
from nettrain.engines.shared_memory.averaging import ModelAverager
from nettrain.experiment import run


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    x = torch.full((6,), float(rank + 1), dtype=torch.float64).share_memory_()
    pending = ModelAverager().start(x)
    x[:2] += 10.0 * (rank + 1)  # a worker's write during the exchange
    mean = pending.wait()
    cfg = load_config(
        {
            "engine": "shared_memory",
            "algorithm": "block_async",
            "processes": 1,
            "blocks": 2,
            "average_every": 5,
            "rounds": 20,
            "eval_every": 10,
            "dataset": "digits",
            "model": "linear",
            "batch_size": 8,
            "seed": rank,  # different batches on each machine
            "progress": False,
        }
    )
    result = run(cfg)
    gathered = [torch.empty_like(result.x) for _ in range(2)]
    dist.all_gather(gathered, result.x)
    saved = {"x": x.clone(), "mean": mean, "final": gathered, "records": result.records}
    torch.save(saved, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    # Leave without interpreter teardown of the gloo group (see distributed/worker.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
