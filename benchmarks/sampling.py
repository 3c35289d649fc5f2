"""Mini-batch sampling: the old per-agent generator loop against one vectorised draw.

What is measured, side by side in one run:

* ``sample``: milliseconds of one ``Oracle._sample`` call over all ``n`` agents, for
  ``n`` in {64, 256, 4096} and batch 16, with the oracle's vectorised counter-based
  draw (``new``: SplitMix64 of each agent's key and batch positions, modulo its shard's
  size, one set of tensor operations for all agents) and with the loop nettrain used
  before (``old``: one ``torch.randint(..., generator=agent's generator)`` per agent,
  then ``stack``; reproduced here in :class:`OldSampling`, as it was in
  ``src/nettrain/problem/oracle.py``). Shards: an IID partition of the digits training
  set for n = 64 and 256; at n = 4096 (more agents than samples) 8 samples per agent
  drawn with replacement from it (the sampling cost does not depend on a shard's
  size or content).
* ``round``: milliseconds of one simulator round of D-PSGD (lr 0.1) on a ring of 256
  agents, MLP 64-32-10 on digits, batch 16 (``DPSGD.step`` through a
  ``SimCommunicator``: mixing, ``Oracle.grad``, update), with each sampler.

The measurements alternate inside every repetition, so load from other processes
hits them alike; the best and the median of the repetitions are reported.

Command (about 20 s on an idle 2-core machine; ``--quick`` about a third)::

    .venv/bin/python benchmarks/sampling.py [--quick] [--threads N]

Output: one line of figures per measurement, then one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from nettrain.data import Dataset, load_dataset, partition
from nettrain.problem.oracle import Oracle, Problem, agent_seed
from sim_throughput import CASES, SimRunner, calls_per_block, make_problem, run_facts, seconds

SEED = 0
BATCH = 16
AGENTS = (64, 256, 4096)
ROUND_AGENTS = 256


class OldSampling:
    """The sampler nettrain used before: a ``torch.Generator`` per agent, seeded by
    ``agent_seed(seed, agent)``, and one ``torch.randint`` per agent per call."""

    def __init__(self, oracle: Oracle, seed: int) -> None:
        self.oracle = oracle
        self.generators = [
            torch.Generator().manual_seed(agent_seed(seed, int(a))) for a in oracle.agents
        ]

    def __call__(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o, B = self.oracle, self.oracle.batch_size
        draws = [
            torch.randint(int(o.sizes[i]), (B,), generator=self.generators[i])
            for i in local.tolist()
        ]
        idx = torch.stack(draws) + o.offsets[local, None]  # (k, B)
        w = torch.full(idx.shape, 1.0 / B, dtype=o.x.dtype)
        return idx.to(o.x.device), w.to(o.x.device)


def shards_for(data: Dataset, n: int) -> list[torch.Tensor]:
    """An IID partition when every agent gets 4 samples or more, else 8 samples per agent
    drawn with replacement (shards may overlap)."""
    N = len(data.y_train)
    if 4 * n <= N:
        return partition(data.y_train, n, "iid", seed=SEED)
    gen = torch.Generator().manual_seed(SEED)
    return list(torch.randint(N, (n, 8), generator=gen))


def oracles(problem: Problem, n: int) -> tuple[Oracle, Oracle]:
    """Two oracles on the same shards: the first samples the new way, the second the old."""
    shards = shards_for(problem.data, n)
    new = problem.oracle(shards, range(n), batch_size=BATCH, seed=SEED)
    old = problem.oracle(shards, range(n), batch_size=BATCH, seed=SEED)
    old._sample = OldSampling(old, SEED)  # type: ignore[method-assign]
    return new, old


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, block_s: float
) -> dict[str, list[float]]:
    """Milliseconds per call of each ``fn``, one timed block of each per repetition, in turn."""
    ks = {name: calls_per_block(fn, block_s) for name, fn in fns.items()}
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            out[name].append(1e3 * seconds(fn, ks[name]) / ks[name])
    return out


def figures(times: dict[str, list[float]]) -> dict[str, float]:
    """Best and median ms of ``old`` and ``new``, and the speedups best/best, median/median."""
    old, new = times["old"], times["new"]
    return {
        "old_ms_best": round(min(old), 4),
        "new_ms_best": round(min(new), 4),
        "old_ms_median": round(statistics.median(old), 4),
        "new_ms_median": round(statistics.median(new), 4),
        "speedup_best": round(min(old) / min(new), 2),
        "speedup_median": round(statistics.median(old) / statistics.median(new), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = as is")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    reps, block_s = (3, 0.1) if args.quick else (9, 0.2)
    started = time.perf_counter()
    problem = make_problem(CASES[0], load_dataset("digits", seed=SEED))  # MLP 64-32-10

    fns: dict[str, Callable[[], object]] = {}
    for n in AGENTS:
        new, old = oracles(problem, n)
        local = torch.arange(n)
        fns[f"sample_n{n}/new"] = lambda o=new, loc=local: o._sample(loc)
        fns[f"sample_n{n}/old"] = lambda o=old, loc=local: o._sample(loc)
    shards = shards_for(problem.data, ROUND_AGENTS)
    rounds = {side: SimRunner(problem, shards, BATCH, mixing=True) for side in ("new", "old")}
    rounds["old"].oracle._sample = OldSampling(rounds["old"].oracle, SEED)  # type: ignore[method-assign]
    for side, runner in rounds.items():
        fns[f"round_n{ROUND_AGENTS}/{side}"] = runner.round
    times = interleaved(fns, reps, block_s)

    summary: dict[str, Any] = {}
    for name in dict.fromkeys(k.split("/")[0] for k in fns):
        row = figures({side: times[f"{name}/{side}"] for side in ("old", "new")})
        summary[name] = row
        print(
            f"{name:>13}: old {row['old_ms_best']:8.3f} ms (median {row['old_ms_median']:8.3f})"
            f"  new {row['new_ms_best']:8.3f} ms (median {row['new_ms_median']:8.3f})"
            f"  speedup {row['speedup_best']:5.2f}x (medians {row['speedup_median']:5.2f}x)",
            flush=True,
        )
    summary |= {"batch": BATCH, "reps": reps} | run_facts(args.quick, started)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
