"""A calibration profile: the virtual clock's constants measured on a machine.

``nettrain calibrate`` (:mod:`nettrain.calibration`) measures them and writes the
profile as a TOML file; ``cost_model=PATH`` loads it into the clock
(:func:`nettrain.experiment.build_cost_model`) in place of the guessed
``compute_s_per_sample``/``agent_gflops``, ``latency_s`` and ``bandwidth_gbps``. The
file has four tables::

    [compute]    seconds_per_sample: one agent's forward and backward pass per sample
                 with every process computing, and seconds_per_sample_alone with no
                 other process running; what it was measured for (model, hidden,
                 dataset, dtype, device, batch, d)
    [link]       latency_s, bandwidth_bytes_per_s of one_way_s = latency + bytes /
                 bandwidth, fitted to the measured one-way times of message_bytes in
                 neighbour exchanges
    [allreduce]  seconds of an all-reduce of d floats
    [rpc]        exchange_s: seconds of an rpc call carrying d floats, answered with d
    [engine]     round_overhead_s: seconds of the distributed engine's synchronous
                 round besides the pass and its messages; event_overhead_s: of an
                 asynchronous (gossip) event besides the pass and an rpc exchange;
                 message_overhead_s: what a neighbour message of d values costs the
                 engine's synchronous round beyond the link's fit
    [machine]    processes (measured together), date, host, torch and nettrain
                 versions, threads

Every figure but ``seconds_per_sample_alone`` was measured with ``processes``
processes busy at once (:mod:`nettrain.calibration.loaded`): the profile predicts a
run of that many processes on those machines. The pass alone is what a slow agent's
extra computing costs a second (the clock's ``c'``,
:mod:`nettrain.engines.sim.clock`).

A profile holds for the model, batch and parameter count it was measured with:
:meth:`Profile.check` refuses a run of another one.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from nettrain.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# table -> the Profile fields it holds, in the file's order
TABLES: dict[str, tuple[str, ...]] = {
    "compute": (
        "seconds_per_sample",
        "seconds_per_sample_alone",
        "model",
        "hidden",
        "dataset",
        "dtype",
        "device",
        "batch",
        "d",
    ),
    "link": ("latency_s", "bandwidth_bytes_per_s", "message_bytes", "one_way_s", "repeats"),
    "allreduce": ("allreduce_s",),
    "rpc": ("rpc_exchange_s",),
    "engine": ("round_overhead_s", "event_overhead_s", "message_overhead_s"),
    "machine": ("processes", "date", "host", "torch_version", "nettrain_version", "threads"),
}
# the name of a field in its table, where it differs from the field's
IN_TABLE = {"allreduce_s": "seconds", "rpc_exchange_s": "exchange_s"}
# entries a profile written by an earlier version lacks, and what they then are
ADDED = {"message_overhead_s": 0.0}


@dataclass(frozen=True)
class Profile:
    """What ``nettrain calibrate`` measured (the module says how the file is laid out).

    ``seconds_per_sample``: time of one agent's forward and backward pass over one
    mini-batch of ``batch`` samples (0: the agent's whole shard), divided by the samples
    it read, with ``processes`` processes computing at once (``_alone``: this process
    alone). ``latency_s`` and ``bandwidth_bytes_per_s``: the link's fit ``one_way =
    latency + bytes / bandwidth`` to the one-way times ``one_way_s`` of the messages
    ``message_bytes``. ``allreduce_s``: time of an all-reduce of ``d`` floats of
    ``dtype`` over the ``processes`` processes (the slowest rank's); ``rpc_exchange_s``:
    of an rpc call carrying ``d`` floats and its reply of as many. ``round_overhead_s``:
    what a synchronous round of the distributed engine costs besides the pass and its
    messages; ``event_overhead_s``: what an event of its asynchronous loop (a gossip
    agent's local step and exchange) costs besides the pass and an rpc exchange;
    ``message_overhead_s``: what a neighbour message of ``d`` values costs a synchronous
    round of the engine (D-PSGD's against local SGD's, a message) beyond ``latency +
    bytes / bandwidth`` (at least 0): the engine's own work of an exchange, which the
    clock adds to a neighbour message's latency.
    """

    seconds_per_sample: float
    seconds_per_sample_alone: float
    latency_s: float
    bandwidth_bytes_per_s: float
    allreduce_s: float
    rpc_exchange_s: float
    round_overhead_s: float
    event_overhead_s: float
    message_overhead_s: float
    processes: int
    model: str
    hidden: tuple[int, ...]
    dataset: str
    dtype: str
    device: str
    batch: int
    d: int
    message_bytes: tuple[int, ...]
    one_way_s: tuple[float, ...]
    repeats: int
    date: str
    host: str
    torch_version: str
    nettrain_version: str
    threads: int

    def __post_init__(self) -> None:
        positive = (*(s for s in SECONDS if s not in MAY_BE_ZERO), "bandwidth_bytes_per_s")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in MAY_BE_ZERO:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if len(self.message_bytes) != len(self.one_way_s):
            raise ValueError(
                f"{len(self.message_bytes)} message sizes for {len(self.one_way_s)} times"
            )

    def rpc_latency_s(self, itemsize: int) -> float:
        """One message's latency over rpc: half an exchange of ``d`` elements of
        ``itemsize`` bytes (a call and its reply), less its bytes over the bandwidth
        (at least 0)."""
        return max(0.0, self.rpc_exchange_s / 2 - self.d * itemsize / self.bandwidth_bytes_per_s)

    def collective_latency_s(self, itemsize: int) -> float | None:
        """One message's latency within an all-reduce: a ring all-reduce of ``d``
        elements over ``P = processes`` sends ``2 (P - 1)`` messages of ``d / P``, so
        ``allreduce_s / (2 (P - 1))`` less a message's bytes over the bandwidth (at least
        0); None for one process."""
        p = self.processes
        if p < 2:
            return None
        each = self.d * itemsize / p / self.bandwidth_bytes_per_s
        return max(0.0, self.allreduce_s / (2 * (p - 1)) - each)

    def fitted_s(self) -> list[float]:
        """The fit's one-way time of each of :attr:`message_bytes`."""
        return [self.latency_s + b / self.bandwidth_bytes_per_s for b in self.message_bytes]

    def check(self, model: str, batch: int, d: int, path: str | Path = "") -> None:
        """A ConfigError unless the profile was measured for ``model``, ``batch`` and ``d``
        parameters (a run's), saying what differs and how to measure the run's."""
        wrong = [
            f"{name} {mine} (the run's: {theirs})"
            for name, mine, theirs in (("model", self.model, model), ("batch", self.batch, batch))
            if mine != theirs
        ]
        if self.d != d:
            wrong.append(f"{self.d} parameters (the run's model has {d})")
        if wrong:
            raise ConfigError(
                f"cost_model={path or 'the profile'} was calibrated for another problem: "
                f"{', '.join(wrong)}; re-run `nettrain calibrate` with the run's keys (e.g. "
                f"nettrain calibrate model={model} batch_size={batch} dataset=... hidden=... "
                f"--out {path or 'profile.toml'})"
            )

    def to_toml(self) -> str:
        """The profile as TOML text, table after table (:data:`TABLES`)."""
        lines = [
            "# The virtual clock's constants measured by `nettrain calibrate`;",
            "# a run uses them with cost_model=PATH.",
        ]
        for table, names in TABLES.items():
            lines.append(f"\n[{table}]")
            lines += [f"{IN_TABLE.get(n, n)} = {toml_value(getattr(self, n))}" for n in names]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str) -> Profile:
        """The profile of TOML text written by :meth:`to_toml`; a ValueError or KeyError
        (naming the entry) for anything else."""
        data = tomllib.loads(text)
        values: dict[str, Any] = {}
        for table, names in TABLES.items():
            section = data.get(table)
            if not isinstance(section, Mapping):
                raise KeyError(f"no table [{table}]")
            for name in names:
                entry = IN_TABLE.get(name, name)
                if entry in section:
                    values[name] = section[entry]
                elif entry in ADDED:
                    values[name] = ADDED[entry]
                else:
                    raise KeyError(f"no {entry} in [{table}]")
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{name: convert(name, kinds[name], v) for name, v in values.items()})

    def write(self, path: str | Path) -> Path:
        """Write the profile to ``path`` (its folder made if need be); the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.to_toml())
        return out


# What two profiles to be averaged must share: what the pass was measured for (the
# compute table's entries after its two figures), the processes, threads and sizes.
SHARED = (*TABLES["compute"][2:], "processes", "threads", "message_bytes")
# The measured seconds, averaged as they are (bandwidth is averaged as seconds per byte).
SECONDS = (
    "seconds_per_sample",
    "seconds_per_sample_alone",
    "latency_s",
    "allreduce_s",
    "rpc_exchange_s",
    "round_overhead_s",
    "event_overhead_s",
    "message_overhead_s",
)
# Of those, the ones a calibration may find to be 0 (a latency below the fit's
# resolution, an overhead measured as less than nothing); every other must be > 0.
MAY_BE_ZERO = ("latency_s", "round_overhead_s", "event_overhead_s", "message_overhead_s")


def average_profiles(profiles: Sequence[Profile]) -> Profile:
    """One profile of several calibrations of the same problem on the same machines:
    every time the mean of theirs, one-way times included; the link the mean of their
    lines (latency the mean latency, bandwidth the reciprocal of the mean seconds per
    byte), which is the line of the mean times where each profile's times lie on its
    own; the repeats summed; date, host and versions those of the last. A ValueError
    where they differ in what they were measured for (:data:`SHARED`).

    Calibrations minutes apart on a shared machine can differ by a third where its load
    changes; those made before and after a run bracket the machine it ran on.
    """
    if not profiles:
        raise ValueError("no profiles to average")
    first, k = profiles[0], len(profiles)
    for other in profiles[1:]:
        differ = [n for n in SHARED if getattr(other, n) != getattr(first, n)]
        if differ:
            raise ValueError(
                "profiles measured for different runs cannot be averaged: they differ in "
                + ", ".join(f"{n} ({getattr(first, n)} and {getattr(other, n)})" for n in differ)
            )

    def mean(values: Sequence[float]) -> float:
        return math.fsum(values) / k

    times = {n: mean([getattr(p, n) for p in profiles]) for n in SECONDS}
    per_byte = mean([1 / p.bandwidth_bytes_per_s for p in profiles])
    one_way = tuple(mean(column) for column in zip(*(p.one_way_s for p in profiles), strict=True))
    return replace(
        profiles[-1],
        **times,
        bandwidth_bytes_per_s=1 / per_byte,
        one_way_s=one_way,
        repeats=sum(p.repeats for p in profiles),
    )


def toml_value(value: Any) -> str:
    """A TOML literal of a string, bool, int, float or a sequence of them."""
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def convert(name: str, kind: Any, value: Any) -> Any:
    """``value`` read from TOML as the field's type (``kind``, a string annotation)."""
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str):
        return value
    if kind.startswith("tuple[") and isinstance(value, list):
        item = "int" if kind.startswith("tuple[int") else "float"
        return tuple(convert(name, item, v) for v in value)
    raise ValueError(f"{name} = {value!r} is not a {kind}")


def load_profile(path: str | Path) -> Profile:
    """The profile in ``path``; a ConfigError saying what is wrong with a missing or
    malformed file and how to make one."""
    source = Path(path)
    remedy = f"write one with `nettrain calibrate KEY=VALUE ... --out {source}`"
    if not source.is_file():
        raise ConfigError(f"cost_model={source}: no such file; {remedy}")
    try:
        return Profile.from_toml(source.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"cost_model={source} is not a TOML file ({err}); {remedy}") from None
    except (KeyError, ValueError, TypeError) as err:
        message = err.args[0] if err.args else err
        raise ConfigError(
            f"cost_model={source} is not a calibration profile ({message}); {remedy}"
        ) from None
