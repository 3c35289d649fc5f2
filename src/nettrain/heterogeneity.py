"""Heterogeneous agents: per-agent compute speed, link bandwidth and availability
(docs/faults.md, "Heterogeneous agents").

Two config keys draw one factor per agent from a distribution, seeded by the run's
``seed`` (one stream each, so changing one leaves the other's draws as they were):

* ``speed=SPEC``: agent ``i`` computes ``speed_i`` times as fast as the cost model's
  agent, so its compute time is divided by ``speed_i`` (and multiplied by its straggler
  slow-down, when it is a straggler: :class:`~nettrain.engines.sim.clock.CostModel`);
* ``bandwidth=SPEC``: agent ``i``'s link carries ``bandwidth_i * bandwidth_gbps``.

``SPEC`` is ``constant`` (every factor 1: the homogeneous cost model exactly),
``lognormal:SIGMA`` (``exp(N(0, SIGMA^2))``, median 1) or ``uniform:LO:HI``.

A trace (``trace=PATH``) is a CSV file with the header
``agent,speed,bandwidth_gbps,available_from,available_to``: one row per availability
window of an agent (virtual seconds, ``[from, to)``; an empty ``to`` or ``inf`` is
open-ended, an empty ``from`` is 0). Its ``speed`` multiplies the drawn one, its
``bandwidth_gbps`` replaces ``bandwidth_gbps`` for that agent (the drawn factor still
multiplies it); an empty cell keeps the default. An agent that the trace does not list
is always available, with factor 1. An agent outside all its windows is away: the fault
machinery (:class:`~nettrain.faults.Faults`) treats it as crashed until its next
window opens.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nettrain.errors import ConfigError

DISTRIBUTIONS = ("constant", "lognormal:SIGMA", "uniform:LO:HI")
TRACE_COLUMNS = ("agent", "speed", "bandwidth_gbps", "available_from", "available_to")
# seeds of the draws' streams, next to the stragglers' (0x57A6, engines/sim/clock.py)
STREAMS = {"speed": 0x5BEE, "bandwidth": 0xBA4D}


@dataclass(frozen=True)
class Distribution:
    """A distribution of per-agent factors: ``kind`` with its parameters."""

    kind: str  # constant, lognormal or uniform
    params: tuple[float, ...] = ()

    @property
    def constant(self) -> bool:
        return self.kind == "constant"

    def draw(self, n: int, seed: int, stream: int) -> torch.Tensor:
        """``(n,)`` float64 factors, a function of ``(seed, stream)`` only."""
        if self.kind == "constant":
            return torch.ones(n, dtype=torch.float64)
        rng = np.random.default_rng([seed, stream])
        if self.kind == "lognormal":
            values = np.exp(rng.normal(0.0, self.params[0], n))
        else:
            values = rng.uniform(self.params[0], self.params[1], n)
        return torch.as_tensor(values, dtype=torch.float64)


def parse_distribution(name: str, text: str) -> Distribution:
    """``"lognormal:0.5"`` -> its :class:`Distribution`; anything else a ConfigError that
    names the key ``name`` and the forms it takes."""
    forms = ", ".join(DISTRIBUTIONS)
    kind, *rest = text.strip().split(":")
    try:
        params = tuple(float(p) for p in rest)
    except ValueError:
        params = (math.nan,)
    shapes = {"constant": 0, "lognormal": 1, "uniform": 2}
    if kind not in shapes or len(params) != shapes[kind] or not all(map(math.isfinite, params)):
        raise ConfigError(
            f"{name}={text!r} is not a distribution of per-agent factors; use one of {forms} "
            f"(e.g. {name}=lognormal:0.5 or {name}=uniform:0.5:2)"
        )
    if kind == "lognormal" and params[0] < 0:
        raise ConfigError(f"{name}={text!r}: SIGMA must be >= 0 (0 is every factor 1)")
    if kind == "uniform" and not 0 < params[0] <= params[1]:
        raise ConfigError(f"{name}={text!r}: uniform:LO:HI needs 0 < LO <= HI (e.g. uniform:0.5:2)")
    return Distribution(kind, params)


def draw_factors(name: str, text: str, n: int, seed: int) -> torch.Tensor:
    """The ``(n,)`` factors of key ``name`` (``speed`` or ``bandwidth``) for ``seed``."""
    return parse_distribution(name, text).draw(n, seed, STREAMS[name])


Windows = tuple[tuple[float, float], ...]  # sorted, disjoint [from, to) in virtual seconds


@dataclass(frozen=True)
class Availability:
    """When each of ``n`` agents is available: ``windows[i]`` (None: always)."""

    windows: tuple[Windows | None, ...]

    @property
    def any(self) -> bool:
        """Whether some agent is ever away."""
        return any(w is not None and w != ((0.0, math.inf),) for w in self.windows)

    def available(self, agent: int, at: float) -> bool:
        """Whether ``agent`` is in one of its windows at virtual time ``at``."""
        windows = self.windows[agent]
        return windows is None or any(a <= at < b for a, b in windows)

    def covers(self, agent: int, start: float, end: float) -> bool:
        """Whether one window of ``agent`` holds all of ``[start, end]`` (``end`` may be
        the window's closing time: a synchronous round that ends as it closes)."""
        windows = self.windows[agent]
        return windows is None or any(a <= start and end <= b for a, b in windows)

    def phase_end(self, agent: int, start: float, duration: float) -> float:
        """When a local phase of ``duration`` seconds that ``agent`` starts at ``start``
        ends, its event then coming inside a window: a phase that a window's closing
        interrupts starts again, whole, when the agent's next window opens (the crash
        with rejoin of docs/faults.md); ``inf`` when no window is left for it."""
        windows = self.windows[agent]
        if windows is None:
            return start + duration
        for a, b in windows:
            begin = max(start, a)
            if begin + duration < b:
                return begin + duration
        return math.inf

    def away(self, agent: int, start: float, end: float) -> list[tuple[float, float]]:
        """The parts of ``[start, end)`` when ``agent`` is away (for tests and reports)."""
        windows = self.windows[agent]
        if windows is None:
            return []
        out, at = [], start
        for a, b in windows:
            if a > at:
                out.append((at, min(a, end)))
            at = max(at, b)
            if at >= end:
                break
        if at < end:
            out.append((at, end))
        return [(a, b) for a, b in out if a < b]


@dataclass(frozen=True)
class Trace:
    """A trace file's content for ``n`` agents: each agent's speed factor, link bandwidth
    in Gbit/s (None: the config's ``bandwidth_gbps``) and availability."""

    speed: torch.Tensor  # (n,) float64, 1 for agents the trace leaves out
    bandwidth_gbps: tuple[float | None, ...]
    availability: Availability


def _number(path: Path, line: int, column: str, text: str, default: float) -> float:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"trace {path}, line {line}: {column}={text!r} is not a number") from None
    if math.isnan(value):
        raise ConfigError(f"trace {path}, line {line}: {column} is nan; give a number")
    return value


def load_trace(path: str | Path, n: int) -> Trace:
    """Read and check the trace ``path`` for ``n`` agents (module docstring); every
    problem is a ConfigError naming the file, the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"trace={path}: no such file; give the path of a CSV file with the header "
            f"{','.join(TRACE_COLUMNS)}"
        )
    with path.open(newline="") as f:
        rows = [(k, r) for k, r in enumerate(csv.reader(f), 1) if r and not r[0].startswith("#")]
    if not rows or tuple(c.strip() for c in rows[0][1]) != TRACE_COLUMNS:
        found = ",".join(rows[0][1]) if rows else "nothing"
        raise ConfigError(
            f"trace {path}: the first line must be the header {','.join(TRACE_COLUMNS)}, "
            f"found {found}"
        )
    speeds: dict[int, tuple[int, float]] = {}
    links: dict[int, tuple[int, float]] = {}
    windows: dict[int, list[tuple[float, float, int]]] = {}
    for line, row in rows[1:]:
        if len(row) != len(TRACE_COLUMNS):
            raise ConfigError(
                f"trace {path}, line {line}: {len(row)} fields, expected {len(TRACE_COLUMNS)} "
                f"({','.join(TRACE_COLUMNS)}; leave a cell empty for its default)"
            )
        text = row[0].strip()
        if not text.isdigit() or int(text) >= n:
            raise ConfigError(
                f"trace {path}, line {line}: agent={text!r} is not an agent id; the run has "
                f"agents 0..{n - 1} (agents=)"
            )
        agent = int(text)
        for column, cell, seen in ((1, row[1], speeds), (2, row[2], links)):
            name = TRACE_COLUMNS[column]
            if not cell.strip():
                continue
            value = _number(path, line, name, cell, 1.0)
            if not 0 < value < math.inf:
                raise ConfigError(f"trace {path}, line {line}: {name} must be > 0, got {value}")
            if agent in seen and seen[agent][1] != value:
                raise ConfigError(
                    f"trace {path}, line {line}: agent {agent} has {name} {value} here and "
                    f"{seen[agent][1]} on line {seen[agent][0]}; an agent has one {name}: "
                    "give its rows the same value (or leave the cell empty)"
                )
            seen[agent] = (line, value)
        begin = _number(path, line, "available_from", row[3], 0.0)
        end = _number(path, line, "available_to", row[4], math.inf)
        if not 0 <= begin < end or begin == math.inf:
            raise ConfigError(
                f"trace {path}, line {line}: the window [{begin}, {end}) is empty or negative; "
                "available_from must be >= 0 and below available_to (virtual seconds)"
            )
        windows.setdefault(agent, []).append((begin, end, line))
    merged: list[Windows | None] = [None] * n
    for agent, items in windows.items():
        items.sort()
        out: list[tuple[float, float]] = []
        for (a, b, line), previous in zip(items, [None, *items[:-1]], strict=True):
            if previous is not None and a < previous[1]:
                raise ConfigError(
                    f"trace {path}: agent {agent}'s windows overlap: [{previous[0]}, "
                    f"{previous[1]}) on line {previous[2]} and [{a}, {b}) on line {line}; "
                    "merge them into one row or make them disjoint"
                )
            if out and out[-1][1] == a:  # touching windows are one
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        merged[agent] = tuple(out)
    speed = torch.ones(n, dtype=torch.float64)
    for agent, (_, value) in speeds.items():
        speed[agent] = value
    bandwidth = tuple(links[a][1] if a in links else None for a in range(n))
    return Trace(speed, bandwidth, Availability(tuple(merged)))


def availability(trace: str, n: int) -> Availability | None:
    """The availability of the trace ``trace`` (a path; empty: none) for ``n`` agents;
    None when no agent is ever away."""
    if not trace.strip():
        return None
    found = load_trace(trace, n).availability
    return found if found.any else None


def agent_factors(
    speed: str, bandwidth: str, trace: str, n: int, seed: int, bandwidth_bytes_per_s: float
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Each agent's speed factor and bandwidth factor (relative to
    ``bandwidth_bytes_per_s``, the cost model's one bandwidth), ``(n,)`` each: the drawn
    ones (``speed=``, ``bandwidth=``) times the trace's. None where every agent has 1 and
    nothing was asked (``constant`` and no trace value): the homogeneous cost model's
    numbers bit for bit."""
    speed_dist = parse_distribution("speed", speed)
    link_dist = parse_distribution("bandwidth", bandwidth)
    speeds = None if speed_dist.constant else speed_dist.draw(n, seed, STREAMS["speed"])
    links = None if link_dist.constant else link_dist.draw(n, seed, STREAMS["bandwidth"])
    if trace.strip():
        found = load_trace(trace, n)
        if bool((found.speed != 1).any()):
            speeds = found.speed if speeds is None else speeds * found.speed
        if any(b is not None for b in found.bandwidth_gbps):
            given = torch.tensor(
                [
                    1.0 if b is None else b * 1e9 / 8 / bandwidth_bytes_per_s
                    for b in found.bandwidth_gbps
                ],
                dtype=torch.float64,
            )
            links = given if links is None else links * given
    return speeds, links
