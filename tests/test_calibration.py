"""The calibrated virtual clock: the profile's file, the link's fit, ``cost_model=``, and
one real ``nettrain calibrate`` on two local gloo processes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import socket
from pathlib import Path

import pytest
import torch

from helpers import free_port
from nettrain.calibration import fit_link, loaded, measure
from nettrain.calibration.loaded import PAIRS, paired
from nettrain.cli import byte_count, main
from nettrain.config import load_config
from nettrain.engines.distributed.rpc import DEFAULT_MASTER_PORT, RPC_PORT_OFFSET
from nettrain.engines.sim.events import SimEvents
from nettrain.engines.sim.profile import (
    SECONDS,
    Profile,
    average_profiles,
    convert,
    load_profile,
    toml_value,
)
from nettrain.errors import ConfigError
from nettrain.experiment import build_cost_model, build_job, build_problem

KEYS = {"dataset": "digits", "model": "mlp", "hidden": "8", "batch_size": 4, "agents": 4}


def profile_for(d: int, **changes: object) -> Profile:
    """A profile of made-up figures, none of them the clock's defaults, for ``d``
    parameters of the MLP of :data:`KEYS`."""
    values = dict(
        seconds_per_sample=3.25e-6,
        seconds_per_sample_alone=2.5e-6,
        latency_s=4.5e-5,
        bandwidth_bytes_per_s=1.75e9,
        allreduce_s=2.5e-4,
        rpc_exchange_s=6.5e-4,
        round_overhead_s=1.5e-4,
        event_overhead_s=2.5e-4,
        message_overhead_s=3.5e-5,
        processes=2,
        model="mlp",
        hidden=(8,),
        dataset="digits",
        dtype="float32",
        device="cpu",
        batch=4,
        d=d,
        message_bytes=(1024, 2048, 4096),
        one_way_s=(4.6e-5, 4.7e-5, 4.8e-5),
        repeats=7,
        date="2026-01-02T03:04:05+00:00",
        host='a "quoted" host',
        torch_version=torch.__version__,
        nettrain_version="0.1.0",
        threads=3,
    )
    return Profile(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dim() -> int:
    return build_problem(load_config(overrides=KEYS)).dim


def test_a_profile_round_trips_and_sets_the_clock(tmp_path: Path, dim: int) -> None:
    profile = profile_for(dim)
    path = profile.write(tmp_path / "sub" / "profile.toml")
    assert load_profile(path) == profile
    cfg = load_config(overrides=KEYS | {"cost_model": str(path)})
    cost = build_cost_model(cfg, build_problem(cfg))
    assert cost.seconds_per_sample == profile.seconds_per_sample
    # a neighbour message: the link's latency and the engine's own work of a message
    latency = 4.5e-5 + 3.5e-5
    assert cost.latency_s == profile.latency_s + profile.message_overhead_s == latency
    assert cost.bandwidth_bytes_per_s == profile.bandwidth_bytes_per_s
    assert cost.profile == profile and cost.profile.allreduce_s == 2.5e-4
    sent = cost.send_seconds(torch.tensor([1, 3]), torch.tensor([0, 7_000_000]))
    expected = [latency, 3 * latency + 7_000_000 / 1.75e9]
    assert sent.tolist() == pytest.approx(expected, rel=1e-12)
    # an all-reduce of d float32 over 2 processes: 2 messages of d / 2, in 2.5e-4 s
    ring = 2.5e-4 / 2 - dim * 4 / 2 / 1.75e9
    assert cost.collective_latency_s == pytest.approx(ring, rel=1e-12)
    # of the 3 messages of agent 1, 2 within an all-reduce: at the collective's latency
    within = cost.send_seconds(torch.tensor([1, 3]), torch.tensor([0, 7]), torch.tensor([0, 2]))
    expected = [latency, latency + 2 * ring + 7 / 1.75e9]
    assert within.tolist() == pytest.approx(expected, rel=1e-12)
    # an rpc exchange (d float32 each way) takes 6.5e-4 s: half of it a message
    rpc = cost.over_rpc()
    assert rpc.latency_s == cost.rpc_latency_s == pytest.approx(3.25e-4 - dim * 4 / 1.75e9)
    assert (rpc.seconds_per_sample, rpc.profile) == (cost.seconds_per_sample, profile)
    # the engine's round besides the pass: added to an agent's computing, not scaled by
    # its slow-down, and not to an agent that did not compute
    assert cost.step_overhead_s == 1.5e-4
    computing = cost.compute_seconds(torch.tensor([4, 0, 8, 4]))
    busy = [4 * 3.25e-6 + 1.5e-4, 0.0, 8 * 3.25e-6 + 1.5e-4, 4 * 3.25e-6 + 1.5e-4]
    assert computing.tolist() == pytest.approx(busy, rel=1e-12)
    # an asynchronous event's own cost is the profile's event_overhead_s instead
    assert rpc.step_overhead_s == cost.event_overhead_s == 2.5e-4
    event = rpc.compute_seconds(torch.tensor([4, 0, 8, 4]))
    busy = [4 * 3.25e-6 + 2.5e-4, 0.0, 8 * 3.25e-6 + 2.5e-4, 4 * 3.25e-6 + 2.5e-4]
    assert event.tolist() == pytest.approx(busy, rel=1e-12)
    # a straggler's extra computing at the pass alone: (c + (s - 1) c') samples
    assert cost.alone_seconds_per_sample == profile.seconds_per_sample_alone
    slow = load_config(overrides=KEYS | {"cost_model": str(path), "stragglers": 0.25})
    cost = build_cost_model(slow, build_problem(slow))
    computing = cost.compute_seconds(torch.full((4,), 4)) - 1.5e-4
    busy = [4 * (3.25e-6 + 3 * 2.5e-6) if s == 4 else 4 * 3.25e-6 for s in cost.slowdown]
    assert sorted(cost.slowdown.tolist()) == [1.0, 1.0, 1.0, 4.0]
    assert computing.tolist() == pytest.approx(busy, rel=1e-12)


def test_latencies_derived_from_a_profile_are_never_negative(dim: int) -> None:
    """Exchanges measured faster than their bytes over the fitted bandwidth leave no
    latency (0), and one process has no collective latency."""
    fast = profile_for(dim, rpc_exchange_s=1e-9, allreduce_s=1e-9)
    assert fast.rpc_latency_s(4) == 0.0 and fast.collective_latency_s(4) == 0.0
    assert profile_for(dim, processes=1).collective_latency_s(4) is None


def test_a_collective_message_is_its_share_of_a_ring_all_reduce(dim: int) -> None:
    """A ring all-reduce over P processes sends 2 (P - 1) messages of d / P elements."""
    p4 = profile_for(dim, processes=4, allreduce_s=6e-3, bandwidth_bytes_per_s=1e9)
    assert p4.collective_latency_s(4) == pytest.approx(6e-3 / 6 - dim * 4 / 4 / 1e9)
    assert profile_for(dim).fitted_s() == pytest.approx(
        [4.5e-5 + b / 1.75e9 for b in (1024, 2048, 4096)]
    )


@pytest.mark.parametrize(
    "name", ["latency_s", "round_overhead_s", "event_overhead_s", "message_overhead_s"]
)
def test_overheads_and_the_latency_may_be_zero_not_negative_or_infinite(
    dim: int, name: str
) -> None:
    assert getattr(profile_for(dim, **{name: 0.0}), name) == 0.0
    for bad in (-1e-6, math.inf):
        with pytest.raises(ValueError) as err:
            profile_for(dim, **{name: bad})
        assert str(err.value) == f"{name} must be a finite number >= 0, got {bad}"
    with pytest.raises(ValueError) as err:
        profile_for(dim, message_bytes=(1, 2))
    assert str(err.value) == "2 message sizes for 3 times"


def test_toml_literals_and_their_reading_back(tmp_path: Path, dim: int) -> None:
    literals = [toml_value(v) for v in (True, False, 3, 0.5, "a")]
    assert literals == ["true", "false", "3", "0.5", '"a"']
    with pytest.raises(TypeError, match=r"^no TOML literal for object$"):
        toml_value(object())
    assert convert("n", "tuple[int, ...]", [1, 2]) == (1, 2)
    assert convert("x", "tuple[float, ...]", [1, 2]) == (1.0, 2.0)
    assert isinstance(convert("x", "tuple[float, ...]", [1])[0], float)
    for kind, value in (("int", 1.5), ("float", "1"), ("tuple[int, ...]", 3), ("int", True)):
        with pytest.raises(ValueError) as err:
            convert("x", kind, value)
        assert str(err.value) == f"x = {value!r} is not a {kind}"
    with pytest.raises(ValueError, match=r"^n = 1.5 is not a int$"):
        convert("n", "tuple[int, ...]", [1, 1.5])
    deep = profile_for(dim).write(tmp_path / "a" / "b" / "profile.toml")  # folders made
    assert deep.read_text().startswith(
        "# The virtual clock's constants measured by `nettrain calibrate`;\n"
        "# a run uses them with cost_model=PATH.\n"
    )
    # a profile of an earlier version, without the engine's cost of a message: none
    deep.write_text(deep.read_text().replace("message_overhead_s = 3.5e-05\n", ""))
    assert load_profile(deep) == dataclasses.replace(profile_for(dim), message_overhead_s=0.0)
    text = deep.read_text().replace("repeats = 7\n", "")
    deep.write_text(text)
    with pytest.raises(ConfigError, match=r"is not a calibration profile \(no repeats in \["):
        load_profile(deep)


def test_a_profile_of_another_problem_names_the_differences(dim: int) -> None:
    other = profile_for(dim + 1, model="cnn", batch=8)
    with pytest.raises(ConfigError) as err:
        other.check("mlp", 4, dim)
    assert str(err.value) == (
        f"cost_model=the profile was calibrated for another problem: model cnn (the run's: "
        f"mlp), batch 8 (the run's: 4), {dim + 1} parameters (the run's model has {dim}); "
        "re-run `nettrain calibrate` with the run's keys (e.g. nettrain calibrate model=mlp "
        "batch_size=4 dataset=... hidden=... --out profile.toml)"
    )


def test_an_asynchronous_step_takes_the_profiles_event_and_pass_alone(
    tmp_path: Path, dim: int
) -> None:
    """The simulator's gossip step with a profile: ``c B + o_event`` an agent, a 4x
    straggler's ``(c + 3 c') B + o_event``."""
    path = profile_for(dim).write(tmp_path / "profile.toml")
    values = {"algorithm": "swarm", "cost_model": str(path), "stragglers": 0.25}
    events = SimEvents(build_job(load_config(KEYS | values)), 0, None)
    slowdown = events.cost.slowdown.tolist()
    steps = [4 * (3.25e-6 + (s - 1) * 2.5e-6) + 2.5e-4 for s in slowdown]
    assert sorted(slowdown) == [1.0, 1.0, 1.0, 4.0]
    assert events.step_s == pytest.approx(steps, rel=1e-12)


def test_without_a_profile_the_keys_set_the_clock(dim: int) -> None:
    cfg = load_config(overrides=KEYS | {"latency_s": 1e-3, "bandwidth_gbps": 8.0})
    cost = build_cost_model(cfg, build_problem(cfg))
    assert (cost.latency_s, cost.bandwidth_bytes_per_s, cost.profile) == (1e-3, 1e9, None)
    assert cost.alone_seconds_per_sample is None


@pytest.mark.parametrize(("latency", "bandwidth"), [(3e-5, 2e9), (2e-3, 1.25e8), (5e-7, 4e10)])
def test_the_fit_recovers_a_synthetic_ping_pong(latency: float, bandwidth: float) -> None:
    sizes = [1024 * 2**i for i in range(17)]
    noise = [0.03 * math.sin(2.7 * i + 1) for i in range(len(sizes))]  # deterministic, ±3%
    times = [(latency + b / bandwidth) * (1 + e) for b, e in zip(sizes, noise, strict=True)]
    fit = fit_link(sizes, times)
    assert fit.latency_s == pytest.approx(latency, rel=0.05)
    assert fit.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=0.05)
    residuals = fit.residuals()
    assert len(residuals) == len(sizes) and max(map(abs, residuals)) < 0.06
    assert fit.fitted_s()[0] == pytest.approx(fit.latency_s + 1024 / fit.bandwidth_bytes_per_s)


def test_a_paired_figure_holds_while_the_machine_drifts_and_drops_a_burst() -> None:
    """Each block of the pattern less the pass just before it: a machine slowing down
    block after block moves both alike; a burst that hits one pattern block is left out
    by the median, as a mean would not."""
    passes: list[float] = []
    alone = iter([1.0, 1.5, 2.0, 2.5, 3.0])  # the pass, slower and slower
    extra = iter([0.25, 0.25, 9.0, 0.25, 0.25])  # the pattern's own, one block hit

    def pattern() -> float:
        return passes[-1] + next(extra)

    assert paired(pattern, lambda: next(alone), passes) == 0.25
    assert passes == [1.0, 1.5, 2.0, 2.5, 3.0] and PAIRS == 5


def test_the_engine_rounds_pair_local_sgd_with_the_pass_and_d_psgd_with_local_sgd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's round less the pass before it, and D-PSGD's round less that local SGD
    round, each a median over the pairs (a burst in one D-PSGD run left out); with one
    process nothing is exchanged and no D-PSGD runs."""
    local = iter([1.5, 2.0, 2.5, 3.0, 3.5])  # each pass + 0.5
    mix = iter([0.25, 0.25, 7.0, 0.25, 0.25])  # D-PSGD's extra over local SGD
    monkeypatch.setattr(loaded, "engine_round", lambda plan, world, pass_s: next(local))
    monkeypatch.setattr(loaded, "engine_mix_round", lambda plan, world, s: s + next(mix))
    passes: list[float] = []
    alone = iter([1.0, 1.5, 2.0, 2.5, 3.0])
    assert loaded.engine_rounds(None, 4, lambda: next(alone), passes) == (0.5, 0.25)  # type: ignore[arg-type]
    assert passes == [1.0, 1.5, 2.0, 2.5, 3.0]
    local, alone = iter([1.5] * PAIRS), iter([1.0] * PAIRS)
    monkeypatch.setattr(loaded, "engine_mix_round", None)  # never called
    assert loaded.engine_rounds(None, 1, lambda: next(alone), []) == (0.5, 0.0)  # type: ignore[arg-type]


def test_a_message_costs_the_engine_what_it_measured_beyond_the_fitted_link(
    monkeypatch: pytest.MonkeyPatch, dim: int
) -> None:
    """The profile's message_overhead_s: the engine's measured cost of a neighbour message
    of d values less the fitted link's time for it; never below 0."""
    sizes = (1024, 2048, 4096)
    one_way = tuple(5e-5 + b / 2e9 for b in sizes)  # latency 5e-5 s, 2 GB/s
    link = 5e-5 + dim * 4 / 2e9  # a message of d float32 over that link

    def measured(engine_message_s: float) -> Profile:
        times = loaded.LinkTimes(sizes, one_way, 1e-3, 2, 4e-4, 2e-3, 1e-4, 3e-4, engine_message_s)
        monkeypatch.setattr(measure, "measure_local", lambda plan, processes, addr, port: times)
        calibration = measure.calibrate(KEYS, None, progress=False, repeats=1, warmup=0)
        assert calibration is not None and calibration.path is None
        return calibration.profile

    assert measured(link + 2e-5).message_overhead_s == pytest.approx(2e-5, rel=1e-6)
    assert measured(link / 2).message_overhead_s == 0.0


def test_the_fit_refuses_times_that_do_not_grow_with_the_size() -> None:
    with pytest.raises(ConfigError, match="do not grow with the message size"):
        fit_link([1024, 2048, 4096], [5e-5, 4e-5, 3e-5])
    with pytest.raises(ConfigError, match="at least 2 message sizes"):
        fit_link([1024, 1024], [5e-5, 5e-5])


def test_a_missing_or_malformed_profile_is_a_config_error(tmp_path: Path, dim: int) -> None:
    cfg = load_config(overrides=KEYS | {"cost_model": str(tmp_path / "none.toml")})
    with pytest.raises(ConfigError, match=r"no such file; write one with `nettrain calibrate"):
        build_cost_model(cfg, build_problem(cfg))
    bad = tmp_path / "bad.toml"
    bad.write_text("[compute\nseconds_per_sample = 1\n")
    with pytest.raises(ConfigError, match="is not a TOML file"):
        load_profile(bad)
    text = profile_for(dim).to_toml()
    bad.write_text(text.replace("[allreduce]", "[other]"))
    with pytest.raises(ConfigError, match=r"not a calibration profile \(no table \[allreduce\]\)"):
        load_profile(bad)
    bad.write_text(text.replace("latency_s = 4.5e-05", 'latency_s = "fast"'))
    with pytest.raises(ConfigError, match=r"latency_s = 'fast' is not a float"):
        load_profile(bad)
    bad.write_text(
        text.replace("bandwidth_bytes_per_s = 1750000000.0", "bandwidth_bytes_per_s = 0")
    )
    with pytest.raises(ConfigError, match="bandwidth_bytes_per_s must be a finite number > 0"):
        load_profile(bad)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "linear"}, "model linear (the run's: mlp)"),
        ({"batch": 32}, "batch 32 (the run's: 4)"),
        ({"d": 10}, "10 parameters (the run's model has"),
    ],
)
def test_a_profile_of_another_problem_is_refused(
    tmp_path: Path, dim: int, changes: dict[str, object], message: str
) -> None:
    path = profile_for(**({"d": dim} | changes)).write(tmp_path / "other.toml")
    cfg = load_config(overrides=KEYS | {"cost_model": str(path)})
    with pytest.raises(ConfigError, match="re-run `nettrain calibrate` with the run's keys") as err:
        build_cost_model(cfg, build_problem(cfg))
    assert message in str(err.value)


def test_cost_model_and_the_keys_it_replaces_are_not_given_together() -> None:
    with pytest.raises(ConfigError, match=r"latency_s=0.001 would be ignored: remove it"):
        load_config(overrides={"cost_model": "p.toml", "latency_s": 1e-3})
    assert load_config(overrides={"cost_model": "p.toml"}).cost_model == "p.toml"


def test_byte_counts_take_binary_suffixes() -> None:
    assert [byte_count(t) for t in ("4096", "1k", "64M", "1G")] == [4096, 1024, 2**26, 2**30]


def test_calibrate_measures_two_local_processes(
    tmp_path: Path, capfd, dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "profile.toml"
    monkeypatch.setattr("nettrain.calibration.measure.usable_cores", lambda: 1)
    threads = torch.get_num_threads()
    items = [f"{k}={v}" for k, v in KEYS.items()] + [f"master_port={free_port()}"]
    args = ["calibrate", *items, "--out", str(out), "--max-bytes", "16M", "--repeats", "3"]
    with contextlib.ExitStack() as held:  # the engine's default rpc port, taken
        with contextlib.suppress(OSError):  # (or taken already by someone else)
            listener = held.enter_context(socket.socket())
            listener.bind(("127.0.0.1", DEFAULT_MASTER_PORT + RPC_PORT_OFFSET))
            listener.listen()
        assert main(args) == 0  # the engine's runs meet at master_port and the next port
    profile = load_profile(out)
    assert profile.latency_s > 0 and profile.bandwidth_bytes_per_s > 0
    assert profile.seconds_per_sample > 0 and profile.allreduce_s > 0
    # up to 16 MB: on a loopback where a small message may take 2 ms, the largest sizes
    # still take longer than that, so that the fit finds a bandwidth
    assert profile.message_bytes == tuple(1024 * 2**i for i in range(15))
    assert len(profile.one_way_s) == 15 and all(t > 0 for t in profile.one_way_s)
    assert (profile.model, profile.batch, profile.d, profile.processes) == ("mlp", 4, dim, 2)
    assert profile.repeats == 3 and profile.hidden == (8,)
    # the pass alone on one thread, as the spawned processes compute; the threads restored
    assert profile.threads == 1 and torch.get_num_threads() == threads
    shown = capfd.readouterr()  # the spawned processes' stderr too
    assert "relative residual" in shown.out and "16,777,216" in shown.out
    assert f"use it with cost_model={out}" in shown.out
    assert "calibrate: 2 processes at once" in shown.err
    assert "calibrate: 2 processes on 1 core here: they share cores" in shown.err
    assert "calibrate:   16,777,216 bytes:" in shown.err
    assert "calibrate:   rpc exchange of as many:" in shown.err
    assert re.search(r"^calibrate: timing the oracle: .*, 1 thread$", shown.err, re.M)
    assert profile.rpc_exchange_s > 0 and profile.seconds_per_sample_alone > 0
    assert profile.round_overhead_s >= 0 and profile.event_overhead_s >= 0
    assert profile.message_overhead_s >= 0
    assert "calibrate:   the engine's round besides the pass:" in shown.err
    assert "calibrate:   the engine's D-PSGD round besides that:" in shown.err
    assert "the engine's own cost of a neighbour message beyond the link:" in shown.out
    assert "calibrate:   the engine's event besides the pass and the exchange:" in shown.err
    cfg = load_config(overrides=KEYS | {"cost_model": str(out)})
    cost = build_cost_model(cfg, build_problem(cfg))
    assert dataclasses.astuple(cost.profile) == dataclasses.astuple(profile)


def test_averaged_profiles_take_the_mean_of_every_time_and_line(dim: int) -> None:
    sizes = (1024, 4096, 16384)

    def on_line(latency: float, bandwidth: float, **changes: object) -> Profile:
        times = tuple(latency + b / bandwidth for b in sizes)
        return profile_for(
            dim,
            latency_s=latency,
            bandwidth_bytes_per_s=bandwidth,
            message_bytes=sizes,
            one_way_s=times,
            **changes,
        )

    a = on_line(4e-5, 2e9, seconds_per_sample=3e-6, allreduce_s=2e-4, date="first")
    b = on_line(8e-5, 1e9, seconds_per_sample=5e-6, allreduce_s=4e-4, date="second")
    mean = average_profiles([a, b])
    assert mean.seconds_per_sample == pytest.approx(4e-6, rel=1e-12)
    assert mean.allreduce_s == pytest.approx(3e-4, rel=1e-12)
    assert mean.latency_s == pytest.approx(6e-5, rel=1e-12)
    # seconds per byte averaged: (0.5 + 1) / 2 ns a byte, not (2 + 1) / 2 GB/s
    assert mean.bandwidth_bytes_per_s == pytest.approx(1 / 0.75e-9, rel=1e-12)
    halfway = [(s + t) / 2 for s, t in zip(a.one_way_s, b.one_way_s, strict=True)]
    assert mean.one_way_s == pytest.approx(halfway)
    # the mean line is the line of the mean times: the fit finds it back
    fit = fit_link(mean.message_bytes, mean.one_way_s)
    assert fit.latency_s == pytest.approx(mean.latency_s, rel=1e-9)
    assert fit.bandwidth_bytes_per_s == pytest.approx(mean.bandwidth_bytes_per_s, rel=1e-9)
    assert mean.fitted_s() == pytest.approx(mean.one_way_s, rel=1e-12)
    assert (mean.repeats, mean.date) == (a.repeats + b.repeats, "second")
    # every measured figure is averaged: none is taken from the last profile unawares
    floats = {f.name for f in dataclasses.fields(Profile) if f.type == "float"}
    assert floats == {*SECONDS, "bandwidth_bytes_per_s"}
    # three: date and host those of the last, repeats summed over all
    c = on_line(6e-5, 1.5e9, seconds_per_sample=4e-6, allreduce_s=3e-4, date="third")
    three = average_profiles([a, b, c])
    assert (three.repeats, three.date) == (a.repeats + b.repeats + c.repeats, "third")
    assert three.seconds_per_sample == pytest.approx(4e-6, rel=1e-12)
    with pytest.raises(ValueError) as caught:
        average_profiles([a, on_line(4e-5, 2e9, processes=4, threads=a.threads + 1)])
    assert str(caught.value) == (
        "profiles measured for different runs cannot be averaged: they differ in "
        f"processes (2 and 4), threads ({a.threads} and {a.threads + 1})"
    )
    with pytest.raises(ValueError) as caught:
        average_profiles([])
    assert str(caught.value) == "no profiles to average"
