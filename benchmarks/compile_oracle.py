"""The compiled oracle (``compile=true``) against the eager one, on W1's round.

What is measured, for the ``small`` case (MLP 64-32-10 on digits, batch 16) at n in
{16, 64, 256} agents and the ``large`` case (MLP 784-128-10 on Fashion-MNIST, batch 32)
at n = 64: milliseconds per round of D-PSGD on a Metropolis ring (``DPSGD.step`` through
a ``SimCommunicator``, the engine's code path: ``Oracle.grad`` of all agents, the sparse
mixing, the update), with the eager oracle and with the compiled one
(:class:`~nettrain.problem.compiled.Compiled`: ``torch.compile`` of
``torch.func.grad_and_value`` of the batched model's losses, forward and backward
pass in one graph). Rounds alternate in every repetition; the figures are the best
repetition (the median is printed too).

``compile_s`` is the first compiled round less an eager round: what compilation
costs once per run (and per shape), with inductor's on-disk cache empty (a fresh
cache folder for the benchmark; the first row also pays importing the compiler).
``compile_warm_s`` is the same once more after ``torch.compiler.reset()``, the on-disk
cache now holding the row's kernels (a new process, the compiler not yet imported,
pays seconds more). ``break_even_rounds`` is the number of rounds after which a
compiled run has caught up with an eager one, cold cache (None where compiled is not
faster). Before each row the in-memory caches are cleared (``torch.compiler.reset()``),
so each row compiles as a fresh run would; the timed rounds run under
``torch.compiler.set_stance("fail_on_recompile")``, so a recompilation during them
fails the benchmark, and so does a fallback to eager (its warning is an error here).
The process keeps freed memory for reuse, as ``nettrain.run`` does
(:func:`nettrain.memory.retain_freed_memory`).

Command (under a minute on an idle 2-core machine, most of it compiling)::

    .venv/bin/python benchmarks/compile_oracle.py [--quick] [--threads N]

Output: one JSON line per row, then a JSON summary: the ratio eager / compiled per
row; whether compiled wins at every n per round, and over a run of the default length
(``rounds`` = 300, cold compilation included); and the default this suggests
(``compile=true`` only where both hold).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from nettrain.config import FIELDS
from nettrain.data import Dataset, load_dataset, partition
from nettrain.memory import retain_freed_memory
from nettrain.problem.execution import Execution
from sim_throughput import (
    CASES,
    FULL,
    QUICK,
    SEED,
    Case,
    Settings,
    SimRunner,
    calls_per_block,
    interleaved,
    make_problem,
    rates,
    run_facts,
    seconds,
)

ROWS = (("small", 16), ("small", 64), ("small", 256), ("large", 64))
ROUNDS = FIELDS["rounds"].default  # a run of the default length


def runner(case: Case, data: Dataset, n: int, compile: bool) -> SimRunner:
    """W1's D-PSGD rounds on ``n`` agents of ``case``, the oracle compiled or eager."""
    problem = make_problem(case, data, Execution(compile=compile))
    shards = partition(data.y_train, n, "iid", seed=SEED)
    return SimRunner(problem, shards, case.batch, mixing=True)


def measure(case: Case, data: Dataset, n: int, settings: Settings) -> dict[str, Any]:
    """Milliseconds per round, eager and compiled, side by side; the compilation's cost."""
    torch.compiler.reset()  # compile as a fresh run would: one graph for this shape
    eager, compiled = runner(case, data, n, False), runner(case, data, n, True)
    first_eager = seconds(eager.round, 1)
    first_compiled = seconds(compiled.round, 1)  # compiles the graph, cold on-disk cache
    with torch.compiler.set_stance("fail_on_recompile"):
        k_eager = calls_per_block(eager.round, settings.block_s)
        k_compiled = calls_per_block(compiled.round, settings.block_s)
        runs = interleaved(
            {
                "eager": rates(eager.round, k_eager, 1.0),  # rounds per second
                "compiled": rates(compiled.round, k_compiled, 1.0),
            },
            settings.reps,
        )
    eager_ms, compiled_ms = (1e3 / max(runs[k]) for k in ("eager", "compiled"))
    compile_s = first_compiled - eager_ms / 1e3
    torch.compiler.reset()
    warm_s = seconds(runner(case, data, n, True).round, 1) - eager_ms / 1e3  # disk cache hit
    saved_s = (eager_ms - compiled_ms) / 1e3  # per round
    return {
        "case": case.name,
        "n": n,
        "eager_ms_per_round": round(eager_ms, 3),
        "compiled_ms_per_round": round(compiled_ms, 3),
        "eager_over_compiled": round(eager_ms / compiled_ms, 3),
        "eager_over_compiled_median": round(
            statistics.median(runs["compiled"]) / statistics.median(runs["eager"]), 3
        ),
        "first_round_eager_s": round(first_eager, 3),
        "compile_s": round(compile_s, 1),
        "compile_warm_s": round(warm_s, 1),
        "break_even_rounds": round(compile_s / saved_s) if saved_s > 0 else None,
        f"run_{ROUNDS}_rounds_s": {
            "eager": round(ROUNDS * eager_ms / 1e3, 2),
            "compiled": round(compile_s + ROUNDS * compiled_ms / 1e3, 2),
        },
        "per_block": {"eager": k_eager, "compiled": k_compiled},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = as is")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager fails the run
    retain_freed_memory()
    cache = tempfile.TemporaryDirectory(prefix="compile_oracle_")  # inductor's, cold
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    settings = QUICK if args.quick else FULL
    cases = {case.name: case for case in CASES}
    datasets = {name: load_dataset(case.dataset, seed=SEED) for name, case in cases.items()}
    started = time.perf_counter()
    rows = []
    for name, n in ROWS:
        print(f"[{time.perf_counter() - started:6.1f}s] {name} n={n}", file=sys.stderr, flush=True)
        rows.append(measure(cases[name], datasets[name], n, settings))
        print(json.dumps(rows[-1]), flush=True)
    per_round = all(row["eager_over_compiled"] > 1 for row in rows)
    runs = [row[f"run_{ROUNDS}_rounds_s"] for row in rows]
    per_run = all(run["compiled"] < run["eager"] for run in runs)

    def by_row(key: str) -> dict[str, Any]:
        return {f"{r['case']}_n{r['n']}": r[key] for r in rows}

    summary = {
        "eager_over_compiled": by_row("eager_over_compiled"),
        "compile_s": by_row("compile_s"),
        "compile_warm_s": by_row("compile_warm_s"),
        f"run_{ROUNDS}_rounds_s": by_row(f"run_{ROUNDS}_rounds_s"),
        "compiled_wins_per_round_at_every_n": per_round,
        f"compiled_wins_{ROUNDS}_rounds_at_every_n": per_run,
        "suggested_default": "compile=true" if per_round and per_run else "compile=false",
    }
    print(json.dumps(summary | run_facts(args.quick, started)), flush=True)
    cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
