"""Every baseline on a least-squares problem whose optimum is known in closed form."""

from __future__ import annotations

import pytest
import torch

from helpers import (
    iid_shards,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms.baselines import GradientTracking, TrackingState
from nettrain.config import build_algorithm, load_config
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 8


def run_quadratic(name: str, lr: float, rounds: int, shards, schedule: str = "static"):
    data = regression_data()
    problem = least_squares_problem(data)
    topology = build_topology(
        "ring", N, schedule=schedule, drop_prob=0.3 if schedule == "edge_drop" else 0.0, seed=1
    )
    algorithm = build_algorithm(load_config({"algorithm": name, "lr": lr, "tau": 4}))
    job = sim_job(problem, shards, topology, algorithm, rounds=rounds)
    x = SimEngine().run(job, RunFolder(None)).x
    return x, least_squares_optimum(data, shards)


@pytest.mark.parametrize(("name", "lr"), [("allreduce", 0.3), ("gradient_tracking", 0.05)])
@pytest.mark.parametrize("schedule", ["static", "edge_drop"])
def test_exact_methods_reach_the_optimum(name: str, lr: float, schedule: str) -> None:
    """Heterogeneous shards; constant step (tracking needs a smaller one on a ring:
    its stable range shrinks with the spectral gap); exact convergence to 1e-8."""
    x, opt = run_quadratic(name, lr=lr, rounds=3000, shards=iid_shards(120, N), schedule=schedule)
    assert (x - opt).norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("name", ["dpsgd", "local_sgd"])
def test_inexact_methods_have_a_bias_that_vanishes_with_the_step(name: str) -> None:
    """D-PSGD and local SGD with a constant step stop at O(lr) from the optimum on
    heterogeneous shards (Yuan, Ling, Yin 2016; Woodworth et al. 2020): a 4x smaller
    step must at least halve the error."""
    shards = [torch.arange(120)[i::N] for i in range(N)]
    errors = []
    for lr in (0.2, 0.05):
        x, opt = run_quadratic(name, lr=lr, rounds=int(300 / lr), shards=shards)
        errors.append(float((x.mean(0) - opt).norm()))
    assert errors[0] < 0.1
    assert errors[1] < errors[0] / 2


@pytest.mark.parametrize("name", ["allreduce", "local_sgd", "dpsgd", "gradient_tracking"])
def test_identical_objectives_every_method_is_exact(name: str) -> None:
    """All agents hold the same data: every method's fixed point is the optimum."""
    shards = [torch.arange(120)] * N
    x, opt = run_quadratic(name, lr=0.1, rounds=1500, shards=shards)
    assert (x - opt).norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("schedule", ["static", "edge_drop", "random_matching"])
def test_gradient_tracking_invariant_every_round(schedule: str) -> None:
    """``sum_i y_i = sum_i g_i`` after every round, with stochastic mini-batches."""
    data = regression_data()
    problem = least_squares_problem(data)
    kind = "complete" if schedule == "random_matching" else "ring"
    topology = build_topology(
        kind, N, schedule=schedule, drop_prob=0.5 if schedule == "edge_drop" else 0.0, seed=3
    )
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(iid_shards(120, N), range(N), batch_size=4, seed=0)
    algo = GradientTracking(lr=0.05)
    state: TrackingState = algo.init(torch.zeros(N, problem.dim, dtype=torch.float64), oracle, comm)
    for t in range(50):
        state, _ = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.y.sum(0), state.g.sum(0), rtol=0, atol=1e-12)
        assert algo.diagnostics(state)["tracking_error"] < 1e-12
    assert not torch.allclose(state.y[0], state.y[1])  # the trackers are genuinely local
