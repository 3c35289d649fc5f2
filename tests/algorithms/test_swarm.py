"""SwarmSGD and AD-PSGD on the simulator's event engine."""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
import pytest
import torch

from helpers import identity_quadratics, least_squares_problem, regression_data, sim_job
from nettrain.algorithms import ADPSGD, SwarmSGD
from nettrain.compression import Lattice
from nettrain.engines.base import Job
from nettrain.engines.draws import Draws
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.events import _batch, run_events
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator, Traffic
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 8


def job(
    algorithm, *, rounds: int, shards=None, slowdown=None, topology: str = "ring", **fields
) -> Job:
    data = regression_data()
    problem = least_squares_problem(data)
    shards = shards or [torch.arange(120)[i::N] for i in range(N)]
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(problem.dim, generator=gen, dtype=torch.float64)
    topo = build_topology(topology, N)
    return sim_job(
        problem, shards, topo, algorithm, rounds=rounds, x0=x0, slowdown=slowdown, **fields
    )


@pytest.mark.parametrize("blocking", [False, True])
def test_pure_gossip_preserves_the_mean_and_reaches_it(blocking: bool) -> None:
    """No local steps, no compression: every exchange keeps ``x_i + x_j``."""
    base = job(SwarmSGD(lr=0.1, local_steps=0), rounds=1)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(N, base.problem.dim, generator=gen, dtype=torch.float64)
    mean = x0.mean(0)

    class Start(SwarmSGD):  # the same algorithm, from distinct points
        def init(self, x, oracle, comm):
            return super().init(x0.clone(), oracle, comm)

    start = Start(lr=0.1, local_steps=0, blocking=blocking)
    result = run_events(job(start, rounds=200), RunFolder(None))
    torch.testing.assert_close(result.x.mean(0), mean, rtol=0, atol=1e-12)
    assert (result.x - mean).norm(dim=1).max() < 1e-8


@pytest.mark.parametrize(
    "algo",
    [
        SwarmSGD(lr=0.05, local_steps=2),
        SwarmSGD(lr=0.05, local_steps=2, blocking=True),
        ADPSGD(lr=0.05),
    ],
    ids=["nonblocking", "blocking", "adpsgd"],
)
def test_batched_events_equal_events_one_by_one(algo) -> None:
    """Disjoint events commute: the vectorised batches give the sequential result."""
    batched = run_events(job(algo, rounds=30), RunFolder(None))
    single = run_events(job(algo, rounds=30), RunFolder(None), max_batch=1)
    torch.testing.assert_close(batched.x, single.x, rtol=0, atol=1e-12)
    assert batched.records[-1]["bytes_total"] == single.records[-1]["bytes_total"]


@pytest.mark.parametrize(
    ("compressor", "tol"),
    [(None, 1e-9), (Lattice.with_bits(16, eps=1e-7), 1e-5)],
    ids=["exact", "lattice16"],
)
def test_swarm_reaches_the_least_squares_optimum(compressor, tol: float) -> None:
    """Every agent holds all the data: the optimum is a fixed point of local steps and of
    averaging, so SwarmSGD converges to it (with the lattice, to its resolution)."""
    everything = [torch.arange(120)] * N
    kwargs = {"compressor": compressor} if compressor is not None else {}
    algo = SwarmSGD(lr=0.3, local_steps=2, **kwargs)
    result = run_events(job(algo, rounds=150, shards=everything), RunFolder(None))
    data = regression_data()
    a = torch.cat([data.x_train, torch.ones(120, 1, dtype=torch.float64)], 1)
    opt = torch.linalg.lstsq(a, data.y_train[:, None]).solution[:, 0]
    assert (result.x - opt).norm(dim=1).max() < tol


def test_a_straggler_initiates_fewer_interactions() -> None:
    """Agent 0 is 4x slower: it starts about a quarter as many interactions as the others
    and is picked as a partner as often; so it takes part in about (1/4 + 1)/2 as many."""
    slow = torch.ones(N, dtype=torch.float64)
    slow[0] = 4.0
    algo = SwarmSGD(lr=0.05, local_steps=1)
    result = run_events(job(algo, rounds=200, slowdown=slow, topology="complete"), RunFolder(None))
    record = result.records[-1]
    assert record["interactions_min"] > 0
    share = record["interactions_min"] / record["interactions_max"]
    assert 0.45 < share < 0.8


def test_same_seed_same_numbers() -> None:
    algo = SwarmSGD(lr=0.05, local_steps=2, compressor=Lattice.with_bits(8))
    a = run_events(job(algo, rounds=20), RunFolder(None))
    b = run_events(job(algo, rounds=20), RunFolder(None))
    assert torch.equal(a.x, b.x)


def test_a_batch_is_the_longest_prefix_on_distinct_agents() -> None:
    ends = torch.tensor([0.3, 0.1, 0.2, 0.4, 0.5], dtype=torch.float64)
    partner = torch.tensor([4, 2, 3, 1, 0])
    # time order 1 (with 2), then 2 (busy): stop
    assert _batch(ends, partner, 10).tolist() == [[1, 2]]
    partner = torch.tensor([3, 4, 0, 0, 1])
    # 1-4, 2-0, then 0 (busy): stop
    assert _batch(ends, partner, 10).tolist() == [[1, 4], [2, 0]]
    assert _batch(ends, partner, 1).tolist() == [[1, 4]]


def test_geometric_phases_average_local_steps() -> None:
    """``geometric_steps``: a phase has 1, 2, ... steps, geometric with mean H = 3; the
    samples computed (full local batches of 15) over 8 x 150 events give that mean."""
    algo = SwarmSGD(lr=0.01, local_steps=3, geometric_steps=True)
    record = run_events(job(algo, rounds=150), RunFolder(None)).records[-1]
    steps_per_event = record["samples"] / (15 * record["events"])
    assert 2.85 < steps_per_event < 3.15
    fixed = run_events(job(SwarmSGD(lr=0.01, local_steps=3), rounds=5), RunFolder(None))
    assert fixed.records[-1]["samples"] == 15 * 3 * fixed.records[-1]["events"]


def test_draws_give_poisson_clocks_and_geometric_steps() -> None:
    """Exponential durations (mean and standard deviation both the mean), geometric step
    counts on {1, 2, ...}; each stream replays from its seed."""
    algo = SwarmSGD(lr=0.01, local_steps=4, geometric_steps=True)
    a, b = Draws(7, 3, [0, 1], algo), Draws(7, 3, [0, 1], algo)
    times = np.array([a.duration(2.0, poisson=True) for _ in range(20000)])
    assert abs(times.mean() - 2.0) < 0.05 and abs(times.std() - 2.0) < 0.07
    steps = np.array([a.steps() for _ in range(20000)])
    assert steps.min() == 1 and abs(steps.mean() - 4.0) < 0.1
    assert [b.partner() for _ in range(50)] == [a.partner() for _ in range(50)]
    assert a.duration(2.0, poisson=False) == 2.0


class Counting(SwarmSGD):
    """SwarmSGD that notes who initiates each event."""

    initiated: ClassVar[list[int]] = []

    def interact(self, state, pairs, *args):
        self.initiated.extend(pairs[:, 0].tolist())
        return super().interact(state, pairs, *args)


def test_poisson_clocks_make_event_counts_poisson() -> None:
    """Equal speeds, compute-bound phases: with fixed durations every agent initiates
    exactly ``rounds`` events; with Poisson clocks agent ``i`` initiates a Poisson number
    of mean about ``rounds`` (standard deviation about its square root)."""
    slow_compute = CostModel(1e-3, 1e-9, 1e12, torch.ones(N, dtype=torch.float64))
    counts = {}
    for phase in ("fixed", "poisson"):
        Counting.initiated.clear()
        algo = Counting(lr=0.01, local_steps=1)
        run_events(job(algo, rounds=200, phase=phase, cost=slow_compute), RunFolder(None))
        counts[phase] = np.bincount(Counting.initiated, minlength=N)
    assert (counts["fixed"] == 200).all()
    assert counts["poisson"].sum() == 200 * N
    assert 0.4 * 14.1 < counts["poisson"].std() < 2.0 * 14.1  # sqrt(200)


@pytest.mark.parametrize(
    "setting", [{"local_steps": 2}, {"blocking": True}, {"geometric_steps": True}]
)
def test_adpsgd_refuses_each_setting_only_swarm_varies(setting: dict) -> None:
    """AD-PSGD is one local step and a non-blocking exchange; each other setting alone is
    refused with the fix."""
    message = (
        "adpsgd makes one local step and a non-blocking exchange (local_steps=1, "
        "blocking=false, geometric_steps=false); algorithm=swarm varies them"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        ADPSGD(lr=0.05, **setting)
    SwarmSGD(lr=0.05, **setting)  # allowed there


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
def test_interactions_are_the_documented_exchange_written_out(blocking: bool) -> None:
    """Two disjoint pairs of five agents with different quadratics (weight decay ``w``),
    initiators making 3 and 1 local steps ``x <- x - lr (x - a + w x)``, partners 2 and 0
    (their steps count only when blocking), against the module docstring:
    non-blocking ``x_i <- (x_i + x_j) / 2 + (x_i' - x_i)``, ``x_j <- (x_i + x_j) / 2``;
    blocking ``x_i, x_j <- (x_i' + x_j') / 2``. Interactions count both sides."""
    n, d, lr, decay = 5, 2, 0.1, 0.01
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(90), dtype=torch.float64)
    problem, shards = identity_quadratics(targets)
    algo = SwarmSGD(lr=lr, weight_decay=decay, local_steps=1, blocking=blocking)
    comm = SimCommunicator(build_topology("complete", n), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(91), dtype=torch.float64)
    state = algo.init(x0.clone(), oracle, comm)
    assert state.interactions.dtype == torch.int64

    def steps(i: int, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, loss = x0[i].clone(), None
        for _ in range(k):
            loss = 0.5 * (x - targets[i]).square().sum()
            x = x - lr * (x - targets[i] + decay * x)
        return x, loss

    pairs, counts = torch.tensor([[3, 0], [1, 4]]), torch.tensor([[3, 2], [1, 0]])
    expected, losses = x0.clone(), []
    for (i, j), (ki, kj) in zip(pairs.tolist(), counts.tolist(), strict=True):
        moved_i, loss = steps(i, ki)
        losses.append(loss)
        if blocking:
            moved_j = steps(j, kj)[0] if kj else x0[j]
            expected[i] = expected[j] = (moved_i + moved_j) / 2
        else:
            mean = (x0[i] + x0[j]) / 2
            expected[i], expected[j] = mean + (moved_i - x0[i]), mean
    state, loss = algo.interact(state, pairs, oracle, comm, counts)
    torch.testing.assert_close(state.x, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, torch.stack(losses), rtol=0, atol=1e-12)
    assert state.interactions.tolist() == [1, 1, 0, 1, 1]


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
def test_the_warm_up_steps_each_agent_by_its_own_exchanges(blocking: bool) -> None:
    """``lr_warmup = 4``: an agent that took part in ``c`` exchanges steps
    ``lr * min(1, (c + 1) / 4)``. Agents 0..3 with 0, 1, 3 and 7 exchanges behind them
    each make one step on ``f_i(x) = ||x - a_i||^2 / 2`` (partners too when blocking),
    against the rule written out; a warm-up of 0 keeps ``lr`` for all."""
    n, d, lr, warmup = 4, 3, 0.2, 4
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    problem, shards = identity_quadratics(targets)
    comm = SimCommunicator(build_topology("complete", n), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    x0 = torch.randn(n, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    before = torch.tensor([0, 1, 3, 7])
    pairs, counts = torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2, dtype=torch.int64)
    for k, expected_lr in ((warmup, [lr / 4, lr / 2, lr, lr]), (0, [lr] * 4)):
        algo = SwarmSGD(lr=lr, local_steps=1, blocking=blocking, lr_warmup=k)
        state = algo.init(x0.clone(), oracle, comm)
        state = type(state)(state.x, before.clone())
        moved = x0 - torch.tensor(expected_lr, dtype=torch.float64)[:, None] * (x0 - targets)
        expected = x0.clone()
        for i, j in pairs.tolist():
            if blocking:
                expected[i] = expected[j] = (moved[i] + moved[j]) / 2
            else:
                mean = (x0[i] + x0[j]) / 2
                expected[i], expected[j] = mean + (moved[i] - x0[i]), mean
        state, _ = algo.interact(state, pairs, oracle, comm, counts)
        torch.testing.assert_close(state.x, expected, rtol=0, atol=1e-12)
        assert state.interactions.tolist() == [1, 2, 4, 8]


def test_swarm_refuses_negative_local_steps_and_momentum() -> None:
    with pytest.raises(
        ConfigError, match=r"^local_steps must be >= 0 \(0 = pure gossip\), got -1$"
    ):
        SwarmSGD(lr=0.1, local_steps=-1)
    message = (
        "swarm takes plain SGD steps; set momentum=0 "
        "(momentum buffers across asynchronous averaging are not implemented)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SwarmSGD(lr=0.1, momentum=0.9)


class HalfHeld(Communicator):
    """A process holding agents 0 and 1 of four (the distributed engine's view); the
    models of the agents held elsewhere are ``remote``'s rows, what ``swap`` receives
    from them."""

    n_agents = 4

    def __init__(self, remote: torch.Tensor) -> None:
        self.agents = torch.tensor([0, 1])
        self.traffic = Traffic.zeros(2)
        self.remote = remote

    def start_mix(self, x, t, *, codec=None):
        raise NotImplementedError

    def start_mean(self, x, *, codec=None):
        raise NotImplementedError

    def swap(self, x, pairs, ref, *, codec=None, losses=None):
        received = x.clone()
        for i, j in pairs.tolist():
            received[i] = self.remote[j]  # the initiators are held here, their partners not
        return received


def test_a_partner_held_by_another_process_is_left_to_it() -> None:
    """Agent 0 (held here, 2 local steps ``x <- x - lr (x - a_0)``) initiates a
    non-blocking exchange with agent 3, held by another process: here only the
    initiator moves, ``x_0 <- (x_0 + x_3) / 2 + (x_0' - x_0)``; agent 1 (held here, in
    no pair) keeps its model; only the initiator's interaction is counted here."""
    lr = 0.1
    targets = torch.randn(2, 3, generator=torch.Generator().manual_seed(95), dtype=torch.float64)
    problem, shards = identity_quadratics(targets)
    oracle = problem.oracle(shards, range(2), batch_size=0, seed=0)
    remote = torch.randn(4, 3, generator=torch.Generator().manual_seed(96), dtype=torch.float64)
    comm = HalfHeld(remote)
    algo = SwarmSGD(lr=lr, local_steps=2)
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(97), dtype=torch.float64)
    state = algo.init(x0.clone(), oracle, comm)
    moved = x0[0]
    for _ in range(2):
        moved = moved - lr * (moved - targets[0])
    state, _ = algo.interact(state, torch.tensor([[0, 3]]), oracle, comm, torch.tensor([[2, 0]]))
    expected = x0.clone()
    expected[0] = (x0[0] + remote[3]) / 2 + (moved - x0[0])
    torch.testing.assert_close(state.x, expected, rtol=0, atol=1e-12)
    assert state.interactions.tolist() == [1, 0]
