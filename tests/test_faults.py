"""Fault injection in the simulator: stragglers, message drops, crashes, a network split.

Asynchronous methods skip what is lost and go on; synchronous ones stop with a
FaultError at the round a crash or a split starts, and pay for dropped messages in
virtual time only. The checks are exact where mathematics says so: a lost request
changes nobody, so unquantised pure gossip across a split keeps each side's sum.
"""

from __future__ import annotations

import pytest
import torch

from nettrain.algorithms.swarm import SwarmSGD, SwarmState
from nettrain.config import load_config
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.events import SimEvents
from nettrain.errors import ConfigError, FaultError
from nettrain.experiment import build_job, run
from nettrain.faults import Crash, Faults, parse_crashes, parse_split
from nettrain.heterogeneity import Availability
from nettrain.patterns import Losses
from nettrain.topology import build_topology
from nettrain.wrappers import Lossy

SMALL = {"dataset": "digits", "agents": 8, "hidden": [8], "batch_size": 8, "progress": False}
SMALL |= {"topology": "complete", "eval_every": 10}


def test_the_spec_says_who_is_down_and_who_is_cut_off() -> None:
    faults = Faults(8, crashes=parse_crashes("3@10:20,5@15", 8), split=parse_split("30:40"))
    assert faults.crashes == (Crash(3, 10, 20), Crash(5, 15, None))
    assert [faults.down(3, t) for t in (9, 10, 19, 20)] == [False, True, True, False]
    assert faults.down(5, 10_000) and not faults.down(5, 14)
    assert faults.unreachable(0, 3, 12) and not faults.unreachable(0, 3, 25)
    assert faults.unreachable(1, 6, 30) and not faults.unreachable(1, 2, 30)
    assert faults.unreachable(6, -1, 35) and not faults.unreachable(1, -1, 35)  # servers
    assert faults.changes() == [10, 15, 20, 30, 40]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "not AGENT@ROUND"),
        ("9@5", "only agents 0..7"),
        ("8@5", r"crash='8@5': there are only agents 0..7"),
        ("2@5:5", "must rejoin after"),
        ("2@5,2@9", "names an agent twice"),
        (",".join(f"{a}@1" for a in range(8)), "leave at least one"),
    ],
)
def test_bad_crash_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_crashes(text, 8)


def test_a_malformed_crash_shows_the_forms() -> None:
    with pytest.raises(ConfigError) as err:
        parse_crashes("3", 8)
    assert str(err.value) == (
        "crash='3' is not AGENT@ROUND or AGENT@ROUND:REJOIN (e.g. crash=3@100 or crash=3@100:200)"
    )


@pytest.mark.parametrize("text", ["100", "a:b", "200:100", "100:100"])
def test_a_split_runs_from_a_round_to_a_later_one(text: str) -> None:
    expected = f"split='{text}' is not FROM:TO rounds with FROM < TO (e.g. split=100:200)"
    with pytest.raises(ConfigError) as err:
        parse_split(text)
    assert str(err.value) == expected


def test_a_split_holds_from_its_first_round_to_before_its_last_cutting_the_halves() -> None:
    """``split=A:B`` cuts rounds ``A <= t < B``; side 0 is agents ``[0, n // 2)`` and the
    servers, side 1 the others (odd ``n``: the larger half is side 1)."""
    faults = Faults(7, split=parse_split("30:40"))
    assert [faults.split_in(t) for t in (29, 30, 39, 40)] == [False, True, True, False]
    assert [faults.side(a) for a in (-1, 0, 2, 3, 6)] == [0, 0, 0, 1, 1]
    with pytest.raises(FaultError) as err:
        faults.check_synchronous(30, "dpsgd")
    assert str(err.value) == (
        "the network is split in round 31: agents 0..2 and 3..6 cannot reach each other, "
        "and algorithm=dpsgd is synchronous. Use an asynchronous method, or drop split="
    )
    crashed = Faults(8, crashes=parse_crashes("5@3,2@1", 8))
    with pytest.raises(FaultError) as err:
        crashed.check_synchronous(4, "allreduce")
    assert str(err.value) == (
        "agent(s) 2, 5 crashed before round 5: algorithm=allreduce is synchronous and needs "
        "every agent every round. Use an asynchronous method (swarm, adpsgd, easgd_async, "
        "eamsgd) to carry on without it, or drop crash="
    )


def test_a_synchronous_round_outside_a_window_names_the_agents_and_the_round() -> None:
    faults = Faults(3, availability=Availability((((5.0, 10.0),), None, ((0.0, 1.0),))))
    with pytest.raises(FaultError) as err:
        faults.check_available(-1, 0.0, 0.5)
    assert str(err.value) == (
        "agent(s) 0 away at the start (virtual time 0 to 0.5 s is outside their availability "
        "windows in trace=): a synchronous method needs every agent every round. Use an "
        "asynchronous method (swarm, adpsgd, easgd_async, eamsgd) to carry on without them, "
        "or widen their windows in the trace"
    )
    with pytest.raises(FaultError, match=r"^agent\(s\) 0, 2 away in round 1 \(virtual time 0.5 "):
        faults.check_available(0, 0.5, 1.5)


def test_only_drops_and_windows_keep_the_rounds_accounted_one_by_one() -> None:
    """Crashes and a split are checked before each round, not in its accounting: the
    settled rounds of such a run are replayed in one pass."""
    windows = Availability((((0.0, 10.0),), None, None))
    assert not Faults(3).round_by_round
    assert not Faults(3, crashes=parse_crashes("1@4", 3), split=parse_split("2:3")).round_by_round
    assert Faults(3, drop=0.05).round_by_round
    assert Faults(3, availability=windows).round_by_round
    assert Faults(3, drop=0.05, availability=windows).round_by_round


def test_resent_messages_are_a_seeded_binomial_draw_per_round() -> None:
    messages = torch.full((4,), 1000, dtype=torch.int64)
    assert Faults(4).resent(messages, 3).tolist() == [0, 0, 0, 0]
    assert Faults(4).resent(messages, 3).dtype == torch.int64
    faults = Faults(4, seed=5, drop=0.1)
    drawn = faults.resent(messages, 3)
    assert drawn.dtype == torch.int64 and torch.equal(drawn, faults.resent(messages, 3))
    assert int(drawn.min()) >= 60 and int(drawn.max()) <= 140  # about 100 of 1000 each
    assert not torch.equal(drawn, faults.resent(messages, 4))  # each round its own draw
    assert not torch.equal(drawn, Faults(4, seed=6, drop=0.1).resent(messages, 3))


def test_a_synchronous_method_stops_at_the_crash_naming_the_agent() -> None:
    with pytest.raises(FaultError, match=r"agent\(s\) 2 crashed before round 13"):
        run(load_config(SMALL | {"algorithm": "dpsgd", "rounds": 20, "crash": "2@12"}))
    with pytest.raises(FaultError, match="the network is split in round 6"):
        run(load_config(SMALL | {"algorithm": "allreduce", "rounds": 20, "split": "5:8"}))


def test_dropped_messages_cost_a_synchronous_method_time_not_accuracy() -> None:
    """Resent messages: the same parameters bit for bit, a slower virtual clock."""
    values = SMALL | {"algorithm": "dpsgd", "topology": "ring", "rounds": 20}
    clean = run(load_config(values))
    lossy = run(load_config(values | {"message_drop": 0.3, "resend_s": 0.01}))
    assert torch.equal(clean.x, lossy.x)
    slower = lossy.records[-1]["virtual_time_s"] - clean.records[-1]["virtual_time_s"]
    # 20 rounds of 8 agents sending 2 messages: nearly every round loses one, each 0.01 s
    assert 0.1 < slower <= 20 * 2 * 0.01 + 1e-9
    record = lossy.records[-1]  # 320 messages, each resent with probability 0.3 (sd 8)
    assert 0.2 * record["messages_total"] < record["messages_resent"] < 0.4 * 320
    assert "messages_resent" not in clean.records[-1]  # counted only with drops


@pytest.mark.parametrize("algorithm", ["swarm", "easgd_async"])
def test_an_agent_crashed_from_the_start_never_moves_and_the_others_learn(algorithm: str) -> None:
    # 60 rounds: the asynchronous centre's accuracy at 30 is near 0.5 on some seeds (0.27
    # to 0.49 over seeds 0-2), at 60 it is 0.62 to 0.76
    cfg = load_config(SMALL | {"algorithm": algorithm, "rounds": 60, "crash": "2@0"})
    result = run(cfg)
    x0 = build_job(cfg).x0
    assert torch.equal(result.x[2], x0)  # no step, and its neighbours' requests were lost
    others = [a for a in range(8) if a != 2]
    assert not any(torch.equal(result.x[a], x0) for a in others)
    record = result.records[-1]
    if algorithm == "swarm":  # neighbours lost their exchanges with it
        assert record["exchanges_lost"] > 0
    else:  # the servers never heard from it, and nobody else lost anything
        assert record["exchanges_min"] == 0 and record["exchanges_lost"] == 0
    assert record.get("centre_test_accuracy", record["test_accuracy"]) > 0.5


def test_a_crashed_agent_that_rejoins_goes_on_from_where_it_stopped() -> None:
    values = SMALL | {"algorithm": "swarm", "rounds": 30}
    stays = run(load_config(values | {"crash": "2@5"}))
    back = run(load_config(values | {"crash": "2@5:15"}))
    assert not torch.equal(stays.x[2], back.x[2])
    assert stays.records[-1]["exchanges_lost"] > back.records[-1]["exchanges_lost"]


def states(values: dict, stops: list[int]) -> list[torch.Tensor]:
    """Every agent's ``x`` after the simulator's events up to each round of ``stops`` (and
    the fault changes at it), driving the event engine directly."""
    events, out = SimEvents(build_job(load_config(values)), 0, None), []
    for stop in stops:
        for _ in events.advance(stop):
            pass
        out.append(events.state.x.clone())
    return out


@pytest.mark.parametrize("algorithm", ["swarm", "adpsgd"])
def test_rejoin_model_neighbour_takes_the_first_live_neighbours_model(algorithm: str) -> None:
    """Agent 2 is back before round 8 on agent 1's model (its sorted neighbours on the
    complete graph: 0, down for good since round 2, then 1); ``own`` keeps its round-3
    state; nobody else is touched either way."""
    values = SMALL | {"algorithm": algorithm, "rounds": 10, "crash": "0@2,2@3:8"}
    down, before, own = states(values, [3, 7, 8])  # round 7: the last events before it is back
    taken = states(values | {"rejoin_model": "neighbour"}, [3, 7, 8])[2]  # the same batches
    assert torch.equal(before[2], down[2]) and torch.equal(own[2], down[2])
    assert torch.equal(taken[2], taken[1]) and not torch.equal(taken[2], down[2])
    others = [a for a in range(8) if a != 2]
    assert torch.equal(taken[others], own[others])
    # and the run goes on from there, deterministically
    ran = run(load_config(values | {"rejoin_model": "neighbour"}))
    again = run(load_config(values | {"rejoin_model": "neighbour"}))
    assert torch.equal(ran.x, again.x) and not torch.equal(ran.x, run(load_config(values)).x)


def test_the_first_live_neighbour_is_read_in_sorted_order_skipping_the_down() -> None:
    faults = Faults(8, crashes=parse_crashes("0@3,1@4:9,2@5:15", 8), rejoin_model="neighbour")
    assert faults.rejoining(15) == [2] and faults.rejoining(9) == [1]
    assert faults.rejoin_source(2, 15, [7, 1, 0, 3]) == 1
    assert faults.rejoin_source(2, 8, [7, 1, 0, 3]) == 3  # 1 is still down in round 8
    assert faults.rejoin_source(2, 15, [0]) is None  # every neighbour down: its own
    assert Faults(8, crashes=faults.crashes).rejoin_source(2, 15, [1]) is None  # own


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"crash": "2@5"}, "no crash here ends"),
        ({}, "no crash here ends"),
        ({"algorithm": "easgd_async", "crash": "2@5:9"}, "asynchronous gossip methods"),
        ({"algorithm": "dpsgd", "crash": "2@5:9"}, "algorithm=dpsgd is not one"),
        ({"engine": "distributed", "crash": "2@5:9"}, "Use engine=sim"),
        ({"crash": "2@5:9", "rejoin_model": "theirs"}, "choose one of own, neighbour"),
    ],
)
def test_rejoin_model_neighbour_is_refused_where_it_cannot_run(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config({"algorithm": "swarm", "agents": 8, "rejoin_model": "neighbour"} | values)


def test_lost_requests_change_nobody_and_kept_exchanges_preserve_the_pair_sum() -> None:
    """SwarmSGD's exchange with no local steps and no compression, through the simulator's
    swap: a kept exchange averages the pair (x_i + x_j preserved), a lost request changes
    neither, a lost reply changes only the partner."""
    n, d = 8, 5
    topology = build_topology("complete", n)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    algo = SwarmSGD(lr=0.1, local_steps=0)
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state = SwarmState(x, torch.zeros(n, dtype=torch.int64))
    pairs = torch.tensor([[0, 1], [2, 6], [7, 3], [4, 5]])  # kept, request lost x2, reply lost
    request = torch.tensor([False, True, True, False])
    reply = torch.tensor([False, True, True, True])
    lossy = Lossy(comm, Losses(request, reply))
    new, _ = algo.interact(state, pairs, None, lossy, torch.zeros(4, 2, dtype=torch.int64))
    y = new.x
    assert torch.allclose(y[0], (x[0] + x[1]) / 2) and torch.allclose(y[1], y[0])
    for a in (2, 6, 7, 3, 4):
        assert torch.equal(y[a], x[a])
    assert torch.allclose(y[5], (x[4] + x[5]) / 2)  # the partner took the request in
    messages, _, _ = comm.traffic.reset()
    assert messages.tolist() == [1, 1, 1, 0, 1, 1, 0, 1]  # no reply to a lost request


def test_message_drops_lose_the_expected_share_of_exchanges() -> None:
    """A request and a reply are each lost with p = 0.3: 1 - 0.7^2 = 51% of exchanges."""
    values = SMALL | {"algorithm": "adpsgd", "rounds": 100, "message_drop": 0.3}
    record = run(load_config(values)).records[-1]
    share = record["exchanges_lost"] / record["events"]
    assert 0.45 < share < 0.57, share


def test_faults_are_deterministic_for_a_seed() -> None:
    values = SMALL | {"algorithm": "swarm", "rounds": 20, "message_drop": 0.2}
    values |= {"crash": "1@3:9", "split": "12:16", "phase": "poisson"}
    a, b = run(load_config(values)), run(load_config(values))
    assert torch.equal(a.x, b.x)
    c = run(load_config(values | {"seed": 1}))
    assert not torch.equal(a.x, c.x)


def test_stragglers_slow_the_synchronous_clock_and_thin_the_asynchronous_events() -> None:
    """10% stragglers 4x slower: a synchronous round waits for them; asynchronous agents
    do not, so the straggler (1 of 10) initiates a quarter as many exchanges and takes
    part in clearly fewer than the least active agent of the same run without slowdown
    (``interactions_min < interactions_max`` alone holds at equal speeds too: who is
    drawn as a partner is random)."""
    values = SMALL | {"agents": 10, "rounds": 20, "compute_s_per_sample": 1e-3}
    slow = {"stragglers": 0.1, "straggler_slowdown": 4.0}
    sync = run(load_config(values | {"algorithm": "dpsgd"})).records[-1]
    sync_slow = run(load_config(values | {"algorithm": "dpsgd"} | slow)).records[-1]
    assert sync_slow["virtual_time_s"] == pytest.approx(4 * sync["virtual_time_s"], rel=0.05)
    swarm = values | {"algorithm": "swarm", "topology": "complete", "rounds": 40}
    even = run(load_config(swarm)).records[-1]
    skewed = run(load_config(swarm | slow)).records[-1]
    assert skewed["events"] == even["events"]  # the same work, spread differently
    # without slowdown the fewest are 72 of a mean 80; the straggler takes part in 56
    assert skewed["interactions_min"] < 0.85 * even["interactions_min"]


def test_faults_are_refused_where_they_cannot_run() -> None:
    with pytest.raises(ConfigError, match="does not take message_drop, crash or split"):
        load_config({"algorithm": "downpour", "crash": "1@5"})
    with pytest.raises(ConfigError, match="blocking=true would wait forever"):
        load_config({"algorithm": "swarm", "blocking": True, "message_drop": 0.1})
    with pytest.raises(ConfigError, match="message_drop must be in"):
        load_config({"message_drop": 1.0})
