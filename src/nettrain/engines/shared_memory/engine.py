"""The ``shared_memory`` engine: ``P`` worker processes updating one model in shared memory.

What it runs and how, for users: ``docs/shared-memory.md``. The main process puts the
model ``x: (d,)`` and the counters on a :class:`~nettrain.engines.shared_memory.board.Board`,
cut into the method's ``shared_blocks(P)`` blocks (with rows for ``mean_shared`` for a
method without ``shared_writes``), and spawns ``processes=P`` workers
(:mod:`~nettrain.engines.shared_memory.worker`). One round is ``P`` steps, whoever
takes them.

Every ``eval_every`` rounds :class:`SharedSteps` holds the workers after exactly
``round * P`` steps and :func:`~nettrain.engines.driver.drive` appends the record every
engine writes (``train_time_s``: wall time less the evaluation pauses; ``train_loss``:
mean over the steps since the last record; no virtual clock; messages and bytes: this
machine's averagings), with the workers' counters: ``processes``, ``machines``,
``averagings``, the staleness and writes per block
(:func:`~nettrain.patterns.shared_fields`), and the per-worker step counts
``steps_min``/``steps_max``.

Under ``torchrun`` each launched process is one machine with its own ``P`` workers
and model; with ``average_every=K`` its main process averages the machines' models
every ``K`` rounds (of its own workers) over gloo
(:mod:`~nettrain.engines.shared_memory.averaging`), and once more at the end, when
the workers have stopped, so all machines finish with the same model, bit for bit.
Rank 0 writes the run folder; its records describe machine 0.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, RunResult, check_engine
from nettrain.engines.distributed.engine import launched_rank
from nettrain.engines.driver import Counters, Snapshot, Tick, drive
from nettrain.engines.shared_memory.averaging import ModelAverager
from nettrain.engines.shared_memory.board import Board
from nettrain.engines.shared_memory.worker import worker_main
from nettrain.errors import ConfigError, DataError, DivergenceError, WorkerFailed
from nettrain.machine import usable_cores
from nettrain.patterns import shared_fields
from nettrain.problem.block_oracle import BlockGradient
from nettrain.recording import RunFolder

POLL_S = 1e-3  # how often the main process looks at the counters
ERRORS = {"DivergenceError": DivergenceError, "ConfigError": ConfigError, "DataError": DataError}


class SharedMemoryEngine:
    """Runs a :class:`Job` as ``processes`` workers on one shared model (see the module)."""

    name = "shared_memory"

    def __init__(self, processes: int = 2, average_every: int = 0, timeout_s: float = 60.0) -> None:
        if processes < 1:
            raise ConfigError(f"processes must be >= 1, got {processes}")
        if average_every < 0:
            raise ConfigError(f"average_every must be >= 0 (0 = never), got {average_every}")
        self.processes = processes
        self.average_every = average_every
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, cfg: Any) -> SharedMemoryEngine:
        return cls(cfg.processes, cfg.average_every, cfg.timeout_s)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (rank 0, or no launcher)."""
        return (launched_rank() or 0) == 0

    @contextmanager
    def _machines(self) -> Iterator[ModelAverager | None]:
        """The averager over the machines launched by torchrun, or None for one machine."""
        if not self.average_every:
            yield None  # one machine, or independent ones: nothing to exchange
            return
        if launched_rank() is None:
            raise ConfigError(
                f"average_every={self.average_every} averages the models of several "
                "machines: launch one process per machine with torchrun (`torchrun "
                "--nnodes M --nproc-per-node 1 -m nettrain run engine=shared_memory ...`), "
                "or set average_every=0"
            )
        if dist.is_initialized():  # the caller owns the group of machines
            yield ModelAverager()
            return
        timeout = timedelta(seconds=self.timeout_s)
        dist.init_process_group("gloo", init_method="env://", timeout=timeout)
        try:
            yield ModelAverager()
            dist.barrier()  # without it gloo may abort a peer still in its last call
        finally:
            dist.destroy_process_group()

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult:
        if resume is not None:
            raise ConfigError("resuming is implemented for engine=sim; rerun from the start")
        if job.problem.buffer_spec:
            raise ConfigError(
                f"engine=shared_memory keeps one flat parameter vector in shared memory; "
                f"{type(job.problem.model).__name__} has buffers (BatchNorm statistics: "
                f"{', '.join(job.problem.buffer_spec.names[:3])}) the workers would not share. "
                "Use a model without buffers (e.g. GroupNorm or LayerNorm instead of "
                "BatchNorm) or engine=sim"
            )
        check_engine(self.name, job.algorithm)
        blocks = job.algorithm.shared_blocks(self.processes)  # checks the workers it was built for
        cores = usable_cores()
        if self.processes > cores:
            warnings.warn(
                f"processes={self.processes} is more than the {cores} cores this "
                "process may use: workers will share cores and samples/s will suffer",
                RuntimeWarning,
                stacklevel=2,
            )
        with self._machines() as averager:
            P, algo, problem = self.processes, job.algorithm, job.problem
            ctx = mp.get_context("spawn")
            board = Board.create(job.x0, blocks, P, not algo.shared_writes, ctx)
            pool, data = torch.cat(list(job.shards)), problem.data  # drawn from every shard
            oracle = partial(  # worker c's is oracle(c), built in its process
                BlockGradient,
                problem.model,
                problem.loss,
                problem.regularizer,
                data.x_train,
                data.y_train,
                pool,
                job.batch_size,
                blocks,
                job.seed,
            )
            procs = [
                ctx.Process(
                    target=worker_main,
                    args=(c, board, algo, oracle, job.rounds * P, self.timeout_s),
                    name=f"nettrain-worker-{c}",
                    daemon=True,
                )
                for c in range(P)
            ]
            for p in procs:
                p.start()
            steps = SharedSteps(job, board, procs, averager, self.average_every, self.is_main)
            try:
                steps.wait(lambda: bool(board.ready.all()), self.timeout_s, "start")
                drive(job, folder, steps)
                steps.wait(lambda: not any(p.is_alive() for p in procs), self.timeout_s)
                return RunResult(board.x.clone()[None], folder.records)
            finally:
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                    p.join()


class SharedSteps:
    """The main process's view of the workers, for :func:`drive` (see the module)."""

    measured = True

    def __init__(
        self,
        job: Job,
        board: Board,
        procs: list[Any],
        averager: ModelAverager | None,
        average_every: int,
        main: bool,
    ) -> None:
        self.job, self.board, self.procs, self.averager = job, board, procs, averager
        self.main, self.P = main, len(procs)
        self.label = f"{job.algorithm.name} x{self.P} (shared memory)"
        rounds, K = job.rounds, average_every
        self.averagings = set(range(K, rounds + 1, K)) | {rounds} if averager else set()
        self.round, self.last = 0, (0.0, 0)  # (loss sum, steps) at the previous record

    def wait(
        self, ready: Callable[[], bool], timeout_s: float | None = None, what: str = "finish"
    ) -> None:
        """Poll until ``ready()``; raise a worker's error, or on a dead worker, at once."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        while not ready():
            if not self.board.errors.empty():
                c, kind, message = self.board.errors.get()
                raise ERRORS.get(kind, WorkerFailed)(
                    message if kind in ERRORS else f"worker {c} failed ({kind}): {message}"
                )
            dead = [p.name for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise WorkerFailed(f"worker process(es) {', '.join(dead)} died")
            if deadline is not None and time.perf_counter() > deadline:
                raise WorkerFailed(
                    f"the workers did not {what} within {timeout_s:.0f} s (timeout_s=); "
                    "the machine may be overloaded"
                )
            time.sleep(POLL_S)

    def advance(self, stop: int) -> Iterator[Tick]:
        board, P = self.board, self.P
        board.limit[0] = stop * P  # release the workers up to round stop
        for r in [*sorted(m for m in self.averagings if self.round < m < stop), stop]:
            self.wait(lambda r=r: board.finished() >= r * P)
            if r in self.averagings:
                assert self.averager is not None
                self.averager.average(board.x, settled=r == self.job.rounds)  # the last: done
        self.round = stop
        yield Tick(stop)

    def counters(self) -> Counters:
        board, averager = self.board, self.averager
        loss_sum, steps = float(board.loss_sum.sum()), board.finished()
        loss = (loss_sum - self.last[0]) / max(steps - self.last[1], 1)
        self.last = (loss_sum, steps)
        totals = {  # this machine's, (1,) each
            "samples": board.samples.sum().reshape(1),
            "messages": torch.tensor([averager.count if averager else 0]),
            "bytes": torch.tensor([averager.bytes_sent if averager else 0]),
        }
        return Counters(totals, None, loss, self.round)

    def late(self) -> list[tuple[Counters, Snapshot]]:
        return []  # every record is written at its round

    def snapshot(self) -> Snapshot | None:
        if not self.main:
            return None
        board, averager = self.board, self.averager
        fields = {
            "processes": self.P,
            "machines": averager.machines if averager else 1,
            "averagings": averager.count if averager else 0,
            "steps_min": int(board.steps.min()),
            "steps_max": int(board.steps.max()),
            **shared_fields(
                board.stale_sum.sum(),
                board.reads.sum(),
                board.stale_max.max(),
                board.updates.sum(0),
            ),
        }
        return Snapshot(board.x.clone()[None], fields=fields)

    def checkpoint(self, stop: int) -> None:
        return None  # the workers' generators live in their processes: no resume
