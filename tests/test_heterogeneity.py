"""Heterogeneous agents: per-agent speed and bandwidth drawn from distributions or read
from a trace, and the trace's availability windows (src/nettrain/heterogeneity.py,
docs/faults.md "Heterogeneous agents").

The checks are exact where the cost model is: ``constant`` gives the homogeneous clock
bit for bit, a synchronous round takes the formula's time computed here by hand, and an
asynchronous agent's events all fall inside its windows, the first after a gap exactly
one local phase after the window opens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nettrain.engines.sim.events as sim_events
from nettrain.config import load_config
from nettrain.engines.sim.clock import CostModel, VirtualClock
from nettrain.engines.sim.events import run_events
from nettrain.errors import ConfigError, FaultError
from nettrain.experiment import build_job, resume, run
from nettrain.heterogeneity import (
    Availability,
    agent_factors,
    draw_factors,
    load_trace,
    parse_distribution,
)
from nettrain.recording import RunFolder

SMALL = {"dataset": "digits", "agents": 8, "hidden": [8], "batch_size": 8, "progress": False}
SMALL |= {"topology": "complete", "eval_every": 10, "tensorboard": False}
HEADER = "agent,speed,bandwidth_gbps,available_from,available_to\n"


def write_trace(tmp_path: Path, rows: str, header: str = HEADER) -> str:
    path = tmp_path / "trace.csv"
    path.write_text(header + rows)
    return str(path)


# --- distributions ------------------------------------------------------------------


def test_draws_are_seeded_reproducible_and_independent_per_key() -> None:
    a = draw_factors("speed", "lognormal:0.5", 16, seed=3)
    assert torch.equal(a, draw_factors("speed", "lognormal:0.5", 16, seed=3))
    assert not torch.equal(a, draw_factors("speed", "lognormal:0.5", 16, seed=4))
    assert not torch.equal(a, draw_factors("bandwidth", "lognormal:0.5", 16, seed=3))
    assert torch.equal(draw_factors("speed", "constant", 5, seed=3), torch.ones(5).double())


def test_lognormal_and_uniform_have_their_laws() -> None:
    logs = draw_factors("speed", "lognormal:0.4", 20_000, seed=0).log()
    assert abs(float(logs.mean())) < 0.01 and float(logs.std()) == pytest.approx(0.4, rel=0.03)
    u = draw_factors("bandwidth", "uniform:0.5:2", 20_000, seed=0)
    assert float(u.min()) >= 0.5 and float(u.max()) <= 2
    assert float(u.mean()) == pytest.approx(1.25, rel=0.02)
    assert torch.equal(draw_factors("speed", "lognormal:0", 4, seed=0), torch.ones(4).double())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("normal:1", "not a distribution of per-agent factors"),
        ("lognormal", "not a distribution"),
        ("lognormal:x", "not a distribution"),
        ("lognormal:-1", "SIGMA must be >= 0"),
        ("uniform:2:1", "0 < LO <= HI"),
        ("uniform:0:1", "0 < LO <= HI"),
        ("constant:1", "not a distribution"),
    ],
)
def test_bad_distributions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_distribution("speed", text)
    with pytest.raises(ConfigError, match=f"bandwidth={text!r}"):
        load_config({"bandwidth": text})


def test_constant_gives_the_homogeneous_cost_model_exactly() -> None:
    """The default and an explicit ``constant`` build the cost model as before the keys
    existed (straggler slow-down, one bandwidth): the same clock and parameters."""
    values = SMALL | {"algorithm": "dpsgd", "rounds": 10, "stragglers": 0.25}
    cfg = load_config(values | {"speed": "constant", "bandwidth": "constant"})
    cost = build_job(cfg).cost
    assert cost.bandwidth_factor is None
    assert torch.equal(cost.slowdown, CostModel.straggler_slowdown(8, 0.25, 4.0, 0))
    assert cost.bandwidth_bytes_per_s == 10e9 / 8
    old = CostModel(cost.seconds_per_sample, 5e-5, 10e9 / 8, cost.slowdown)
    work = torch.tensor([8] * 8), torch.tensor([2] * 8), torch.tensor([1000 + i for i in range(8)])
    assert VirtualClock(cost).sync_round(*work) == VirtualClock(old).sync_round(*work)
    a, b = run(load_config(values)), run(cfg)
    assert torch.equal(a.x, b.x)
    assert a.records[-1]["virtual_time_s"] == b.records[-1]["virtual_time_s"]
    lognormal = run(load_config(values | {"speed": "lognormal:0.5"}))
    assert torch.equal(a.x, lognormal.x)  # the clock changes, not the numbers
    assert lognormal.records[-1]["virtual_time_s"] != a.records[-1]["virtual_time_s"]


# --- the synchronous round formula ----------------------------------------------------


def test_a_synchronous_round_takes_the_formula_by_hand() -> None:
    """``T = max_i (s_i c samples_i + latency messages_i + bytes_i / (bandwidth f_i))``."""
    s = [1.0, 0.5, 4.0, 2.0]
    f = [1.0, 0.25, 2.0, 0.1]
    c, lat, bw = 1e-3, 1e-4, 1e6
    cost = CostModel(
        c, lat, bw, torch.tensor(s, dtype=torch.float64), torch.tensor(f, dtype=torch.float64)
    )
    samples, messages, nbytes = [10, 10, 3, 5], [2, 2, 2, 1], [1000, 4000, 500, 9000]
    by_hand = [
        s[i] * c * samples[i] + lat * messages[i] + nbytes[i] / (bw * f[i]) for i in range(4)
    ]
    work = (torch.tensor(samples), torch.tensor(messages), torch.tensor(nbytes))
    assert VirtualClock(cost).sync_round(*work) == pytest.approx(max(by_hand), rel=1e-12)
    assert max(by_hand) == by_hand[3]  # the slow link, not the slow computer, decides


def test_a_traced_synchronous_run_takes_the_formula_by_hand(tmp_path: Path) -> None:
    """All-reduce, one round: every agent the same work, the trace's speed and bandwidth
    decide the slowest; stragglers compose with the speed (``straggler / speed``)."""
    trace = write_trace(tmp_path, "1,0.5,,,\n2,,0.01,,\n5,2,,,\n")
    values = SMALL | {"algorithm": "allreduce", "rounds": 1, "eval_every": 1, "trace": trace}
    values |= {"compute_s_per_sample": 1e-4, "stragglers": 0.25}
    cfg = load_config(values)
    cost = build_job(cfg).cost
    straggler = CostModel.straggler_slowdown(8, 0.25, 4.0, 0)
    speed = torch.tensor([1, 0.5, 1, 1, 1, 2, 1, 1]).double()
    assert torch.equal(cost.slowdown, straggler / speed)
    assert cost.bandwidth_factor is not None
    assert float(cost.bandwidth_factor[2]) == pytest.approx(0.01 / 10)
    record = run(cfg).records[-1]
    messages, nbytes = record["messages_total"] / 8, record["bytes_total"] / 8
    assert record["bytes_max_agent"] == nbytes  # every agent sends the same
    bandwidth = [10e9 / 8] * 8
    bandwidth[2] = 0.01e9 / 8
    times = [
        float(straggler[i]) / float(speed[i]) * 1e-4 * 8 + 5e-5 * messages + nbytes / bandwidth[i]
        for i in range(8)
    ]
    assert record["virtual_time_s"] == pytest.approx(max(times), rel=1e-9)


# --- the trace file -------------------------------------------------------------------


def test_the_trace_parses_windows_speeds_and_bandwidths(tmp_path: Path) -> None:
    rows = "# agent 3 leaves for a while\n3,2,,0,1.5\n3,2,5,4,\n0,,,2.5,3\n0,,,3,4\n\n6,0.5,,,\n"
    trace = load_trace(write_trace(tmp_path, rows), 8)
    assert trace.speed.tolist() == [1, 1, 1, 2, 1, 1, 0.5, 1]
    assert trace.bandwidth_gbps == (None, None, None, 5.0, None, None, None, None)
    windows = trace.availability.windows
    assert windows[3] == ((0.0, 1.5), (4.0, math.inf))
    assert windows[0] == ((2.5, 4.0),)  # touching windows are one
    assert windows[6] == ((0.0, math.inf),) and windows[1] is None
    av = trace.availability
    assert [av.available(3, t) for t in (0, 1.49, 1.5, 3.99, 4)] == [True, True, False, False, True]
    assert av.away(3, 0, 10) == [(1.5, 4.0)] and av.away(0, 0, 10) == [(0, 2.5), (4.0, 10)]
    assert av.phase_end(3, 1.0, 0.4) == 1.4  # inside the window
    assert av.phase_end(3, 1.2, 0.4) == 4.4  # cut by the closing: again from the opening
    assert av.phase_end(0, 3.9, 0.2) == math.inf  # no window left
    assert av.covers(3, 1.0, 1.5) and not av.covers(3, 1.0, 1.6)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("8,1,,,\n", r"agent='8' is not an agent id; the run has agents 0..7"),
        ("-1,1,,,\n", "is not an agent id"),
        ("1,fast,,,\n", r"line 2: speed='fast' is not a number"),
        ("1,0,,,\n", "speed must be > 0"),
        ("1,,-3,,\n", "bandwidth_gbps must be > 0"),
        ("1,,,5,2\n", r"window \[5.0, 2.0\) is empty or negative"),
        ("1,,,-1,2\n", "available_from must be >= 0"),
        ("1,,,0,2\n1,,,1,3\n", r"agent 1's windows overlap: \[0.0, 2.0\) on line 2"),
        ("1,2,,0,2\n1,3,,4,5\n", "agent 1 has speed 3.0 here and 2.0 on line 2"),
        ("1,2,,\n", "4 fields, expected 5"),
        ("1,nan,,,\n", "speed is nan"),
        ("1,inf,,,\n", "speed must be > 0, got inf"),
        ("1,,,4,4\n", r"window \[4.0, 4.0\) is empty or negative"),
        ("1,2,,0,2\n2,,,,\n1,3,,4,5\n", "agent 1 has speed 3.0 here and 2.0 on line 2;"),
        ("1,,fast,,\n", r"line 2: bandwidth_gbps='fast' is not a number"),
    ],
)
def test_bad_traces_say_what_is_wrong(tmp_path: Path, rows: str, message: str) -> None:
    path = write_trace(tmp_path, rows)
    with pytest.raises(ConfigError, match=message):
        load_trace(path, 8)
    with pytest.raises(ConfigError, match=message):  # before any work
        load_config(SMALL | {"trace": path})


def test_a_missing_trace_or_a_wrong_header_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; give the path of a CSV file"):
        load_config(SMALL | {"trace": str(tmp_path / "nowhere.csv")})
    bad = write_trace(tmp_path, "1,1,1,0,1\n", header="agent,speed,bandwidth,from,to\n")
    with pytest.raises(ConfigError, match="first line must be the header agent,speed,band"):
        load_trace(bad, 8)


def test_windows_are_refused_where_they_cannot_run(tmp_path: Path) -> None:
    windows = write_trace(tmp_path, "1,,,0,2\n")
    with pytest.raises(ConfigError, match="enacted by engine=sim only"):
        load_config({"engine": "distributed", "trace": windows})
    with pytest.raises(ConfigError, match="does not take message_drop, crash or split"):
        load_config({"algorithm": "downpour", "trace": windows})
    with pytest.raises(ConfigError, match="engine=shared_memory has none"):
        load_config({"engine": "shared_memory", "algorithm": "hogwild", "speed": "lognormal:1"})
    speeds = str(tmp_path / "speeds.csv")
    Path(speeds).write_text(HEADER + "1,0.5,2,,\n")
    assert load_config({"engine": "distributed", "trace": speeds}).trace == speeds


# --- availability in runs -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["swarm", "easgd_async"])
def test_asynchronous_events_follow_the_trace_exactly(
    tmp_path: Path, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agent 3 is away in [0.1, 0.2) s, agent 5 is there in [0.05, 0.15) only: no event of
    theirs in between, agent 3's first event after its gap exactly one local phase
    (8 samples at 1 ms) after the window opens, and every request to an away partner
    lost."""
    events: list[tuple[int, int, float, bool]] = []  # initiator, partner, time, request lost
    original = sim_events._losses

    def noting(pairs: torch.Tensor, draws: Any, faults: Any, t: int, ends: torch.Tensor) -> Any:
        lost = original(pairs, draws, faults, t, ends)
        for (a, b), request in zip(pairs.tolist(), lost.request.tolist(), strict=True):
            events.append((a, b, float(ends[a]), request))
        return lost

    monkeypatch.setattr(sim_events, "_losses", noting)
    trace = write_trace(tmp_path, "3,,,0,0.1\n3,,,0.2,\n5,,,0.05,0.15\n")
    values = SMALL | {"algorithm": algorithm, "rounds": 60, "compute_s_per_sample": 1e-3}
    if algorithm == "easgd_async":
        values["tau"] = 1
    record = run(load_config(values | {"trace": trace})).records[-1]
    assert record["virtual_time_s"] > 0.3  # the run outlasts the gap
    three = [at for a, _, at, _ in events if a == 3]
    five = [at for a, _, at, _ in events if a == 5]
    assert three and five and all(at < 0.1 or at >= 0.2 for at in three)
    assert next(at for at in three if at >= 0.2) == pytest.approx(0.2 + 8e-3, rel=1e-12)
    assert all(0.05 <= at < 0.15 for at in five)
    assert min(five) == pytest.approx(0.05 + 8e-3, rel=1e-12)
    others = [sum(1 for a, *_ in events if a == k) for k in (0, 1, 2, 4, 6, 7)]
    assert len(three) < min(others) and len(five) < len(three)
    for _, b, at, request in events:
        if (b == 3 and 0.1 <= at < 0.2) or (b == 5 and not 0.05 <= at < 0.15):
            assert request  # an away partner loses the request
    if algorithm == "swarm":
        assert record["exchanges_lost"] > 0


def test_an_asynchronous_run_with_every_agent_gone_stops_with_a_fault_error(
    tmp_path: Path,
) -> None:
    rows = "".join(f"{a},,,0,0.02\n" for a in range(8))
    values = SMALL | {"algorithm": "swarm", "rounds": 40, "compute_s_per_sample": 1e-3}
    with pytest.raises(FaultError, match="no agent can make an event after virtual time"):
        run(load_config(values | {"trace": write_trace(tmp_path, rows)}))


def test_a_synchronous_round_that_needs_an_away_agent_stops_the_run(tmp_path: Path) -> None:
    """Agent 2 leaves at 0.05 s: the run stops at the first round that ends after it,
    naming the agent and the round; the rounds before it ran."""
    values = SMALL | {"algorithm": "dpsgd", "rounds": 30, "eval_every": 1}
    values |= {"compute_s_per_sample": 1e-3}
    times = [r["virtual_time_s"] for r in run(load_config(values)).records]
    last = max(t for t in range(len(times)) if times[t] <= 0.05)  # rounds inside the window
    assert 0 < last < 30
    trace = write_trace(tmp_path, "2,,,0,0.05\n")
    with pytest.raises(FaultError, match=rf"agent\(s\) 2 away in round {last + 1} \(virtual"):
        run(load_config(values | {"trace": trace}))
    late = write_trace(tmp_path, "4,,,0.5,\n")
    with pytest.raises(FaultError, match=r"agent\(s\) 4 away (at the start|in round 1) "):
        run(load_config(values | {"trace": late}))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "1,2\n",
            "2 fields, expected 5 (agent,speed,bandwidth_gbps,available_from,available_to; "
            "leave a cell empty for its default)",
        ),
        ("1,fast,,,\n", "speed='fast' is not a number"),
        ("1,,,soon,\n", "available_from='soon' is not a number"),
        ("1,,,,later\n", "available_to='later' is not a number"),
        (
            "1,2,,0,2\n1,3,,4,5\n",
            "agent 1 has speed 3.0 here and 2.0 on line 2; an agent has "
            "one speed: give its rows the same value (or leave the cell empty)",
        ),
        (
            "1,,,5,2\n",
            "the window [5.0, 2.0) is empty or negative; available_from must be >= 0 "
            "and below available_to (virtual seconds)",
        ),
    ],
    ids=["fields", "speed", "from", "to", "two-speeds", "empty-window"],
)
def test_a_bad_trace_line_is_named_whole(tmp_path: Path, rows: str, message: str) -> None:
    path = write_trace(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        load_trace(path, 8)
    last = rows.count("\n") + 1  # the header is line 1: the error is on the last row
    assert str(err.value) == f"trace {path}, line {last}: {message}"


def test_overlapping_windows_and_a_missing_file_are_named_whole(tmp_path: Path) -> None:
    path = write_trace(tmp_path, "1,,,0,2\n1,,,1,3\n")
    with pytest.raises(ConfigError) as err:
        load_trace(path, 8)
    assert str(err.value) == (
        f"trace {path}: agent 1's windows overlap: [0.0, 2.0) on line 2 and [1.0, 3.0) on "
        "line 3; merge them into one row or make them disjoint"
    )
    with pytest.raises(ConfigError) as err:
        load_trace(tmp_path / "none.csv", 8)
    assert str(err.value) == (
        f"trace={tmp_path / 'none.csv'}: no such file; give the path of a CSV file with the "
        "header agent,speed,bandwidth_gbps,available_from,available_to"
    )


def test_a_wrong_header_shows_what_was_found(tmp_path: Path) -> None:
    bad = write_trace(tmp_path, "1,1,1,0,1\n", header="agent,speed\n")
    with pytest.raises(ConfigError, match=r"found agent,speed$"):
        load_trace(bad, 8)
    with pytest.raises(ConfigError, match=r"found nothing$"):
        load_trace(write_trace(tmp_path, "", header="# only a comment\n"), 8)


def test_agent_factors_multiply_the_drawn_ones_by_the_traces(tmp_path: Path) -> None:
    """Speed: drawn 2 times the trace's 3 for agent 1; bandwidth: drawn 0.5 times the
    trace's 4 Gbit/s over the cost model's 1 Gbit/s for agent 0; float64 throughout."""
    trace = write_trace(tmp_path, "1,3,,,\n0,,4,,\n")
    gbit = 1e9 / 8
    speeds, links = agent_factors("uniform:2:2", "uniform:0.5:0.5", trace, 3, 0, gbit)
    assert speeds is not None and links is not None
    assert speeds.tolist() == [2.0, 6.0, 2.0] and speeds.dtype == torch.float64
    assert links.tolist() == [2.0, 0.5, 0.5] and links.dtype == torch.float64
    speeds, links = agent_factors("constant", "constant", trace, 3, 0, gbit)
    assert speeds is not None and speeds.tolist() == [1.0, 3.0, 1.0]
    assert speeds.dtype == torch.float64
    assert links is not None and links.tolist() == [4.0, 1.0, 1.0] and links.dtype == torch.float64
    windows = write_trace(tmp_path, "1,,,0,5\n")  # no speed, no bandwidth: no factors
    assert agent_factors("constant", "constant", windows, 3, 0, gbit) == (None, None)
    speeds, links = agent_factors("constant", "uniform:0.5:0.5", windows, 3, 0, gbit)
    assert speeds is None and links is not None and links.tolist() == [0.5, 0.5, 0.5]
    speeds, _ = agent_factors("uniform:1:2", "constant", "", 3, 0, gbit)
    assert speeds is not None and speeds.shape == (3,)  # one factor an agent
    with pytest.raises(ConfigError, match=r"^speed='fast' is not a distribution"):
        agent_factors("fast", "constant", "", 3, 0, gbit)
    with pytest.raises(ConfigError, match=r"^bandwidth='fast' is not a distribution"):
        draw_factors("bandwidth", "fast", 3, 0)
    with pytest.raises(ConfigError, match=r"^bandwidth='fast' is not a distribution"):
        agent_factors("constant", "fast", "", 3, 0, gbit)


def test_a_distribution_error_lists_every_form() -> None:
    with pytest.raises(ConfigError) as err:
        parse_distribution("speed", "normal:1")
    assert str(err.value) == (
        "speed='normal:1' is not a distribution of per-agent factors; use one of constant, "
        "lognormal:SIGMA, uniform:LO:HI (e.g. speed=lognormal:0.5 or speed=uniform:0.5:2)"
    )
    assert draw_factors("speed", "uniform:1.5:1.5", 2, 0).tolist() == [1.5, 1.5]  # LO = HI
    for text in ("constant", "lognormal:0.5", "uniform:1:2"):
        assert draw_factors("bandwidth", text, 3, 0).dtype == torch.float64


def test_away_lists_the_gaps_between_windows() -> None:
    av = Availability((((2.0, 4.0), (6.0, 8.0)),))
    assert av.away(0, 0.0, 10.0) == [(0.0, 2.0), (4.0, 6.0), (8.0, 10.0)]
    assert av.away(0, 2.0, 8.0) == [(4.0, 6.0)]
    assert av.away(0, 4.0, 6.0) == [(4.0, 6.0)]
    assert av.away(0, 2.5, 3.5) == []


def test_a_phase_that_ends_as_its_window_closes_waits_for_the_next() -> None:
    """An event must fall inside a window ``[a, b)``: at ``b`` the agent is away."""
    av = Availability((((0.0, 10.0), (20.0, 30.0)),))
    assert av.phase_end(0, 4.0, 6.0) == 26.0
    assert av.phase_end(0, 3.0, 6.0) == 9.0


def test_availability_unit_rules() -> None:
    av = Availability((((1.0, 2.0), (3.0, math.inf)), None))
    assert av.any and not Availability((None, ((0.0, math.inf),))).any
    assert av.phase_end(0, 0.0, 0.5) == 1.5  # waits for the first window
    assert av.phase_end(0, 1.8, 0.5) == 3.5
    assert av.phase_end(1, 1.8, 0.5) == 2.3
    assert np.isinf(Availability((((0.0, 1.0),),)).phase_end(0, 0.9, 0.2))


def test_a_resumed_heterogeneous_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Drawn speeds and bandwidths, and agent 1 away in [0.15, 0.25) s, across the
    checkpoint (round 20 is about 0.2 virtual seconds): stop after 25 rounds, resume to
    40, bit for bit."""
    trace = write_trace(tmp_path, "1,,,0,0.15\n1,,,0.25,\n")
    values = SMALL | {"algorithm": "swarm", "agents": 4, "checkpoint_every": 10, "trace": trace}
    values |= {"compute_s_per_sample": 1e-3, "speed": "lognormal:0.3", "bandwidth": "lognormal:1"}
    whole = run(load_config(values | {"rounds": 40}), tmp_path / "whole")
    run(load_config(values | {"rounds": 25}), tmp_path / "cut")
    resumed = resume(tmp_path / "cut", {"rounds": "40"})
    assert torch.equal(resumed.x, whole.x)
    assert resumed.records[-1]["virtual_time_s"] == whole.records[-1]["virtual_time_s"] > 0.3
    assert whole.records[-1]["exchanges_lost"] > 0  # agent 1's gap cost its partners


@pytest.mark.parametrize("algorithm", ["swarm", "easgd_async"])
def test_batched_events_equal_one_by_one_with_windows_and_speeds(
    tmp_path: Path, algorithm: str
) -> None:
    """The event engine's batches stay exact with windows: a window only delays an
    agent's next event past the horizon the batch assumes, never before it."""
    trace = write_trace(tmp_path, "3,,,0,0.05\n3,,,0.09,\n5,,,0.02,0.07\n6,0.5,1,,\n")
    values = SMALL | {"algorithm": algorithm, "rounds": 30, "compute_s_per_sample": 1e-3}
    values |= {"trace": trace, "speed": "lognormal:0.5", "bandwidth": "lognormal:2"}
    job = build_job(load_config(values | {"dtype": "float64"}))
    batched = run_events(job, RunFolder(None))
    single = run_events(job, RunFolder(None), max_batch=1)
    torch.testing.assert_close(batched.x, single.x, rtol=0, atol=1e-10)
    lost = batched.records[-1]["exchanges_lost"]
    assert lost == single.records[-1]["exchanges_lost"]
    assert lost > 0 if algorithm == "swarm" else lost == 0  # away partners; the servers stay
    assert batched.records[-1]["virtual_time_s"] == single.records[-1]["virtual_time_s"]
