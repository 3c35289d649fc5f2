"""The per-agent timeline (``timeline=true``): what it records in each engine, that it
changes no number of the run, and its plot."""

from __future__ import annotations

import os
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from nettrain.cli import main
from nettrain.config import load_config
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.engine import SimRounds
from nettrain.errors import ConfigError
from nettrain.experiment import build_job, resume, run
from nettrain.report.timeline import KINDS, plot_timeline, read_timeline

TINY = {"dataset": "digits", "progress": False, "tensorboard": False, "rounds": 6}
STRAGGLER = {"stragglers": 0.25, "straggler_slowdown": 4.0}


def by_agent(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        out[e["agent"]].append(e)
    return {a: sorted(v, key=lambda e: e["start"]) for a, v in out.items()}


def assert_in_time_order(events: list[dict[str, Any]]) -> None:
    """Every interval is non-empty, of a known kind; an agent's never overlap."""
    assert events
    for spans in by_agent(events).values():
        for e in spans:
            assert e["kind"] in KINDS and e["start"] < e["end"]
        for before, after in pairwise(spans):
            assert before["end"] <= after["start"]


def without_wall(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_synchronous_rounds_tile_the_virtual_clock(tmp_path: Path) -> None:
    """D-PSGD on a ring of 4 with a 4x straggler: in every recorded round each agent
    computes ``s_i c batch``, sends ``2 (latency + d bytes / bandwidth)`` and waits the
    rest; the intervals tile [T_{r-1}, T_r] and T_r is the record's virtual time."""
    keys = TINY | STRAGGLER | {"agents": 4, "algorithm": "dpsgd", "eval_every": 1}
    on = run(keys | {"timeline": True, "timeline_rounds": 4}, out=tmp_path / "on")
    off = run(keys, out=tmp_path / "off")
    assert without_wall(on.records) == without_wall(off.records)  # the same run
    assert not (tmp_path / "off" / "timeline.jsonl").exists()
    assert (tmp_path / "on" / "timeline.png").stat().st_size > 0

    events = read_timeline(tmp_path / "on")
    assert {e["round"] for e in events} == {1, 2, 3, 4}  # timeline_rounds, no more
    cfg = load_config(keys)
    job = build_job(cfg)
    slow = CostModel.straggler_slowdown(4, 0.25, 4.0, cfg.seed)
    assert sorted(slow.tolist()) == [1.0, 1.0, 1.0, 4.0]
    c, d = job.cost.seconds_per_sample, job.problem.dim
    send = 2 * (job.cost.latency_s + d * 4 / job.cost.bandwidth_bytes_per_s)  # two float32 rows
    ends = {rec["round"]: rec["virtual_time_s"] for rec in on.records}  # round 0: the start
    for r in range(1, 5):
        start, end = ends[r - 1], ends[r]
        for agent in range(4):
            spans = [e for e in by_agent(events)[agent] if e["round"] == r]
            assert spans[0]["start"] == start and spans[-1]["end"] == end
            assert all(a["end"] == b["start"] for a, b in pairwise(spans))
            took = {e["kind"]: e["end"] - e["start"] for e in spans}
            compute = float(slow[agent]) * c * job.batch_size
            assert took["compute"] == pytest.approx(compute, rel=1e-9)
            assert took["send"] == pytest.approx(send, rel=1e-9)
            if slow[agent] > 1:
                assert "wait" not in took  # the straggler ends the round
                assert end - start == pytest.approx(compute + send, rel=1e-9)
            else:
                assert took["wait"] == pytest.approx(3 * compute, rel=1e-9)  # for it


def test_initial_work_is_round_zero(tmp_path: Path) -> None:
    """Gradient tracking's first gradients are round 0, before round 1 starts."""
    keys = TINY | {"agents": 4, "algorithm": "gradient_tracking", "eval_every": 1}
    result = run(keys | {"timeline": True, "timeline_rounds": 2}, out=tmp_path)
    events = read_timeline(tmp_path)
    assert {e["round"] for e in events} == {0, 1, 2}
    first = min(e["start"] for e in events if e["round"] == 1)
    assert first == max(e["end"] for e in events if e["round"] == 0) > 0
    ends = {rec["round"]: rec["virtual_time_s"] for rec in result.records}
    assert first == ends[0] and max(e["end"] for e in events) == ends[2]


def test_a_resumed_run_adds_the_rounds_after_its_checkpoint(tmp_path: Path) -> None:
    """Cut after round 4 and resumed to 6: the timeline of the run that went through."""
    keys = TINY | STRAGGLER | {"agents": 4, "algorithm": "dpsgd", "eval_every": 1}
    keys |= {"timeline": True, "timeline_rounds": 5}
    run(keys, out=tmp_path / "whole")
    run(keys | {"rounds": 4, "checkpoint_every": 2}, out=tmp_path / "cut")
    assert {e["round"] for e in read_timeline(tmp_path / "cut")} == {1, 2, 3, 4}
    resume(tmp_path / "cut", {"rounds": "6"})
    assert read_timeline(tmp_path / "cut") == read_timeline(tmp_path / "whole")


@pytest.mark.parametrize("algorithm", ["swarm", "adpsgd", "easgd_async"])
def test_asynchronous_events_never_overlap(tmp_path: Path, algorithm: str) -> None:
    """Each agent's phases, sends and waits follow one another; the parameter server's
    queue shows as its serve intervals (agent n) and the workers' waits."""
    keys = TINY | STRAGGLER | {"agents": 6, "algorithm": algorithm, "eval_every": 2}
    on = run(keys | {"timeline": True, "timeline_rounds": 3}, out=tmp_path / "on")
    off = run(keys, out=tmp_path / "off")
    assert without_wall(on.records) == without_wall(off.records)
    events = read_timeline(tmp_path / "on")
    assert_in_time_order(events)
    assert max(e["round"] for e in events) == 3
    kinds = {e["kind"] for e in events}
    assert {"compute", "send"} <= kinds
    if algorithm == "easgd_async":
        assert {e["agent"] for e in events if e["kind"] == "serve"} == {6}
        assert "wait" in kinds  # workers that arrived together queue


def test_a_non_blocking_initiator_waits_for_the_reply(tmp_path: Path) -> None:
    """SwarmSGD without blocking: the initiator goes on from the average, which needs
    the partner's reply, so each of its sends lasts two messages of the model's ``d``
    float32: ``2 (latency + 4 d / bandwidth)``."""
    keys = TINY | {"agents": 4, "algorithm": "swarm", "latency_s": 1e-3, "bandwidth_gbps": 8.0}
    result = run(keys | {"timeline": True, "timeline_rounds": 3}, out=tmp_path)
    d = result.x.shape[1]
    sends = [e for e in read_timeline(tmp_path) if e["kind"] == "send"]
    assert sends
    for e in sends:
        assert e["end"] - e["start"] == pytest.approx(2 * (1e-3 + 4 * d / 1e9), rel=1e-9)


def test_distributed_rounds_record_every_agent(tmp_path: Path, monkeypatch) -> None:
    """Two processes of two agents: measured intervals for every agent, the same for the
    agents of one process."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items = ["dataset=digits", "agents=4", "hidden=8", "rounds=6", "batch_size=8"]
    items += ["eval_every=3", "algorithm=dpsgd", "engine=distributed", "nproc=2"]
    items += ["progress=false", "tensorboard=false", "timeline=true", "timeline_rounds=4"]
    assert main(["run", *items, f"master_port={free_port()}", "--out", str(tmp_path)]) == 0
    events = read_timeline(tmp_path)
    assert_in_time_order(events)
    agents = by_agent(events)
    assert sorted(agents) == [0, 1, 2, 3]
    assert {e["round"] for e in events} == {1, 2, 3, 4}
    assert {"compute", "wait"} <= {e["kind"] for e in events}
    strip = [[(e["kind"], e["start"], e["end"]) for e in agents[a]] for a in range(4)]
    assert strip[0] == strip[1] and strip[2] == strip[3]  # agents 0, 1 on rank 0
    assert (tmp_path / "timeline.png").stat().st_size > 0
    assert not os.environ.get("RANK")


@pytest.mark.parametrize("algorithm", ["swarm", "easgd_async"])
def test_distributed_events_record_every_agent(tmp_path: Path, monkeypatch, algorithm) -> None:
    """Asynchronous methods on processes: each agent's measured events, never
    overlapping, in the first rounds only; the exchanges show as sending or waiting."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    workers = 3
    items = ["dataset=digits", f"agents={workers}", "hidden=8", "rounds=8", "batch_size=8"]
    items += [f"algorithm={algorithm}", "engine=distributed", "timeout_s=60"]
    items += ["progress=false", "tensorboard=false", "timeline=true", "timeline_rounds=4"]
    items += ["servers=1", "tau=2"] if algorithm == "easgd_async" else []
    assert main(["run", *items, f"master_port={free_port()}", "--out", str(tmp_path)]) == 0
    events = read_timeline(tmp_path)
    assert_in_time_order(events)
    assert sorted(by_agent(events)) == list(range(workers))  # the workers, not the server
    assert {e["round"] for e in events} <= {1, 2, 3, 4} and 1 in {e["round"] for e in events}
    assert "compute" in {e["kind"] for e in events}
    assert {"send", "wait"} & {e["kind"] for e in events}
    assert (tmp_path / "timeline.png").stat().st_size > 0


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    """70 agents: the first 64 are drawn."""
    events = [
        {"agent": a, "kind": kind, "start": k + 0.3 * j, "end": k + 0.3 * (j + 1), "round": k}
        for a in range(70)
        for k in range(3)
        for j, kind in enumerate(("compute", "send", "wait"))
    ]
    path = plot_timeline(events, tmp_path / "t.png", title="many")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_timeline([], tmp_path / "empty.png").is_file()


def test_timeline_is_refused_where_nothing_records_it() -> None:
    with pytest.raises(ConfigError, match="timeline=true"):
        load_config(overrides={"timeline": True, "engine": "shared_memory", "algorithm": "hogwild"})


def test_timeline_off_records_nothing() -> None:
    """Off (the default), no engine holds a timeline."""
    job = build_job(load_config(TINY | {"agents": 4}))
    assert job.timeline_rounds == 0
    assert SimRounds(job, None).timeline is None


def test_the_report_shows_the_timeline_of_a_run_that_has_one(tmp_path: Path) -> None:
    """``nettrain report`` draws the timeline of the run that recorded one, only it."""
    out = tmp_path / "cmp"
    items = ["dataset=digits", "agents=4", "rounds=4", "progress=false", "tensorboard=false"]
    compare = ["compare", *items, "--algorithms", "dpsgd,allreduce", "dpsgd.timeline=true"]
    assert main([*compare, "--out", str(out)]) == 0
    (out / "dpsgd" / "timeline.png").unlink()  # drawn again from timeline.jsonl
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "dpsgd: timeline" in page and "allreduce: timeline" not in page
