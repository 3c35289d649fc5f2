"""The link measured between processes over torch.distributed (gloo).

Two figures: the one-way time of messages of growing size, by a ping-pong between
ranks 0 and 1, and the time of an all-reduce over every rank.

* Ping-pong of ``b`` bytes: rank 0 sends a ``uint8`` tensor of ``b`` bytes to rank 1
  (``dist.send``), which sends it back; the one-way time is half the round trip, timed
  on rank 0 with ``time.perf_counter``. ``warmup`` round trips are not timed, then
  ``repeats`` are, and the median is kept.
* All-reduce: a sum of ``numel`` elements of ``dtype`` over every rank. Every rank
  times each call from a barrier on; the figure is the largest of the ranks' medians
  (the call is over when the slowest rank has its result).

Where: :func:`measure_local` spawns ``P`` processes on this machine, which meet at
``master_addr:master_port`` (loopback by default; their sockets stay on it, see
:mod:`nettrain.engines.distributed.store`). Under ``torchrun`` every launched process
joins :func:`launched_group` and calls :func:`measure`; ranks 0 and 1 ping-pong, so
across machines the link measured is the one between the machines of ranks 0 and 1.
"""

from __future__ import annotations

import os
import queue
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nettrain.engines.distributed.store import hosts_store, keep_on_loopback, open_store
from nettrain.errors import ConfigError, PeerError

POLL_S = 0.05  # how often the spawning process looks at its processes


@dataclass(frozen=True)
class LinkPlan:
    """What to measure: the message sizes (bytes), timed round trips per size after
    ``warmup`` untimed ones, and the all-reduce's ``numel`` elements of ``dtype``
    (timed ``repeats`` times after ``warmup``); ``timeout_s`` bounds each call."""

    message_bytes: tuple[int, ...]
    repeats: int
    warmup: int
    allreduce_numel: int
    allreduce_dtype: str
    timeout_s: float
    progress: bool = True  # rank 0 prints each size's time on stderr


@dataclass(frozen=True)
class LinkTimes:
    """The measured medians: one-way seconds of each message size, and the all-reduce's
    seconds over ``processes`` processes."""

    message_bytes: tuple[int, ...]
    one_way_s: tuple[float, ...]
    allreduce_s: float
    processes: int


def message_sizes(min_bytes: int, max_bytes: int) -> tuple[int, ...]:
    """``min_bytes, 2 min_bytes, 4 min_bytes, ...`` below ``max_bytes``, then ``max_bytes``."""
    if min_bytes < 1 or max_bytes <= min_bytes:
        raise ConfigError(
            f"message sizes from {min_bytes} to {max_bytes} bytes: the fit needs at least two "
            "sizes, so give --min-bytes >= 1 and --max-bytes larger than it"
        )
    sizes, size = [], min_bytes
    while size < max_bytes:
        sizes.append(size)
        size *= 2
    return (*sizes, max_bytes)


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"calibrate: {text}", file=sys.stderr, flush=True)


def ping_pong(rank: int, plan: LinkPlan) -> list[float]:
    """Ranks 0 and 1: the median one-way seconds of each message size (rank 0's
    timings; rank 1 only answers and gets an empty list)."""
    out = []
    for size in plan.message_bytes:
        buf = torch.zeros(size, dtype=torch.uint8)
        times = []
        for _ in range(plan.warmup + plan.repeats):
            if rank == 0:
                start = time.perf_counter()
                dist.send(buf, 1)
                dist.recv(buf, 1)
                times.append((time.perf_counter() - start) / 2)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
        if rank == 0:
            out.append(statistics.median(times[plan.warmup :]))
            if plan.progress:
                say(f"  {size:>10,d} bytes: {out[-1] * 1e6:12.1f} us one way")
    return out


def all_reduce_seconds(plan: LinkPlan) -> float:
    """Every rank: the largest of the ranks' median all-reduce times (the module says how)."""
    x = torch.zeros(plan.allreduce_numel, dtype=getattr(torch, plan.allreduce_dtype))
    times = []
    for _ in range(plan.warmup + plan.repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - start)
    slowest = torch.tensor([statistics.median(times[plan.warmup :])], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest)


def measure(rank: int, world: int, plan: LinkPlan) -> LinkTimes | None:
    """In a joined group of ``world`` ranks: the ping-pong, then the all-reduce; rank 0
    gets the times, the others None."""
    if plan.progress and rank == 0:
        say(f"ping-pong between ranks 0 and 1, {plan.repeats} round trips per size (median)")
    dist.barrier()
    one_way = ping_pong(rank, plan) if rank < 2 else []
    if plan.progress and rank == 0:
        say(
            f"all-reduce of {plan.allreduce_numel:,d} {plan.allreduce_dtype} over {world} processes"
        )
    seconds = all_reduce_seconds(plan)
    if rank != 0:
        return None
    return LinkTimes(plan.message_bytes, tuple(one_way), seconds, world)


@contextmanager
def process_group(
    rank: int, world: int, addr: str, port: int, timeout_s: float, host: bool
) -> Iterator[None]:
    """Join a gloo group of ``world`` ranks meeting at ``addr:port`` (whose store this
    rank hosts if ``host``), sockets on loopback for a loopback ``addr``; leave it with a
    barrier when the body finished cleanly."""
    keep_on_loopback(addr)
    store = dist.PrefixStore("nettrain-calibrate", open_store(addr, port, world, host, timeout_s))
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        yield
        dist.barrier()  # without it gloo may abort a peer still in its last call
    finally:
        dist.destroy_process_group()


@contextmanager
def launched_group(rank: int, world: int, timeout_s: float) -> Iterator[None]:
    """Under torchrun (``MASTER_ADDR``, ``MASTER_PORT`` set), join the group of the
    ``world`` launched ranks as ``rank`` (see :func:`process_group`)."""
    if world < 2:
        raise ConfigError(
            f"WORLD_SIZE={world}: the link is measured between two processes; launch 2 or more"
        )
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    with process_group(rank, world, addr, port, timeout_s, hosts_store(rank)):
        yield


def _worker(rank: int, world: int, addr: str, port: int, plan: LinkPlan, results: Any) -> None:
    """A spawned process of :func:`measure_local`: its part, then ``(rank, "ok", times)``
    or ``(rank, error class name, message)`` on ``results``."""
    torch.set_num_threads(1)  # the processes share this machine's cores
    try:
        with process_group(rank, world, addr, port, plan.timeout_s, host=rank == 0):
            times = measure(rank, world, plan)
        results.put((rank, "ok", times))
    except Exception as err:  # reported to the spawning process, which raises it
        results.put((rank, type(err).__name__, str(err)))


def measure_local(plan: LinkPlan, processes: int, addr: str, port: int) -> LinkTimes:
    """Spawn ``processes`` processes on this machine meeting at ``addr:port``; their
    times. A process that fails or dies is a PeerError (a ConfigError stays one)."""
    if processes < 2:
        raise ConfigError(f"--processes {processes}: the link is measured between 2 or more")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, processes, addr, port, plan, results),
            name=f"nettrain-calibrate-{rank}",
            daemon=True,
        )
        for rank in range(processes)
    ]
    for p in procs:
        p.start()
    # generous: every call of the measurement is bounded by timeout_s on its own
    deadline = time.perf_counter() + plan.timeout_s * (len(plan.message_bytes) + 4)
    got: dict[int, LinkTimes | None] = {}
    try:
        while len(got) < processes:
            try:
                rank, kind, value = results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p.name for r, p in enumerate(procs) if r not in got and p.exitcode]
                if dead:
                    raise PeerError(f"calibration process(es) {', '.join(dead)} died") from None
                if time.perf_counter() > deadline:
                    raise PeerError(
                        "the calibration processes did not finish in time; the machine may be "
                        "overloaded (timeout_s= gives each call longer)"
                    ) from None
                continue
            if kind != "ok":
                error = ConfigError if kind == "ConfigError" else PeerError
                raise error(f"calibration process {rank} failed ({kind}): {value}")
            got[rank] = value
        for p in procs:
            p.join(plan.timeout_s)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    times = got[0]
    assert times is not None
    return times
