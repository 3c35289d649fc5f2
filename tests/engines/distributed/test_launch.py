"""Launching: `compare engine=distributed` starts torchrun itself; two launchers make one run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import free_port
from nettrain.cli import main
from nettrain.config import load_config
from nettrain.experiment import run

SMALL = ["dataset=digits", "agents=4", "hidden=8", "rounds=6", "batch_size=8", "eval_every=3"]


def test_compare_launches_torchrun_per_algorithm(tmp_path: Path, monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items = [*SMALL, "engine=distributed", "progress=false", f"master_port={free_port()}"]
    code = main(["compare", *items, "--algorithms", "allreduce,dpsgd", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm"], r["engine"]) for r in rows] == [
        ("allreduce", "distributed"),
        ("dpsgd", "distributed"),
    ]
    assert (tmp_path / "compare.png").stat().st_size > 0
    sim = run(load_config(dict(i.split("=") for i in SMALL) | {"algorithm": "dpsgd"}))
    got = torch.load(tmp_path / "dpsgd" / "final.pt", weights_only=True)
    torch.testing.assert_close(got, sim.x, rtol=0, atol=1e-5)
    assert not os.environ.get("RANK")


def test_run_starts_torchrun_with_several_agents_a_process(tmp_path: Path, monkeypatch) -> None:
    """``nettrain run engine=distributed agents=8 nproc=2``: two processes of four agents,
    the simulator's parameters, and one message a round each way between them, with
    the two rows at the ends of the sender's block (a ring of two blocks)."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    items = [*SMALL[1:], "agents=8", "algorithm=dpsgd"]
    launch = [*items, "engine=distributed", "nproc=2", f"master_port={free_port()}"]
    assert main(["run", *launch, "progress=false", "--out", str(tmp_path)]) == 0
    sim = run(load_config(dict(i.split("=") for i in items)))
    torch.testing.assert_close(
        torch.load(tmp_path / "final.pt", weights_only=True), sim.x, rtol=0, atol=1e-5
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    d = sim.x.shape[1]
    assert summary["process_messages"] == 6 * 2
    assert summary["process_bytes"] == 6 * 2 * 2 * d * 4


def test_two_launchers_join_one_run_like_two_machines(tmp_path: Path) -> None:
    """``torchrun --nnodes 2 --rdzv-backend c10d`` twice on loopback: one run of 4 agents,
    equal to the simulator (the README's several-machines command)."""
    port, out = free_port(), tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    command += ["--nproc-per-node", "2", "--rdzv-backend", "c10d"]
    command += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-machines"]
    command += ["-m", "nettrain", "run", *SMALL, "engine=distributed", "progress=false"]
    command += ["algorithm=gradient_tracking", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"node{i}.txt" for i in range(2)]
    procs = []
    for log in logs:
        with open(log, "wb") as sink:
            procs.append(subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT))
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=240) == 0, log.read_text()[-4000:]
    sim = run(load_config(dict(i.split("=") for i in SMALL) | {"algorithm": "gradient_tracking"}))
    got = torch.load(out / "final.pt", weights_only=True)
    torch.testing.assert_close(got, sim.x, rtol=0, atol=1e-5)
