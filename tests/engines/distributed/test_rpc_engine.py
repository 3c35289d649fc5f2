"""The engine owns the rpc session of algorithms that need one: set up, used, shut down."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from helpers import torchrun_command


def test_the_engine_opens_and_closes_the_rpc_session(tmp_path: Path) -> None:
    out, log = tmp_path / "counts.pt", tmp_path / "log.txt"
    command = torchrun_command(4, str(Path(__file__).with_name("rpc_engine_worker.py")), str(out))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=180)
    assert proc.returncode == 0, log.read_text()[-6000:]
    saved = torch.load(out, weights_only=True)
    rounds, d = 7, saved["d"]
    # every rank (rank 0 too, through its own rpc agent) posted once per round
    assert saved["counts"] == {r: (rounds, rounds * d * 4) for r in range(4)}
    assert saved["x"].shape == (4, d)
