"""Fault injection: a rank killed with SIGKILL makes the others fail fast, naming it.

Four plain processes (no torchrun, whose agent would stop the survivors itself) run
``nettrain run engine=distributed`` with the launcher's environment; once rank 0 has
written a record, rank 2 is killed. Every survivor must exit non-zero well within
``timeout_s`` and, from the heartbeats in the rendezvous store, say that rank 2
stopped responding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port

TIMEOUT_S = 10


def test_a_killed_rank_makes_the_others_exit_naming_it(tmp_path: Path) -> None:
    n, port, out = 4, free_port(), tmp_path / "run"
    command = [sys.executable, "-m", "nettrain", "run", "engine=distributed", f"agents={n}"]
    command += ["hidden=8", "batch_size=8", "rounds=100000", "eval_every=5", "progress=false"]
    command += [f"timeout_s={TIMEOUT_S}", "--out", str(out)]
    procs, logs = [], []
    for rank in range(n):
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        logs.append(tmp_path / f"rank{rank}.log")
        with open(logs[-1], "wb") as sink:
            procs.append(subprocess.Popen(command, env=env, stdout=sink, stderr=sink))
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.jsonl"
        while not (metrics.is_file() and metrics.read_text().strip()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("the run did not start:\n" + logs[0].read_text()[-3000:])
            time.sleep(0.2)
        procs[2].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        codes = {r: procs[r].wait(timeout=TIMEOUT_S + 20) for r in (0, 1, 3)}
        elapsed = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = {r: logs[r].read_text() for r in (0, 1, 3)}
    assert all(code != 0 for code in codes.values()), (codes, text)
    assert elapsed < TIMEOUT_S + 15, elapsed
    for r, log in text.items():
        assert f"nettrain: error: rank {r}: " in log, log[-3000:]
        assert "Rank(s) 2 stopped responding" in log, log[-3000:]
