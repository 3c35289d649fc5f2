"""The elastic averaging family, DOWNPOUR and ADMM on the simulator, and the servers."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from helpers import least_squares_optimum, least_squares_problem, regression_data, sim_job
from nettrain.algorithms import (
    ADMM,
    EAMSGD,
    EASGD,
    Downpour,
    EASGDAsync,
    MomentumDownpour,
    TreeEASGD,
)
from nettrain.config import load_config
from nettrain.data import Dataset
from nettrain.engines.base import Job
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.engines.sim.events import run_events
from nettrain.engines.sim.servers import SimServers
from nettrain.errors import ConfigError
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 4
SAMPLES = 120
CHEAP = CostModel(1e-6, 1e-5, 1e9, torch.ones(N, dtype=torch.float64))


def job(algorithm, *, rounds: int, shards=None, slowdown=None, n: int = N) -> Job:
    data = regression_data(SAMPLES)
    problem = least_squares_problem(data)
    shards = shards or [torch.arange(SAMPLES)] * n  # everyone holds all the data
    x0 = torch.randn(problem.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    topo = build_topology("complete", n)
    return sim_job(problem, shards, topo, algorithm, rounds=rounds, x0=x0, slowdown=slowdown)


def random_rows(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("servers", [1, 3])
def test_the_elastic_exchange_preserves_the_sum_of_workers_and_centre(servers: int) -> None:
    """``d = alpha (x_i - x~)``: ``x_i - d`` plus ``x~ + d`` is ``x_i + x~``, exchange by
    exchange, in any order, on every server's slice."""
    algo = EASGDAsync(lr=0.1, alpha=0.3, servers=servers)
    x = random_rows(5, 7, 0)
    centre = random_rows(1, 7, 1)[0]
    sim = SimServers(centre, algo, 5, CHEAP)
    order = torch.tensor([3, 0, 4, 1, 2])
    before = x.sum(0) + centre
    replies = sim.exchange(x[order], order, synchronous=False)
    x[order] = torch.add(x[order], x[order] - replies, alpha=-algo.alpha)
    torch.testing.assert_close(x.sum(0) + sim.centre(), before, rtol=0, atol=1e-12)


def test_synchronous_easgd_moves_the_centre_to_the_weighted_mean() -> None:
    """One synchronous round: ``x~ <- (1 - beta) x~ + beta mean(x)``, ``beta = n alpha``."""
    n, alpha = 6, 0.1
    algo = EASGD(lr=0.1, alpha=alpha, servers=2)
    x, centre = random_rows(n, 9, 2), random_rows(1, 9, 3)[0]
    sim = SimServers(centre, algo, n, CHEAP)
    replies = sim.exchange(x, torch.arange(n), synchronous=True)
    beta = n * alpha
    torch.testing.assert_close(sim.centre(), (1 - beta) * centre + beta * x.mean(0))
    torch.testing.assert_close(replies, centre.expand(n, -1))  # all read the round's centre


def test_synchronous_easgd_step_is_the_paper_rule() -> None:
    """``x_i <- x_i - lr g_i(x_i) - alpha (x_i - x~)`` at round 0 (an exchange round)."""
    algo = EASGD(lr=0.05, alpha=0.2, tau=1)
    j = job(algo, rounds=1)
    result = SimEngine().run(j, RunFolder(None))
    oracle = j.problem.oracle(j.shards, range(N), batch_size=0, seed=0)
    x0 = j.x0.expand(N, -1)
    _, g = oracle.grad(x0)
    torch.testing.assert_close(result.x, x0 - 0.05 * g)  # x_i = x~ at the start
    torch.testing.assert_close(result.centre, j.x0)  # the centre saw x_i = x~: no move


EVERY_METHOD = [
    EASGD(lr=0.1, alpha=0.2, tau=2),
    EASGDAsync(lr=0.1, alpha=0.2, tau=2, servers=2),
    EAMSGD(lr=0.05, momentum=0.7, alpha=0.2, tau=2),
    Downpour(lr=0.1, tau=2, servers=3),
    MomentumDownpour(lr=0.05, momentum=0.5, tau=1),
    TreeEASGD(lr=0.1, alpha=0.3, branching=2, tree_periods=(2, 4)),
    ADMM(lr=0.1, alpha=0.2, tau=2),
]


@pytest.mark.parametrize("algo", EVERY_METHOD, ids=lambda a: a.name)
def test_every_method_reaches_the_least_squares_optimum(algo) -> None:
    """Every worker holds all the data: the optimum is a fixed point of the local steps
    and of every exchange, so the centre and every worker converge to it."""
    j = job(algo, rounds=600)
    result = SimEngine().run(j, RunFolder(None))
    opt = least_squares_optimum(regression_data(SAMPLES), list(j.shards))
    assert (result.x - opt).norm(dim=1).max() < 1e-6
    assert (result.centre - opt).norm() < 1e-6


def test_admm_reaches_the_consensus_optimum_of_different_shards() -> None:
    """ADMM's fixed points satisfy ``sum_i grad f_i(x~) = 0`` (the multipliers sum to zero):
    the exact optimum of the whole data, although every worker holds a different shard
    (EASGD would stop at the elastic objective's optimum instead)."""
    shards = [torch.arange(SAMPLES)[i::N] for i in range(N)]
    result = SimEngine().run(
        job(ADMM(lr=0.05, alpha=0.1, tau=4), rounds=4000, shards=shards),
        RunFolder(None),
    )
    opt = least_squares_optimum(regression_data(SAMPLES), shards)
    assert (result.centre - opt).norm() < 1e-5


@pytest.mark.parametrize(
    "algo",
    [EASGDAsync(lr=0.05, alpha=0.2, tau=3, servers=2), Downpour(lr=0.05)],
    ids=["easgd_async", "downpour"],
)
def test_batched_exchanges_equal_exchanges_one_by_one(algo) -> None:
    slow = torch.tensor([1.0, 2.5, 1.0, 4.0], dtype=torch.float64)
    batched = run_events(job(algo, rounds=40, slowdown=slow), RunFolder(None))
    single = run_events(job(algo, rounds=40, slowdown=slow), RunFolder(None), max_batch=1)
    torch.testing.assert_close(batched.x, single.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(batched.centre, single.centre, rtol=0, atol=1e-12)
    assert batched.records[-1]["staleness_hist"] == single.records[-1]["staleness_hist"]


def test_staleness_is_what_the_others_did_in_between() -> None:
    """Equal speeds: every exchange but the first ones misses exactly the n - 1 others'
    updates. A worker 4x slower in computing (its messages are not) makes 3 to 4 times
    fewer exchanges and misses up to about 4 (n - 1) updates."""
    algo = EASGDAsync(lr=0.05, alpha=0.2, tau=1)
    even = run_events(job(algo, rounds=40), RunFolder(None)).records[-1]
    assert even["staleness_max"] == N - 1
    assert even["staleness_hist"][N - 1] == even["exchanges"] - (N - 1)  # 0, 1, 2 first
    slow = torch.tensor([4.0, 1, 1, 1], dtype=torch.float64)
    skewed = run_events(job(algo, rounds=80, slowdown=slow), RunFolder(None)).records[-1]
    assert 3 * (N - 1) <= skewed["staleness_max"] <= 4 * (N - 1) + 1
    assert 3 < skewed["exchanges_max"] / skewed["exchanges_min"] < 4.5


def test_sharding_the_centre_relieves_the_servers_queue() -> None:
    """16 workers exchange every step with a slow link: one server's queue holds every
    message; four servers share them, so the same work ends sooner in virtual time."""
    algo = {s: Downpour(lr=0.01, tau=1, servers=s) for s in (1, 4)}
    slow_link = CostModel(1e-6, 1e-5, 1e4, torch.ones(16, dtype=torch.float64))
    times = {
        s: run_events(
            sim_job(
                *_problem_and_shards(16),
                build_topology("complete", 16),
                a,
                rounds=10,
                cost=slow_link,
            ),
            RunFolder(None),
        ).records[-1]["virtual_time_s"]
        for s, a in algo.items()
    }
    assert times[4] < 0.5 * times[1]


def _problem_and_shards(n: int):
    problem = least_squares_problem(regression_data(SAMPLES))
    return problem, [torch.arange(SAMPLES)[i::n] for i in range(n)]


def test_same_seed_same_numbers() -> None:
    algo = EAMSGD(lr=0.05, momentum=0.9, alpha=0.2, tau=2)
    slow = torch.tensor([1.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    a = run_events(job(algo, rounds=20, slowdown=slow), RunFolder(None))
    b = run_events(job(algo, rounds=20, slowdown=slow), RunFolder(None))
    assert torch.equal(a.x, b.x) and torch.equal(a.centre, b.centre)


def test_a_server_shard_applies_every_concurrent_update_once() -> None:
    """4 threads (workers) push 200 DOWNPOUR updates each to one shard at once: every
    update is applied exactly once (integers in float64 add up exactly)."""
    algo = Downpour(lr=0.1)
    shard = CentreShard(
        algo, shard_rows(torch.zeros(8, dtype=torch.float64), algo, slice(0, 8)), 4, 10
    )

    def push(worker: int) -> None:
        for k in range(200):
            shard.exchange(worker, torch.full((8,), float(worker * 1000 + k), dtype=torch.float64))

    threads = [threading.Thread(target=push, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shard.counts() == {0: 200, 1: 200, 2: 200, 3: 200}
    expected = sum(w * 1000 * 200 + sum(range(200)) for w in range(4))
    assert torch.equal(shard.centre(), torch.full((8,), float(expected), dtype=torch.float64))


def test_synchronous_rounds_on_a_shard_ignore_arrival_order() -> None:
    """Workers that race ahead wait for the round to complete; the centre after 3 rounds
    is the simulator's synchronous result."""
    n, alpha = 4, 0.1
    algo = EASGD(lr=0.1, alpha=alpha)
    xs = random_rows(3 * n, 5, 7).view(3, n, 5)
    shard = CentreShard(
        algo, shard_rows(torch.zeros(5, dtype=torch.float64), algo, slice(0, 5)), n, 10
    )

    def work(worker: int) -> None:
        for r in range(3):
            time.sleep(0.001 * ((worker * 7 + r * 3) % 5))
            shard.exchange_sync(worker, r, xs[r, worker])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sim = SimServers(torch.zeros(5, dtype=torch.float64), algo, n, CHEAP)
    for r in range(3):
        sim.exchange(xs[r], torch.arange(n), synchronous=True)
    torch.testing.assert_close(shard.centre(), sim.centre(), rtol=0, atol=1e-12)


def test_the_centre_read_between_rounds_leaves_out_the_next_rounds_exchanges() -> None:
    """Worker 1 is already exchanging in round 1 when rank 0 reads the centre after round
    0: the reading is the centre after round 0, as the simulator has it."""
    n = 2
    algo = EASGD(lr=0.1, alpha=0.1)
    xs = random_rows(2 * n, 5, 8).view(2, n, 5)
    shard = CentreShard(
        algo, shard_rows(torch.zeros(5, dtype=torch.float64), algo, slice(0, 5)), n, 10
    )
    for w in range(n):
        shard.exchange_sync(w, 0, xs[0, w])
    shard.exchange_sync(1, 1, xs[1, 1])  # round 1 has begun
    sim = SimServers(torch.zeros(5, dtype=torch.float64), algo, n, CHEAP)
    sim.exchange(xs[0], torch.arange(n), synchronous=True)
    assert torch.equal(shard.centre(), sim.centre())
    assert not torch.equal(shard.rows[0], sim.centre())  # the early exchange is applied
    shard.exchange_sync(0, 1, xs[1, 0])
    sim.exchange(xs[1], torch.arange(n), synchronous=True)
    torch.testing.assert_close(shard.centre(), sim.centre(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithm": "eamsgd"}, "eamsgd needs momentum > 0"),
        ({"algorithm": "mdownpour"}, "mdownpour needs momentum > 0"),
        ({"algorithm": "easgd_async", "momentum": 0.9}, "plain SGD steps"),
        ({"algorithm": "easgd", "alpha": 0.6, "agents": 4}, "unless 0 < beta < 2"),
        ({"algorithm": "tree_easgd", "engine": "distributed"}, "engine=sim only"),
        (
            {"algorithm": "easgd", "engine": "distributed", "agents": 4, "servers": 2, "nproc": 2},
            "set nproc between 3 and 6",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_fix(overrides, message) -> None:
    from nettrain.experiment import build_job

    with pytest.raises(ConfigError, match=message):
        build_job(load_config(overrides))


def identity_quadratics(targets: torch.Tensor) -> tuple[Problem, list[torch.Tensor]]:
    """A problem whose agent ``i`` has ``f_i(x) = ||x - a_i||^2 / 2`` exactly, for the rows
    ``a_i`` of ``targets: (n, d)``, and its shards.

    A linear model without bias ``x -> <p, x>`` and the squared loss; agent ``i`` holds the
    ``d`` samples ``(sqrt(d) e_k, sqrt(d) a_ik)``, so its mean loss is
    ``(1/d) sum_k (sqrt(d) p_k - sqrt(d) a_ik)^2 / 2 = ||p - a_i||^2 / 2`` and its
    gradient ``p - a_i``: known by hand, whatever nettrain computes."""
    n, d = targets.shape
    scale = d**0.5
    features = (scale * torch.eye(d, dtype=torch.float64)).repeat(n, 1)  # (n d, d)
    data = Dataset(
        "quadratics",
        features,
        scale * targets.reshape(-1),
        features,
        scale * targets.reshape(-1),
        n_classes=0,
    )
    model = torch.nn.Linear(d, 1, bias=False).double()
    problem = Problem(model, get_loss("squared"), Regularizer(), data)
    return problem, [torch.arange(i * d, (i + 1) * d) for i in range(n)]


def test_synchronous_easgd_step_from_distinct_workers_and_centre() -> None:
    """One exchange round from four different workers, a centre elsewhere and different
    data per worker (``f_i = ||x - a_i||^2 / 2``, gradient ``x_i - a_i``), against the
    module docstring's rule written out here::

        x_i <- x_i - lr (x_i - a_i) - alpha (x_i - x~)
        x~  <- x~ + alpha sum_i (x_i - x~)

    The engine's own step test starts every worker at the centre, where the elastic
    terms vanish; here every term is non-zero, so a wrong pull (``alpha / 2``), a wrong
    gradient or a centre update read after the local step fails."""
    n, d, lr, alpha = N, 3, 0.1, 0.15
    targets = random_rows(n, d, 10)
    problem, shards = identity_quadratics(targets)
    algo = EASGD(lr=lr, alpha=alpha, tau=1, servers=2)
    x0, centre = random_rows(n, d, 11), random_rows(1, d, 12)[0]
    servers = SimServers(centre, algo, n, CHEAP)
    comm = SimCommunicator(
        build_topology("complete", n), torch.device("cpu"), torch.float64, servers
    )
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    state = algo.init(x0.clone(), oracle, comm)
    state, loss = algo.step(state, 0, oracle, comm)
    expected_x = x0 - lr * (x0 - targets) - alpha * (x0 - centre)
    expected_centre = centre + alpha * (x0 - centre).sum(0)
    torch.testing.assert_close(state.x, expected_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(servers.centre(), expected_centre, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, 0.5 * (x0 - targets).square().sum(1), rtol=0, atol=1e-12)
    assert state.exchanges.tolist() == [1] * n


def test_synchronous_easgd_reaches_the_elastic_fixed_point_of_different_quadratics() -> None:
    """``f_i = ||x - a_i||^2 / 2`` with different ``a_i``: a fixed point of the rule
    ``x_i <- x_i - lr (x_i - a_i) - alpha (x_i - x~)``, ``x~ <- x~ + alpha sum_i (x_i - x~)``
    has ``sum_i (x_i - x~) = 0`` (the centre is the workers' mean) and
    ``lr (x_i - a_i) = -alpha (x_i - x~)``; averaging the latter gives ``x~ = mean a``, so
    ``x_i = (a_i + rho x~) / (1 + rho)`` with ``rho = alpha / lr``: the workers stop part
    way between their own optimum and the centre. A pull of ``alpha / 2`` on the workers
    stops them elsewhere (``rho / 2``)."""
    n, d, lr, alpha = N, 3, 0.1, 0.15
    targets = random_rows(n, d, 13)
    problem, shards = identity_quadratics(targets)
    topo = build_topology("complete", n)
    j = sim_job(problem, shards, topo, EASGD(lr=lr, alpha=alpha, tau=1), rounds=500)
    result = SimEngine().run(j, RunFolder(None))
    rho = alpha / lr
    centre = targets.mean(0)
    workers = (targets + rho * centre) / (1 + rho)
    torch.testing.assert_close(result.centre, centre, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.x, workers, rtol=0, atol=1e-10)
    assert (workers - centre).norm(dim=1).min() > 0.1  # heterogeneous: not at consensus
