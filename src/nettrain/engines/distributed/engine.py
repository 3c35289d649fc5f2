"""The ``distributed`` engine: one agent per process over torch.distributed.

Launched by ``torchrun`` (``nettrain run engine=distributed nproc=N ...`` starts it
for you on one machine); rank ``r`` is agent ``r`` and holds only its own shard. Each
round every rank steps the same algorithm code as the simulator on its stack
``x: (1, d)``, communicating through a :class:`DistCommunicator`. Each rank notes
its rounds' work (samples, messages, bytes), loss and wall time; one small
``all_gather`` every ``SETTLE_EVERY`` rounds (and at each evaluation) lets every rank
replay the same virtual clock as the simulator
(:class:`~nettrain.engines.sim.clock.CostModel`) and stop together on divergence,
without a second collective in every round.
Every ``eval_every`` rounds the states are gathered and rank 0 evaluates exactly what
the simulator evaluates and writes the record; the others keep no run folder.

Same config and seed as ``engine=sim``: same mini-batches, same mixing weights, so the
final parameters agree up to floating-point summation order (the test suite checks
``1e-5``), and the counted messages and bytes are equal.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from nettrain.algorithms.base import AsyncAlgorithm, GossipAlgorithm
from nettrain.algorithms.surrogates import block_slices
from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import (
    Job,
    RunResult,
    centre_fields,
    check_finite,
    staleness_fields,
    status_line,
    traffic_fields,
)
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.engines.distributed.comm import DistCommunicator, PeerError, guarded
from nettrain.engines.distributed.gossip import Peer
from nettrain.engines.distributed.rpc import RpcSession, rpc_session
from nettrain.engines.draws import Draws
from nettrain.engines.sim.clock import VirtualClock
from nettrain.errors import ConfigError, DivergenceError
from nettrain.problem.oracle import agent_seed
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder

BACKENDS = ("auto", "gloo", "nccl")
# Rounds whose work counters are gathered together: one small all-gather per 32 rounds
# (or per evaluation) instead of a second collective every round. Divergence is then
# seen up to 32 rounds late, by every rank at the same round.
SETTLE_EVERY = 32
LAUNCH_HINT = (
    "launch it with `nettrain run engine=distributed nproc=N ...` (which starts torchrun) "
    "or `torchrun --nproc-per-node N -m nettrain run engine=distributed ...`"
)


def launched_rank() -> int | None:
    """This process's rank under torchrun (``RANK``), or None outside a launcher."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None else None


class DistributedEngine:
    """Runs the agent ``RANK`` of a :class:`Job` in this process.

    ``backend``: ``gloo`` (CPU tensors), ``nccl`` (CUDA tensors, one GPU per rank), or
    ``auto`` (``nccl`` when the problem lives on CUDA, else ``gloo``). ``timeout_s``
    bounds every collective: a dead peer turns into an error within that time instead
    of a hang. ``master_addr``/``master_port`` are used only where the launcher did not
    set ``MASTER_ADDR``/``MASTER_PORT``.
    """

    name = "distributed"

    def __init__(
        self,
        backend: str = "auto",
        timeout_s: float = 60.0,
        master_addr: str = "127.0.0.1",
        master_port: int = 29512,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is not allowed; choose one of auto, gloo, nccl")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        self.backend = backend
        self.timeout_s = timeout_s
        self.master_addr = master_addr
        self.master_port = master_port

    @classmethod
    def from_config(cls, cfg: Any) -> DistributedEngine:
        """The engine for a :class:`~nettrain.config.RunConfig`.

        Under torchrun with ``device=cuda``, selects GPU ``LOCAL_RANK`` before the
        problem is built, so that each rank's data lands on its own device.
        """
        if cfg.device == "cuda" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        return cls(cfg.backend, cfg.timeout_s, cfg.master_addr, cfg.master_port)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0, or no launcher)."""
        return (launched_rank() or 0) == 0

    def _backend(self, device: torch.device) -> str:
        backend = self.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError("backend=nccl sends CUDA tensors; use device=cuda or backend=gloo")
        if backend == "gloo" and device.type != "cpu":
            raise ConfigError("backend=gloo runs on CPU tensors; use device=cpu or backend=nccl")
        return backend

    @contextmanager
    def _process_group(
        self, n: int, device: torch.device, servers: int = 0
    ) -> Iterator[tuple[int, dist.Store | None]]:
        """Join (or reuse) the default group of ``n`` agents and ``servers`` server ranks;
        yield this rank and the rendezvous store (None when the caller owns the group)."""
        rank = launched_rank()
        if rank is None:
            raise ConfigError(f"engine=distributed needs a launcher (no RANK set): {LAUNCH_HINT}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != n + servers:
            extra = f" + servers={servers}" if servers else ""
            raise ConfigError(
                f"engine=distributed runs one process per agent (and per parameter server), "
                f"but WORLD_SIZE={world} and agents={n}{extra}: set agents= to match, or "
                f"launch {n + servers} processes (nproc={n + servers})"
            )
        if dist.is_initialized():  # the caller owns the group
            yield dist.get_rank(), None
            return
        backend = self._backend(device)
        timeout = timedelta(seconds=self.timeout_s)
        addr = os.environ.get("MASTER_ADDR", self.master_addr)
        port = int(os.environ.get("MASTER_PORT", self.master_port))
        # torchrun's agent hosts the store; launched otherwise, rank 0 does.
        hosted = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        tcp = dist.TCPStore(addr, port, world, hosted, timeout, wait_for_workers=False)
        store = dist.PrefixStore("nettrain", tcp)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        beat_client = dist.TCPStore(addr, port, world, False, timeout, wait_for_workers=False)
        heartbeat = Heartbeat(dist.PrefixStore("nettrain", beat_client), rank)
        clean = False
        try:
            yield rank, store
            clean = True
        except DivergenceError:
            clean = True  # raised on every rank alike: leave together
            raise
        except PeerError as err:
            raise PeerError(f"{err}{silent_ranks(store, rank, world, hosted)}") from err
        finally:
            heartbeat.stop()
            if clean:
                dist.barrier()  # without it gloo may abort a peer still in its last call
            dist.destroy_process_group()

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult:
        """Run this rank's part: agent ``RANK``, or parameter server ``RANK - agents``."""
        if resume is not None:
            raise ConfigError("resuming is implemented for engine=sim; rerun from the start")
        algo, n = job.algorithm, job.n_agents
        servers = algo.servers if algo.uses_centre else 0
        with self._process_group(n, job.x0.device, servers) as (rank, store), ExitStack() as stack:
            # Servers take no part in the workers' collectives; every rank creates the group.
            group = dist.new_group(list(range(n))) if servers else None
            session = None
            if algo.uses_rpc:  # shut down before the group's final barrier
                session = stack.enter_context(
                    rpc_session(
                        rank,
                        n + servers,
                        store=store,
                        timeout_s=self.timeout_s,
                        num_worker_threads=max(8, n + 2),  # synchronous rounds park n - 1
                    )
                )
            if rank >= n:
                assert session is not None and store is not None
                return self._serve(job, rank - n, session, store)
            comm = DistCommunicator(job.topology, group, rpc=session)
            if servers:
                comm.attach_servers(n, block_slices(job.problem.dim, servers))
            try:
                if isinstance(algo, AsyncAlgorithm):
                    return self._run_events(job, folder, rank, comm)
                return self._run(job, folder, rank, comm)
            finally:
                if servers and rank == 0:  # the servers may leave, even after a failure
                    release_servers(comm, n, servers)

    def _serve(self, job: Job, shard: int, session: RpcSession, store: dist.Store) -> RunResult:
        """Parameter server ``shard``: host its slice until rank 0 says the run is over.

        While it waits it watches rank 0's heartbeat: if it stops for ``timeout_s``, the
        run is gone and the server fails instead of waiting forever.
        """
        algo = job.algorithm
        cols = block_slices(job.problem.dim, algo.servers)[shard]
        centre = CentreShard(algo, shard_rows(job.x0, algo, cols), job.n_agents, self.timeout_s)
        session.host("centre", centre)
        beat, last = -1, time.monotonic()
        while not centre.finished.wait(0.5):
            now_beat = store.add("alive/0", 0)
            if now_beat != beat:
                beat, last = now_beat, time.monotonic()
            elif time.monotonic() - last > self.timeout_s:
                raise PeerError(
                    f"parameter server {shard}: rank 0 stopped responding for {self.timeout_s} s"
                )
        return RunResult(job.x0[None], [])

    def _run_events(
        self, job: Job, folder: RunFolder, rank: int, comm: DistCommunicator
    ) -> RunResult:
        """An asynchronous algorithm: this rank makes its events at its own pace.

        Gossip (``rounds`` events): add what exchanges answered since the last event to
        the iterate, draw a neighbour (the simulator's draw for this agent),
        ``interact`` (local phase, then one exchange over rpc), publish. Centre
        (``rounds / tau`` events): local phase, then one exchange with every server.
        Then a barrier: nobody initiates any more, so after it every exchange has been
        answered; one gather sums the work and checks that every exchange initiated was
        answered (gossip) or applied by every server (centre) exactly once.
        """
        algo = job.algorithm
        assert isinstance(algo, AsyncAlgorithm) and comm.rpc is not None
        n, problem, session = job.n_agents, job.problem, comm.rpc
        gather = partial(_all_gather, group=comm.group)
        x = job.x0[None, :].clone()  # (1, d)
        oracle = problem.oracle(
            [job.shards[rank]], [rank], batch_size=job.batch_size, seed=job.seed
        )
        peer = None
        if isinstance(algo, GossipAlgorithm):
            peer = Peer(algo, x[0], torch.Generator().manual_seed(agent_seed(job.seed, rank, 1)))
            session.host("peer", peer)
            neighbours = sorted(job.topology.base_graph.neighbors(rank))
            events = job.rounds
        else:
            neighbours, events = [], max(1, round(job.rounds / algo.local_steps))
        draws = Draws(job.seed, rank, neighbours, algo)
        generator = torch.Generator().manual_seed(agent_seed(job.seed, rank, 2))
        initiated = torch.zeros(n, dtype=torch.int64)
        losses = []
        start = time.perf_counter()
        state = algo.init(x, oracle, comm)
        name = f"{algo.name} x{n} (distributed, asynchronous)"
        with progress_bar(events, name, job.progress and rank == 0) as advance:
            for e in range(events):
                partner, steps = draws.partner(), draws.steps()
                if peer is not None:
                    state = dataclasses.replace(state, x=state.x + peer.take_shift()[None])
                pairs = torch.tensor([[rank, partner]])
                state, loss = algo.interact(
                    state, pairs, oracle, comm, generator, torch.tensor([[steps, 0]])
                )
                if peer is not None:
                    peer.publish(state.x[0])
                    initiated[partner] += 1
                else:
                    initiated[rank] += 1
                losses.append(loss)
                check_finite(loss, e, algo.stability_hint)
                advance(1, "")
        guarded("the barrier after the last event", lambda: dist.barrier(comm.group))
        answered = torch.zeros(n, dtype=torch.int64)
        reply_bytes = 0
        if peer is not None:
            answered = torch.tensor([peer.answered[r] for r in range(n)], dtype=torch.int64)
            reply_bytes = peer.reply_bytes
            state = dataclasses.replace(
                state,
                x=state.x + peer.take_shift()[None],
                interactions=state.interactions + answered.sum(),
            )
        samples = oracle.meter.reset()
        messages, nbytes = comm.traffic.reset()
        row = torch.cat([samples, messages + answered.sum(), nbytes + reply_bytes])
        every = gather(torch.cat([row, initiated, answered])[None]).cpu()  # (n, 3 + 2n)
        totals = dict(zip(("samples", "messages", "bytes"), every[:, :3].unbind(1), strict=True))
        sent, got = every[:, 3 : 3 + n], every[:, 3 + n :]  # sent[i, j]: i initiated with j
        staleness: list[Counter[int]] = [Counter() for _ in range(n)]
        dist.all_gather_object(staleness, comm.staleness, group=comm.group)
        everyone = gather_state(state, gather)
        centre = None
        if rank == 0:
            record = {
                "round": job.rounds,
                "events": int(sent.sum()),
                "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                "wall_time_s": time.perf_counter() - start,
                **traffic_fields(totals),
                "train_loss": float(torch.cat(losses).mean()),
            }
            if peer is not None:
                record["interactions_answered"] = int(got.sum())
                record["interactions_unmatched"] = int((sent.T - got).abs().sum())
            else:
                record["exchanges_unmatched"] = unapplied_exchanges(comm, sent.diagonal())
                record |= staleness_fields(sum(staleness, Counter()))
                centre = comm.centre()
            record |= job.metrics(everyone.x) | algo.diagnostics(everyone)
            folder.append(record | centre_fields(job, centre))
        return RunResult(everyone.x, folder.records, centre=centre)

    def _run(self, job: Job, folder: RunFolder, rank: int, comm: DistCommunicator) -> RunResult:
        n, problem, device = job.n_agents, job.problem, job.x0.device
        gather = partial(_all_gather, group=comm.group)
        x = job.x0[None, :].clone()  # (1, d)
        oracle = problem.oracle(
            [job.shards[rank]], [rank], batch_size=job.batch_size, seed=job.seed
        )
        clock = VirtualClock(job.cost)
        totals = {k: torch.zeros(n, dtype=torch.int64) for k in ("samples", "messages", "bytes")}
        main = rank == 0

        pending: list[torch.Tensor] = []  # this rank's rows of rounds not yet settled

        def account(loss: torch.Tensor, seconds: float) -> None:
            """Note this round's work, loss and wall time of the local agent."""
            samples = oracle.meter.reset()
            messages, nbytes = comm.traffic.reset()
            row = [samples[0], messages[0], nbytes[0], float(loss[0]), seconds]
            pending.append(torch.tensor(row, dtype=torch.float64))

        def settle(t: int) -> tuple[torch.Tensor, float]:
            """One all-gather for every pending round: replay the clock, the totals and the
            finiteness check in round order; return the last round's losses and max wall time.
            """
            k = len(pending)
            mine = torch.stack(pending).reshape(1, -1)
            every = gather(mine.to(device)).cpu().view(n, k, 5)  # (agents, rounds, fields)
            pending.clear()
            for j in range(k):
                work = every[:, j, :3].round().to(torch.int64)
                clock.sync_round(*work.unbind(1))
                for key, v in zip(totals, work.unbind(1), strict=True):
                    totals[key] += v
                check_finite(every[:, j, 3], t - k + 1 + j, job.algorithm.stability_hint)
            return every[:, -1, 3].to(x.dtype), float(every[:, -1, 4].max())

        start = time.perf_counter()
        state = job.algorithm.init(x, oracle, comm)
        account(torch.zeros(1), 0.0)  # the initial gradients of tracking methods are work too
        settle(-1)
        name = f"{job.algorithm.name} x{n} (distributed)"
        with progress_bar(job.rounds, name, job.progress and main) as advance:
            for t in range(job.rounds):
                begin = time.perf_counter()
                state, loss = job.algorithm.step(state, t, oracle, comm)
                account(loss, time.perf_counter() - begin)
                evaluate = (t + 1) % job.eval_every == 0 or t + 1 == job.rounds
                if evaluate or len(pending) == SETTLE_EVERY:
                    losses, round_s = settle(t)
                status = ""
                if evaluate:
                    everyone = gather_state(state, gather)  # every agent's state, (n, ...)
                    if main:
                        record = {
                            "round": t + 1,
                            "epoch": float(totals["samples"].sum()) / len(problem.data.y_train),
                            "virtual_time_s": clock.now,
                            "wall_time_s": time.perf_counter() - start,
                            "round_wall_time_s": round_s,
                            **traffic_fields(totals),
                            "train_loss": float(losses.mean()),
                            **job.metrics(everyone.x),
                            **job.algorithm.diagnostics(everyone),
                            **centre_fields(job, job.algorithm.centre(state, comm)),
                        }
                        folder.append(record)
                        status = status_line(record)
                advance(1, status)
        everyone = gather(state.x)
        centre = job.algorithm.centre(state, comm) if main else None
        return RunResult(everyone, folder.records, centre=centre)


class Heartbeat:
    """A daemon thread that increments the store key ``alive/<rank>`` every ``period_s``.

    It keeps beating while the main thread is blocked in a collective (torch releases
    the GIL there), so after a failure a silent counter means a dead or frozen process.
    """

    def __init__(self, store: dist.Store, rank: int, period_s: float = 0.25) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(store, f"alive/{rank}", period_s), daemon=True
        )
        self._thread.start()

    def _beat(self, store: dist.Store, key: str, period_s: float) -> None:
        while not self._stop.is_set():
            try:
                store.add(key, 1)
            except RuntimeError:  # the store's host is gone: nothing left to tell
                return
            self._stop.wait(period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def silent_ranks(store: dist.Store, rank: int, n: int, hosted: bool, window_s: float = 1.0) -> str:
    """After a failed exchange: the ranks whose heartbeat stopped (dead or frozen).

    Marks ``failed/<rank>`` (this rank saw the failure and leaves: not a suspect), then
    reads every rank's counter twice, ``window_s`` apart. The host of the store then
    stays ``window_s`` longer so that the others can finish reading. Best effort:
    ``""`` when the store is gone (its host died) or every rank still beats.
    """
    try:
        store.set(f"failed/{rank}", "1")
        before = [store.add(f"alive/{r}", 0) for r in range(n)]
        time.sleep(window_s)
        after = [store.add(f"alive/{r}", 0) for r in range(n)]
        left = [store.check([f"failed/{r}"]) for r in range(n)]
        if hosted:
            time.sleep(window_s)
    except RuntimeError:
        return ""
    silent = [r for r in range(n) if after[r] == before[r] and not left[r]]
    if not silent:
        return ""
    return f" Rank(s) {', '.join(map(str, silent))} stopped responding: they died or froze."


def _all_gather(t: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """``(1, ...)`` on every rank of ``group`` -> ``(n, ...)``, rows in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    guarded(
        "an all-gather of the engine", lambda: dist.all_gather(parts, t.contiguous(), group=group)
    )
    return torch.cat(parts)


def release_servers(comm: DistCommunicator, n: int, servers: int) -> None:
    """Tell every parameter server that the run is over (best effort: a server that is
    already gone needs no word)."""
    assert comm.rpc is not None
    for rank in range(n, n + servers):
        with suppress(RuntimeError):
            comm.rpc.remote(rank, "centre").rpc_sync("finish")


def unapplied_exchanges(comm: DistCommunicator, initiated: torch.Tensor) -> int:
    """``sum_s sum_w |applied_s[w] - initiated[w]|``: exchanges a server lost or doubled."""
    assert comm.rpc is not None
    off = 0
    for rank in comm.server_ranks:
        applied = comm.rpc.remote(rank, "centre").rpc_sync("counts")
        off += sum(abs(applied.get(w, 0) - int(c)) for w, c in enumerate(initiated.tolist()))
    return off


def gather_state(state: Any, gather: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The state of every agent from each rank's ``(1, ...)`` state (nested dataclasses too).

    Tensors with a leading local-agent axis are gathered; other fields are kept.
    """
    changes = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == 1:
            changes[f.name] = gather(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = gather_state(value, gather)
    return dataclasses.replace(state, **changes)
