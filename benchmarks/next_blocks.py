"""Iterations per second of NEXT's block-parallel local step, B = 1 against B = 2.

NEXT with the Gauss-Newton surrogate and the direct solver on digits (squared loss on
one-hot targets, MLP 64-8-10, d = 610, 8 agents of 100 samples): per agent and block
``c`` the step forms ``J_c^T W J_c`` and a Cholesky factor, ``O(B o |c|^2)``, so two
blocks do half the arithmetic of one, and do it on two threads. The Jacobian itself
is computed once, before the blocks split. Variants, measured side by side in one
process (interleaved repetitions, median), after a warm-up:

* ``B=1, 1 thread``: ``torch.set_num_threads(1)``, one block;
* ``B=2, 2 block threads``: ``torch.set_num_threads(1)``, the two blocks on a pool;
* ``B=1, 2 torch threads``: for context, torch's own intra-op parallelism.

Each variant is timed twice: the whole NEXT step (linearisation, Jacobian, solve,
mixing, gradient), and the blocks' solves alone (``J_c^T W J_c`` and its Cholesky on a
fixed linearisation). CPU use is ``process_time / wall time`` over the measured
iterations (> 1 means more than one core was busy). Run:
``python benchmarks/next_blocks.py [--reps 5 --iters 5]``; the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from nettrain.algorithms import NEXT, SurrogateConfig
from nettrain.algorithms.surrogates import Subproblem, _direct, block_slices
from nettrain.config import load_config
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.experiment import build_job

AGENTS = 8
VARIANTS = {
    "B=1, 1 thread": (1, 1),
    "B=2, 2 block threads": (2, 1),
    "B=1, 2 torch threads": (1, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--iters", type=int, default=5, help="NEXT iterations per repetition")
    args = parser.parse_args()

    cfg = load_config(
        {
            "dataset": "digits",
            "loss": "squared",
            "hidden": (8,),
            "agents": AGENTS,
            "train_samples": 100 * AGENTS,
            "topology": "ring",
            "algorithm": "next",
            "surrogate": "gauss_newton",
            "solver": "direct",
            "progress": False,
        }
    )
    job = build_job(cfg)
    problem = job.problem
    x0 = job.x0.expand(AGENTS, -1).clone()
    comm = SimCommunicator(job.topology, x0.device, x0.dtype)
    oracle = problem.oracle(job.shards, range(AGENTS), batch_size=0, seed=0)

    def measure(blocks: int, threads: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        algo = NEXT("gauss_newton", blocks=blocks, solver="direct")
        state = algo.init(x0, oracle, comm)
        state, _ = algo.step(state, 0, oracle, comm)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for t in range(args.iters):
            state, _ = algo.step(state, t + 1, oracle, comm)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return args.iters / wall, cpu / wall

    lin = oracle.linearize(x0)
    J = lin.jacobian()  # (m, B o, d), what the direct solver's blocks share
    sub = Subproblem(x0, torch.zeros_like(x0), 1 / AGENTS, problem.regularizer, lin, lin.grad())

    def measure_solve(blocks: int, threads: int) -> tuple[float, float]:
        """The blocks' part alone: ``J_c^T W J_c`` and its Cholesky solve, per block."""
        torch.set_num_threads(threads)
        cfg = SurrogateConfig("gauss_newton", blocks=blocks, solver="direct")
        slices = block_slices(problem.dim, blocks)

        def solve(c: slice) -> torch.Tensor:
            return _direct(cfg, sub, J[:, :, c], c)

        def once() -> None:
            if blocks == 1:
                solve(slices[0])
            else:
                with ThreadPoolExecutor(blocks) as pool:
                    list(pool.map(solve, slices))

        once()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            once()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return args.iters / wall, cpu / wall

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    usage: dict[str, list[float]] = {name: [] for name in VARIANTS}
    solve_rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    solve_usage: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.reps):
        for name, (blocks, threads) in VARIANTS.items():
            rate, busy = measure(blocks, threads)
            rates[name].append(rate)
            usage[name].append(busy)
            rate, busy = measure_solve(blocks, threads)
            solve_rates[name].append(rate)
            solve_usage[name].append(busy)

    print(f"NEXT Gauss-Newton step, d={problem.dim}, {AGENTS} agents, {args.reps} reps")
    print(f"{'variant':24s} {'it/s (median)':>14s} {'min':>8s} {'max':>8s} {'CPU use':>8s}")
    result: dict[str, float] = {"d": problem.dim}
    for name in VARIANTS:
        med = statistics.median(rates[name])
        busy = statistics.median(usage[name])
        print(f"{name:24s} {med:14.3f} {min(rates[name]):8.3f} {max(rates[name]):8.3f} {busy:8.2f}")
        key = name.split(",")[0].replace("=", "") + "_" + name.split(", ")[1].replace(" ", "_")
        result[f"it_per_s_{key}"] = med
        result[f"cpu_use_{key}"] = busy
    print(f"\nthe blocks' solves alone (J_c^T W J_c + Cholesky), {AGENTS} agents")
    for name in VARIANTS:
        med, busy = statistics.median(solve_rates[name]), statistics.median(solve_usage[name])
        print(f"{name:24s} {med:14.3f} {min(solve_rates[name]):8.3f} "
              f"{max(solve_rates[name]):8.3f} {busy:8.2f}")  # fmt: skip
        key = name.split(",")[0].replace("=", "") + "_" + name.split(", ")[1].replace(" ", "_")
        result[f"solves_per_s_{key}"] = med
        result[f"solve_cpu_use_{key}"] = busy
    for label, table in (("step", rates), ("solve", solve_rates)):
        first, second = (table[n] for n in list(VARIANTS)[:2])
        per_rep = [b / a for a, b in zip(first, second, strict=True)]
        result[f"{label}_speedup_B2_vs_B1"] = statistics.median(per_rep)
        print(f"{label} speed-up B=2 / B=1 (both 1 torch thread), median of per-rep ratios: "
              f"{statistics.median(per_rep):.2f}x")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
