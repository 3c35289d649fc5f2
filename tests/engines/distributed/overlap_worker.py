"""One torchrun process of the overlap tests (``test_overlap.py``).

``python -m torch.distributed.run --nproc-per-node N overlap_worker.py OUT``: each rank
joins one gloo group and

1. takes one gradient of its agent by the oracle with the all-reduce fed bucket by
   bucket (:meth:`DistCommunicator.start_mean_parts`, several bucket caps), and the
   same gradient all-reduced whole after the pass (``start_mean``);
2. the same with a columnwise compressor (half precision, the lattice): each bucket
   encoded and all-gathered as it is put, against the whole gradient's compressed mean,
   and the traffic each counts;
3. puts only the last parameter's columns of a gradient, plain and in half precision,
   leaving the rest to the wait, against the whole gradient's mean;
4. runs all-reduce SGD through the engine with the default buckets and with one
   parameter a bucket (``buckets.BUCKET_BYTES``), plain and with the lattice quantiser
   and error feedback.

Rank 0 saves ``{"parts": {cap: (bucketed mean, whole mean, buckets launched)},
"coded": {(compressor, cap): (bucketed, whole, buckets, traffic bucketed, traffic
whole)}, "partial": {compressor: (partly put, whole)}, "runs": {(quantizer, cap): x
(n, d)}, "n": n, "config": CONFIG}`` to ``OUT``.
"""

from __future__ import annotations

import itertools
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from nettrain.compression import HalfPrecision, Lattice
from nettrain.config import load_config
from nettrain.engines.distributed import buckets
from nettrain.engines.distributed.comm import DistCommunicator
from nettrain.experiment import build_job, run
from nettrain.patterns import Codec

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
DEFAULT_BYTES = buckets.BUCKET_BYTES
LATTICE = {"bits": 16, "lattice_eps": 1e-4}  # with error feedback, the default


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
    coded = {}
    for compressor, cap in itertools.product((HalfPrecision(), Lattice(eps=1e-4)), (0, 4)):
        buckets.BUCKET_BYTES = cap
        oracle = job.problem.oracle([job.shards[rank]], [rank], batch_size=8, seed=0)
        x = job.x0[None] + 0.01 * rank
        comm.traffic.reset()
        mean = comm.start_mean_parts(x, codec=Codec(compressor))
        assert isinstance(mean, buckets.BucketedGather)
        _, g = oracle.grad(x, sink=mean)
        fed, counted = mean.wait(g), comm.traffic.reset()
        whole = comm.start_mean(g, codec=Codec(compressor)).wait()
        coded[compressor.name, cap] = (fed, whole, len(mean.parts), counted, comm.traffic.reset())
    partial = {}  # the last parameter's columns put, the rest left to the wait
    for compressor in (None, HalfPrecision()):
        oracle = job.problem.oracle([job.shards[rank]], [rank], batch_size=8, seed=0)
        x = job.x0[None] + 0.01 * rank
        _, g = oracle.grad(x)
        codec = None if compressor is None else Codec(compressor)
        mean = comm.start_mean_parts(x, codec=codec)
        last = job.problem.spec.slices[-1]
        mean.put(last, g[:, last])
        fed = mean.wait(g)
        partial["none" if compressor is None else compressor.name] = (
            fed, comm.start_mean(g, codec=codec).wait()
        )  # fmt: skip
    runs = {}
    for quantizer, cap in itertools.product(("none", "lattice"), (DEFAULT_BYTES, 4)):
        buckets.BUCKET_BYTES = cap
        config = CONFIG | {"agents": n, "engine": "distributed", "quantizer": quantizer}
        runs[quantizer, cap] = run(load_config(config | LATTICE)).x
    if rank == 0:
        result = {"parts": parts, "coded": coded, "partial": partial, "runs": runs}
        result |= {"n": n, "config": CONFIG}
        torch.save(result | {"lattice": LATTICE}, out)
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as worker.py: no teardown after the results are saved


if __name__ == "__main__":
    main(sys.argv[1])
