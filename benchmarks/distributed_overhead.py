"""The distributed engine's cost per round against torch's DistributedDataParallel.

What is measured, in one ``torchrun`` launch of 4 gloo processes on loopback (one
agent per process, ``OMP_NUM_THREADS=1`` each), in seconds per round:

* ``engine_allreduce``: all-reduce SGD through the real engine,
  ``nettrain.experiment.run(load_config({"engine": "distributed", "algorithm":
  "allreduce", ...}))``: the gradient of the agent's mini-batch by the layer-wise
  batched kernel, the all-reduce of the gradient started bucket by bucket from the
  backward pass's hooks (``DistCommunicator.start_mean_parts``; buckets of at most
  ``--bucket-bytes``, default 1 MiB as DDP's first bucket, so this model's 407 KB
  gradient is one bucket on both sides), the SGD step, and the engine's per-round
  bookkeeping (the work counters and losses, gathered by one ``all_gather`` per 32
  rounds that runs while the next 32 compute, the virtual clock, the divergence
  check). Seconds per round = the last record's ``round_wall_time_s``: rank 0's
  training time from the round-0 record to the last (``eval_every = rounds``), over
  the rounds. Excluded, as DDP's construction is on its side: the set-up before the
  first round (data, oracle, algorithm: about 40 ms a run), the evaluations and the
  final gather of the states;
* ``ddp``: the same model (``build_model``, loaded with the engine's initial
  parameters), the same mini-batches (each rank samples its own shard with the
  engine's generator, so both see identical batches), plain ``torch.optim.SGD`` with
  the same learning rate, wrapped in ``DistributedDataParallel`` on the same gloo
  group: ``forward, cross-entropy, zero_grad, backward (bucketed all-reduce
  overlapped), step``. Timed between two barriers over the same number of rounds;
* ``engine_dpsgd_ring``: D-PSGD on a ring (Metropolis weights) through the engine,
  timed like ``engine_allreduce``: each round sends the parameters to the 2
  neighbours and receives theirs instead of an all-reduce (the exchange starts before
  the forward pass, so it overlaps the whole gradient computation); left out with
  fewer than 3 processes (``--nproc 1``: the engine's round against DDP's without
  contention).

The three alternate within every repetition (the order reversed every other one), so
load from other processes hits them alike; one warm-up pass of each is excluded. The
figures are the medians over the repetitions; ``ratio_vs_ddp`` = median engine
all-reduce / median DDP, target <= 1.05. A first check runs the engine's all-reduce
SGD and DDP for the warm-up rounds from the same start and reports the largest
parameter difference (``max_param_diff``): it must be float32 rounding (<= 1e-6),
which shows that both train the same model on the same batches (DDP's side draws the
oracle's counter-based mini-batches, :func:`~nettrain.problem.random_layers.integers53`).

Costs found and removed so far (benchmarks/README.md): the vmapped gradient of a single
agent, a bookkeeping ``all_gather`` every round (now one per 32 rounds), and, inside
the timed window, the oracle's copy of its 15,000-sample shard (100-450 ms a run on
the loaded machine, 0.5-2 ms a round; the oracle now reads its samples through their
indices) and a ``model.train()`` walk of the module tree every pass.

Command (run it directly: it starts ``torchrun`` itself; about 1.5 minutes on
the shared 2-core development machine, ``--quick`` under one)::

    .venv/bin/python benchmarks/distributed_overhead.py [--quick] [--rounds R] [--reps K]
        [--warmup W] [--dataset fashion_mnist] [--model mlp] [--hidden 128] [--batch-size 32]
        [--nproc 4] [--bucket-bytes B]

Output: a table, then as the last line a JSON object with ``ratio_vs_ddp``,
``ratio_dpsgd_ring_vs_allreduce``, the medians and every repetition's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from nettrain.config import RunConfig, load_config
from nettrain.engines.distributed import buckets
from nettrain.experiment import build_job, run
from nettrain.problem.models import build_model
from nettrain.problem.oracle import agent_seed
from nettrain.problem.random_layers import integers53

TARGET = 1.05
METHODS = ("engine_allreduce", "ddp", "engine_dpsgd_ring")
RING = 3  # processes a ring needs: with fewer, the D-PSGD ring is left out
ARGV = "NETTRAIN_BENCHMARK_ARGV"  # the launcher's arguments, handed to the ranks


# ------------------------------------------------------------------------------ launch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: Sequence[str], nproc: int) -> int:
    """Start this script under torchrun with ``nproc`` ranks of one thread each.

    The ranks get this script's arguments in the environment (``ARGV``), not on
    torchrun's command line, whose parser would take ``--nproc`` for an abbreviation of
    its own ``--nproc-per-node``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += [os.path.abspath(__file__)]
    env = os.environ | {"OMP_NUM_THREADS": "1", ARGV: json.dumps(list(argv))}
    return subprocess.run(command, env=env, check=False).returncode


# ----------------------------------------------------------------------------- methods


def config(args: argparse.Namespace, world: int, **changes: Any) -> RunConfig:
    """The run both sides train: ``world`` agents, one per rank, IID shards."""
    values = {
        "engine": "distributed",
        "backend": "gloo",
        "algorithm": "allreduce",
        "agents": world,
        "dataset": args.dataset,
        "model": args.model,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "lr": 0.1,
        "seed": 0,
        "progress": False,
        "timeout_s": 300.0,
    }
    return load_config(values | changes)


def engine_seconds(cfg: RunConfig, rounds: int) -> tuple[float, torch.Tensor]:
    """Seconds per round of one engine run (rank 0's last ``round_wall_time_s``: its
    training time from the round-0 record to the last, over the rounds), and
    ``x: (n, d)``."""
    result = run(cfg.replace(rounds=rounds, eval_every=rounds))
    return result.records[-1]["round_wall_time_s"] if result.records else float("nan"), result.x


class DDPRunner:
    """This rank's DDP replica of ``cfg``'s model, shard and mini-batch stream."""

    def __init__(self, cfg: RunConfig, rank: int) -> None:
        job = build_job(cfg)
        data = job.problem.data
        model = build_model(cfg.model, data.feature_shape, data.n_outputs, hidden=cfg.hidden)
        job.problem.spec.load_into(model, job.x0)
        self.spec = job.problem.spec
        self.model = DistributedDataParallel(model)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr)
        shard = job.shards[rank]
        self.x, self.y = data.x_train[shard], data.y_train[shard]
        # The engine's oracle's draw: position b of batch k is the counter-based hash
        # (SplitMix64) of k * B + b under the key agent_seed(seed, rank), mod |shard|.
        self.key = torch.tensor([agent_seed(cfg.seed, rank)])
        self.batch, self.drawn = cfg.batch_size, 0
        self.positions = torch.arange(self.batch)

    def step(self) -> None:
        counters = self.drawn * self.batch + self.positions
        idx = integers53(self.key, counters[None])[0] % len(self.y)
        self.drawn += 1
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def local_step(self) -> None:
        """The same step without gradient averaging (``no_sync``): its compute alone."""
        with self.model.no_sync():
            self.step()

    def seconds(self, rounds: int, step: Callable[[], None] | None = None) -> float:
        """Seconds per round of ``rounds`` steps between two barriers."""
        step = step or self.step
        dist.barrier()
        start = time.perf_counter()
        for _ in range(rounds):
            step()
        dist.barrier()
        return (time.perf_counter() - start) / rounds

    def params(self) -> torch.Tensor:
        return self.spec.flatten(self.model.module)


def timed(fn: Callable[[], object], rounds: int) -> float:
    """Seconds per call of ``fn`` over ``rounds`` calls between two barriers."""
    dist.barrier()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    dist.barrier()
    return (time.perf_counter() - start) / rounds


def rank_main(args: argparse.Namespace) -> int:
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    main = rank == 0
    started = time.perf_counter()

    def say(text: str) -> None:
        if main:
            print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    allreduce = config(args, world)
    dpsgd = config(args, world, algorithm="dpsgd", topology="ring")
    ddp = DDPRunner(allreduce, rank)
    methods = METHODS if world >= RING else METHODS[:2]

    # Warm-up and check: the engine and DDP from the same start, on the same batches.
    say(f"warm-up and check ({args.warmup} rounds each)")
    _, x_engine = engine_seconds(allreduce, args.warmup)
    ddp.seconds(args.warmup)
    diff = float((x_engine - ddp.params()[None, :]).abs().max())
    if "engine_dpsgd_ring" in methods:
        engine_seconds(dpsgd, args.warmup)

    measures: dict[str, Callable[[], float]] = {
        "engine_allreduce": lambda: engine_seconds(allreduce, args.rounds)[0],
        "ddp": lambda: ddp.seconds(args.rounds),
        "engine_dpsgd_ring": lambda: engine_seconds(dpsgd, args.rounds)[0],
    }
    runs: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(args.reps):
        order = methods if rep % 2 == 0 else methods[::-1]
        for name in order:
            runs[name].append(measures[name]())
        say(
            f"rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms" for k, v in runs.items())
        )

    if main:
        report(args, world, allreduce, runs, diff, time.perf_counter() - started)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def report(
    args: argparse.Namespace,
    world: int,
    cfg: RunConfig,
    runs: dict[str, list[float]],
    diff: float,
    seconds: float,
) -> None:
    """The table, then the JSON summary as the last line."""
    median = {name: statistics.median(v) for name, v in runs.items()}
    ratio = median["engine_allreduce"] / median["ddp"]
    has_ring = "engine_dpsgd_ring" in median  # not below RING processes
    ring = median["engine_dpsgd_ring"] / median["engine_allreduce"] if has_ring else None
    dim = build_job(cfg.replace(rounds=1)).problem.dim
    print(
        f"{world} gloo processes, {cfg.dataset}, {cfg.model} hidden={list(cfg.hidden)} "
        f"(d = {dim:,}), batch {cfg.batch_size} per rank, {args.rounds} rounds x "
        f"{args.reps} repetitions"
    )
    print(f"{'method':<20} {'median ms/round':>16} {'min':>8} {'max':>8}  vs DDP")
    for name in runs:
        v = [s * 1e3 for s in runs[name]]
        rel = median[name] / median["ddp"]
        print(f"{name:<20} {median[name] * 1e3:>16.3f} {min(v):>8.3f} {max(v):>8.3f}  {rel:.3f}")
    print(f"ratio engine all-reduce / DDP: {ratio:.3f} (target <= {TARGET})")
    if ring is not None:
        print(f"ratio D-PSGD ring / engine all-reduce: {ring:.3f}")
    print(f"max |x_engine - x_ddp| after {args.warmup} rounds: {diff:.2e}")
    summary = {
        "ratio_vs_ddp": round(ratio, 4),
        "ratio_vs_ddp_met": ratio <= TARGET,
        "ratio_dpsgd_ring_vs_allreduce": None if ring is None else round(ring, 4),
        "ms_per_round": {k: round(v * 1e3, 4) for k, v in median.items()},
        "ms_per_round_reps": {k: [round(s * 1e3, 4) for s in v] for k, v in runs.items()},
        "max_param_diff": diff,
        "nproc": world,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "hidden": list(cfg.hidden),
        "d": dim,
        "batch_size": cfg.batch_size,
        "rounds": args.rounds,
        "reps": args.reps,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
    }
    print(json.dumps(summary), flush=True)


# -------------------------------------------------------------------------------- main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per measurement")
    parser.add_argument("--reps", type=int, default=0, help="repetitions of each method")
    parser.add_argument("--warmup", type=int, default=20, help="rounds of the excluded warm-up")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--hidden", default="128", help="MLP hidden widths, comma separated")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch per rank")
    parser.add_argument(
        "--nproc",
        type=int,
        default=4,
        help="gloo processes (agents); the D-PSGD ring needs 3, below it is left out",
    )
    parser.add_argument(
        "--bucket-bytes",
        type=int,
        default=0,
        help="the engine's gradient bucket cap (default: buckets.BUCKET_BYTES, DDP's 1 MiB)",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (50 if args.quick else 200)
    args.reps = args.reps or (3 if args.quick else 7)
    if min(args.rounds, args.reps, args.warmup, args.batch_size, args.nproc) < 1:
        parser.error("--rounds, --reps, --warmup, --batch-size and --nproc must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = json.loads(os.environ[ARGV]) if ARGV in os.environ else sys.argv[1:]
    args = parse(argv)
    if "RANK" not in os.environ:  # started by hand: become the launcher
        return launch(argv, args.nproc)
    torch.set_num_threads(1)
    if args.bucket_bytes:
        buckets.BUCKET_BYTES = args.bucket_bytes
    return rank_main(args)


if __name__ == "__main__":
    sys.exit(main())
