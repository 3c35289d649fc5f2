"""The calibrated virtual clock against the distributed engine: predicted and measured
seconds per round.

What is done, in one invocation (MLP 64-32-10 on digits, ``d = 2,410``, batch 16 an
agent, float32, gloo on loopback, one agent and one thread a process):

1. **Calibrate** this machine for that model and batch, for each P in {4, 8}: one
   ``torchrun`` launch of P processes (``OMP_NUM_THREADS=1``, as the measured runs
   below) runs ``nettrain calibrate`` (every figure with the P processes busy at once,
   messages 1 KiB to ``--max-bytes``): seconds per sample, latency, bandwidth, an
   all-reduce and an rpc exchange, written to a profile per P (or ``--profile PATH``:
   use that one for every P);
2. **Measure**: for P in {4, 8}, right after P's calibration (the machine's speed drifts
   over minutes), one ``torchrun`` launch of P processes
   (``OMP_NUM_THREADS=1`` each, one gloo group that every run joins) runs, inside its
   ranks, every case through
   ``nettrain.experiment.run`` with ``engine=distributed``: D-PSGD on a Metropolis ring
   (``algorithm=dpsgd topology=ring``), all-reduce SGD (``algorithm=allreduce``) and
   SwarmSGD non-blocking (``algorithm=swarm``), each without and with a 4x straggler
   (``stragglers=0.25 straggler_slowdown=4``: one agent of 4, two of 8, chosen by the
   seed; in this engine a straggler sleeps 3x its passes' CPU time every step). The
   cases alternate within every repetition (the order reversed every other one), so
   load from other processes hits them alike. Measured seconds per round = the last
   record's ``train_time_s`` (wall time less the evaluation pauses; ``eval_every =
   rounds``) / its ``round``, rank 0's, the median over the repetitions; one untimed
   warm-up run of each method first. Then P is calibrated again (``--no-bracket``: not),
   and the two profiles averaged
   (:func:`~nettrain.engines.sim.profile.average_profiles`): calibrations a few minutes
   apart on this shared machine differ by up to 35% where other jobs come and go, and
   the two bracket the machine the runs had;
3. **Predict**: the same configs with ``engine=sim cost_model=<the averaged profile of
   P>``: the last record's ``virtual_time_s`` / ``round``; and beside it the prediction
   from the calibration before alone.

Printed: the profile's figures, then a table of every case (method, processes,
straggler, measured, predicted, predicted / measured, within 20% or not, and the
ratio with the calibration before alone) and, as the
last line, a JSON object: ``cases`` (``method``, ``processes``, ``straggler``,
``measured_s_per_round``, ``predicted_s_per_round``, ``ratio``, every repetition), the
profiles' figures (before, after, averaged), the load average before and after, rounds,
repetitions, seconds. Target: predicted / measured within [0.8, 1.2] in every case.

Command (run it directly: it starts ``torchrun`` itself; about 5 minutes on the shared
2-core development machine, ``--quick``, P = 4 and fewer rounds, about 1.5)::

    .venv/bin/python benchmarks/calibration.py [--quick] [--rounds R] [--reps K]
        [--processes 4 8] [--profile profile.toml] [--max-bytes B] [--no-bracket]
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
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nettrain.calibration import average_profiles, load_profile
from nettrain.config import RunConfig, load_config
from nettrain.engines.sim.profile import SECONDS
from nettrain.experiment import run
from nettrain.machine import usable_cores

TARGET = 0.2  # |predicted / measured - 1| <= TARGET
METHODS: dict[str, dict[str, Any]] = {
    "dpsgd_ring": {"algorithm": "dpsgd", "topology": "ring"},
    "allreduce": {"algorithm": "allreduce"},
    "swarm": {"algorithm": "swarm"},
}
STRAGGLER = {"stragglers": 0.25, "straggler_slowdown": 4.0}
PROBLEM = {"dataset": "digits", "model": "mlp", "hidden": [32], "batch_size": 16}


def config(method: str, agents: int, straggler: bool, rounds: int, **changes: Any) -> RunConfig:
    """One case's run: ``agents`` agents, ``rounds`` rounds, one evaluation at the end."""
    values = {
        **PROBLEM,
        **METHODS[method],
        **(STRAGGLER if straggler else {}),
        "agents": agents,
        "rounds": rounds,
        "eval_every": rounds,
        "lr": 0.05,
        "seed": 0,
        "progress": False,
        "timeout_s": 300.0,
    }
    return load_config(values | changes)


def per_round(records: list[dict[str, Any]], key: str) -> float:
    """The last record's ``key`` over its round."""
    last = records[-1]
    value = last.get(key)
    return float("nan") if value is None else value / last["round"]


CASES = [(m, s) for m in METHODS for s in (False, True)]


# ------------------------------------------------------------------------------ worker


def worker(out: str, rounds: int, reps: int, warmup: int) -> None:
    """One rank of a torchrun launch: every case ``reps`` times; rank 0 writes the
    measured seconds per round of each to ``out`` (JSON)."""
    torch.set_num_threads(1)
    # one group for every run: the engine joins it instead of meeting anew each run
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    world, main = dist.get_world_size(), dist.get_rank() == 0
    started = time.perf_counter()

    def say(text: str) -> None:
        if main:
            print(f"  [P={world} {time.perf_counter() - started:5.0f}s] {text}", flush=True)

    for method in METHODS:  # warm-up: imports, first sockets, allocator
        run(config(method, world, False, warmup, engine="distributed", backend="gloo"))
    measured: dict[str, list[float]] = {f"{m}/{s}": [] for m, s in CASES}
    for rep in range(reps):
        for method, straggler in CASES if rep % 2 == 0 else CASES[::-1]:
            cfg = config(method, world, straggler, rounds, engine="distributed", backend="gloo")
            result = run(cfg)
            if not main:  # rank 0 holds the records
                continue
            measured[f"{method}/{straggler}"].append(per_round(result.records, "train_time_s"))
            say(
                f"rep {rep + 1}/{reps} {method:<10} straggler={straggler!s:<5} "
                f"{measured[f'{method}/{straggler}'][-1] * 1e3:8.2f} ms a round"
            )
    if main:
        Path(out).write_text(json.dumps(measured))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CAPTURE: dict[str, Any] = {"check": False, "capture_output": True, "text": True}


def torchrun(processes: int) -> list[str]:
    """The torchrun command line of ``processes`` local processes on loopback."""
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)),
        *("--master-addr", "127.0.0.1", "--master-port", str(free_port())),
    ]


def launch(processes: int, args: argparse.Namespace, folder: Path) -> dict[str, list[float]]:
    """The measured cases on ``processes`` local processes (rank 0's figures)."""
    out = folder / f"p{processes}.json"
    command = [*torchrun(processes), os.path.abspath(__file__), "--worker", str(out)]
    command += ["--rounds", str(args.rounds), "--reps", str(args.reps)]
    command += ["--warmup", str(args.warmup)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, check=False, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run on {processes} processes failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def predict(method: str, processes: int, straggler: bool, rounds: int, profile: Path) -> float:
    """The simulator's seconds per round for the case, on the profile's clock."""
    cfg = config(method, processes, straggler, rounds, engine="sim", cost_model=str(profile))
    return per_round(run(cfg).records, "virtual_time_s")


# ------------------------------------------------------------------------------- main


def calibrated(args: argparse.Namespace, folder: Path, processes: int, when: str) -> Path:
    """The profile for runs of ``processes`` processes, measured now with that many
    (``when``: "before" or "after" the measured runs), unless ``--profile``."""
    if args.profile:
        return Path(args.profile)
    # launched as the measured runs are: torchrun, one thread a process
    path = folder / f"profile-{processes}-{when}.toml"
    keys = [f"{k}={v}" for k, v in PROBLEM.items() if k != "hidden"]
    keys += ["hidden=" + ",".join(map(str, PROBLEM["hidden"])), "timeout_s=300"]
    command = [*torchrun(processes), "-m", "nettrain", "calibrate", *keys]
    command += ["--out", str(path), "--max-bytes", str(args.max_bytes)]
    done = subprocess.run(command, env=os.environ | {"OMP_NUM_THREADS": "1"}, **CAPTURE)
    if done.returncode != 0:
        raise SystemExit(f"calibrating {processes} processes failed:\n{done.stderr[-4000:]}")
    summary = done.stdout[done.stdout.index("compute, ") :].splitlines()
    print(f"P = {processes}, {when}:", *(f"  {line}" for line in summary[:-1]), sep="\n")
    return path


def bracketed(folder: Path, processes: int, before: Path, after: Path | None) -> Path:
    """The profile of the calibrations before and after the measured runs, averaged
    (:func:`~nettrain.engines.sim.profile.average_profiles`); ``before`` without one
    after."""
    if after is None:
        return before
    mean = average_profiles([load_profile(before), load_profile(after)])
    return mean.write(folder / f"profile-{processes}-mean.toml")


def figures(path: Path) -> dict[str, Any]:
    """A profile's figures (every time it holds, the bandwidth, what it was measured
    for), for the summary."""
    p = load_profile(path)
    names = (*SECONDS, "bandwidth_bytes_per_s", "processes", "batch", "d", "threads")
    return {name: getattr(p, name) for name in (*names, "date", "host")}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="P = 4, 100 rounds, one repetition")
    parser.add_argument("--rounds", type=int, default=0, help="rounds a case (default 300)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 2)")
    parser.add_argument("--warmup", type=int, default=10, help="rounds of the warm-up runs")
    parser.add_argument("--processes", type=int, nargs="+", default=None)
    parser.add_argument("--profile", default="", help="use this profile, do not calibrate")
    parser.add_argument(
        "--max-bytes", type=int, default=16 * 2**20, help="largest ping-pong message (bytes)"
    )
    parser.add_argument(
        "--no-bracket",
        dest="bracket",
        action="store_false",
        help="calibrate before the measured runs only (default: before and after, averaged)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (100 if args.quick else 300)
    args.reps = args.reps or (1 if args.quick else 2)
    args.processes = args.processes or ([4] if args.quick else [4, 8])
    if min(args.rounds, args.reps, args.warmup, *args.processes) < 1:
        parser.error("--rounds, --reps, --warmup and --processes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args.worker, args.rounds, args.reps, args.warmup)
        return 0
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        profiles: dict[int, dict[str, Path]] = {}
        measured = {}
        for p in args.processes:  # measured between two calibrations of their own
            before = calibrated(args, folder, p, "before")
            measured[p] = launch(p, args, folder)
            again = args.bracket and not args.profile
            after = calibrated(args, folder, p, "after") if again else None
            profiles[p] = {"before": before, "mean": bracketed(folder, p, before, after)}
            if after is not None:
                profiles[p]["after"] = after
        cases = []
        for p in args.processes:
            for method, straggler in CASES:
                reps = measured[p][f"{method}/{straggler}"]
                seconds = statistics.median(reps)
                predicted = predict(method, p, straggler, args.rounds, profiles[p]["mean"])
                alone = predict(method, p, straggler, args.rounds, profiles[p]["before"])
                cases.append(
                    {
                        "method": method,
                        "processes": p,
                        "straggler": straggler,
                        "measured_s_per_round": round(seconds, 6),
                        "predicted_s_per_round": round(predicted, 6),
                        "ratio": round(predicted / seconds, 3),
                        "within_20pct": abs(predicted / seconds - 1) <= TARGET,
                        "measured_reps": [round(s, 6) for s in reps],
                        "predicted_before_s_per_round": round(alone, 6),
                        "ratio_before": round(alone / seconds, 3),
                    }
                )
        d = load_profile(profiles[args.processes[0]]["before"]).d
        shown = {p: {k: figures(v) for k, v in ps.items()} for p, ps in profiles.items()}
    load_after = os.getloadavg()
    print(
        f"\n{PROBLEM['dataset']}, MLP 64-32-10 (d = {d:,}), "
        "batch "
        f"{PROBLEM['batch_size']}, {args.rounds} rounds x {args.reps} repetitions; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(
        f"{'method':<11} {'P':>2} {'straggler':>9} {'measured ms':>12} {'predicted ms':>13} "
        f"{'pred/meas':>10}  within 20%  {'calibration before alone':>24}"
    )
    for c in cases:
        print(
            f"{c['method']:<11} {c['processes']:>2} {'4x' if c['straggler'] else '-':>9} "
            f"{c['measured_s_per_round'] * 1e3:>12.2f} {c['predicted_s_per_round'] * 1e3:>13.2f} "
            f"{c['ratio']:>10.3f}  {'yes' if c['within_20pct'] else 'no':>10}  "
            f"{c['ratio_before']:>24.3f}"
        )
    within = sum(c["within_20pct"] for c in cases)
    alone = sum(abs(c["ratio_before"] - 1) <= TARGET for c in cases)
    print(f"{within} of {len(cases)} cases within 20% ({alone} with the calibration before alone)")
    summary = {
        "cases": cases,
        "within_20pct": within,
        "within_20pct_before": alone,
        "bracketed": args.bracket and not args.profile,
        "profiles": shown,
        "problem": PROBLEM,
        "rounds": args.rounds,
        "reps": args.reps,
        "warmup_rounds": args.warmup,
        "straggler": STRAGGLER,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cores": usable_cores(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
