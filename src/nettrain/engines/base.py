"""What every engine receives (a :class:`Job`) and returns (a :class:`RunResult`), and
the record helpers all engines share (work counters, the divergence check)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from nettrain.algorithms.base import Algorithm, Method
from nettrain.checkpoint import Checkpoint, load_state, state_dict
from nettrain.engines.sim.clock import CostModel, VirtualClock
from nettrain.engines.timeline import Timeline
from nettrain.errors import ConfigError, DivergenceError
from nettrain.evaluation import model_metrics
from nettrain.faults import Faults
from nettrain.patterns import Communicator
from nettrain.problem.buffers import Buffers, mean
from nettrain.problem.oracle import Oracle, Problem
from nettrain.recording import RunFolder
from nettrain.topology import Topology
from nettrain.wrappers import Compressed, ErrorFeedback


def check_engine(engine: str, algorithm: Method) -> None:
    """A ConfigError unless ``algorithm`` lists ``engine`` in its ``engines`` (every engine
    checks this before any work; the configuration says it earlier, with choices)."""
    if engine not in algorithm.engines:
        raise ConfigError(
            f"engine={engine} cannot run algorithm={algorithm.name}: {algorithm.name} "
            f"{algorithm.engines_note}"
        )


@dataclass(frozen=True)
class Job:
    """A fully built run: the engine decides only where agents live and when they talk."""

    problem: Problem
    shards: list[torch.Tensor]  # training indices of agent i, for every agent
    topology: Topology
    algorithm: Algorithm
    x0: torch.Tensor  # (d,) common starting point of every agent
    rounds: int
    batch_size: int
    seed: int
    eval_every: int
    cost: CostModel
    eval_agents: int = 0  # 0 = evaluate every agent
    train_objective: bool = False  # records carry the social objective on the training set
    checkpoint_every: int = 0  # rounds between checkpoints; 0 = none
    phase: str = "fixed"  # asynchronous local phases: fixed durations or Poisson clocks
    progress: bool = False
    faults: Faults | None = None  # message drops, crashes, a split (None: none)
    timeline_rounds: int = 0  # rounds whose intervals the timeline notes; 0 = no timeline

    @property
    def n_agents(self) -> int:
        return len(self.shards)

    @property
    def fault_spec(self) -> Faults:
        """The injected faults; an empty spec when there are none."""
        return self.faults or Faults(self.n_agents, self.seed)

    def metrics(self, x: torch.Tensor, buffers: Buffers | None = None) -> dict[str, Any]:
        """What a record says about every agent's parameters ``x: (n, d)`` (and buffers
        ``{name: (n, ...)}``, for a model that has them)."""
        shards = self.shards if self.train_objective else None
        return model_metrics(self.problem, x, self.eval_agents, shards, buffers)


@dataclass(frozen=True)
class RunResult:
    x: torch.Tensor  # (n, d) final parameters of every agent
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    centre: torch.Tensor | None = None  # (d,) the centre variable of a centre-based method
    buffers: Buffers | None = None  # {name: (n, ...)} every agent's buffers, if the model has


class Engine(Protocol):
    name: str

    def run(self, job: Job, folder: RunFolder, resume: Checkpoint | None = None) -> RunResult: ...


def declared(
    comm: Communicator, algorithm: Method, seed: int, stream: torch.Generator | None = None
) -> Communicator:
    """``comm`` as ``algorithm`` declares its messages: through its ``compressor`` setting
    (:class:`~nettrain.wrappers.Compressed`: synchronous codes seeded by ``seed``, swaps'
    drawn from ``stream``) and, with ``error_feedback``, through
    :class:`~nettrain.wrappers.ErrorFeedback`; ``comm`` itself without a compressor."""
    compressor = getattr(algorithm, "compressor", None)
    if compressor is None:
        return comm
    compressed = Compressed(comm, compressor, seed, stream)
    return ErrorFeedback(compressed) if getattr(algorithm, "error_feedback", False) else compressed


class Stack:
    """The agents a process steps, for :func:`~nettrain.engines.driver.drive`: their
    ``oracle``, the engine's ``comm`` and ``talk``, the same as the algorithm declares
    its messages (:func:`declared`), the algorithm's ``state`` from ``x: (m, d)``, the
    virtual ``clock`` and the work ``totals``, and what a checkpoint keeps of them. The
    simulator's rounds and events and the distributed rounds build on it."""

    main, measured = True, False

    def __init__(
        self,
        job: Job,
        x: torch.Tensor,
        oracle: Oracle,
        comm: Communicator,
        totals: dict[str, torch.Tensor],
        stream: torch.Generator | None = None,
    ) -> None:
        self.job, self.oracle, self.comm, self.totals = job, oracle, comm, totals
        self.faults, self.clock = job.fault_spec, VirtualClock(job.cost)
        self.talk = declared(comm, job.algorithm, job.seed, stream)  # what the algorithm talks to
        self.state = job.algorithm.init(x, oracle, self.talk)

    def restore(self, resume: Checkpoint, state: dict[str, Any], rng: list[Any]) -> None:
        """Continue from ``resume``'s clock and totals, with ``state`` and ``rng``, its
        algorithm's state and the oracle's local state (mini-batches drawn, buffers, dropout
        streams; the fresh state is the template)."""
        self.state = load_state(self.state, state)
        self.oracle.load_local_state(rng)
        self.clock.now = resume.clock
        self.totals = {k: v.clone() for k, v in resume.totals.items()}

    def saved(self, stop: int, state: Any, rng: list[Any], **parts: Any) -> Checkpoint:
        """The checkpoint after round ``stop``: every agent's ``state`` and oracle state
        (``rng``), the clock, the totals and the engine's ``parts`` (``servers``, ``comm``,
        ``events``); the driver fills in ``records`` and ``wall_time_s``."""
        state, clock = state_dict(state), self.clock.now
        return Checkpoint(stop, state, rng, clock, self.totals, records=0, wall_time_s=0.0, **parts)

    def result(self, records: list[dict[str, Any]]) -> RunResult:
        """The end of a run that holds every agent: parameters, centre and buffers."""
        centre = self.job.algorithm.centre(self.state, self.comm)
        return RunResult(self.state.x, records, centre=centre, buffers=self.oracle.buffers or None)


def take_work(oracle: Oracle, comm: Communicator) -> tuple[torch.Tensor, ...]:
    """The samples, messages, bytes and messages within collectives ``(m,)`` each,
    counted since the last call."""
    return oracle.meter.reset(), *comm.traffic.reset()


def work_totals(n: int, faults: Faults) -> dict[str, torch.Tensor]:
    """A synchronous run's cumulative work per agent, ``(n,)`` each: samples, messages,
    bytes, and with dropped messages (``faults.drop``) the messages resent."""
    keys = ("samples", "messages", "bytes") + (("resent",) if faults.drop else ())
    return {k: torch.zeros(n, dtype=torch.int64) for k in keys}


def account_round(
    clock: VirtualClock,
    totals: dict[str, torch.Tensor],
    faults: Faults,
    t: int,
    samples: torch.Tensor,
    messages: torch.Tensor,
    nbytes: torch.Tensor,
    collective: torch.Tensor | None = None,
    timeline: Timeline | None = None,
) -> None:
    """Synchronous round ``t``'s work ``(n,)`` each, in both engines: advance ``clock``
    (dropped messages resent, :meth:`Faults.resent`) and add it to ``totals``; with a
    ``timeline``, note the round on the virtual clock (round ``t + 1``)."""
    resent = faults.resent(messages, t)
    start, extra = clock.now, resent * faults.resend_s
    clock.sync_round(samples, messages, nbytes, extra, collective)
    faults.check_available(t, start, clock.now)  # every process alike
    if timeline is not None and timeline.wants(t + 1):
        cost = clock.cost
        send = cost.send_seconds(messages, nbytes, collective) + extra
        timeline.sync_round(t + 1, start, clock.now, cost.compute_seconds(samples), send)
    work = {"samples": samples, "messages": messages, "bytes": nbytes, "resent": resent}
    for key in totals:
        totals[key] += work[key]


def account_rounds(
    clock: VirtualClock, totals: dict[str, torch.Tensor], work: torch.Tensor
) -> None:
    """Synchronous rounds with nothing noted round by round (no dropped messages, no
    availability windows, no timeline), their work ``(4, k, n)`` (samples, messages,
    bytes, messages within collectives; a row a round) in one pass: the clock and the
    totals of :func:`account_round` round after round, with the same numbers
    (:meth:`VirtualClock.sync_rounds`)."""
    clock.sync_rounds(*work)
    for key, moved in zip(("samples", "messages", "bytes"), work, strict=False):
        totals[key] += moved.sum(0)


def traffic_fields(totals: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Cumulative samples, messages and bytes: totals and the busiest agent's; the
    messages resent, where counted (:func:`work_totals`)."""
    fields = {
        "samples": int(totals["samples"].sum()),
        "messages_total": int(totals["messages"].sum()),
        "bytes_total": int(totals["bytes"].sum()),
        "messages_max_agent": int(totals["messages"].max()),
        "bytes_max_agent": int(totals["bytes"].max()),
    }
    if "resent" in totals:
        fields["messages_resent"] = int(totals["resent"].sum())
    return fields


def check_finite(loss: torch.Tensor, t: int, hint: str = Method.stability_hint) -> None:
    """Stop a diverged run with a message that names the round, the agents and the fix."""
    bad = ~torch.isfinite(loss)
    if bool(bad.any()):
        agents = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, agents[:8])) + (" ..." if len(agents) > 8 else "")
        raise DivergenceError(
            f"the run diverged at round {t + 1}: the training loss of agent(s) {shown} is "
            f"{float(loss[agents[0]])}. {hint}, or check the data for NaN"
        )


def model_fields(
    job: Job, name: str, model: torch.Tensor | None, buffers: Buffers | None = None
) -> dict[str, Any]:
    """``<name>_test_loss`` and ``<name>_test_accuracy`` of one model ``(d,)`` (with the
    agents' mean ``buffers``, for a model that has them): a centre-based method's centre
    variable, or a model an algorithm names (:meth:`~nettrain.algorithms.base.Method.judged`).
    With a validation split, also ``<name>_val_loss`` and ``<name>_val_accuracy``."""
    if model is None:
        return {}
    out: dict[str, Any] = {}
    splits = ("test", "val") if job.problem.data.x_val is not None else ("test",)
    averaged = mean(buffers) if buffers else None
    for split in splits:
        ev = job.problem.evaluate(model[None], averaged, split=split)
        out[f"{name}_{split}_loss"] = float(ev.loss[0])
        if ev.accuracy is not None:
            out[f"{name}_{split}_accuracy"] = float(ev.accuracy[0])
    return out


def staleness_fields(counts: Counter[int]) -> dict[str, Any]:
    """Exchanges with the centre and their staleness: mean, max and histogram."""
    total = sum(counts.values())
    if not total:
        return {"exchanges": 0}
    top = max(counts)
    return {
        "exchanges": total,
        "staleness_mean": sum(k * v for k, v in counts.items()) / total,
        "staleness_max": top,
        "staleness_hist": [counts.get(k, 0) for k in range(top + 1)],
    }


def status_line(record: dict[str, Any]) -> str:
    """The progress bar's note on a record."""
    if "centre_test_accuracy" in record:
        return f"centre acc {record['centre_test_accuracy']:.3f}"
    if "test_accuracy" in record:
        return f"acc {record['test_accuracy']:.3f}"
    return f"test loss {record['test_loss']:.4f}"
