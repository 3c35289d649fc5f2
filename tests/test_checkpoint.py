"""Checkpoints and ``--resume``: a resumed simulator run equals an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nettrain.checkpoint import FILENAME, Checkpoint
from nettrain.cli import main
from nettrain.config import load_config
from nettrain.errors import ConfigError, DataError, DivergenceError
from nettrain.experiment import resume, run

SMALL = {
    "dataset": "digits",
    "agents": 4,
    "hidden": [8],
    "batch_size": 8,
    "eval_every": 10,
    "checkpoint_every": 10,
    "progress": False,
}
CASES = {
    "dpsgd_momentum": {"algorithm": "dpsgd", "momentum": 0.9, "schedule": "edge_drop"}
    | {"drop_prob": 0.3},
    "gradient_tracking": {"algorithm": "gradient_tracking", "lr": 0.05},
    # checkpoint at round 20, mid-way through a warm-up of 30 rounds
    "allreduce_warmup": {"algorithm": "allreduce", "momentum": 0.9, "lr_warmup": 30},
    "next_l1": {"algorithm": "next", "regularizer": "l1", "reg_lambda": 1e-3, "batch_size": 0},
    "easgd_servers": {"algorithm": "easgd", "servers": 2, "tau": 3},
    "tree_easgd": {"algorithm": "tree_easgd", "tau": 2},
    # asynchronous: the event engine's clocks, draws and pending phases are saved too
    "swarm_faults": {"algorithm": "swarm", "quantizer": "lattice", "local_steps": 2}
    | {"phase": "poisson", "message_drop": 0.2, "crash": "1@5:15", "split": "22:32"},
    "easgd_async_faults": {"algorithm": "easgd_async", "servers": 2, "tau": 2}
    | {"message_drop": 0.1, "crash": "3@12"},
    "admm": {"algorithm": "admm", "tau": 2},
}  # fmt: skip


def without_wall_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_the_uninterrupted_one(case: str, tmp_path: Path) -> None:
    """Stop after 25 rounds (last checkpoint: 20), resume to 40: same final parameters, bit
    for bit, and the same records (the round-25 record written after the checkpoint goes)."""
    values = SMALL | CASES[case]
    whole = run(load_config(values | {"rounds": 40}), tmp_path / "whole")
    run(load_config(values | {"rounds": 25}), tmp_path / "cut")
    assert Checkpoint.load(tmp_path / "cut").round == 20
    resumed = resume(tmp_path / "cut", {"rounds": "40"})
    assert torch.equal(resumed.x, whole.x)
    if whole.centre is not None:  # the servers' centre is saved and restored too
        assert resumed.centre is not None and torch.equal(resumed.centre, whole.centre)
    final = torch.load(tmp_path / "cut" / "final.pt", weights_only=True)
    assert torch.equal(final, whole.x)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 10, 20, 30, 40]
    assert without_wall_time(resumed.records) == without_wall_time(whole.records)


def test_a_killed_run_resumes_to_the_same_parameters(tmp_path: Path) -> None:
    """SIGKILL of `nettrain run` once a checkpoint exists, then `nettrain run --resume`."""
    items = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in SMALL.items()]
    items += ["algorithm=gradient_tracking", "lr=0.05", "rounds=1000", "eval_every=100"]
    cut, log = tmp_path / "cut", tmp_path / "log.txt"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "nettrain", "run", *items, "--out", str(cut)]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (cut / FILENAME).exists() or Checkpoint.load(cut).round < 30:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "final.pt").exists(), "the run ended before it was killed"
    assert main(["run", "--resume", str(cut)]) == 0
    whole = run(load_config(load_config(json.loads((cut / "config.json").read_text())).to_dict()))
    assert torch.equal(torch.load(cut / "final.pt", weights_only=True), whole.x)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(SMALL | {"lr": 1e6, "rounds": 30, "checkpoint_every": 1})
    with pytest.raises(DivergenceError, match=r"last good checkpoint \(round (\d+)\)") as caught:
        run(cfg, tmp_path)
    kept = Checkpoint.load(tmp_path)
    assert f"(round {kept.round})" in str(caught.value)
    assert bool(torch.isfinite(kept.state["x"]).all())
    assert "--resume" in str(caught.value)


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a run folder"):
        resume(tmp_path / "nothing")
    run(load_config(SMALL | {"rounds": 10, "checkpoint_every": 0}), tmp_path / "plain")
    with pytest.raises(DataError, match="checkpoint_every=N"):
        resume(tmp_path / "plain", {"rounds": "20"})
    run(load_config(SMALL | {"rounds": 10}), tmp_path / "done")
    with pytest.raises(ConfigError, match="nothing left to run"):
        resume(tmp_path / "done")
    with pytest.raises(ConfigError, match="cannot change agents"):
        resume(tmp_path / "done", {"rounds": "20", "agents": "8"})


def test_checkpoints_are_written_atomically_and_load_without_code(tmp_path: Path) -> None:
    run(load_config(SMALL | {"rounds": 20}), tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    saved = torch.load(tmp_path / FILENAME, weights_only=True)  # plain data only
    assert saved["round"] == 20 and saved["records"] == 3  # rounds 0, 10 and 20
    assert math.isclose(saved["clock"], json.loads((tmp_path / "summary.json").read_text())[
        "virtual_time_s"])  # fmt: skip
