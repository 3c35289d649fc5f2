"""The two ways the written-out backward pass writes weight gradients into the stack.

An agent's weight gradient ``dW = dY h^T`` (``O x F``, a batch of ``B`` samples) lives in
a few columns of the agent's row of the gradient stack, so the layer's ``(m, O, F)``
gradients are strided there. :func:`nettrain.problem.backprop.weight_grad` writes them

* ``direct``: by one batched product into the strided output (on the CPU torch then runs
  one matrix product per agent), or
* ``blocked``: a few MB of agents at a time into one contiguous scratch block (torch's
  batched kernel), each block copied into the stack while it is in cache.

For each matrix size, ``m`` agents are chosen so that their matrices fill about 64 MB,
and three stacks of rows ``O * F + 100`` wide are written in turn, each call on the one
written longest ago (out of cache where the cache holds fewer). Both ways alternate in
every repetition; the figures are the best repetition, in ms. ``backprop.DIRECT_BYTES``
is the matrix size from which the oracle takes the direct way; the summary line says
where ``direct`` starts to win here.

Command (a few seconds)::

    .venv/bin/python benchmarks/weight_grad_paths.py [--threads N] [--batch B]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence

import torch

from nettrain.memory import retain_freed_memory
from nettrain.problem import backprop

SHAPES = ((32, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (128, 784))
TOTAL_BYTES = 64 * 2**20
REPS = 7


def measure(o: int, f: int, batch: int) -> dict[str, float | int]:
    """Best ms of each way for ``(o, f)`` matrices, alternating, on three stacks in turn."""
    m = max(1, TOTAL_BYTES // (o * f * 4))
    gen = torch.Generator().manual_seed(0)
    dy, h = torch.randn(m, o, batch, generator=gen), torch.randn(m, f, batch, generator=gen)
    stacks = [torch.zeros(m, o * f + 100) for _ in range(3)]
    views = [s[:, : o * f].view(m, o, f) for s in stacks]
    limits = {"direct": 0, "blocked": 2**62}
    best = {way: float("inf") for way in limits}
    saved = backprop.DIRECT_BYTES
    try:
        # each call writes the stack written longest ago, whichever way it takes
        turns = enumerate(itertools.product(range(REPS + 1), limits.items()))
        for call, (rep, (way, limit)) in turns:
            backprop.DIRECT_BYTES = limit
            start = time.perf_counter()
            backprop.weight_grad(dy, h, views[call % 3])
            if rep:  # the first repetition warms up
                best[way] = min(best[way], time.perf_counter() - start)
    finally:
        backprop.DIRECT_BYTES = saved
    return {
        "O": o,
        "F": f,
        "matrix_kib": o * f * 4 // 1024,
        "agents": m,
        "direct_ms": round(best["direct"] * 1e3, 2),
        "blocked_ms": round(best["blocked"] * 1e3, 2),
        "direct_over_blocked": round(best["direct"] / best["blocked"], 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = as is")
    parser.add_argument("--batch", type=int, default=32, help="samples a product contracts")
    args = parser.parse_args(argv)
    if args.threads < 0 or args.batch < 1:
        parser.error("--threads must be >= 0 and --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()  # as nettrain.run sets the process up
    rows = [measure(o, f, args.batch) for o, f in SHAPES]
    for row in rows:
        print(json.dumps(row), flush=True)
    wins = [row["matrix_kib"] for row in rows if row["direct_over_blocked"] < 1]
    summary = {
        "direct_wins_from_kib": min(wins) if wins else None,
        "direct_bytes_kib": backprop.DIRECT_BYTES // 1024,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "torch": torch.__version__,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
