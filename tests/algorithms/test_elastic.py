"""The elastic averaging family, DOWNPOUR and ADMM on the simulator, and the servers."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from helpers import (
    identity_quadratics,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms import (
    ADMM,
    EAMSGD,
    EASGD,
    Downpour,
    EASGDAsync,
    MomentumDownpour,
    TreeEASGD,
)
from nettrain.algorithms.elastic import check_moving_rate
from nettrain.config import load_config
from nettrain.engines.base import Job
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.engines.sim.events import run_events
from nettrain.engines.sim.servers import SimServers
from nettrain.errors import ConfigError
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


def with_servers(algo, n: int, d: int, seed: int):
    """``n`` workers of different quadratics ``f_i = ||x - a_i||^2 / 2`` (rows of seed
    ``seed``), distinct starts ``x0`` and a centre elsewhere on ``algo``'s servers: the
    targets, ``x0``, the centre, the servers, a communicator and the oracle."""
    targets = random_rows(n, d, seed)
    problem, shards = identity_quadratics(targets)
    x0, centre = random_rows(n, d, seed + 1), random_rows(1, d, seed + 2)[0]
    servers = SimServers(centre, algo, n, CHEAP)
    topology = build_topology("complete", n)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64, servers)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    return targets, x0, centre, servers, comm, oracle


def test_synchronous_easgd_step_from_distinct_workers_and_centre() -> None:
    """One exchange round from four different workers, a centre elsewhere and different
    data per worker (``f_i = ||x - a_i||^2 / 2``, gradient ``x_i - a_i``, weight decay
    ``w``), against the module docstring's rule written out here::

        x_i <- x_i - lr (x_i - a_i + w x_i) - alpha (x_i - x~)
        x~  <- x~ + alpha sum_i (x_i - x~)

    The engine's own step test starts every worker at the centre, where the elastic
    terms vanish; here every term is non-zero, so a wrong pull (``alpha / 2``), a wrong
    gradient or a centre update read after the local step fails."""
    n, d, lr, alpha, decay = N, 3, 0.1, 0.15, 0.01
    algo = EASGD(lr=lr, alpha=alpha, tau=1, servers=2, weight_decay=decay)
    targets, x0, centre, servers, comm, oracle = with_servers(algo, n, d, 10)
    state = algo.init(x0.clone(), oracle, comm)
    state, loss = algo.step(state, 0, oracle, comm)
    expected_x = x0 - lr * (x0 - targets + decay * x0) - alpha * (x0 - centre)
    expected_centre = centre + alpha * (x0 - centre).sum(0)
    torch.testing.assert_close(state.x, expected_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(servers.centre(), expected_centre, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, 0.5 * (x0 - targets).square().sum(1), rtol=0, atol=1e-12)
    assert state.exchanges.tolist() == [1] * n
    for t in (1, 2):  # tau = 1: every round exchanges
        state, _ = algo.step(state, t, oracle, comm)
    assert state.exchanges.tolist() == [3] * n


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


def test_tree_levels_and_periods_are_the_documented_formulas() -> None:
    """Levels above ``n`` leaves hold ``ceil(n / b^l)`` nodes up to a single root; level
    ``l`` exchanges every ``tree_periods[l]`` rounds, past the list every
    ``tree_periods[-1] * b^(l - len + 1)``, with ``(tau,)`` for an empty list."""
    binary = TreeEASGD(lr=0.1, branching=2, tree_periods=(2, 3))
    assert binary.levels(5) == [3, 2, 1]
    assert binary.levels(4) == [2, 1]
    assert binary.levels(2) == [1]
    assert binary.levels(1) == [1]
    assert TreeEASGD(lr=0.1, branching=3).levels(10) == [4, 2, 1]
    assert [binary.period(level) for level in range(5)] == [2, 3, 6, 12, 24]
    ternary = TreeEASGD(lr=0.1, branching=3, tau=2)
    assert [ternary.period(level) for level in range(3)] == [2, 6, 18]


def test_tree_easgd_rounds_are_the_elastic_exchanges_of_a_tree_written_out() -> None:
    """Five workers with different quadratics and weight decay, a binary tree with
    inner levels of 3, 2 and 1 nodes, exchanging every 1, 2 and 4 rounds, against a
    loop over children written here: after the local step, each level from the leaves
    up pulls every child and its parent together by ``alpha (child - parent)``, the
    parent taking the sum of its children's pulls, and the next level sees the
    parents so updated. Distinct starting nodes make every pull non-zero."""
    n, d, lr, alpha, decay, b = 5, 3, 0.1, 0.3, 0.01, 2
    targets = random_rows(n, d, 20)
    problem, shards = identity_quadratics(targets)
    algo = TreeEASGD(lr=lr, alpha=alpha, branching=b, tree_periods=(1, 2), weight_decay=decay)
    comm = SimCommunicator(build_topology("complete", n), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    x0 = random_rows(n, d, 21)
    state = algo.init(x0.clone(), oracle, comm)
    assert state.nodes.shape == (3 + 2 + 1, d)
    torch.testing.assert_close(state.nodes, x0[:1].expand(6, -1), rtol=0, atol=0)
    state = dataclasses.replace(state, nodes=random_rows(6, d, 22))

    x, nodes = state.x.clone(), state.nodes.clone()
    levels = [nodes[0:3], nodes[3:5], nodes[5:6]]  # views: updates land in nodes
    for t in range(5):
        x = x - lr * ((x - targets) + decay * x)
        children = x
        for level, parents in enumerate(levels):
            if (t + 1) % [1, 2, 4][level] == 0:
                before = parents.clone()
                for child in range(len(children)):
                    pull = alpha * (children[child] - before[child // b])
                    children[child] -= pull
                    parents[child // b] += pull
            children = parents
        state, _ = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.x, x, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.nodes, nodes, rtol=0, atol=1e-12)
    torch.testing.assert_close(algo.centre(state, comm), nodes[-1], rtol=0, atol=0)
    messages, nbytes, _ = comm.traffic.reset()
    assert messages.tolist() == [5] * n  # the leaves exchange every round
    assert nbytes.tolist() == [5 * d * 8] * n


def test_admm_exchanges_are_the_documented_rule_written_out() -> None:
    """Two of three workers (different quadratics, weight decay ``w``, multipliers and
    pulled centres of their own) make ``tau = 2`` steps on their augmented Lagrangians
    ``g = (x - a_i) - l_i + rho (x - x~_i) + w x``, then ``l_i <- l_i - rho (x_i - x~_i)``,
    send ``(u_i' - u_i) / n`` for ``u_i = x_i - l_i / rho``, and pull the centre as the
    server left it after their own message (row order)."""
    n, d, lr, alpha, decay = 3, 2, 0.1, 0.3, 0.01
    algo = ADMM(lr=lr, alpha=alpha, tau=2, weight_decay=decay)
    rho = alpha / lr
    targets, x0, centre, servers, comm, oracle = with_servers(algo, n, d, 30)
    state = algo.init(x0.clone(), oracle, comm)
    assert state.exchanges.dtype == torch.int64 and state.exchanges.tolist() == [0] * n
    assert torch.equal(state.dual, torch.zeros(n, d, dtype=torch.float64))
    assert torch.equal(state.pulled, x0) and torch.equal(state.term, x0)
    state = dataclasses.replace(state, dual=random_rows(n, d, 33), pulled=random_rows(n, d, 34))
    dual, pulled, term = state.dual.clone(), state.pulled.clone(), state.term.clone()
    x, expected_centre, losses = x0.clone(), centre.clone(), []
    for i in (2, 0):  # the rows' order
        for _ in range(2):
            g = (x[i] - targets[i]) - dual[i] + rho * (x[i] - pulled[i]) + decay * x[i]
            loss = 0.5 * (x[i] - targets[i]).square().sum()
            x[i] = x[i] - lr * g
        losses.append(loss)
        dual[i] = dual[i] - rho * (x[i] - pulled[i])
        new_term = x[i] - dual[i] / rho
        expected_centre = expected_centre + (new_term - term[i]) / n
        term[i], pulled[i] = new_term, expected_centre
    pairs = torch.tensor([[2, -1], [0, -1]])
    state, loss = algo.interact(state, pairs, oracle, comm, torch.tensor([[2, 0], [2, 0]]))
    for got, want in [(state.x, x), (state.dual, dual), (state.term, term), (state.pulled, pulled)]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(servers.centre(), expected_centre, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, torch.stack(losses), rtol=0, atol=1e-12)
    assert comm.traffic.reset()[0].tolist() == [1, 0, 1]  # one message each, to the server
    state, _ = algo.interact(state, pairs[:1], oracle, comm, torch.tensor([[1, 0]]))
    assert state.exchanges.tolist() == [1, 0, 2]


@pytest.mark.parametrize("method", [EASGD, EASGDAsync, ADMM])
def test_the_default_moving_rate_is_fixed_for_the_network(method) -> None:
    """``alpha = 0`` becomes ``0.9 / n``; a given ``alpha`` is kept; an unstable one is
    refused with the method's name."""
    assert method(lr=0.1).for_network(6).alpha == 0.9 / 6
    assert method(lr=0.1, alpha=0.2).for_network(6).alpha == 0.2
    with pytest.raises(ConfigError, match=rf"^{method.name}: alpha=0.5 with 6 workers"):
        method(lr=0.1, alpha=0.5).for_network(6)
    with pytest.raises(ConfigError, match=r"^alpha must be >= 0 \(0 = 0.9 / agents\), got -0.1$"):
        method(lr=0.1, alpha=-0.1)


def test_the_momentum_server_replies_the_look_ahead_point() -> None:
    """Momentum DOWNPOUR's server: ``v~ <- delta v~ + D``, ``x~ <- x~ + v~``, and the reply
    is the look-ahead ``x~ + delta v~`` (not ``x~ + v~``)."""
    delta = 0.5
    algo = MomentumDownpour(lr=0.1, momentum=delta)
    centre, velocity, sent = random_rows(3, 4, 50)
    rows, reply = algo.serve(torch.stack([centre, velocity]), sent)
    new_velocity = delta * velocity + sent
    torch.testing.assert_close(rows, torch.stack([centre + new_velocity, new_velocity]))
    torch.testing.assert_close(reply, centre + new_velocity + delta * new_velocity)


@pytest.mark.parametrize(
    "method, hint",
    [
        (EASGDAsync, "(algorithm=eamsgd has momentum)"),
        (EASGD, "(eamsgd has momentum)"),
        (TreeEASGD, "(the tree's exchanges are elastic averaging)"),
        (ADMM, "on the workers"),
        (Downpour, "on the workers (algorithm=mdownpour has momentum on the server)"),
    ],
)
def test_methods_with_plain_local_steps_refuse_momentum_with_a_hint(method, hint: str) -> None:
    message = f"{method.name} takes plain SGD steps; set momentum=0 {hint}"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        method(lr=0.1, momentum=0.9)


def test_tree_easgd_settings_and_defaults() -> None:
    """``alpha = 0`` is ``0.9 / branching``; branching below 2 and any period below 1
    (``tau`` or one of ``tree_periods`` alone) are refused; the whole tree must be in one
    process."""
    assert TreeEASGD(lr=0.1).alpha == 0.9 / 2 and TreeEASGD(lr=0.1, branching=3).alpha == 0.3
    with pytest.raises(
        ConfigError, match=r"^tree_easgd needs branching >= 2 children per node, got 1$"
    ):
        TreeEASGD(lr=0.1, branching=1)
    for periods in [{"tau": 0}, {"tree_periods": (2, 0)}]:
        with pytest.raises(ConfigError, match=r"^tau and tree_periods must be >= 1, got "):
            TreeEASGD(lr=0.1, **periods)
    with pytest.raises(ConfigError, match=r"^tree_easgd: alpha=0.5 with 4 workers per centre"):
        TreeEASGD(lr=0.1, alpha=0.5, branching=4)
    split = SimpleNamespace(agents=torch.arange(2), n_agents=4)  # half the agents here
    message = "tree_easgd runs in engine=sim (it keeps the whole tree in one process)"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        TreeEASGD(lr=0.1).init(torch.zeros(2, 3), None, split)  # type: ignore[arg-type]


def test_eamsgd_exchanges_are_nesterov_steps_then_the_elastic_pull() -> None:
    """Two of three EAMSGD workers (different quadratics, weight decay ``w``, their own
    velocities) make 3 and 1 local steps ``v <- delta v - lr (g(x + delta v) + w (x +
    delta v)); x <- x + v``, then exchange in row order: ``d = alpha (x_i - x~)``,
    ``x_i <- x_i - d``, ``x~ <- x~ + d``, each on the centre the previous one left."""
    n, d, lr, alpha, delta, decay = 3, 2, 0.1, 0.2, 0.6, 0.01
    algo = EAMSGD(lr=lr, momentum=delta, alpha=alpha, weight_decay=decay)
    targets, x0, centre, servers, comm, oracle = with_servers(algo, n, d, 60)
    state = algo.init(x0.clone(), oracle, comm)
    state = dataclasses.replace(state, v=random_rows(n, d, 63))
    x, v, expected_centre, losses = x0.clone(), state.v.clone(), centre.clone(), []
    for i, steps in [(2, 3), (0, 1)]:
        for _ in range(steps):
            point = x[i] + delta * v[i]
            loss = 0.5 * (point - targets[i]).square().sum()
            v[i] = delta * v[i] - lr * (point - targets[i] + decay * point)
            x[i] = x[i] + v[i]
        losses.append(loss)
        pull = alpha * (x[i] - expected_centre)
        x[i], expected_centre = x[i] - pull, expected_centre + pull
    pairs, steps = torch.tensor([[2, -1], [0, -1]]), torch.tensor([[3, 0], [1, 0]])
    state, loss = algo.interact(state, pairs, oracle, comm, steps)
    torch.testing.assert_close(state.x, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.v, v, rtol=0, atol=1e-12)
    torch.testing.assert_close(servers.centre(), expected_centre, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, torch.stack(losses), rtol=0, atol=1e-12)
    assert state.exchanges.tolist() == [1, 0, 1]


def test_downpour_exchanges_push_the_accumulated_steps_and_pull_the_centre() -> None:
    """Two of three DOWNPOUR workers make 2 and 1 plain SGD steps (weight decay ``w``),
    push ``D = x_i - x_pulled`` (server: ``x~ <- x~ + D``) in row order and pull the
    centre as their own push left it; the third keeps its model and count."""
    n, d, lr, decay = 3, 2, 0.1, 0.01
    algo = Downpour(lr=lr, weight_decay=decay, servers=2)
    targets, x0, centre, servers, comm, oracle = with_servers(algo, n, d, 70)
    state = algo.init(x0.clone(), oracle, comm)
    assert state.exchanges.dtype == torch.int64
    state = dataclasses.replace(state, pulled=random_rows(n, d, 73))
    x, pulled, expected_centre = x0.clone(), state.pulled.clone(), centre.clone()
    for i, steps in [(1, 2), (0, 1)]:
        for _ in range(steps):
            x[i] = x[i] - lr * (x[i] - targets[i] + decay * x[i])
        expected_centre = expected_centre + (x[i] - pulled[i])
        x[i], pulled[i] = expected_centre, expected_centre
    pairs, steps = torch.tensor([[1, -1], [0, -1]]), torch.tensor([[2, 0], [1, 0]])
    state, _ = algo.interact(state, pairs, oracle, comm, steps)
    torch.testing.assert_close(state.x, torch.stack([x[0], x[1], x0[2]]), rtol=0, atol=1e-12)
    torch.testing.assert_close(state.pulled[:2], pulled[:2], rtol=0, atol=1e-12)
    torch.testing.assert_close(servers.centre(), expected_centre, rtol=0, atol=1e-12)
    state, _ = algo.interact(state, pairs[1:], oracle, comm, steps[1:])
    assert state.exchanges.tolist() == [2, 1, 0]


def test_moving_rate_messages_and_the_edge_of_stability() -> None:
    """``alpha = 0`` left unresolved is refused with where it is resolved; ``beta = n
    alpha`` must be in ``(0, 2)``: exactly 2 is refused, with the figures of the fix."""
    message = (
        "easgd: alpha=0 stands for 0.9 / agents, fixed when the run is built "
        "(nettrain.run, or the method's for_network(n) in your own loop)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_moving_rate(0.0, 4, "easgd")
    check_moving_rate(0.49, 4, "easgd")
    message = (
        "easgd: alpha=0.5 with 4 workers per centre gives beta = 2; the centre's update "
        "x~ <- (1 - beta) x~ + beta mean x is unstable unless 0 < beta < 2. Use alpha < 0.5 "
        "(default 0.9/4)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_moving_rate(0.5, 4, "easgd")
    for key in ("tau", "servers"):
        with pytest.raises(ConfigError, match=f"^{key} must be >= 1, got 0$"):
            EASGD(lr=0.1, **{key: 0})


def test_a_round_of_a_centre_method_is_one_local_step_of_every_worker() -> None:
    assert EASGDAsync(lr=0.1, tau=4).events_per_round(8) == 2.0
    assert Downpour(lr=0.1, tau=3).events_per_round(6) == 2.0


@pytest.mark.parametrize("method", [EASGD, EASGDAsync])
def test_an_unresolved_moving_rate_is_refused_at_init_with_the_methods_name(method) -> None:
    """``alpha = 0`` that no ``for_network`` resolved reaches ``init``: refused there, the
    message naming the method that was built."""
    algo = method(lr=0.1)
    message = (
        f"{algo.name}: alpha=0 stands for 0.9 / agents, fixed when the run is built "
        "(nettrain.run, or the method's for_network(n) in your own loop)"
    )
    x0 = torch.zeros(N, 3, dtype=torch.float64)
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        algo.init(x0, None, SimpleNamespace(n_agents=N))  # type: ignore[arg-type]


def test_synchronous_easgd_counts_exchanges_in_int64_and_keeps_a_zero_velocity() -> None:
    """:class:`ElasticState`: ``exchanges`` is ``(m,)`` int64 from the start, and ``v``
    stays the zero velocity of a method without momentum after a step."""
    n, d = N, 3
    algo = EASGD(lr=0.1, alpha=0.15, tau=1)
    _, x0, _, _, comm, oracle = with_servers(algo, n, d, 30)
    state = algo.init(x0.clone(), oracle, comm)
    assert state.exchanges.dtype == torch.int64 and state.exchanges.tolist() == [0] * n
    state, _ = algo.step(state, 0, oracle, comm)
    assert state.exchanges.dtype == torch.int64 and state.exchanges.tolist() == [1] * n
    torch.testing.assert_close(state.v, torch.zeros(n, d, dtype=torch.float64), rtol=0, atol=0)


def test_tree_easgd_makes_its_parent_index_on_the_leaves_device() -> None:
    """A round on leaves on the ``meta`` device (no numbers; a stand-in oracle whose
    gradient is the iterate): every index the tree's exchanges build lives on the leaves'
    device, so the round runs and its results stay there."""
    n, d = 5, 3
    algo = TreeEASGD(lr=0.1, alpha=0.3, branching=2, tree_periods=(1, 1, 1))
    comm = SimCommunicator(build_topology("complete", n), torch.device("cpu"), torch.float64)
    oracle = SimpleNamespace(grad=lambda x: (x.sum(1), x))
    x0 = torch.zeros(n, d, dtype=torch.float64, device="meta")
    state = algo.init(x0, oracle, comm)  # type: ignore[arg-type]
    state, loss = algo.step(state, 0, oracle, comm)  # type: ignore[arg-type]
    assert state.x.device.type == state.nodes.device.type == loss.device.type == "meta"
    assert state.nodes.shape == (3 + 2 + 1, d)
