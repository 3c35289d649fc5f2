"""``nettrain calibrate``: measure this machine for a config, write the profile.

:func:`calibrate` builds the run's problem as ``nettrain run`` would (:func:`~nettrain.
experiment.build_job`), times one agent's oracle alone (:mod:`.compute`) before any
other process starts (on one thread, as the spawned processes compute; under torchrun
on the rank's own threads), then every figure with ``processes`` spawned processes (or
the ranks torchrun launched) busy at once (:mod:`.loaded`), fits the link (:mod:`.fit`)
and writes the :class:`~nettrain.engines.sim.profile.Profile`.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nettrain.calibration.compute import ComputeTimes, time_oracle
from nettrain.calibration.fit import LinkFit, fit_link
from nettrain.calibration.loaded import (
    LinkPlan,
    LinkTimes,
    launched_group,
    measure,
    measure_local,
    message_sizes,
    oracle_pass,
    say,
)
from nettrain.config import RunConfig
from nettrain.engines.base import Job
from nettrain.engines.distributed.engine import launched_rank
from nettrain.engines.sim.profile import Profile
from nettrain.errors import ConfigError
from nettrain.experiment import as_config, build_job
from nettrain.machine import usable_cores
from nettrain.version import __version__

MIN_BYTES = 1024
MAX_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured: the profile, the link's fit, the oracle's
    timings, and the file the profile was written to (None: not written)."""

    profile: Profile
    fit: LinkFit
    compute: ComputeTimes
    path: Path | None

    def residuals(self) -> list[tuple[int, float, float, float]]:
        """``(bytes, measured s, fitted s, relative residual)`` of each message size."""
        fit = self.fit
        return list(zip(fit.nbytes, fit.measured_s, fit.fitted_s(), fit.residuals(), strict=True))

    def summary(self) -> list[str]:
        """A few lines: the figures, how well the link's model fits, and how the
        all-reduce compares with the ring all-reduce the fitted link predicts."""
        p, c = self.profile, self.compute
        ring = ring_allreduce_s(
            p.processes, p.d * torch.finfo(getattr(torch, p.dtype)).bits // 8, p
        )
        worst = max(abs(r) for r in self.fit.residuals())
        us, ms, gb = 1e6, 1e3, 1e9
        bandwidth = p.bandwidth_bytes_per_s
        busy = p.seconds_per_sample * c.samples_per_call
        lines = [
            f"compute, {p.processes} processes at once: {p.seconds_per_sample * us:.3g} us per "
            f"sample ({busy * ms:.3g} ms per pass of {c.samples_per_call} samples; alone "
            f"{c.seconds_per_call * ms:.3g} ms; model={p.model}, d={p.d:,d}, {p.threads} "
            "threads)",
            f"link: latency {p.latency_s * us:.3g} us, bandwidth {bandwidth / gb:.3g} GB/s "
            f"({bandwidth * 8 / gb:.3g} Gbit/s); largest relative residual {worst:.1%} over "
            f"{len(p.message_bytes)} sizes",
            f"all-reduce of {p.d:,d} {p.dtype} over {p.processes} processes: "
            f"{p.allreduce_s * ms:.3g} ms (a ring over the fitted link: {ring * ms:.3g} ms)",
            f"rpc exchange of {p.d:,d} {p.dtype} each way: {p.rpc_exchange_s * ms:.3g} ms",
            f"the engine's round besides the pass: {p.round_overhead_s * ms:.3g} ms",
            f"the engine's asynchronous event besides the pass and the exchange: "
            f"{p.event_overhead_s * ms:.3g} ms",
            f"the engine's own cost of a neighbour message beyond the link: "
            f"{p.message_overhead_s * ms:.3g} ms",
        ]
        if self.path is not None:
            lines.append(f"profile: {self.path} (use it with cost_model={self.path})")
        return lines


def ring_allreduce_s(processes: int, nbytes: int, link: Profile) -> float:
    """The time of a ring all-reduce of ``nbytes`` over ``processes`` on ``link``:
    ``2 (P - 1)`` steps, each one message of ``nbytes / P``."""
    steps = 2 * (processes - 1)
    return steps * (link.latency_s + nbytes / processes / link.bandwidth_bytes_per_s)


def time_compute(
    cfg: RunConfig,
    job: Job,
    repeats: int,
    warmup: int,
    progress: bool,
    log: Callable[[str], None],
) -> ComputeTimes:
    """One agent's oracle of ``job`` timed (:func:`.compute.time_oracle`)."""
    if progress:
        threads = torch.get_num_threads()
        log(
            f"timing the oracle: model={cfg.model}, batch {job.batch_size}, "
            f"d={job.problem.dim:,d}, {threads} thread{'s' * (threads > 1)}"
        )
    oracle = job.problem.oracle([job.shards[0]], [0], batch_size=job.batch_size, seed=cfg.seed)
    return time_oracle(oracle, job.x0[None], repeats, warmup)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one inside the block, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def link_plan(
    cfg: RunConfig, job: Job, sizes: tuple[int, ...], repeats: int, warmup: int, progress: bool
) -> LinkPlan:
    """What the processes measure: ``sizes``, and an all-reduce of the model's ``d``
    floats of the run's dtype; each call bounded by ``timeout_s``."""
    return LinkPlan(
        sizes, repeats, warmup, job.problem.dim, cfg.dtype, cfg.timeout_s, progress, cfg
    )


def calibrate(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    out: str | Path | None = "profile.toml",
    *,
    processes: int = 2,
    min_bytes: int = MIN_BYTES,
    max_bytes: int = MAX_BYTES,
    repeats: int = 10,
    warmup: int = 2,
    progress: bool = True,
    log: Callable[[str], None] = say,
) -> Calibration | None:
    """Measure this machine (the module says what and how) for ``config``'s model and
    batch; write the profile to ``out`` (None: do not write) and return it.

    ``processes`` processes, as many as the run will have, are spawned and measured
    busy at once (under torchrun: the launched ranks; only rank 0 gets the result, the
    others None). Messages from ``min_bytes`` to
    ``max_bytes`` bytes; every figure is the median of ``repeats`` timings after
    ``warmup`` untimed ones. Progress goes to ``log`` (stderr) when ``progress``.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    cfg = as_config(config)
    if cfg.cost_model:  # a profile to replace: the run's keys without it
        cfg = cfg.replace(cost_model="")
    sizes = message_sizes(min_bytes, max_bytes)
    rank = launched_rank()
    here = processes if rank is None else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = usable_cores()
    if progress and rank in (None, 0) and here > cores:
        log(
            f"{here} processes on {cores} core{'s' * (cores > 1)} here: they share cores, so the "
            "profile predicts runs laid out alike; there a slow agent's extra time partly "
            "hides in the others' wait for a core, which the clock (one process a core) "
            "charges whole"
        )
    if rank is None:  # the oracle first, then the processes: nothing shares its cores
        job = build_job(cfg)
        with one_thread():  # as the spawned processes and the launcher's ranks compute
            compute = time_compute(cfg, job, repeats, warmup, progress, log)
        plan = link_plan(cfg, job, sizes, repeats, warmup, progress)
        if progress:
            log(f"{processes} processes meet at {cfg.master_addr}:{cfg.master_port}")
        times: LinkTimes | None = measure_local(plan, processes, cfg.master_addr, cfg.master_port)
    else:  # every rank builds its job (for d), then waits while rank 0 times the oracle
        world = int(os.environ.get("WORLD_SIZE", "1"))
        with launched_group(rank, world, cfg.timeout_s) as store:
            job = build_job(cfg)
            dist.barrier()
            compute = time_compute(cfg, job, repeats, warmup, progress, log) if rank == 0 else None
            # the others' passes start only now: run during it, they made the pass
            # "alone" of 8 processes on 2 cores 0.7 to 0.9 ms instead of 0.42 to 0.48
            dist.barrier()
            plan = link_plan(cfg, job, sizes, repeats, warmup, progress and rank == 0)
            times = measure(rank, world, plan, oracle_pass(job, rank, cfg.seed), store)
    if times is None or compute is None:
        return None  # another rank under torchrun: rank 0 reports
    fit = fit_link(times.message_bytes, times.one_way_s)
    # a neighbour message of d values over the fitted link (the engine's adds its own work)
    message_s = fit.seconds(job.problem.dim * getattr(torch, cfg.dtype).itemsize)
    profile = Profile(
        seconds_per_sample=times.compute_s / compute.samples_per_call,
        seconds_per_sample_alone=compute.seconds_per_sample,
        latency_s=fit.latency_s,
        bandwidth_bytes_per_s=fit.bandwidth_bytes_per_s,
        allreduce_s=times.allreduce_s,
        rpc_exchange_s=times.rpc_exchange_s,
        round_overhead_s=times.round_overhead_s,
        event_overhead_s=times.event_overhead_s,
        message_overhead_s=max(times.engine_message_s - message_s, 0.0),
        processes=times.processes,
        model=cfg.model,
        hidden=tuple(cfg.hidden),
        dataset=cfg.dataset,
        dtype=cfg.dtype,
        device=cfg.device,
        batch=job.batch_size,
        d=job.problem.dim,
        message_bytes=times.message_bytes,
        one_way_s=times.one_way_s,
        repeats=repeats,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        torch_version=torch.__version__,
        nettrain_version=__version__,
        threads=compute.threads,
    )
    path = profile.write(out) if out is not None else None
    return Calibration(profile, fit, compute, path)


__all__ = ["Calibration", "calibrate", "ring_allreduce_s"]
