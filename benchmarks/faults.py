"""Fault injection in the simulator: what drops, stragglers and a crash cost each method.

What it measures. Four methods train the same problem from the same seed for the same
rounds, under five scenarios (six for SwarmSGD), all in the simulator (``engine=sim``):

* methods: SwarmSGD (``swarm``, H = 1, non-blocking) and D-PSGD (``dpsgd``) on a ring,
  asynchronous EASGD (``easgd_async``, ``tau = 4``, one parameter server) and all-reduce
  SGD (``allreduce``). With H = 1 and ``tau = 4`` a round is one local step of every
  agent for all four, so equal rounds are equal samples (no epoch multiplier);
* scenarios: no faults; ``message_drop=0.1``; ``message_drop=0.3``; 10% stragglers
  (``stragglers=0.1 straggler_slowdown=4``: 2 of the 16 agents compute 4x slower); one
  crashed agent (``crash=A@R`` at a third of the rounds, no rejoin); for the gossip
  method (``swarm``) only, one crashed agent that comes back with its first live
  neighbour's model (``crash=A@R:J rejoin_model=neighbour``, ``R`` a third and ``J``
  two fifths of the rounds: ``3@50:60`` at 150 rounds).

For each (method, scenario) it reports

* the final test accuracy: the centre variable's for ``easgd_async``
  (``centre_test_accuracy``), else the mean model's (``test_accuracy``: the agents'
  parameters averaged). A synchronous method stops with a ``FaultError`` at the round
  a crash starts; its figure is then its last record's, marked "stopped at round R";
* the virtual time to the target accuracy: ``virtual_time_s`` of the first record whose
  accuracy reaches ``--target`` ("never" if none does);
* the virtual time of the whole run and its ratio to the same method without faults;
* the exchanges lost (``exchanges_lost``, asynchronous methods) out of the exchanges
  made. Synchronous methods lose nothing: a dropped message is resent after
  ``resend_s`` virtual seconds, which only lengthens their rounds.

The virtual clock uses ``compute_s_per_sample`` (a fixed cost per training sample) and
the default links (50 us latency, 10 Gbit/s) so that it does not depend on this
machine; ``resend_s`` keeps its default (0.01 s).

Command (about 2 to 4 minutes on 2 shared cores, one torch thread)::

    .venv/bin/python benchmarks/faults.py [--out runs/bench-faults] [--quick]
        [--rounds 150] [--target 0.78] [--seed 0] [--threads 1]

Prints a markdown table (method x scenario) and writes ``OUT/results.json`` (settings
and one row per run), ``OUT/results.csv`` and one run folder per run under
``OUT/runs/`` (``config.json``, ``metrics.jsonl``, ...).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nettrain import load_config, run
from nettrain.errors import FaultError
from nettrain.recording import read_records

AGENTS = 16
TRAIN_SAMPLES = 6_000
HIDDEN = "64"
BATCH = 32
TOPOLOGY = "ring"  # swarm and dpsgd
COMPUTE_S_PER_SAMPLE = 2e-5  # virtual seconds per training sample
EVAL_EVERY = 10
CRASH_AGENT = 3
ASYNC = ("swarm", "easgd_async")
GOSSIP = ("swarm",)  # the methods with a neighbour to rejoin from (rejoin_model=neighbour)
METHODS = ("swarm", "easgd_async", "dpsgd", "allreduce")
# chosen from runs without faults (150 rounds, batch 32; swarm: 300 rounds, batch 16):
# allreduce 0.1/0.2/0.4, dpsgd 0.1/0.2/0.4, easgd_async 0.05/0.1/0.2, swarm 0.05/0.1/0.2
LR = {"swarm": 0.2, "easgd_async": 0.1, "dpsgd": 0.2, "allreduce": 0.2}


def scenarios(rounds: int, method: str | None = None) -> dict[str, dict[str, Any]]:
    """Scenario name -> the config keys that inject its faults, for ``method`` (None:
    every scenario); the rejoin from a neighbour is for the gossip methods (``GOSSIP``)."""
    out: dict[str, dict[str, Any]] = {
        "none": {},
        "drop 0.1": {"message_drop": 0.1},
        "drop 0.3": {"message_drop": 0.3},
        "stragglers 10%": {"stragglers": 0.1, "straggler_slowdown": 4.0},
        "crash": {"crash": f"{CRASH_AGENT}@{rounds // 3}"},
    }
    if method is None or method in GOSSIP:
        crash = f"{CRASH_AGENT}@{rounds // 3}:{2 * rounds // 5}"
        out["crash, rejoin from a neighbour"] = {"crash": crash, "rejoin_model": "neighbour"}
    return out


def overrides(method: str, rounds: int, seed: int, faults: dict[str, Any]) -> dict[str, Any]:
    """The configuration of one run: the shared problem, the method's lr, the faults."""
    return {
        "algorithm": method,
        "dataset": "fashion_mnist",
        "train_samples": TRAIN_SAMPLES,
        "model": "mlp",
        "hidden": HIDDEN,
        "agents": AGENTS,
        "topology": TOPOLOGY,
        "partition": "iid",
        "batch_size": BATCH,
        "lr": LR[method],
        "rounds": rounds,
        "seed": seed,
        "eval_every": EVAL_EVERY,
        "eval_agents": 1,  # the table uses the mean model or the centre only
        "compute_s_per_sample": COMPUTE_S_PER_SAMPLE,
        "progress": False,
        **faults,
    }


@dataclass
class Row:
    """One (method, scenario) run."""

    method: str
    scenario: str
    lr: float
    accuracy: float  # final: the centre's (easgd_async) or the mean model's
    stopped_at: int | None  # synchronous run stopped by a crash: rounds completed
    rounds_done: int
    time_to_target_s: float | None  # None: never reached
    round_at_target: int | None
    virtual_time_s: float
    exchanges: int | None  # asynchronous methods: exchanges made
    exchanges_lost: int | None
    samples: int
    wall_s: float


def accuracy_of(method: str, record: dict[str, Any]) -> float:
    key = "centre_test_accuracy" if method == "easgd_async" else "test_accuracy"
    return float(record[key])


def measure(method: str, scenario: str, cfg: dict[str, Any], target: float, folder: Path) -> Row:
    """Run one configuration into ``folder`` and summarise its records."""
    start = time.perf_counter()
    stopped = False
    try:
        records = run(load_config(overrides=cfg), out=folder).records
    except FaultError:  # a synchronous method met the crash: keep what it recorded
        records, stopped = read_records(folder), True
    wall = time.perf_counter() - start
    if not records:
        raise RuntimeError(f"{method} / {scenario} wrote no record before it stopped")
    last = records[-1]
    hit = next((r for r in records if accuracy_of(method, r) >= target), None)
    return Row(
        method=method,
        scenario=scenario,
        lr=cfg["lr"],
        accuracy=accuracy_of(method, last),
        stopped_at=int(last["round"]) if stopped else None,
        rounds_done=int(last["round"]),
        time_to_target_s=None if hit is None else float(hit["virtual_time_s"]),
        round_at_target=None if hit is None else int(hit["round"]),
        virtual_time_s=float(last["virtual_time_s"]),
        exchanges=int(last["events"]) if method in ASYNC else None,
        exchanges_lost=int(last.get("exchanges_lost", 0)) if method in ASYNC else None,
        samples=int(last["samples"]),
        wall_s=wall,
    )


def table(rows: list[Row], target: float) -> str:
    """A markdown table, one line per (method, scenario)."""
    base = {r.method: r for r in rows if r.scenario == "none"}
    lines = [
        f"| method | scenario | final accuracy | virtual time to {target:.2f} (s) "
        "| virtual time (s) | x no faults | exchanges lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r.accuracy:.4f}"
        if r.stopped_at is not None:
            acc += f" (stopped at round {r.stopped_at})"
        ttt = "never" if r.time_to_target_s is None else f"{r.time_to_target_s:.3f}"
        ttt += f" (round {r.round_at_target})" if r.round_at_target is not None else ""
        ref = base.get(r.method)
        ratio = "-"
        if ref is not None and r.stopped_at is None and r.rounds_done == ref.rounds_done:
            ratio = f"{r.virtual_time_s / ref.virtual_time_s:.2f}"
        if r.exchanges is None or r.exchanges_lost is None:
            lost = "- (resent)" if "drop" in r.scenario else "-"
        else:
            share = 100 * r.exchanges_lost / r.exchanges
            lost = f"{r.exchanges_lost} of {r.exchanges} ({share:.1f}%)"
        lines.append(
            f"| {r.method} | {r.scenario} | {acc} | {ttt} | {r.virtual_time_s:.3f} | "
            f"{ratio} | {lost} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-faults"))
    parser.add_argument("--rounds", type=int, default=150, help="rounds of every run")
    parser.add_argument("--quick", action="store_true", help="60 rounds: a smoke run")
    parser.add_argument("--target", type=float, default=0.78, help="target test accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}"
    )
    args = parser.parse_args(argv)
    rounds = 60 if args.quick else args.rounds
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if rounds < 3 * EVAL_EVERY:
        parser.error(f"--rounds must be at least {3 * EVAL_EVERY}, got {rounds}")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    rows: list[Row] = []
    for method in methods:
        for name, faults in scenarios(rounds, method).items():
            cfg = overrides(method, rounds, args.seed, faults)
            slug = name.replace(",", "").replace(" ", "-").replace("%", "pct")
            row = measure(method, name, cfg, args.target, args.out / "runs" / f"{method}-{slug}")
            rows.append(row)
            print(
                f"{method:>12} {name:<30} accuracy {row.accuracy:.4f}, virtual "
                f"{row.virtual_time_s:.3f} s, wall {row.wall_s:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    seconds = time.perf_counter() - started

    settings = {
        "dataset": "fashion_mnist",
        "train_samples": TRAIN_SAMPLES,
        "model": f"mlp hidden={HIDDEN}",
        "agents": AGENTS,
        "topology": f"{TOPOLOGY} (swarm, dpsgd)",
        "batch_size": BATCH,
        "rounds": rounds,
        "eval_every": EVAL_EVERY,
        "seed": args.seed,
        "lr": {m: LR[m] for m in methods},
        "compute_s_per_sample": COMPUTE_S_PER_SAMPLE,
        "target": args.target,
        "scenarios": scenarios(rounds),
        "rejoin_from_a_neighbour": [m for m in methods if m in GOSSIP],
        "threads": args.threads,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"settings": settings, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
    )
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(table(rows, args.target))
    print(
        f"\n{len(rows)} runs of {rounds} rounds in {seconds:.0f} s "
        f"({math.fsum(r.wall_s for r in rows):.0f} s in the runs); "
        f"results in {args.out}/results.json and results.csv"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
