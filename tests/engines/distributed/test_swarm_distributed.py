"""SwarmSGD on 8 processes: exchanges over rpc, every interaction accounted for."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import free_port

N, ROUNDS = 8, 25


def test_eight_agents_account_for_every_interaction(tmp_path: Path) -> None:
    """Each agent initiates ``ROUNDS`` exchanges at its own pace while answering the
    others' on its rpc thread; the run ends (no deadlock, no hang) and every exchange
    initiated by ``i`` with ``j`` was answered by ``j`` exactly once."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "nettrain", "run", "engine=distributed", f"nproc={N}"]
    command += [f"agents={N}", "algorithm=swarm", "quantizer=lattice", "bits=8", "hidden=8"]
    command += [f"rounds={ROUNDS}", f"eval_every={ROUNDS}", "batch_size=8", "progress=false"]
    command += [f"master_port={free_port()}"]
    command += ["timeout_s=60", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, log.read_text()[-6000:]
    start, record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert start["round"] == start["events"] == 0
    assert record["events"] == N * ROUNDS
    assert record["interactions_answered"] == N * ROUNDS
    assert record["interactions_unmatched"] == 0
    assert record["messages_total"] == 2 * N * ROUNDS  # a request and a reply each
    x = torch.load(out / "final.pt", weights_only=True)
    assert x.shape[0] == N and bool(torch.isfinite(x).all())
    d = x.shape[1]
    assert record["bytes_total"] == 2 * N * ROUNDS * d  # 8-bit lattice: one byte a weight


def test_a_diverging_run_stops_every_rank_and_records_nothing_diverged(tmp_path: Path) -> None:
    """``lr=1e12``: ranks diverge at their own pace between two evaluations; rank 0 stops
    gathering once one has failed, the run ends with the divergence error (no hang), and
    no record holds a diverged state."""
    out, log = tmp_path / "run", tmp_path / "log.txt"
    command = [sys.executable, "-m", "nettrain", "run", "engine=distributed", "nproc=4"]
    command += ["agents=4", "algorithm=swarm", "lr=1e12", "hidden=8", "rounds=10"]
    command += ["eval_every=2", "batch_size=8", "progress=false", f"master_port={free_port()}"]
    command += ["timeout_s=30", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    # torchrun stops the others once one rank exits: not every rank may print it
    assert "nettrain: the run diverged at round" in text, text[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["round"] < 10 for r in records)
    assert all(math.isfinite(r["train_loss"]) for r in records if r["round"] > 0)
