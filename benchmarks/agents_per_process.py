"""Many agents a process: D-PSGD on a ring of 1,024 agents over 1, 2 and 4 processes.

What is measured, side by side in one invocation (MLP 64-32-10, batch 16 an agent,
Metropolis ring, synthetic data with 32 samples an agent, float32):

* ``sim``: the simulator in this process with every core (``torch`` threads as set);
* ``sim_1_thread``: the same with one thread, the pace of one distributed process;
* ``distributed_p{P}`` for P in {1, 2, 4}: ``engine=distributed`` over ``P`` gloo
  processes on loopback (``torchrun``, ``OMP_NUM_THREADS=1`` each), each holding a block
  of ``1024 / P`` agents and running the simulator's vectorised oracle over them.
  Neighbour mixing is one local kernel plus the rows that cross processes.

Seconds per round are the record's ``wall_time_s`` over the rounds: the engine's whole
run (its set-up and first gather included, the process start and the evaluation
excluded), the same measure for both engines. The launches and
the simulator alternate within every repetition (the order reversed every other one)
so load from other processes hits them alike; the figures are medians.

Also reported: ``process_bytes`` and ``process_messages`` of each distributed run (what
really crossed process boundaries: a ring of P blocks sends 2 P rows a round, not
``n``), the agents' own count of bytes (the simulator's, identical), and
``max_param_diff``, the largest difference between each run's final parameters and
the simulator's (float32 summation order).

Targets (on 2 cores 4 processes cannot beat one): ``overhead_p2`` = distributed P = 2
over the simulator at its best (the faster of ``sim`` and ``sim_1_thread``: on a loaded
machine several intra-op threads lose far more than one) <= 1.5, and ``process_bytes``
per round = ``2 P d 4`` for P > 2 (``O(P)`` rows; two blocks send each other both end
rows, 4 rows in all).

Command (about 2 minutes on the shared 2-core machine; ``--quick`` about one)::

    .venv/bin/python benchmarks/agents_per_process.py [--quick] [--agents 1024]
        [--rounds 60] [--reps 2] [--processes 1 2 4]

Output: a table, then as the last line a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nettrain.data import Dataset
from nettrain.experiment import run

SAMPLES_PER_AGENT = 32
FEATURES, CLASSES, HIDDEN = 64, 10, 32
TARGET_OVERHEAD_P2 = 1.5


def synthetic(samples: int) -> Dataset:
    """Gaussian features, labels of a random linear teacher: the same on every rank."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, FEATURES, generator=gen)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=gen)).argmax(1)
    return Dataset("synthetic", x, y, x[:1000], y[:1000], n_classes=CLASSES)


def settings(agents: int, rounds: int, **changes: Any) -> dict[str, Any]:
    return {
        "algorithm": "dpsgd",
        "topology": "ring",
        "agents": agents,
        "hidden": [HIDDEN],
        "batch_size": 16,
        "lr": 0.05,
        "rounds": rounds,
        "eval_every": rounds,
        "seed": 0,
        "progress": False,
        "timeout_s": 300.0,
    } | changes


def figures(result: Any, rounds: int) -> dict[str, Any]:
    last = result.records[-1]
    return {
        "s_per_round": last["wall_time_s"] / rounds,
        "agent_bytes_per_round": last["bytes_total"] / rounds,
        "process_bytes_per_round": result.summary.get("process_bytes", 0) / rounds,
        "process_messages_per_round": result.summary.get("process_messages", 0) / rounds,
    }


# ------------------------------------------------------------------------------ worker


def worker(out: str, agents: int, rounds: int) -> None:
    """One rank of a distributed run (this script under torchrun): rank 0 writes its
    figures and the final parameters to ``out``."""
    data = synthetic(SAMPLES_PER_AGENT * agents)
    result = run(settings(agents, rounds, engine="distributed", backend="gloo"), data=data)
    if result.is_main:
        torch.save(figures(result, rounds) | {"x": result.x}, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, agents: int, rounds: int, folder: Path) -> dict[str, Any]:
    """One distributed run on ``processes`` local processes; rank 0's figures."""
    out = folder / f"p{processes}.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += [os.path.abspath(__file__), "--worker", str(out)]
    command += ["--agents", str(agents), "--rounds", str(rounds)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run on {processes} processes failed:\n{done.stderr[-4000:]}")
    return torch.load(out, weights_only=False)


def simulate(agents: int, rounds: int, threads: int) -> dict[str, Any]:
    """The simulator in this process with ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run(settings(agents, rounds), data=synthetic(SAMPLES_PER_AGENT * agents))
    finally:
        torch.set_num_threads(before)
    return figures(result, rounds) | {"x": result.x}


# ------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="20 rounds, one repetition")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.agents, args.rounds)
        return
    if args.quick:
        args.rounds, args.reps = 20, 1
    threads = torch.get_num_threads()
    names = ["sim", "sim_1_thread", *(f"distributed_p{p}" for p in args.processes)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                begin = time.perf_counter()
                if name == "sim":
                    got = simulate(args.agents, args.rounds, threads)
                elif name == "sim_1_thread":
                    got = simulate(args.agents, args.rounds, 1)
                else:
                    got = launch(int(name.rsplit("p", 1)[1]), args.agents, args.rounds, Path(tmp))
                print(
                    f"  {name:>16}: {got['s_per_round'] * 1e3:8.2f} ms a round "
                    f"({time.perf_counter() - begin:.0f} s with start-up)",
                    flush=True,
                )
                runs[name].append(got)
    reference = runs["sim"][0]["x"]
    summary: dict[str, Any] = {"agents": args.agents, "rounds": args.rounds, "threads": threads}
    d = reference.shape[1]
    print(f"\nD-PSGD ring, {args.agents} agents of MLP {FEATURES}-{HIDDEN}-{CLASSES} (d = {d})")
    print(f"{'':>16} {'ms/round':>9} {'x best':>7} {'process bytes/round':>20} {'rows':>6}")
    best = min(statistics.median(r["s_per_round"] for r in runs[k]) for k in names[:2])
    for name in names:
        median = statistics.median(r["s_per_round"] for r in runs[name])
        last = runs[name][-1]
        rows = last["process_bytes_per_round"] / (4 * d)
        summary[name] = {
            "s_per_round": round(median, 6),
            "each": [round(r["s_per_round"], 6) for r in runs[name]],
            "process_bytes_per_round": last["process_bytes_per_round"],
            "process_messages_per_round": last["process_messages_per_round"],
            "agent_bytes_per_round": last["agent_bytes_per_round"],
            "max_param_diff": max(float((r["x"] - reference).abs().max()) for r in runs[name]),
        }
        ratio = median / best
        print(
            f"{name:>16} {median * 1e3:9.2f} {ratio:7.2f} "
            f"{last['process_bytes_per_round']:20.0f} {rows:6.0f}"
        )
    # the simulator at its best on this machine: all threads or one (a loaded machine
    # slows several intra-op threads far more than one)
    sim = summary["sim_best_s_per_round"] = round(best, 6)
    for p in args.processes:
        summary[f"overhead_p{p}"] = round(summary[f"distributed_p{p}"]["s_per_round"] / sim, 3)
    if 1 in args.processes:
        summary["overhead_p1_vs_1_thread"] = round(
            summary["distributed_p1"]["s_per_round"] / summary["sim_1_thread"]["s_per_round"], 3
        )
    summary["target_overhead_p2"] = TARGET_OVERHEAD_P2
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
