"""What the processes measure, all of them at once, as the run's processes will run.

A profile is made for a run of ``P`` processes on the same machines (``--processes``,
or the ranks torchrun launched): where they share cores, each one computes and
communicates slower than it would alone, and that is what the run will see. So every
figure is measured with the ``P`` processes busy together, in rounds shaped like the
engine's: each process computes its oracle's pass (``step``: one mini-batch's forward
and backward pass of the run's model), then communicates; the figure is a round's
seconds less the seconds of a round of the pass alone.

* Compute: rounds of the pass alone; the median over the processes of their seconds a
  round (the processes do not wait for each other). The figure is the median of every
  block of the pass measured during the calibration (one in each pair below).
* The engine's round: a distributed run of local SGD that never averages (one agent a
  process, nothing to communicate; :func:`engine_round`): its training seconds a round
  less the pass's are what the engine's round costs besides the pass and its messages
  (the update, the work counted, the notes gathered every 32 rounds). Paired
  (:func:`engine_rounds`): the median over :data:`PAIRS` runs of each one's seconds less
  a block of the pass measured just before it.
* The engine's neighbour message: right after each of those runs, one of D-PSGD on the
  ring (:func:`engine_mix_round`); its round less the local SGD run's, over the
  neighbours' count, is what a neighbour message of ``d`` values costs in the engine's
  round (the link's time and the engine's own: the rows selected and sent, the requests
  posted and counted, the received rows combined). The median over the pairs.
* Link, for each message size ``b``: an exchange with the ring neighbours
  (``dist.batch_isend_irecv``: ``b`` bytes to and from each of ranks ``r - 1`` and
  ``r + 1``; with ``P = 2`` the one other rank) posted before the pass and waited for
  after it, as D-PSGD's round does. One message's one-way time is the round's extra
  seconds over the neighbours' count (2, or 1 with ``P = 2``). Rounds of neighbours wait
  for each other, so the figure is the slowest process's.
* All-reduce: the pass, then a sum of ``numel`` elements of ``dtype`` over every rank;
  paired as the engine's round is.
* Exchange over rpc (:mod:`~nettrain.engines.distributed.rpc`, as the asynchronous
  engine's gossip and parameter servers use it): the pass, then one ``rpc_sync``
  carrying ``numel`` elements to a ring neighbour drawn at random, answered with as
  many (the peer's model, averaged with the one it got under a lock), while this
  process answers the others' calls on its rpc threads.
* The engine's event: a distributed run of SwarmSGD (one local step, non-blocking, no
  compression, a ring; one agent a process; :func:`engine_event`): its training seconds
  a round (an event of every agent) less the pass and the rpc exchange are what the
  asynchronous loop costs besides them (the peer's lock and checks, the counts, the
  event's bookkeeping).

Each pattern runs ``warmup`` (at least 10) untimed rounds, then as many timed ones as fill
``budget_s`` (rank 0 decides from one round, so that neighbours make the same count),
at least ``repeats``; a process's figure is its mean round. With more processes than
cores one block's figures move by 10 to 20% from block to block, and drift over a
calibration as the machine's other work comes and goes (8 processes on 2 cores: the
all-reduce's from 13 to 18 ms in three calibrations a minute apart); the two figures
every synchronous round adds to the pass, the engine's own round and the all-reduce,
are therefore paired with the pass and taken as medians.

Where: :func:`measure_local` spawns ``P`` processes on this machine, which meet at
``master_addr:master_port`` (loopback by default; their sockets stay on it, see
:mod:`nettrain.engines.distributed.store`) and build the run's problem. Under
``torchrun`` every launched process joins :func:`launched_group` and calls
:func:`measure`, so across machines the link is the one between neighbouring ranks.
"""

from __future__ import annotations

import math
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nettrain.engines.distributed.launch import rank_variables
from nettrain.engines.distributed.store import hosts_store, keep_on_loopback, open_store
from nettrain.errors import ConfigError, PeerError

POLL_S = 0.05  # how often the spawning process looks at its processes
BUDGET_S = 0.5  # seconds of timed rounds per figure
WARMUP_ROUNDS = 10  # untimed rounds before each figure's, at least
MOST_ROUNDS = 10_000
PAIRS = 5  # blocks of a paired figure (the engine's round, the all-reduce)


@dataclass(frozen=True)
class LinkPlan:
    """What to measure: the message sizes (bytes), at least ``repeats`` timed rounds per
    figure (as many as fill ``budget_s``) after ``warmup`` untimed ones, and the
    all-reduce's and rpc exchange's ``numel`` elements of ``dtype``; ``timeout_s``
    bounds each call; ``config``: the run's keys, from which spawned processes build
    the problem whose pass they time."""

    message_bytes: tuple[int, ...]
    repeats: int
    warmup: int
    allreduce_numel: int
    allreduce_dtype: str
    timeout_s: float
    progress: bool = True  # rank 0 prints each size's time on stderr
    config: Any = None  # a RunConfig (spawned processes build its job)
    budget_s: float = BUDGET_S


@dataclass(frozen=True)
class LinkTimes:
    """The figures, each measured with ``processes`` processes at once: one pass's
    seconds, one message's one-way seconds of each size, an all-reduce's seconds, an
    rpc exchange's seconds, the engine's synchronous round's seconds besides the pass,
    its asynchronous event's besides the pass and the rpc exchange, and what a
    neighbour message of ``d`` values adds to its synchronous round (0 for one process)."""

    message_bytes: tuple[int, ...]
    one_way_s: tuple[float, ...]
    allreduce_s: float
    processes: int
    compute_s: float
    rpc_exchange_s: float
    round_overhead_s: float
    event_overhead_s: float
    engine_message_s: float


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


def round_seconds(
    round_: Callable[[], object], plan: LinkPlan, reduce: Callable[[list[float]], float]
) -> float:
    """Every rank: ``round_`` timed as the module says; ``reduce`` of the ranks' mean
    rounds (the median for rounds that do not wait for each other, else the max)."""
    for _ in range(max(plan.warmup, WARMUP_ROUNDS)):
        round_()
    dist.barrier()
    begin = time.perf_counter()
    round_()
    rounds = agreed_rounds(time.perf_counter() - begin, plan.budget_s, plan.repeats)
    dist.barrier()
    begin = time.perf_counter()
    for _ in range(rounds):
        round_()
    mine = torch.tensor([(time.perf_counter() - begin) / rounds], dtype=torch.float64)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return reduce([float(t) for t in every])


def agreed_rounds(seconds: float, budget_s: float, least: int) -> int:
    """Every rank: as many rounds of ``seconds`` each as fill ``budget_s`` on rank 0
    (broadcast, so that neighbours make as many), at least ``least``, at most
    :data:`MOST_ROUNDS`."""
    count = torch.tensor([budget_s / max(seconds, 1e-9)])
    dist.broadcast(count, 0)
    return min(MOST_ROUNDS, max(least, math.ceil(float(count))))


def paired(pattern: Callable[[], float], alone: Callable[[], float], passes: list[float]) -> float:
    """What ``pattern`` (seconds a round) costs besides the pass: the median over
    :data:`PAIRS` blocks of ``pattern()`` less a block of the pass, ``alone()``, measured
    just before it. Each pass's figure is appended to ``passes``. Both blocks of a pair
    see the machine as it is that second, so their difference holds while its speed
    drifts, and the median leaves out a pair that a burst of other work hit."""
    extra = []
    for _ in range(PAIRS):
        passes.append(alone())
        extra.append(pattern() - passes[-1])
    return statistics.median(extra)


def neighbours(rank: int, world: int) -> list[int]:
    """The ring neighbours of ``rank``: ``r - 1`` and ``r + 1``, or the other of 2 ranks."""
    return [1 - rank] if world == 2 else [(rank - 1) % world, (rank + 1) % world]


def ring_topology(world: int) -> str:
    """The ``topology`` of an engine run whose agents have :func:`neighbours`' peers: the
    ring, or the complete graph of 2 agents (a ring needs 3)."""
    return "ring" if world >= 3 else "complete"


def exchange_round(
    rank: int, world: int, size: int, step: Callable[[], object]
) -> Callable[[], None]:
    """A round of a neighbour exchange of ``size`` bytes with each ring neighbour, posted
    before the pass and waited for after it, as D-PSGD's round overlaps them."""
    peers = neighbours(rank, world)
    out = torch.zeros(size, dtype=torch.uint8)
    into = [torch.zeros(size, dtype=torch.uint8) for _ in peers]

    def call() -> None:
        ops = [dist.P2POp(dist.isend, out, p) for p in peers]
        ops += [dist.P2POp(dist.irecv, buf, p) for buf, p in zip(into, peers, strict=True)]
        works = dist.batch_isend_irecv(ops)
        step()
        for work in works:
            work.wait()

    return call


def measure(
    rank: int, world: int, plan: LinkPlan, step: Callable[[], object], store: dist.Store
) -> LinkTimes | None:
    """In a joined group of ``world`` ranks, every figure (the module says how); rank 0
    gets them, the others None. ``step``: one pass of the oracle; ``store``: where the
    rpc exchange's session meets."""
    talk = plan.progress and rank == 0
    if talk:
        say(f"{world} processes at once, rounds of a pass then the pattern (mean round)")
    passes: list[float] = []  # every block of the pass alone, in order

    def alone() -> float:
        return round_seconds(step, plan, statistics.median)

    peers = len(neighbours(rank, world))
    overhead, mix = engine_rounds(plan, world, alone, passes)
    overhead, message = max(overhead, 0.0), max(mix, 0.0) / peers
    compute = statistics.median(passes)
    if talk:
        say(f"  the pass alone: {compute * 1e3:.3g} ms a round ({len(passes)} blocks)")
        say(f"  the engine's round besides the pass: {overhead * 1e3:.3g} ms")
        say(f"  the engine's D-PSGD round besides that: {message * 1e3:.3g} ms a message")
    one_way = []
    for size in plan.message_bytes:
        total = round_seconds(exchange_round(rank, world, size, step), plan, max)
        one_way.append(max(total - compute, 1e-7) / peers)
        if talk:
            say(f"  {size:>10,d} bytes: {one_way[-1] * 1e6:12.1f} us one way")
    x = torch.zeros(plan.allreduce_numel, dtype=getattr(torch, plan.allreduce_dtype))

    def reduced() -> float:
        return round_seconds(lambda: (step(), dist.all_reduce(x)), plan, max)

    allreduce = max(paired(reduced, alone, passes), 1e-7)
    compute = statistics.median(passes)
    if talk:
        what = f"{plan.allreduce_numel:,d} {plan.allreduce_dtype}"
        say(f"  all-reduce of {what}: {allreduce * 1e3:.3g} ms")
        say(f"  the pass alone, all {len(passes)} blocks: {compute * 1e3:.3g} ms a round")
    rpc_exchange = max(rpc_seconds(rank, world, plan, step, store, x) - compute, 1e-7)
    if talk:
        say(f"  rpc exchange of as many: {rpc_exchange * 1e3:.3g} ms")
    event = engine_event(plan, world, compute + rpc_exchange)
    event_overhead = max(event - compute - rpc_exchange, 0.0)
    if talk:
        say(
            f"  the engine's event besides the pass and the exchange: {event_overhead * 1e3:.3g} ms"
        )
    if rank != 0:
        return None
    return LinkTimes(
        plan.message_bytes,
        tuple(one_way),
        allreduce,
        world,
        compute,
        rpc_exchange,
        overhead,
        event_overhead,
        message,
    )


def engine_rounds(
    plan: LinkPlan, world: int, alone: Callable[[], float], passes: list[float]
) -> tuple[float, float]:
    """Every rank: what the engine's synchronous round costs besides the pass, and what
    its neighbour exchange adds to it, each the median over :data:`PAIRS` pairs: a block
    of the pass (``alone()``, appended to ``passes``), then a run of local SGD
    (:func:`engine_round`) less it, then a run of D-PSGD (:func:`engine_mix_round`) less
    the local SGD run (0 with one process: no neighbours)."""
    overhead, mix = [], []
    for _ in range(PAIRS):
        passes.append(alone())
        local = engine_round(plan, world, passes[-1])
        overhead.append(local - passes[-1])
        mix.append(engine_mix_round(plan, world, local) - local if world > 1 else 0.0)
    return statistics.median(overhead), statistics.median(mix)


def engine_round(plan: LinkPlan, world: int, pass_s: float) -> float:
    """Every rank: the seconds a round of the distributed engine takes on these ``world``
    processes, one agent each, with nothing to communicate: local SGD whose averaging
    never comes (:func:`engine_seconds`)."""
    rounds = agreed_rounds(pass_s, plan.budget_s, 64)
    keys = {"algorithm": "local_sgd", "tau": rounds + 1, "topology": "complete"}
    return engine_seconds(plan, world, rounds, keys)


def engine_mix_round(plan: LinkPlan, world: int, round_s: float) -> float:
    """Every rank: the seconds a round of D-PSGD takes in the distributed engine on these
    ``world`` processes, one agent each, on a ring (two processes: each other), as many
    rounds as fill the budget at ``round_s`` (a guess of one's seconds), at least 64."""
    rounds = agreed_rounds(round_s, plan.budget_s, 64)
    keys = {"algorithm": "dpsgd", "topology": ring_topology(world)}
    return engine_seconds(plan, world, rounds, keys)


EVENT_WARMUP = 32  # rounds of the untimed SwarmSGD run before the engine's event is timed


def engine_event(plan: LinkPlan, world: int, event_s: float) -> float:
    """Every rank: the seconds a round of SwarmSGD takes in the distributed engine on
    these ``world`` processes, one agent each (:func:`engine_seconds`): one local step,
    non-blocking, no compression, on a ring (two processes: each other), so a round is
    one event of every agent. As many rounds as fill the budget at ``event_s`` (a guess
    of one's seconds), at least 300, after an untimed run of :data:`EVENT_WARMUP` rounds
    (a run's first exchanges open the rpc connections: tens of milliseconds, a
    millisecond a round in a short run)."""
    keys = {
        "algorithm": "swarm",
        "local_steps": 1,
        "blocking": False,
        "quantizer": "none",
        "topology": ring_topology(world),  # the ring's neighbours, as rpc_seconds'
    }
    engine_seconds(plan, world, EVENT_WARMUP, keys)  # the rpc session's first connections
    return engine_seconds(plan, world, agreed_rounds(event_s, plan.budget_s, 300), keys)


def engine_seconds(plan: LinkPlan, world: int, rounds: int, keys: dict[str, Any]) -> float:
    """Every rank: rank 0's training seconds a round (its last record's) of a
    distributed run of ``rounds`` rounds on these ``world`` processes, one agent each,
    on the run's problem with ``keys`` (the algorithm's), sent to every rank."""
    from nettrain.config import SECTION_OF, load_config
    from nettrain.experiment import run

    cfg = plan.config
    values = {k: getattr(cfg, k) for k, s in SECTION_OF.items() if s in ("data", "problem")}
    values |= {"seed": cfg.seed, "device": cfg.device, "dtype": cfg.dtype, "agents": world}
    values |= keys | {"rounds": rounds, "eval_every": rounds, "progress": False}
    values |= {"tensorboard": False, "engine": "distributed", "timeout_s": cfg.timeout_s}
    with tempfile.TemporaryDirectory() as folder:
        records = run(load_config(values), out=Path(folder) / "run").records
    seconds = torch.tensor([records[-1]["train_time_s"] / rounds if records else 0.0])
    dist.broadcast(seconds, 0)
    return float(seconds)


class Echo:
    """A peer that answers an exchange as a gossip peer does: under its lock, its
    published model as the reply, then the average of it and the one it got."""

    def __init__(self, numel: int, dtype: torch.dtype) -> None:
        self.model = torch.zeros(numel, dtype=dtype)
        self.lock = threading.Lock()

    def exchange(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            reply = self.model.clone()
            self.model.add_(x).mul_(0.5)
        return reply


def rpc_seconds(
    rank: int,
    world: int,
    plan: LinkPlan,
    step: Callable[[], object],
    store: dist.Store,
    x: torch.Tensor,
) -> float:
    """The slowest rank's mean round of the pass then one rpc exchange of ``x`` with a
    ring neighbour drawn at random (every rank hosts an :class:`Echo`)."""
    from nettrain.engines.distributed.rpc import rpc_session

    draw, peers = random.Random(rank), neighbours(rank, world)
    with rpc_session(rank, world, store=store, timeout_s=plan.timeout_s) as session:
        session.host("echo", Echo(len(x), x.dtype))
        dist.barrier()  # every echo hosted
        remotes = [session.remote(p, "echo") for p in peers]

        def round_() -> None:
            step()
            draw.choice(remotes).rpc_sync("exchange", x)

        seconds = round_seconds(round_, plan, max)
    return seconds


@contextmanager
def process_group(
    rank: int, world: int, addr: str, port: int, timeout_s: float, host: bool
) -> Iterator[dist.Store]:
    """Join a gloo group of ``world`` ranks meeting at ``addr:port`` (whose store this
    rank hosts if ``host``), sockets on loopback for a loopback ``addr``; the store (for
    the rpc exchange); leave it with a barrier when the body finished cleanly."""
    keep_on_loopback(addr)
    store = dist.PrefixStore("nettrain-calibrate", open_store(addr, port, world, host, timeout_s))
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        yield store
        dist.barrier()  # without it gloo may abort a peer still in its last call
    finally:
        dist.destroy_process_group()


@contextmanager
def launched_group(rank: int, world: int, timeout_s: float) -> Iterator[dist.Store]:
    """Under torchrun (``MASTER_ADDR``, ``MASTER_PORT`` set), join the group of the
    ``world`` launched ranks as ``rank`` (see :func:`process_group`)."""
    if world < 2:
        raise ConfigError(
            f"WORLD_SIZE={world}: the link is measured between two processes; launch 2 or more"
        )
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    with process_group(rank, world, addr, port, timeout_s, hosts_store(rank)) as store:
        yield store


def oracle_pass(job: Any, rank: int, seed: int) -> Callable[[], object]:
    """One pass of the oracle of agent ``rank`` (mod the job's agents), at the job's
    initial parameters."""
    agent = rank % job.n_agents
    oracle = job.problem.oracle([job.shards[agent]], [agent], batch_size=job.batch_size, seed=seed)
    x = job.x0[None].clone()
    return lambda: oracle.grad(x)


def _worker(rank: int, world: int, addr: str, port: int, plan: LinkPlan, results: Any) -> None:
    """A spawned process of :func:`measure_local`: its part, then ``(rank, "ok", times)``
    or ``(rank, error class name, message)`` on ``results``."""
    torch.set_num_threads(1)  # the processes share this machine's cores
    # the engine's runs read them; its rpc store listens on MASTER_PORT + 1
    os.environ.update(rank_variables(rank, world) | {"MASTER_ADDR": addr, "MASTER_PORT": str(port)})
    try:
        from nettrain.experiment import build_job

        step = oracle_pass(build_job(plan.config), rank, plan.config.seed)
        with process_group(rank, world, addr, port, plan.timeout_s, host=rank == 0) as store:
            times = measure(rank, world, plan, step, store)
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
