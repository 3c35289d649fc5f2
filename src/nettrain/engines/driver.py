"""The run loop of every engine: when to evaluate, what a record holds, checkpoints.

An engine supplies a :class:`Run`: how time advances (a round, a batch of events, a
process step) and how states and counters are gathered. :func:`drive` owns the rest,
alike for every engine and schedule::

    for stop in the evaluation and checkpoint rounds:
        for tick in run.advance(stop):      # the engine's rounds, events or steps
            divergence check of tick.loss, progress bar
        at round 0, every eval_every rounds and at the last: snapshot, record, status line
        every checkpoint_every rounds: run.checkpoint(stop)

Every record has the keys :data:`BASE_KEYS` in every engine, then the model's
metrics (:meth:`Job.metrics`), the algorithm's ``diagnostics``, the fields of the
method's schedule (:attr:`Snapshot.fields`: ``events`` of an asynchronous method, the
exchanges with a centre, the shared-memory workers' counters) and the centre's test
figures. Where an engine has no virtual clock (processes that run for real
asynchronously: ``shared_memory``, asynchronous ``distributed``) ``virtual_time_s``
is None. The throughput of real processes (:attr:`Run.measured`, :data:`WALL_KEYS`):
``train_time_s``, the wall time less the driver's pauses (evaluations, checkpoints);
``round_wall_time_s``, the training wall time per round since the previous record;
``samples_per_s = samples / train_time_s``. They are None in the simulator, where one
process computes every agent (its records are then the same, bit for bit, whenever
the run is repeated or resumed; ``wall_time_s`` alone is measured). Where a run has
both, ``predicted_over_measured = virtual_time_s / train_time_s`` compares the virtual
clock's prediction of the training time (calibrated with ``cost_model=``) with the
time measured; it is None elsewhere and before anything has run. The asynchronous
``distributed`` run writes its records at the same rounds from every rank's state
at that round, posted as each rank reaches it
(:class:`~nettrain.engines.distributed.events.DistEvents`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import torch

from nettrain.checkpoint import Checkpoint
from nettrain.engines.base import Job, check_finite, model_fields, status_line, traffic_fields
from nettrain.engines.timeline import Timeline
from nettrain.errors import DivergenceError
from nettrain.problem.buffers import Buffers
from nettrain.progress import progress_bar
from nettrain.recording import RunFolder

BASE_KEYS = (
    "round",
    "epoch",
    "virtual_time_s",
    "wall_time_s",
    "train_time_s",
    "round_wall_time_s",
    "samples",
    "samples_per_s",
    "predicted_over_measured",
    "messages_total",
    "bytes_total",
    "messages_max_agent",
    "bytes_max_agent",
    "train_loss",
)
# The throughput of real processes: in every engine's records, None in the simulator's.
WALL_KEYS = ("train_time_s", "round_wall_time_s", "samples_per_s")


class Tick(NamedTuple):
    """Progress an engine made: ``done`` rounds complete, and the losses to check
    (``(n,)``, or None) named as round ``at + 1`` (default: round ``done``)."""

    done: int
    loss: torch.Tensor | None = None
    at: int | None = None


@dataclass(frozen=True)
class Counters:
    """The work so far: ``totals`` per agent ``(n,)`` each (samples, messages, bytes,
    and messages resent where counted), the virtual clock (None: none), the mean
    training loss the record reports, and the round the record names."""

    totals: dict[str, torch.Tensor]
    clock: float | None
    train_loss: float
    round: int


@dataclass(frozen=True)
class Snapshot:
    """Every agent's parameters ``x: (n, d)`` and ``buffers``, the ``state`` the
    algorithm's diagnostics read (None: none), the centre ``(d,)``, the schedule's
    fields, and the job whose metrics judge ``x`` (the survivors' job after a crash)."""

    x: torch.Tensor
    buffers: Buffers | None = None
    state: Any = None
    centre: torch.Tensor | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None


class ResumePoint(Protocol):
    """Where a resumed run goes on from (a :class:`Checkpoint`, or the snapshots of an
    asynchronous distributed run): its round and the wall time spent before it."""

    @property
    def round(self) -> int: ...

    @property
    def wall_time_s(self) -> float: ...


class Run(Protocol):
    """What an engine supplies to :func:`drive`."""

    label: str  # the progress bar's
    main: bool  # this process writes the run folder
    measured: bool  # real processes: the record measures their throughput

    def advance(self, stop: int) -> Iterator[Tick]:
        """Run up to round ``stop`` (every process of the run calls it)."""
        ...

    def counters(self) -> Counters:
        """The counters of a record (its ``train_loss``: since the previous call)."""
        ...

    def snapshot(self) -> Snapshot | None:
        """Every agent's state at this point (every process calls it: it may gather);
        None where this process writes no record."""
        ...

    def late(self) -> list[tuple[Counters, Snapshot]]:
        """The records of earlier evaluation rounds that this process could only gather
        now, oldest first (an asynchronous distributed run whose leader died), written
        before this one's; ``[]`` in every other run."""
        ...

    def checkpoint(self, stop: int) -> Checkpoint | None:
        """The checkpoint after round ``stop`` (``records`` and ``wall_time_s`` are filled
        in by the driver); None where this process writes none, or the engine cannot resume."""
        ...


def drive(
    job: Job,
    folder: RunFolder,
    run: Run,
    resume: ResumePoint | None = None,
    start: float | None = None,
    timeline: Timeline | None = None,
) -> None:
    """Advance ``run`` to ``job.rounds``, evaluating, checking and saving on the way.

    With ``resume``, continue after its round (the engine has loaded its state). The
    run's ``timeline`` (None: none) goes to the folder at the first stop after its last
    round (every process takes it there), or at the end."""
    first = resume.round if resume is not None else 0
    saved = first if resume is not None else None  # the round of the last checkpoint
    start = time.perf_counter() if start is None else start
    if resume is not None:
        start -= resume.wall_time_s
    # A fresh run records round 0 (the initial state) too; a resumed one starts after it.
    evals = {*range(job.eval_every if first else 0, job.rounds, job.eval_every), job.rounds}
    saves = set()
    if job.checkpoint_every:
        saves = set(range(job.checkpoint_every, job.rounds + 1, job.checkpoint_every))
    paused, last = 0.0, (first, 0.0)  # seconds not training; (round, train time) of a record
    hint = job.algorithm.stability_hint
    with progress_bar(job.rounds, run.label, job.progress and run.main) as bar:
        done = first
        bar(done, "")
        for stop in sorted(r for r in evals | saves if r > first or (r == 0 and resume is None)):
            for tick in run.advance(stop):
                if tick.loss is not None:
                    at = tick.done - 1 if tick.at is None else tick.at
                    try:
                        check_finite(tick.loss, at, hint)
                    except DivergenceError as err:
                        raise DivergenceError(f"{err}{folder.checkpoint_hint(saved)}") from None
                bar(tick.done - done, "")
                done = tick.done
            held = time.perf_counter()
            if timeline is not None and not timeline.taken and done >= timeline.rounds:
                folder.write_timeline(timeline.take(), timeline.since)
            if stop in evals:
                train_s = held - start - paused
                for counters, snap in [*run.late(), (run.counters(), run.snapshot())]:
                    record = _record(job, counters, snap, run.measured, held - start, train_s, last)
                    if record is not None and not _repeats(folder, record):
                        folder.append(record)
                        bar(0, status_line(record))
                        last = (record["round"], train_s)
            if stop in saves:
                checkpoint = run.checkpoint(stop)
                if checkpoint is not None:
                    wall = time.perf_counter() - start
                    folder.checkpoint(
                        replace(checkpoint, records=len(folder.records), wall_time_s=wall)
                    )
                saved = stop
            paused += time.perf_counter() - held
    if timeline is not None and not timeline.taken:  # a run shorter than the timeline
        folder.write_timeline(timeline.take(), timeline.since)


def _record(
    job: Job,
    counters: Counters,
    snap: Snapshot | None,
    measured: bool,
    wall_s: float,
    train_s: float,
    last: tuple[int, float],
) -> dict[str, Any] | None:
    """The record of ``counters`` and ``snap`` (None where this process writes none);
    ``measured``: real processes, whose throughput it gives."""
    if snap is None:
        return None
    judged = snap.job or job
    traffic = traffic_fields(counters.totals)
    rounds = max(counters.round - last[0], 1)
    wall = dict.fromkeys(WALL_KEYS)
    if measured:
        speeds = (train_s, (train_s - last[1]) / rounds, traffic["samples"] / max(train_s, 1e-9))
        wall = dict(zip(WALL_KEYS, speeds, strict=True))
    record: dict[str, Any] = {
        "round": counters.round,
        "epoch": traffic["samples"] / len(job.problem.data.y_train),
        "virtual_time_s": counters.clock,
        "wall_time_s": wall_s,
        "train_time_s": wall["train_time_s"],
        "round_wall_time_s": wall["round_wall_time_s"],
        "samples": traffic["samples"],
        "samples_per_s": wall["samples_per_s"],
        "predicted_over_measured": (
            _ratio(counters.clock, wall["train_time_s"]) if counters.round else None
        ),
        **traffic,
        "train_loss": counters.train_loss if counters.round else None,  # none trained yet
        **judged.metrics(snap.x, snap.buffers),
    }
    if snap.state is not None:
        record |= job.algorithm.diagnostics(snap.state)
        for name, model in job.algorithm.judged(snap.state).items():
            record |= model_fields(judged, name, model, snap.buffers)
    record |= snap.fields
    return record | model_fields(job, "centre", snap.centre, snap.buffers)


def _ratio(predicted: float | None, measured: float | None) -> float | None:
    """``predicted / measured``; None where either is None or ``measured`` is not > 0."""
    if predicted is None or measured is None or measured <= 0:
        return None
    return predicted / measured


def _repeats(folder: RunFolder, record: dict[str, Any]) -> bool:
    """Whether ``record`` is at the point of the previous one (two evaluation rounds that
    fall on the same event of an asynchronous schedule)."""
    if not folder.records:
        return False
    before = folder.records[-1]
    return (before["round"], before.get("events")) == (record["round"], record.get("events"))
