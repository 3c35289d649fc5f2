from __future__ import annotations

import math

import pytest
import torch

from nettrain.engines.base import check_finite
from nettrain.engines.sim.clock import CostModel, VirtualClock
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.errors import DivergenceError
from nettrain.patterns import ring_allreduce_cost
from nettrain.topology import build_topology

CPU = torch.device("cpu")


def comm_for(kind: str, n: int, **kw) -> SimCommunicator:
    return SimCommunicator(build_topology(kind, n, **kw), CPU, torch.float64)


def test_agent_values_converge_to_their_mean() -> None:
    """Agent i starts at value i; repeated mixing drives everyone to (n - 1) / 2."""
    n = 12
    comm = comm_for("ring", n)
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 3)  # (n, 3)
    for t in range(600):
        x = comm.mix(x, t)
        assert x.mean().item() == pytest.approx((n - 1) / 2, abs=1e-12)  # mean preserved
    torch.testing.assert_close(x, torch.full_like(x, (n - 1) / 2), rtol=0, atol=1e-9)


@pytest.mark.parametrize(("kind", "n"), [("ring", 8), ("ring", 64), ("torus", 16), ("complete", 6)])
def test_one_mixing_step_is_w_times_x(kind: str, n: int) -> None:
    """Dense and sparse (n = 64 ring) paths both compute ``W @ x``."""
    comm = comm_for(kind, n)
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W = comm.topology.weights(0)
    torch.testing.assert_close(comm.mix(x, 0), W @ x, rtol=0, atol=1e-14)


def test_time_varying_mixing_preserves_the_mean() -> None:
    comm = comm_for("torus", 16, schedule="edge_drop", drop_prob=0.5, seed=2)
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean = x.mean(0)
    for t in range(30):
        x = comm.mix(x, t)
        torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=1e-13)


def test_traffic_is_counted_per_agent() -> None:
    n, d = 8, 10
    comm = comm_for("star", n)
    comm.mix(torch.zeros(n, d, dtype=torch.float64), 0)
    messages, nbytes, collective = comm.traffic.reset()
    assert messages.tolist() == [n - 1] + [1] * (n - 1)  # the hub sends to all
    assert nbytes.tolist() == [m * d * 8 for m in messages.tolist()]
    assert collective.tolist() == [0] * n  # neighbour messages
    comm.mean(torch.zeros(n, d, dtype=torch.float64))
    comm.mix(torch.zeros(n, d, dtype=torch.float64), 1)
    messages, nbytes, collective = comm.traffic.reset()
    assert messages.tolist() == [2 * (n - 1) + n - 1] + [2 * (n - 1) + 1] * (n - 1)
    assert collective.tolist() == [2 * (n - 1)] * n  # the all-reduce's, not the mix's
    assert ring_allreduce_cost(n, d, 8) == (14, 2 * 7 * 10 * 8 // 8)


def test_global_mean() -> None:
    comm = comm_for("ring", 5)
    x = torch.arange(10, dtype=torch.float64).view(5, 2)
    assert comm.mean(x).tolist() == [[4.0, 5.0]] * 5


def test_virtual_clock_waits_for_the_slowest_agent() -> None:
    slow = CostModel.straggler_slowdown(10, 0.2, 4.0, seed=0)
    assert sorted(slow.tolist()) == [1.0] * 8 + [4.0] * 2
    assert torch.equal(slow, CostModel.straggler_slowdown(10, 0.2, 4.0, seed=0))
    cost = CostModel(1e-3, 1e-4, 1e6, slow)
    clock = VirtualClock(cost)
    samples = torch.full((10,), 16)
    messages = torch.full((10,), 2)
    nbytes = torch.full((10,), 1000)
    dt = clock.sync_round(samples, messages, nbytes)
    assert dt == pytest.approx(4 * 1e-3 * 16 + 2e-4 + 1e-3)
    clock.sync_round(samples, messages, nbytes)
    assert clock.now == pytest.approx(2 * dt)


def test_divergence_names_the_round_and_agents() -> None:
    check_finite(torch.ones(3), 0)
    with pytest.raises(DivergenceError, match=r"round 5.*agent\(s\) 1.*learning rate \(lr=\)"):
        check_finite(torch.tensor([1.0, math.nan, 2.0]), 4)


def test_sparse_path_run_is_bit_for_bit_repeatable() -> None:
    """64 agents on a ring take the sparse mixing path; two runs agree exactly."""
    from helpers import iid_shards, least_squares_problem, regression_data, sim_job
    from nettrain.algorithms import GradientTracking
    from nettrain.engines.sim.engine import SimEngine
    from nettrain.recording import RunFolder

    problem = least_squares_problem(regression_data(n_samples=256))
    algorithm = GradientTracking(lr=0.02, momentum=0.5)
    topology = build_topology("ring", 64)
    job = sim_job(
        problem,
        iid_shards(256, 64),
        topology,
        algorithm,
        rounds=30,
        x0=problem.initial_params(0),
        batch_size=2,
        seed=5,
        eval_every=10,
    )
    a = SimEngine().run(job, RunFolder(None))
    b = SimEngine().run(job, RunFolder(None))
    assert torch.equal(a.x, b.x)
    assert a.records == [
        {**r, "wall_time_s": a.records[i]["wall_time_s"]} for i, r in enumerate(b.records)
    ]


def test_rounds_settled_together_name_the_round_a_divergence_began(monkeypatch) -> None:
    """The simulator settles 32 rounds' notes at a time (fewer for large networks): a
    run that diverges stops with the message of a run settled round by round, which
    names the first round whose loss is not finite."""
    from nettrain.config import load_config
    from nettrain.engines.sim import engine
    from nettrain.errors import DivergenceError
    from nettrain.experiment import run

    assert [engine.settle_rounds(n) for n in (1, 2048, 2049, 4096, 65536)] == [32, 32, 31, 16, 1]
    cfg = load_config({"dataset": "digits", "agents": 4, "lr": 1e6, "rounds": 100})
    with pytest.raises(DivergenceError) as together:
        run(cfg)
    monkeypatch.setattr(engine, "SETTLE_EVERY", 1)
    with pytest.raises(DivergenceError) as alone:
        run(cfg)
    assert str(together.value) == str(alone.value)
    assert "diverged at round" in str(alone.value) and "round 1:" not in str(alone.value)
