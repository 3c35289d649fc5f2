"""The ``distributed`` engine: the agents spread over processes with torch.distributed.

Launched by ``torchrun`` (``nettrain run engine=distributed nproc=P ...`` starts it
for you on one machine). The first ``P`` ranks hold the agents, ``placement``
(:mod:`.placement`; contiguous blocks by default, one agent a rank when ``P = n``)
says which: each runs the simulator's vectorised oracle over its ``m`` agents and
mixes them with one kernel, exchanging only the rows that cross processes
(:mod:`.halo`). Ranks ``P .. P + S - 1`` host the parameter servers of a centre-based
method. Asynchronous methods make each agent's events at its own pace, a process's agents
in turn (:mod:`.events`); with one agent a process, and ``rejoin=true``, a gossip
worker's process started again after a crash rejoins the run. This
module joins the process group (rendezvous store bound to ``master_addr``, heartbeats,
the final barrier) and hands the rank to its loop: :func:`~.rounds.run_rounds` for a
synchronous algorithm, :func:`~.events.run_events` for an asynchronous one. Only rank 0
writes the run folder.

Same config and seed as ``engine=sim``: same mini-batches, same mixing weights, so the
final parameters agree up to floating-point summation order (the test suite checks
``1e-5``), and the counted messages and bytes are equal.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult, check_engine
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.engines.distributed.comm import DistCommunicator
from nettrain.engines.distributed.events import run_events
from nettrain.engines.distributed.finish import (
    Silence,
    events_prefix,
    incarnation_key,
    read_verdict,
)
from nettrain.engines.distributed.liveness import Heartbeat, last_beat, silent, silent_ranks
from nettrain.engines.distributed.placement import Placement, check_grouped_events
from nettrain.engines.distributed.rounds import run_rounds, servers_round
from nettrain.engines.distributed.rpc import RpcSession, rpc_session
from nettrain.engines.distributed.snapshots import Snapshots, write_snapshot
from nettrain.engines.distributed.store import (
    hosts_store,
    keep_on_loopback,
    open_store,
    warn_if_reachable,
)
from nettrain.errors import ConfigError, DivergenceError, FaultError, PeerError
from nettrain.problem.flat import block_slices
from nettrain.recording import RunFolder

BACKENDS = ("auto", "gloo", "nccl")
LAUNCH_HINT = (
    "launch it with `nettrain run engine=distributed nproc=N ...` (which starts torchrun) "
    "or `torchrun --nproc-per-node N -m nettrain run engine=distributed ...`"
)


def launched_rank() -> int | None:
    """This process's rank under torchrun (``RANK``), or None outside a launcher."""
    rank = os.environ.get("RANK")
    return int(rank) if rank is not None else None


class DistributedEngine:
    """Runs rank ``RANK``'s part of a :class:`Job` in this process: its agents, or a
    parameter server.

    ``backend``: ``gloo`` (CPU tensors), ``nccl`` (CUDA tensors, one GPU per rank), or
    ``auto`` (``nccl`` when the problem lives on CUDA, else ``gloo``). ``timeout_s``
    bounds every collective: a dead peer turns into an error within that time instead
    of a hang. ``master_addr``/``master_port`` are used only where the launcher did not
    set ``MASTER_ADDR``/``MASTER_PORT``. ``placement`` says which agents each process
    holds (:meth:`.placement.Placement.parse`); ``rejoin``: gossip workers may come back
    (docs/faults.md); ``rpc_transport``: how rpc reaches a process of the same machine
    (:func:`.rpc.transports`).
    """

    name = "distributed"

    def __init__(
        self,
        backend: str = "auto",
        timeout_s: float = 60.0,
        master_addr: str = "127.0.0.1",
        master_port: int = 29512,
        placement: str = "blocks",
        rejoin: bool = False,
        rpc_transport: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is not allowed; choose one of auto, gloo, nccl")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        self.backend = backend
        self.timeout_s = timeout_s
        self.master_addr = master_addr
        self.master_port = master_port
        self.placement = placement
        self.rejoin = rejoin
        self.rpc_transport = rpc_transport

    @classmethod
    def from_config(cls, cfg: Any) -> DistributedEngine:
        """The engine for a :class:`~nettrain.config.RunConfig`.

        Under torchrun with ``device=cuda``, selects GPU ``LOCAL_RANK`` before the
        problem is built, so that each rank's data lands on its own device.
        """
        if cfg.device == "cuda" and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        rejoin = cfg.rejoin or cfg.restarts > 0
        return cls(
            cfg.backend,
            cfg.timeout_s,
            cfg.master_addr,
            cfg.master_port,
            cfg.placement,
            rejoin,
            cfg.rpc_transport,
        )

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder: rank 0 (or no launcher), unless it
        is a process of rank 0 started again to rejoin the run (the store says so)."""
        rank = launched_rank() or 0
        if rank != 0 or not self.rejoin or hosts_store(rank):
            return rank == 0
        store = self._store(int(os.environ.get("WORLD_SIZE", "1")), False)
        return not store.check([incarnation_key(rank)])

    def _address(self) -> tuple[str, int]:
        """The rendezvous address: the launcher's ``MASTER_ADDR``/``MASTER_PORT``, else ours."""
        addr = os.environ.get("MASTER_ADDR", self.master_addr)
        return addr, int(os.environ.get("MASTER_PORT", self.master_port))

    def _store(self, world: int, host: bool) -> dist.Store:
        """The rendezvous store (its server where ``host``), keys under ``nettrain/``."""
        addr, port = self._address()
        return dist.PrefixStore("nettrain", open_store(addr, port, world, host, self.timeout_s))

    def _backend(self, device: torch.device) -> str:
        backend = self.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ConfigError("backend=nccl sends CUDA tensors; use device=cuda or backend=gloo")
        if backend == "gloo" and device.type != "cpu":
            raise ConfigError("backend=gloo runs on CPU tensors; use device=cpu or backend=nccl")
        return backend

    def _placement(self, job: Job, servers: int) -> Placement:
        """Which agents each agent process holds: the ``WORLD_SIZE - servers`` first ranks
        hold the ``n`` agents as :attr:`placement` says (an asynchronous method's several
        a process only without what needs one agent a process,
        :func:`~.placement.check_grouped_events`)."""
        if launched_rank() is None:
            raise ConfigError(f"engine=distributed needs a launcher (no RANK set): {LAUNCH_HINT}")
        n, world = job.n_agents, int(os.environ.get("WORLD_SIZE", "1"))
        processes = world - servers
        if not 1 <= processes <= n:
            extra = f" + servers={servers}" if servers else ""
            raise ConfigError(
                f"WORLD_SIZE={world} for agents={n}{extra}: launch between {1 + servers} and "
                f"{n + servers} processes, {servers} of them parameter servers"
            )
        if job.algorithm.schedule == "events":
            check_grouped_events(
                job.algorithm.name,
                n,
                processes,
                servers,
                rejoin=self.rejoin,
                checkpoint_every=job.checkpoint_every,
                faults=job.fault_spec.any,
            )
        return Placement.parse(self.placement, n, processes)

    @contextmanager
    def _process_group(
        self, world: int, device: torch.device
    ) -> Iterator[tuple[int, dist.Store | None, int]]:
        """Join (or reuse) the default group of ``world`` ranks; yield this rank, the
        rendezvous store (None when the caller owns the group) and this process's
        incarnation (:func:`~.finish.incarnation_key`; with ``rejoin``, a process started
        again for its rank joins no group: a group cannot take a rank back)."""
        rank = launched_rank()
        assert rank is not None
        self._someone_died = False  # an asynchronous run outlived a rank: no final barrier
        if dist.is_initialized():  # the caller owns the group
            yield dist.get_rank(), None, 0
            return
        backend = self._backend(device)
        timeout = timedelta(seconds=self.timeout_s)
        addr, _ = self._address()
        hosted = hosts_store(rank)
        keep_on_loopback(addr)
        if rank == 0:  # torchrun's agent may host the store: rank 0 warns all the same
            warn_if_reachable(addr)
        store = self._store(world, hosted)
        incarnation = store.add(incarnation_key(rank), 1) - 1 if self.rejoin else 0
        self._down_since = last_beat(store, rank) if incarnation else None  # before ours
        heartbeat = Heartbeat(self._store(world, False), rank, stamped=self.rejoin)
        if incarnation:
            try:
                yield rank, store, incarnation
            finally:
                heartbeat.stop()
            return
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        clean = False
        try:
            yield rank, store, 0
            clean = True
        except (DivergenceError, FaultError):
            clean = True  # raised on every rank alike: leave together
            raise
        except PeerError as err:
            raise PeerError(f"{err}{silent_ranks(store, rank, world, hosted)}") from err
        finally:
            heartbeat.stop()
            if clean and not self._someone_died:
                dist.barrier()  # without it gloo may abort a peer still in its last call
            dist.destroy_process_group()

    def run(
        self, job: Job, folder: RunFolder, resume: Checkpoint | Snapshots | None = None
    ) -> RunResult:
        """Run this rank's part: its agents, or parameter server ``RANK - P``.

        With ``resume``, continue: an asynchronous algorithm from every rank's own
        snapshot (:class:`~.snapshots.Snapshots`), a synchronous one from the checkpoint's
        round. Every rank is given the same :class:`Checkpoint`, the one the simulator
        writes, with every agent's rows: each process loads ``checkpoint.pt`` from the run
        folder itself (:func:`nettrain.experiment.resume`), so on several machines the run
        folder must be on storage that every machine reads (NFS or the like), not on rank
        0's local disk. Each worker keeps its own rows; rank 0 gives each parameter server
        its slice of the centre back. See :func:`~.rounds.run_rounds` for what is saved.
        """
        check_engine(self.name, job.algorithm)
        algo, n = job.algorithm, job.n_agents
        snapshots = resume if isinstance(resume, Snapshots) else None
        if (snapshots is not None) != (resume is not None and algo.schedule == "events"):
            kind = "asynchronous" if algo.schedule == "events" else "synchronous"
            raise ConfigError(
                f"algorithm={algo.name} is {kind}: resume it from "
                + ("every rank's snapshots" if kind == "asynchronous" else "a checkpoint.pt")
            )
        servers = algo.servers if algo.uses_centre else 0
        placement = self._placement(job, servers)
        p = placement.processes
        with (
            self._process_group(p + servers, job.x0.device) as (rank, store, incarnation),
            ExitStack() as stack,
        ):
            # Servers take no part in the workers' collectives; every rank creates the groups.
            group = dist.new_group(list(range(p))) if servers else None
            # Synchronous rounds gather their notes on a group of their own: gloo runs a
            # group's operations in order, so on the algorithm's group that all-gather
            # would hold the next round's exchange until every rank had joined it.
            notes = dist.new_group(list(range(p))) if algo.schedule != "events" else None
            session = None
            if algo.uses_rpc:  # shut down before the group's final barrier
                others = [r for r in range(p + servers) if r != rank]
                session = stack.enter_context(
                    rpc_session(
                        rank,
                        p + servers,
                        store=store,
                        timeout_s=self.timeout_s,
                        num_worker_threads=max(8, n + 2),  # synchronous rounds park n - 1
                        dynamic=self.rejoin,
                        incarnation=incarnation,
                        gone=silent(store, others) if incarnation and store else (),
                        transport=self.rpc_transport,
                    )
                )
                if self.rejoin:  # no final barrier: a rank that rejoined is in no group
                    session.graceful = False
            if rank >= p:
                assert session is not None
                watched = store if store is not None else session.store  # the caller's group
                assert watched is not None
                return self._serve(job, rank - p, p, session, watched, folder, snapshots)
            slices = block_slices(job.problem.dim, servers) if servers else None
            comm = DistCommunicator(
                job.topology,
                placement,
                group,
                rpc=session,
                servers=slices,
                sync_round=servers_round(None if snapshots else resume),
                rank=rank if incarnation else None,
            )
            try:
                if algo.schedule != "events":
                    assert not isinstance(resume, Snapshots)
                    return run_rounds(job, folder, rank, comm, resume, notes)
                with ExitStack() as beating:
                    if store is None:  # the caller owns the group: beat from here
                        assert session is not None and session.store is not None
                        beating.enter_context(Heartbeat(session.store, rank))
                    try:
                        rejoined = (incarnation, self._down_since) if incarnation else None
                        return run_events(
                            job, folder, rank, comm, self.timeout_s, snapshots, rejoined
                        )
                    finally:  # a rank died: leave without the final barrier
                        self._someone_died = session is not None and not session.graceful
            finally:
                if servers and rank == 0:  # the servers may leave, even after a failure
                    comm.release_servers()

    def _serve(
        self,
        job: Job,
        shard: int,
        workers: int,
        session: RpcSession,
        store: dist.Store,
        folder: RunFolder,
        resume: Snapshots | None,
    ) -> RunResult:
        """Parameter server ``shard``: host its slice until the leader (rank 0, or the
        lowest live worker rank of an asynchronous run) says the run is over.

        Serving an asynchronous method with ``checkpoint_every=K``, it writes its slice
        as a snapshot (:mod:`.snapshots`) whenever ``n K / tau`` exchanges (as many as the
        workers make between two of their own snapshots) were applied since the last, and
        at the end; ``resume`` starts it from its last.

        While it waits it watches the ``workers`` heartbeats: if every one stops for
        ``timeout_s``, the run is gone and the server fails instead of waiting forever.
        After an asynchronous run it reads the leader's verdict (:mod:`.finish`): where a
        worker died (or failed, or the verdict cannot be read because the store is gone),
        the rpc session ends without waiting for everyone, and without the final barrier.
        """
        algo = job.algorithm
        cols = block_slices(job.problem.dim, algo.servers)[shard]
        centre = CentreShard(algo, shard_rows(job.x0, algo, cols), job.n_agents, self.timeout_s)
        rank, began = workers + shard, time.perf_counter()
        if resume is not None:
            centre.load_state_dict(resume.load(rank)["shard"])
            began -= resume.wall_time_s
        session.host("centre", centre)
        every = 0  # exchanges between two snapshots; 0: none
        if job.checkpoint_every and algo.schedule == "events" and folder.home is not None:
            every = max(1, job.n_agents * job.checkpoint_every // algo.local_steps)

        def snapshot() -> None:
            saved = {"shard": centre.state_dict()}
            wall = time.perf_counter() - began
            entry = {"server": shard, "version": saved["shard"]["version"], "wall_time_s": wall}
            assert folder.home is not None
            write_snapshot(folder.home, rank, saved, entry)

        written, silence = centre.version, Silence(store)
        while not centre.finished.wait(0.5):
            if min(silence.seconds(r) for r in range(workers)) > self.timeout_s:
                raise PeerError(
                    f"parameter server {shard}: every worker stopped responding for "
                    f"{self.timeout_s} s"
                )
            if every and centre.version >= written + every:
                written = centre.version
                snapshot()
        if every:
            snapshot()
        if algo.schedule == "events":
            try:
                verdict = read_verdict(store, events_prefix(session.serial))
            except RuntimeError:  # the store is gone: its host left without waiting for anyone
                verdict = None
            if verdict is None or not verdict.clean:
                session.graceful = False
                self._someone_died = verdict is None or bool(verdict.crashed)
                time.sleep(0.1)  # lets the answer to the leader's "finish" out first
        return RunResult(job.x0[None], [])
