"""Block-partitioned asynchronous SGD and Hogwild in the simulator (the read-delay model)."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from helpers import (
    identity_quadratics,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms import ALGORITHMS, BlockAsyncSGD, Hogwild
from nettrain.algorithms.block_async import DELAY_STREAM, block_index, owned_blocks
from nettrain.config import load_config
from nettrain.engines.sim.engine import SimEngine
from nettrain.errors import ConfigError
from nettrain.experiment import build_job, run
from nettrain.problem.flat import block_slices
from nettrain.problem.oracle import agent_seed
from nettrain.recording import RunFolder
from nettrain.topology import build_topology


@pytest.mark.parametrize(("d", "blocks"), [(10, 3), (11, 4), (7, 7), (1000, 6), (193, 2)])
def test_blocks_are_contiguous_balanced_and_cover_the_vector(d: int, blocks: int) -> None:
    slices = block_slices(d, blocks)
    bounds = [s.start for s in slices] + [slices[-1].stop]
    assert bounds == [b * d // blocks for b in range(blocks + 1)]  # the documented rule
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))
    sizes = [s.stop - s.start for s in slices]
    assert bounds[0] == 0 and bounds[-1] == d and len(sizes) == blocks
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    index = block_index(d, blocks)
    assert index.tolist() == [b for b, n in enumerate(sizes) for _ in range(n)]


def test_block_slices_refuse_more_blocks_than_parameters() -> None:
    with pytest.raises(ConfigError, match="blocks=8 is more than the 7 parameters"):
        block_slices(7, 8)
    with pytest.raises(ConfigError, match="blocks must be >= 1"):
        block_slices(7, 0)


def test_every_block_has_exactly_one_owner() -> None:
    owners = [owned_blocks(c, 3, 8) for c in range(3)]
    assert owners == [(0, 3, 6), (1, 4, 7), (2, 5)]
    assert sorted(b for o in owners for b in o) == list(range(8))


def test_full_and_partitioned_steps_alternate_after_the_warmup() -> None:
    algo = BlockAsyncSGD(lr=0.1, workers=2, blocks=4, warmup=3, full_every=2)
    assert [algo.full(k) for k in range(9)] == [1, 1, 1, 0, 1, 0, 1, 0, 1]
    assert algo.written(1, 0) == (0, 1, 2, 3)
    assert algo.written(1, 3) == (1, 3)
    never = BlockAsyncSGD(lr=0.1, workers=2, blocks=4)
    assert not any(never.full(k) for k in range(20))
    hogwild = Hogwild(lr=0.1, workers=2, blocks=4)
    assert all(hogwild.full(k) for k in range(20))


def test_the_step_size_diminishes_with_the_process_counter() -> None:
    algo = BlockAsyncSGD(lr=0.2, workers=1, blocks=1, step_decay=0.5)
    assert algo.step_size(0) == pytest.approx(0.2)
    assert algo.step_size(10) == pytest.approx(0.2 / (1 + 0.5 * 0.2 * 10))
    steps = [algo.step_size(k) for k in range(50)]
    assert all(a > b for a, b in itertools.pairwise(steps))
    constant = BlockAsyncSGD(lr=0.2, workers=1, blocks=1)
    assert constant.step_size(1000) == 0.2


def quadratic_run(algo: BlockAsyncSGD, rounds: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Least squares, every worker holding all the data (full batch): the final shared
    model, the optimum, and the records."""
    data = regression_data(n_samples=60, n_features=4)
    problem = least_squares_problem(data)
    n = algo.workers
    everything = [torch.arange(60)] * n
    topo = build_topology("complete", max(n, 3))
    job = sim_job(problem, everything, topo, algo, rounds=rounds)
    result = SimEngine().run(job, RunFolder(None))
    return result.x, least_squares_optimum(data, everything), result.records


@pytest.mark.parametrize("max_delay", [0, 3])
def test_the_partitioned_method_reaches_the_quadratics_optimum(max_delay: int) -> None:
    algo = BlockAsyncSGD(lr=0.1, momentum=0.5, workers=3, blocks=5, max_delay=max_delay, warmup=5)
    x, optimum, records = quadratic_run(algo, rounds=300)
    torch.testing.assert_close(x, optimum.expand(3, -1), rtol=0, atol=1e-6)
    last = records[-1]
    assert last["updates_per_block_min"] > 0  # every block written
    # warm-up: 5 full rounds of 3 writers; then each block only by its owner
    assert last["updates_per_block"] == [5 * 3 + 295] * 5
    if max_delay == 0:  # the owner is a block's only writer: its reads see no other write
        assert last["staleness_max"] == 2  # during the warm-up: the two other writers
    else:
        assert last["staleness_max"] > 2


def test_hogwild_reaches_the_optimum_and_its_reads_are_stale() -> None:
    algo = Hogwild(lr=0.05, workers=3, blocks=2, max_delay=2)
    x, optimum, records = quadratic_run(algo, rounds=300)
    torch.testing.assert_close(x[0], optimum, rtol=0, atol=1e-6)
    last = records[-1]
    assert last["updates_per_block"] == [3 * 300] * 2  # every worker writes every block
    # a fresh read misses the 2 concurrent writes; a delay of s rounds 3 s more
    assert 2 < last["staleness_mean"] < 2 + 3 * 2
    assert last["staleness_max"] == 2 + 3 * 2


def test_with_one_worker_and_no_delay_it_is_momentum_sgd() -> None:
    """P = 1: the shared model follows u <- m u + g, x <- x - gamma(k) u exactly."""
    algo = BlockAsyncSGD(lr=0.05, momentum=0.9, workers=1, blocks=3, step_decay=0.3, max_delay=0)
    problem = least_squares_problem(regression_data(n_samples=60, n_features=4))
    oracle = problem.oracle([torch.arange(60)], [0], batch_size=0, seed=0)
    x0 = torch.zeros(1, problem.dim, dtype=torch.float64)
    state = algo.init(x0, oracle, comm=None)  # type: ignore[arg-type]  # no communication
    for t in range(40):
        state, _ = algo.step(state, t, oracle, comm=None)  # type: ignore[arg-type]
    ref, u = x0[0], 0.0
    for k in range(40):
        _, g = oracle.grad(ref[None])
        u = 0.9 * u + g[0]
        ref = ref - algo.step_size(k) * u
    torch.testing.assert_close(state.x[0], ref, rtol=0, atol=1e-12)


def test_same_seed_same_numbers_in_the_simulator() -> None:
    cfg = load_config(
        overrides={
            "algorithm": "block_async",
            "agents": 4,
            "blocks": 6,
            "rounds": 30,
            "eval_every": 15,
            "momentum": 0.9,
            "lr": 0.05,
            "progress": False,
        }
    )
    first, second = run(cfg), run(cfg)
    assert torch.equal(first.x, second.x)
    assert first.records[-1]["staleness_mean"] == second.records[-1]["staleness_mean"]
    other = run(cfg.replace(seed=1))
    assert not torch.equal(first.x, other.x)


def test_registered_and_checked() -> None:
    assert ALGORITHMS["block_async"] is BlockAsyncSGD and ALGORITHMS["hogwild"] is Hogwild
    with pytest.raises(ConfigError, match="blocks >= workers"):
        build_job(load_config(overrides={"algorithm": "block_async", "agents": 4, "blocks": 2}))
    with pytest.raises(ConfigError, match="engine=shared_memory"):
        load_config(overrides={"algorithm": "hogwild", "engine": "distributed", "agents": 4})
    with pytest.raises(ConfigError, match="step_decay must be >= 0"):
        BlockAsyncSGD(workers=2, blocks=2, step_decay=-1)
    assert BlockAsyncSGD(blocks=4).for_network(3).workers == 3  # 0: one per agent
    three = BlockAsyncSGD(workers=3, blocks=4)
    assert three.for_network(5).workers == 3  # as configured, then refused by init
    with pytest.raises(ConfigError, match=r"^block_async was configured for 3 workers, got 5$"):
        three.init(torch.zeros(5, 4), oracle=None, comm=None)  # type: ignore[arg-type]
    problem = least_squares_problem(regression_data(n_features=3))  # dim 4 with the bias
    BlockAsyncSGD(workers=1, blocks=4).check(problem)  # one coordinate a block
    with pytest.raises(ConfigError, match=r"^blocks=5 is more than the model's 4 parameters"):
        BlockAsyncSGD(workers=1, blocks=5).check(problem)


@pytest.mark.parametrize("method", [BlockAsyncSGD, Hogwild])
def test_simulated_rounds_are_the_read_delay_model_written_out(method: type) -> None:
    """Three workers, four blocks, different quadratics, momentum, weight decay and a
    diminishing step, reads up to two rounds old, partitioned and full rounds mixed,
    against the model of :meth:`BlockAsyncSGD.step` written out block by block: worker
    ``c`` reads its own blocks now (Hogwild owns none) and block ``b`` of the others as
    it was ``s`` rounds ago (the seeded draws), takes the gradient of agent ``pi_t(c)``'s
    quadratic there, moves its momentum on the blocks it writes, and all writes land
    together; staleness counts the writes a read missed, its own excluded. The steps
    run under a meta default device: every tensor they make is on the state's device."""
    n, d, nb, lr, m, wd, decay = 3, 7, 4, 0.1, 0.5, 0.01, 0.2
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(40), dtype=torch.float64)
    problem, shards = identity_quadratics(targets)
    algo = method(
        lr=lr, momentum=m, weight_decay=wd, workers=n, blocks=nb, step_decay=decay,
        warmup=1, full_every=3, max_delay=2, seed=9,
    )  # fmt: skip
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    x0 = torch.randn(1, d, generator=torch.Generator().manual_seed(41), dtype=torch.float64)
    state = algo.init(x0.expand(n, -1).clone(), oracle, comm=None)  # type: ignore[arg-type]
    assert state.history.shape == (3, d) and state.versions.shape == (3, nb)
    owned = [owned_blocks(c, n, nb) if method.partitioned else () for c in range(n)]
    assert all(t.dtype == torch.int64 for t in (state.versions, state.updates, state.reads))
    block = [range(s.start, s.stop) for s in block_slices(d, nb)]
    models, counts = [x0[0].clone()], [[0] * nb]  # the model and writes at each round's start
    u = torch.zeros(n, d, dtype=torch.float64)
    stale_sum, stale_max = [0] * n, [0] * n
    for t in range(7):
        gen = torch.Generator().manual_seed(agent_seed(9, t, DELAY_STREAM))
        delay = torch.randint(0, min(2, t) + 1, (n, nb), generator=gen).tolist()
        shard = torch.randperm(n, generator=gen).tolist()
        writes = [algo.written(c, t) for c in range(n)]
        new, total = models[t].clone(), list(counts[t])
        for c in range(n):
            for b in writes[c]:
                total[b] += 1
        for c in range(n):
            read = torch.empty(d, dtype=torch.float64)
            for b in range(nb):
                s = 0 if b in owned[c] else delay[c][b]
                read[block[b]] = models[t - s][block[b]]
                missed = total[b] - counts[t - s][b] - (b in writes[c])
                stale_sum[c] += missed
                stale_max[c] = max(stale_max[c], missed)
            g = read - targets[shard[c]] + wd * read
            for b in writes[c]:
                u[c, block[b]] = m * u[c, block[b]] + g[block[b]]
                new[block[b]] -= lr / (1 + decay * lr * t) * u[c, block[b]]
        models.append(new)
        counts.append(total)
        with torch.device("meta"):
            state, _ = algo.step(state, t, oracle, comm=None)  # type: ignore[arg-type]
        torch.testing.assert_close(state.x, new.expand(n, -1), rtol=0, atol=1e-12)
        torch.testing.assert_close(state.u, u, rtol=0, atol=1e-12)
    assert state.stale_sum.tolist() == stale_sum and state.stale_max.tolist() == stale_max
    assert state.reads.tolist() == [7 * nb] * n
    reads = 7 * nb * n
    assert algo.diagnostics(state) == {
        "staleness_mean": sum(stale_sum) / reads,
        "staleness_max": max(stale_max),
        "updates_per_block_min": min(counts[-1]),
        "updates_per_block_max": max(counts[-1]),
        "updates_per_block": counts[-1],
    }
    assert max(stale_max) > 0 and any(not algo.full(t) for t in range(7)) == method.partitioned


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"workers": -1},
            "block_async needs workers >= 0 (0 = one per agent or process) and blocks >= 1",
        ),
        (
            {"blocks": 0},
            "block_async needs workers >= 0 (0 = one per agent or process) and blocks >= 1",
        ),
        ({"max_delay": -1}, "max_delay must be >= 0, got -1"),
        ({"warmup": -1}, "warmup and full_every must be >= 0, got -1 and 0"),
        ({"full_every": -1}, "warmup and full_every must be >= 0, got 0 and -1"),
        ({"workers": 1, "blocks": 0}, "block_async needs workers >= 0"),
    ],
)
def test_bad_settings_are_refused_each_alone(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        BlockAsyncSGD(**settings)


def test_every_worker_must_own_a_block_and_full_steps_follow_the_warmup() -> None:
    """One worker owning one block is fine (blocks >= workers at equality); ``full_every
    = 1`` makes every step after the warm-up full, counted from the warm-up's end."""
    BlockAsyncSGD(workers=1, blocks=1)
    BlockAsyncSGD(workers=3, blocks=3)
    with pytest.raises(ConfigError, match="blocks=2, workers=3"):
        BlockAsyncSGD(workers=3, blocks=2)
    every = BlockAsyncSGD(workers=2, blocks=2, full_every=1)
    assert all(every.full(k) for k in range(6))
    third = BlockAsyncSGD(workers=2, blocks=2, warmup=2, full_every=3)
    assert [third.full(k) for k in range(8)] == [1, 1, 0, 0, 1, 0, 0, 1]
