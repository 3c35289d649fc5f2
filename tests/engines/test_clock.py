"""The virtual clock's cost model, term by term, against hand-computed seconds.

``T_round = max_i ( s_i c samples_i + o [samples_i > 0] + latency messages_i +
bytes_i / bandwidth_i )``, with the messages sent within collectives at the collective
latency and a slow agent's extra computing at the pass alone where a profile measured it
(nettrain/engines/sim/clock.py).
"""

from __future__ import annotations

import pytest
import torch

from nettrain.engines.base import account_round, account_rounds
from nettrain.engines.sim.clock import CostModel, VirtualClock
from nettrain.faults import Faults


def model(**changes: object) -> CostModel:
    values: dict[str, object] = {
        "seconds_per_sample": 0.5,
        "latency_s": 2.0,
        "bandwidth_bytes_per_s": 100.0,
        "slowdown": torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64),
    }
    return CostModel(**(values | changes))  # type: ignore[arg-type]


def counts(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def test_a_step_overhead_is_paid_by_every_agent_that_computed_even_one_sample() -> None:
    seconds = model(step_overhead_s=0.25).compute_seconds(counts(0, 1, 2))
    assert seconds.tolist() == [0.0, 0.5 + 0.25, 4 * 0.5 * 2 + 0.25]


def test_collective_messages_take_the_collective_latency_in_a_round() -> None:
    cost = model(collective_latency_s=0.5)
    messages, nbytes, collective = counts(4, 4, 0), counts(100, 0, 0), counts(3, 0, 0)
    busy = cost.agent_seconds(counts(0, 0, 0), messages, nbytes, collective)
    # agent 0: one plain message at 2 s, three in a collective at 0.5 s, 100 bytes at 100 B/s
    assert busy.tolist() == [2.0 + 3 * 0.5 + 1.0, 4 * 2.0, 0.0]
    clock = VirtualClock(cost)
    dt = clock.sync_round(counts(0, 0, 0), counts(4, 0, 0), counts(0, 0, 0), None, collective)
    assert dt == clock.now == 2.0 + 3 * 0.5  # not 4 * 2.0: the collective's latency counted


def test_a_slow_agents_extra_computing_runs_at_the_pass_alone() -> None:
    """With ``c' = 0.125``: ``(c + (s - 1) c') samples`` for ``s > 1``, ``s c samples``
    for the others (a fast agent, ``s < 1``, too); without ``c'``, ``s c samples``."""
    slowdown = torch.tensor([1.0, 4.0, 0.5, 1.5], dtype=torch.float64)
    cost = model(slowdown=slowdown, alone_seconds_per_sample=0.125)
    slow = [2 * (0.5 + 3 * 0.125), 2 * (0.5 + 0.5 * 0.125)]
    assert cost.compute_seconds(counts(2, 2, 2, 2)).tolist() == [1.0, slow[0], 0.5, slow[1]]
    plain = model(slowdown=slowdown).compute_seconds(counts(2, 2, 2, 2))
    assert plain.tolist() == [1.0, 4.0, 0.5, 1.5]


@pytest.mark.parametrize(("factor", "expected"), [(0.25, 25.0), (1.0, 100.0), (1.5, 100.0)])
def test_a_server_link_runs_at_the_slower_ends_bandwidth(factor: float, expected: float) -> None:
    cost = model(bandwidth_factor=torch.tensor([factor, 1.0, 1.0], dtype=torch.float64))
    assert cost.link_bytes_per_s(0) == expected


@pytest.mark.parametrize(("n", "fraction"), [(8, 0.5), (10, 0.3), (5, 1.0), (7, 0.0)])
def test_stragglers_are_round_fraction_n_distinct_agents(n: int, fraction: float) -> None:
    for seed in range(20):
        s = CostModel.straggler_slowdown(n, fraction, 4.0, seed)
        assert s.dtype == torch.float64
        assert int((s == 4.0).sum()) == round(fraction * n)  # without replacement: distinct
        assert int((s == 1.0).sum()) == n - round(fraction * n)


def test_rounds_accounted_at_once_equal_round_after_round() -> None:
    """:func:`account_rounds` over ``k`` rounds of random work gives the clock and the
    totals of :func:`account_round` called round after round, bit for bit (speeds,
    bandwidth factors, a profile's alone pass and collective latency all in play)."""
    n, k = 5, 7
    gen = torch.Generator().manual_seed(0)
    cost = model(
        slowdown=torch.rand(n, generator=gen, dtype=torch.float64) * 3 + 0.5,
        bandwidth_factor=torch.rand(n, generator=gen, dtype=torch.float64) + 0.5,
        alone_seconds_per_sample=0.125,
        collective_latency_s=0.75,
        step_overhead_s=0.0625,
    )
    work = torch.randint(0, 1000, (4, k, n), generator=gen)
    work[0, 2, 1] = 0  # an agent that computed nothing in a round
    keys = ("samples", "messages", "bytes", "resent")
    at_once, one_by_one = VirtualClock(cost, 0.5), VirtualClock(cost, 0.5)
    totals = [{key: torch.zeros(n, dtype=torch.int64) for key in keys} for _ in range(2)]
    account_rounds(at_once, totals[0], work)
    for j in range(k):
        account_round(one_by_one, totals[1], Faults(n), j, *work[:, j])
    assert at_once.now == one_by_one.now > 0.5
    for key in keys:
        assert torch.equal(totals[0][key], totals[1][key])
    assert totals[0]["samples"].tolist() == work[0].sum(0).tolist()
