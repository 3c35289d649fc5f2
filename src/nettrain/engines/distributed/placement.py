"""Which agents each process of the distributed engine holds.

``engine=distributed`` spreads ``n`` agents over ``P`` processes; process ``r`` holds
the stack ``x: (m_r, d)`` of its agents, ascending, and runs the simulator's vectorised
oracle over them. A placement is given as

* ``blocks`` (the default): contiguous blocks, sizes differing by at most one
  (``torch.tensor_split``), so a ring or a torus crosses processes only at the blocks'
  ends;
* ``strided``: agent ``i`` on process ``i mod P``;
* explicit lists, ``"0,1,2;3,4,5;6,7"``: process ``r``'s agents are the ``r``-th group,
  ``a-b`` a range (``"0-3;4-7"``); every agent exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from nettrain.errors import ConfigError

PLACEMENTS = ("blocks", "strided")


@dataclass(frozen=True)
class Placement:
    """``groups[r]``: the agents process ``r`` holds, ascending; every agent once."""

    groups: tuple[tuple[int, ...], ...]

    @classmethod
    def parse(cls, spec: str, n: int, processes: int) -> Placement:
        """The placement ``spec`` names for ``n`` agents on ``processes`` processes."""
        if not 1 <= processes <= n:
            raise ConfigError(
                f"{processes} processes for {n} agents: each process holds at least one "
                f"agent, so launch between 1 and {n} agent processes"
            )
        if spec == "blocks":
            parts = torch.arange(n).tensor_split(processes)
            return cls(tuple(tuple(p.tolist()) for p in parts))
        if spec == "strided":
            return cls(tuple(tuple(range(r, n, processes)) for r in range(processes)))
        try:
            groups = [_agents(group) for group in spec.split(";")]
        except ValueError:
            raise ConfigError(
                f"placement={spec!r}: give blocks, strided, or each process's agents as "
                "comma-separated ids and a-b ranges, processes separated by ';' "
                "(placement=0-3;4-7)"
            ) from None
        placement = cls(tuple(tuple(sorted(g)) for g in groups))
        placement.check(n, processes)
        return placement

    def check(self, n: int, processes: int) -> None:
        """Raise :class:`ConfigError` unless this places each of ``n`` agents exactly once
        on ``processes`` processes, none empty."""
        if len(self.groups) != processes:
            raise ConfigError(
                f"the placement gives {len(self.groups)} processes' agents, but {processes} "
                "processes hold agents: give one group per process"
            )
        if any(not g for g in self.groups):
            raise ConfigError("every process of the placement must hold at least one agent")
        every = sorted(a for g in self.groups for a in g)
        if every != list(range(n)):
            missing = sorted(set(range(n)) - set(every))
            twice = sorted({a for a in every if every.count(a) > 1})
            raise ConfigError(
                f"the placement must hold each of the {n} agents exactly once "
                f"(missing {missing[:8]}, repeated {twice[:8]}, "
                f"out of range {sorted(a for a in set(every) if not 0 <= a < n)[:8]})"
            )

    @property
    def processes(self) -> int:
        return len(self.groups)

    @cached_property
    def n(self) -> int:
        return sum(len(g) for g in self.groups)

    @cached_property
    def owner(self) -> torch.Tensor:
        """``(n,)`` int64: the process that holds each agent."""
        out = torch.empty(self.n, dtype=torch.int64)
        for r, group in enumerate(self.groups):
            out[list(group)] = r
        return out

    @cached_property
    def order(self) -> torch.Tensor:
        """``(n,)`` int64: the agents in process order (process 0's, then 1's, ...)."""
        return torch.tensor([a for g in self.groups for a in g], dtype=torch.int64)

    @cached_property
    def position(self) -> torch.Tensor:
        """``(n,)`` int64: where each agent stands in :attr:`order`."""
        return torch.argsort(self.order)

    @property
    def largest(self) -> int:
        """The most agents one process holds."""
        return max(len(g) for g in self.groups)


def check_grouped_events(
    algorithm: str,
    n: int,
    processes: int,
    servers: int,
    *,
    rejoin: bool,
    checkpoint_every: int,
    faults: bool,
) -> None:
    """Raise :class:`ConfigError` where an asynchronous ``algorithm`` whose ``n`` agents
    share ``processes < n`` agent processes asks for what only one agent a process does:
    processes that rejoin (``rejoin``, ``restarts``), snapshots (``checkpoint_every``)
    and injected faults (``message_drop``, ``crash``, ``split``). Each is a feature of a
    process that is one agent: its death, its snapshot, its down windows."""
    if processes >= n:
        return
    asked = [
        name
        for name, on in (
            ("rejoin/restarts", rejoin),
            (f"checkpoint_every={checkpoint_every}", checkpoint_every > 0),
            ("message_drop, crash or split", faults),
        )
        if on
    ]
    if asked:
        raise ConfigError(
            f"algorithm={algorithm} is asynchronous, and with {n} agents on {processes} agent "
            f"processes (several a process) it cannot take {' and '.join(asked)}: they need "
            f"one process per agent. Set nproc={n + servers} (or nproc=0), or leave "
            f"{' and '.join(asked)} out"
        )


def _agents(group: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]`` (ValueError on anything else)."""
    out: list[int] = []
    for part in group.split(","):
        first, dash, last = part.strip().partition("-")
        out += range(int(first), int(last) + 1) if dash else [int(first)]
    return out
