"""One torchrun process of the overlap tests (``test_overlap.py``).

``python -m torch.distributed.run --nproc-per-node N overlap_worker.py OUT``: each rank
joins one gloo group and

1. takes one gradient of its agent by the oracle with the all-reduce fed bucket by
   bucket (:meth:`DistCommunicator.start_mean_parts`, several bucket caps), and the
   same gradient all-reduced whole after the pass (``start_mean``);
2. runs all-reduce SGD through the engine with the default buckets and with one
   parameter a bucket (``buckets.BUCKET_BYTES``).

Rank 0 saves ``{"parts": {cap: (bucketed mean, whole mean, buckets launched)},
"runs": {cap: x (n, d)}, "n": n, "config": CONFIG}`` to ``OUT``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from nettrain.config import load_config
from nettrain.engines.distributed import buckets
from nettrain.engines.distributed.comm import DistCommunicator
from nettrain.experiment import build_job, run

CONFIG = {
    "dataset": "digits",
    "hidden": [16, 8],
    "rounds": 12,
    "batch_size": 8,
    "eval_every": 12,
    "progress": False,
    "topology": "complete",
    "algorithm": "allreduce",
    "regularizer": "l2",
    "reg_lambda": 1e-3,
}
CAPS = (0, 4, 1 << 20)  # bytes: one bucket; one parameter a bucket; DDP's first bucket


def main(out: str) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, n = dist.get_rank(), dist.get_world_size()
    config = load_config(CONFIG | {"agents": n})
    job = build_job(config)
    comm = DistCommunicator(job.topology)
    parts = {}
    for cap in CAPS:
        buckets.BUCKET_BYTES = cap
        oracle = job.problem.oracle([job.shards[rank]], [rank], batch_size=8, seed=0)
        again = job.problem.oracle([job.shards[rank]], [rank], batch_size=8, seed=0)
        x = job.x0[None] + 0.01 * rank  # a different point on every rank
        mean = comm.start_mean_parts(x)
        assert isinstance(mean, buckets.BucketedMean)
        _, g = oracle.grad(x, sink=mean)
        fed = mean.wait(g)
        _, g_whole = again.grad(x)
        assert torch.equal(g, g_whole)  # the local gradient, bit for bit
        whole = comm.start_mean(g_whole).wait()
        parts[cap] = (fed, whole, len(mean.works))
    runs = {}
    for cap in (buckets.BUCKET_BYTES, 4):
        buckets.BUCKET_BYTES = cap
        runs[cap] = run(load_config(CONFIG | {"agents": n, "engine": "distributed"})).x
    if rank == 0:
        torch.save({"parts": parts, "runs": runs, "n": n, "config": CONFIG}, out)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as worker.py: no teardown after the results are saved


if __name__ == "__main__":
    main(sys.argv[1])
