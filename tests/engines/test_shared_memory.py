"""The shared-memory engine: real worker processes on one model, and averaging machines.

Every run here spawns processes (a few seconds each on a busy machine), so each test
checks several things of one run. Nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import (
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
    torchrun_command,
)
from nettrain.algorithms import AllReduceSGD, BlockAsyncSGD, Hogwild
from nettrain.cli import main
from nettrain.config import load_config
from nettrain.engines.shared_memory.engine import SharedMemoryEngine
from nettrain.errors import ConfigError, DivergenceError
from nettrain.experiment import build_engine, build_job
from nettrain.problem.oracle import agent_seed
from nettrain.recording import RunFolder, read_records
from nettrain.topology import build_topology

N = 60  # training samples of the least-squares problem


def quadratic_job(algorithm, rounds: int, batch_size: int = 0, eval_every: int | None = None):
    """Least squares on N samples; the workers draw from all of them."""
    data = regression_data(n_samples=N, n_features=4)
    problem = least_squares_problem(data)
    shards = list(torch.arange(N).tensor_split(3))
    job = sim_job(
        problem,
        shards,
        build_topology("complete", 3),
        algorithm,
        rounds=rounds,
        batch_size=batch_size,
        eval_every=eval_every or rounds,
    )
    return job, problem, least_squares_optimum(data, [torch.arange(N)])


def test_block_async_reaches_the_optimum_and_updates_every_block() -> None:
    P, blocks, rounds = 2, 4, 400
    algo = BlockAsyncSGD(lr=0.05, momentum=0.5, workers=P, blocks=blocks, warmup=3, full_every=5)
    job, _, optimum = quadratic_job(algo, rounds, eval_every=100)
    result = SharedMemoryEngine(processes=P).run(job, RunFolder(None))
    torch.testing.assert_close(result.x[0], optimum, rtol=0, atol=1e-6)
    records = result.records
    assert [r["round"] for r in records] == [0, 100, 200, 300, 400]
    last = records[-1]
    assert last["samples"] == rounds * P * N  # full batches: every step reads all N
    assert last["epoch"] == rounds * P
    assert last["steps_min"] + last["steps_max"] == rounds * P  # two workers
    updates = last["updates_per_block"]
    assert len(updates) == blocks and min(updates) > 0  # every block is updated
    # a partitioned step writes 2 of the 4 blocks, a full step all 4
    assert 2 * rounds * P < sum(updates) < 4 * rounds * P
    # a mean over the block reads (not their sum) cannot pass the largest; exact values
    # of the counters' formulas: tests/test_metrics.py
    assert last["staleness_mean"] <= last["staleness_max"]
    assert last["samples_per_s"] > 0 and last["train_time_s"] <= last["wall_time_s"]
    assert last["machines"] == 1 and last["bytes_total"] == 0


def test_synchronous_data_parallel_is_gradient_descent() -> None:
    """Full batches: every worker's gradient is the same, so the mean-gradient round is
    exactly momentum gradient descent, and no read is stale."""
    P, rounds = 2, 30
    algo = AllReduceSGD(lr=0.05, momentum=0.9)
    job, problem, _ = quadratic_job(algo, rounds)
    result = SharedMemoryEngine(processes=P).run(job, RunFolder(None))
    oracle = problem.oracle([torch.arange(N)], [0], batch_size=0, seed=0)
    x, u = job.x0.clone(), torch.zeros_like(job.x0)
    for _ in range(rounds):
        _, g = oracle.grad(x[None])
        u = 0.9 * u + g[0]
        x = x - 0.05 * u
    torch.testing.assert_close(result.x[0], x, rtol=0, atol=1e-12)
    last = result.records[-1]
    assert last["staleness_max"] == 0
    assert last["updates_per_block"] == [rounds, rounds]  # each worker owns one slice
    assert last["steps_min"] == last["steps_max"] == rounds


def test_one_hogwild_process_is_sequential_sgd_with_its_own_batches() -> None:
    """P = 1: momentum SGD with the diminishing step on worker 0's seeded mini-batches."""
    rounds, B = 40, 7
    algo = Hogwild(lr=0.05, momentum=0.9, workers=1, blocks=3, step_decay=0.5)
    job, problem, _ = quadratic_job(algo, rounds, batch_size=B)
    result = SharedMemoryEngine(processes=1).run(job, RunFolder(None))
    pool = torch.cat(list(job.shards))
    gen = torch.Generator().manual_seed(agent_seed(job.seed, 0))
    x, u = job.x0.clone(), torch.zeros_like(job.x0)
    data = problem.data
    for k in range(rounds):
        idx = pool[torch.randint(len(pool), (B,), generator=gen)]
        w = torch.full((B,), 1.0 / B, dtype=torch.float64)
        p = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(
            problem.batch_loss(p, data.x_train[idx], data.y_train[idx], w), p
        )
        u = 0.9 * u + g
        x = x - algo.step_size(k) * u
    torch.testing.assert_close(result.x[0], x, rtol=0, atol=1e-12)
    assert result.records[-1]["staleness_max"] == 0  # nobody else writes


def test_a_diverging_worker_stops_the_run_with_the_divergence_error() -> None:
    algo = Hogwild(lr=1e4, workers=1, blocks=1)
    job, _, _ = quadratic_job(algo, rounds=200)
    with pytest.raises(DivergenceError, match="the run diverged at step"):
        SharedMemoryEngine(processes=1).run(job, RunFolder(None))


def test_bad_configurations_stop_before_any_process_starts(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="algorithm=dpsgd cannot run there"):
        load_config(overrides={"engine": "shared_memory", "algorithm": "dpsgd"})
    with pytest.raises(ConfigError, match="needs blocks >= workers"):
        build_job(
            load_config(
                overrides={
                    "engine": "shared_memory",
                    "algorithm": "block_async",
                    "processes": 2,
                    "blocks": 1,
                }
            )
        )
    cfg = load_config(
        overrides={
            "engine": "shared_memory",
            "algorithm": "hogwild",
            "average_every": 5,
            "progress": False,
        }
    )
    engine = build_engine(cfg)
    assert isinstance(engine, SharedMemoryEngine) and engine.processes == 2
    monkeypatch.delenv("RANK", raising=False)  # no launcher: one machine
    with pytest.raises(ConfigError, match="launch one process per machine with torchrun"):
        engine.run(build_job(cfg), RunFolder(None))


def test_two_machines_average_and_keep_the_writes_made_during_the_exchange(
    tmp_path: Path,
) -> None:
    script = Path(__file__).with_name("shared_memory_machines.py")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*torchrun_command(2, str(script), str(tmp_path))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, saved in enumerate(ranks):
        torch.testing.assert_close(saved["mean"], torch.full((6,), 1.5, dtype=torch.float64))
        expected = torch.full((6,), 1.5, dtype=torch.float64)
        expected[:2] += 10.0 * (r + 1)  # the local write survived the averaging
        torch.testing.assert_close(saved["x"], expected, rtol=0, atol=0)
    final = ranks[0]["final"]
    torch.testing.assert_close(final[0], final[1], rtol=0, atol=0)  # one model again
    last = ranks[0]["records"][-1]
    assert last["machines"] == 2 and last["averagings"] == 4  # rounds 5, 10, 15, 20
    assert last["bytes_total"] == 4 * final[0].numel() * final[0].element_size()


def test_the_command_line_writes_a_run_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    items = ["engine=shared_memory", "algorithm=block_async", "processes=2", "blocks=3"]
    items += ["model=linear", "rounds=20", "eval_every=10", "batch_size=8", "progress=false"]
    assert main(["run", *items, "--out", str(tmp_path)]) == 0
    records = read_records(tmp_path)
    assert [r["round"] for r in records] == [0, 10, 20]
    assert records[-1]["samples"] == 20 * 2 * 8
    assert len(records[-1]["updates_per_block"]) == 3
    x = torch.load(tmp_path / "final.pt", weights_only=True)
    assert x.shape == (1, 650)  # one shared model: 64 inputs x 10 classes + 10 biases
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["engine"] == "shared_memory" and summary["test_accuracy"] > 0.5
