"""The EASGD family on processes: 4 workers and 2 parameter-server ranks over rpc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import free_port
from nettrain.config import load_config
from nettrain.experiment import build_job, run

N, SERVERS, ROUNDS, TAU = 4, 2, 12, 2
COMMON = [f"agents={N}", f"servers={SERVERS}", f"rounds={ROUNDS}", f"tau={TAU}", "hidden=8"]
COMMON += ["batch_size=8", "eval_every=6", "progress=false", "seed=3"]


def launch(out: Path, *items: str) -> list[dict]:
    """``nettrain run engine=distributed`` (it starts N + SERVERS processes); the records."""
    command = [sys.executable, "-m", "nettrain", "run", "engine=distributed", *COMMON, *items]
    command += [f"master_port={free_port()}", "timeout_s=60", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    log = out.parent / f"{out.name}.log"
    with open(log, "wb") as sink:
        proc = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, log.read_text()[-6000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_synchronous_easgd_servers_hold_the_simulators_centre(tmp_path: Path) -> None:
    """A fixed synchronous schedule: every round, each worker's exchange reads the
    centre as the round found it. Two server ranks, each with half the centre, end
    with the simulator's centre, and the workers with its parameters."""
    records = launch(tmp_path / "dist", "algorithm=easgd")
    sim = run(load_config(dict(item.split("=") for item in [*COMMON, "algorithm=easgd"])))
    centre = torch.load(tmp_path / "dist" / "centre.pt", weights_only=True)
    x = torch.load(tmp_path / "dist" / "final.pt", weights_only=True)
    assert sim.centre is not None and centre.shape == sim.centre.shape
    torch.testing.assert_close(centre, sim.centre, rtol=0, atol=1e-5)
    torch.testing.assert_close(x, sim.x, rtol=0, atol=1e-5)
    assert records[-1]["bytes_total"] == sim.records[-1]["bytes_total"]
    assert records[-1]["messages_total"] == N * SERVERS * ROUNDS // TAU


def test_asynchronous_servers_apply_every_exchange_once(tmp_path: Path) -> None:
    """Each worker makes ROUNDS / TAU exchanges at its own pace, to both servers at once;
    each server applied exactly the exchanges each worker sent, and the centre moved."""
    records = launch(tmp_path / "async", "algorithm=easgd_async")
    assert [r["round"] for r in records] == [0, 6, 12]  # the start, round 6, the end
    record = records[-1]
    events = N * ROUNDS // TAU
    assert records[0]["events"] == 0
    assert records[1]["events"] == N * 6 // TAU  # every worker's state at its round 6
    assert record["events"] == sum(r["exchanges"] for r in records) == events  # per interval
    assert record["exchanges_unmatched"] == 0
    assert record["messages_total"] == SERVERS * events
    assert sum(sum(r.get("staleness_hist", [])) for r in records) == events  # none at 0
    assert record["exchanges_min"] == record["exchanges_max"] == ROUNDS // TAU
    centre = torch.load(tmp_path / "async" / "centre.pt", weights_only=True)
    assert bool(torch.isfinite(centre).all())
    # the record's figure is the saved centre's test accuracy (recomputed here; one test
    # sample of slack for a near-tie summed in another order), and training moved it
    # from the initial model's (in the simulator: 0.09 at round 0, 0.30 at round 12; the
    # record of round 0 holds the servers' centre when rank 0 reads it, which fast
    # workers may have finished by then)
    config = load_config(dict(item.split("=") for item in [*COMMON, "algorithm=easgd_async"]))
    job = build_job(config)
    accuracy, start = (job.problem.evaluate(m[None]).accuracy for m in (centre, job.x0))
    assert accuracy is not None and start is not None
    slack = 1.5 / len(job.problem.data.y_test)
    assert abs(record["centre_test_accuracy"] - float(accuracy[0])) < slack
    assert record["centre_test_accuracy"] > float(start[0])
