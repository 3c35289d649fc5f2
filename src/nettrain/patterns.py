"""Communication patterns: the small closed set every engine implements.

An algorithm talks to other agents only through a :class:`Communicator`; it never
knows whether the agents live in one process (the ``sim`` engine stacks all ``n`` of
them, ``m = n``) or one per process (the ``distributed`` engine, ``m = 1``). Every
method takes and returns the local stack ``x: (m, d)``.

The patterns:

* neighbour mixing ``x_i <- sum_j W_ij(t) x_j`` (:meth:`Communicator.start_mix`);
* global mean ``x_i <- (1/n) sum_j x_j``, an all-reduce (:meth:`Communicator.start_mean`);
* pairwise exchange on disjoint pairs (:meth:`Communicator.swap`);
* worker-to-centre exchange with centre variables held by (sharded) parameter
  servers (:meth:`Communicator.centre_exchange`), each server applying the method's
  :class:`ServerRule` to its slice.

The ``start_*`` methods return a :class:`Handle` whose ``wait()`` finishes the
operation, so communication can overlap the next local computation (Bluefog-style);
the blocking forms are ``start_*(...).wait()``. Engines count messages and bytes per
agent in :attr:`Communicator.traffic` at this boundary, from what is sent.

Compression is not a pattern's argument: :class:`nettrain.wrappers.Compressed` wraps a
communicator and hands each exchange a :class:`Codec` (the compressor and the
generator of that exchange's random codes) through the keyword-only ``codec`` of the
patterns; each receiver then decodes against its own ``x_i``. Algorithms never pass one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nettrain.compression import Compressor


class Handle(Protocol):
    """A communication in flight; ``wait()`` blocks until it is done and returns ``(m, d)``."""

    def wait(self) -> torch.Tensor: ...


class ServerRule(Protocol):
    """What a parameter server does with a worker's message: all the centre pattern needs
    of a method (:class:`~nettrain.algorithms.base.CentreRule` implements it).

    The servers hold ``centre_rows`` rows of ``d`` values (row 0 is the centre variable),
    each of the ``servers`` servers a contiguous slice of the columns
    (:func:`~nettrain.problem.flat.block_slices`). An exchange sends ``sent: (d_s,)`` to
    a server, which applies ``serve`` atomically to its slice and replies.
    """

    centre_rows: int  # r, the rows the servers hold
    servers: int  # S, the servers the centre is sharded over

    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One exchange on a slice: ``(rows', reply)`` from ``rows: (r, d_s)`` and ``sent``."""
        ...


@dataclass(frozen=True)
class Codec:
    """How one exchange encodes what it sends: a compressor and, for a stochastic one, the
    generator of its random codes (made by :class:`nettrain.wrappers.Compressed`)."""

    compressor: Compressor
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Ready:
    """A handle whose result is already there (the simulator's and blocking engines')."""

    value: torch.Tensor

    def wait(self) -> torch.Tensor:
        return self.value


@dataclass
class Traffic:
    """Messages and bytes sent by each local agent since the last :meth:`reset`."""

    messages: torch.Tensor  # (m,) int64
    bytes: torch.Tensor  # (m,) int64

    @classmethod
    def zeros(cls, m: int) -> Traffic:
        return cls(torch.zeros(m, dtype=torch.int64), torch.zeros(m, dtype=torch.int64))

    def add(self, messages: torch.Tensor, nbytes: torch.Tensor) -> None:
        self.messages += messages
        self.bytes += nbytes

    def reset(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = (self.messages, self.bytes)
        self.messages = torch.zeros_like(self.messages)
        self.bytes = torch.zeros_like(self.bytes)
        return out


def ring_allreduce_cost(n: int, d: int, itemsize: int) -> tuple[int, int]:
    """Messages and bytes one agent sends in a ring all-reduce of ``d`` elements.

    Reduce-scatter then all-gather: ``2 (n - 1)`` messages of ``d / n`` elements each,
    ``2 (n - 1) / n * d * itemsize`` bytes (Patarasuk and Yuan, 2009).
    """
    if n == 1:
        return 0, 0
    return 2 * (n - 1), (2 * (n - 1) * d * itemsize) // n


@dataclass(frozen=True)
class Losses:
    """Which exchanges of a batch lose their request or their reply (``nettrain.faults``).

    Row ``r`` is the batch's ``r``-th exchange (``pairs[r]`` of ``swap``, ``workers[r]`` of
    ``centre_exchange``). A lost request reaches nobody (and gets no reply); a lost reply
    leaves the initiator with its own reference (``swap``) or what it sent
    (``centre_exchange``), so the exchange does not change it.
    """

    request: torch.Tensor  # (k,) bool
    reply: torch.Tensor  # (k,) bool, true wherever request is

    @property
    def any(self) -> bool:
        return bool(self.reply.any())


class Communicator(ABC):
    """The patterns an algorithm may use; one implementation per engine."""

    n_agents: int  # n, all agents of the run
    agents: torch.Tensor  # (m,) global ids of the agents held here
    traffic: Traffic

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of the local stack ``(k',)`` int64 that hold those of the global agent
        ids ``ids: (k,)`` held here, in their order (an agent held elsewhere has none)."""
        where = {a: k for k, a in enumerate(self.agents.tolist())}
        return torch.tensor([where[a] for a in ids.tolist() if a in where], dtype=torch.int64)

    def state_dict(self) -> dict[str, Any] | None:
        """What this communicator carries from round to round (error feedback's residual),
        for a checkpoint; None when nothing."""
        return None

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Take back what :meth:`state_dict` gave."""
        return None

    def at(self, t: int) -> Communicator:
        """This communicator for the exchanges of round ``t`` (a wrapper that numbers the
        round's exchanges returns a view; a plain communicator is itself)."""
        return self

    @abstractmethod
    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        """Start ``x_i <- sum_j W_ij(t) x_j`` with the topology's mixing matrix at round ``t``.

        One message per out-neighbour of ``x_j``'s ``d`` values. With a ``codec``, each
        agent encodes ``x_j`` once and sends that payload to each out-neighbour; receiver
        ``i`` decodes it against its own ``x_i`` (the lattice quantiser's reference):
        ``x_i <- W_ii x_i + sum_{j != i} W_ij decode(encode(x_j), x_i)``, one message per
        neighbour of ``codec.compressor.nbytes`` bytes.
        """

    @abstractmethod
    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        """Start the all-reduce ``x_i <- (1/n) sum_j x_j`` over all ``n`` agents, counted
        as a ring all-reduce (:func:`ring_allreduce_cost`).

        With a ``codec`` it is an all-gather of the encoded contributions:
        ``x_i <- (1/n) sum_j decode(encode(x_j), x_i)``, agent ``i``'s own included, so
        every agent gets the same mean whenever decoding does not depend on the
        reference (and, for the lattice quantiser, within its guarantee). It costs what a
        ring all-gather of the payloads costs: ``n - 1`` messages and ``(n - 1)`` payloads
        of ``nbytes`` bytes an agent (every payload has the same size).
        """

    def mix(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``start_mix(x, t).wait()``."""
        return self.start_mix(x, t).wait()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """``start_mean(x).wait()``."""
        return self.start_mean(x).wait()

    def swap(
        self,
        x: torch.Tensor,
        pairs: torch.Tensor,
        ref: torch.Tensor,
        *,
        codec: Codec | None = None,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """Pairwise exchange on the disjoint ``pairs: (p, 2)`` (global agent ids).

        For each pair ``(i, j)``, ``i`` receives ``decode(encode(x_j), ref_i)`` and ``j``
        receives ``decode(encode(x_i), ref_j)`` (``x_j`` and ``x_i`` as they are without
        a ``codec``). Returns ``(m, d)``: the received rows, and ``x`` itself for local
        agents in no pair. Each sender's message and its encoded bytes are counted. Used
        by SwarmSGD and AD-PSGD. With ``losses`` (:class:`nettrain.wrappers.Lossy`), a
        lost request reaches nobody and gets no reply, a lost reply leaves the initiator
        with its ``ref``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no pairwise exchange yet")

    def centre_exchange(
        self,
        sent: torch.Tensor,
        workers: torch.Tensor,
        rule: ServerRule,
        synchronous: bool = False,
        *,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """Exchanges of ``workers: (k,)`` (global ids, local here) with the centre servers.

        Worker ``w`` sends ``sent[w]: (d,)``, split into the servers' contiguous slices;
        each server applies ``rule.serve`` to its slice atomically (a lock per server,
        none global) and replies. Returns the replies ``(k, d)``. Asynchronous: exchanges
        are applied in row order, each on the centre as the earlier ones left it.
        Synchronous (one call per round by every worker): every exchange of the round
        reads the centre as the round found it and their changes add up
        (``c <- c + sum_w (serve(c, sent_w) - c)``), in any arrival order. Each worker
        sends one message per server. Used by the elastic averaging family and DOWNPOUR.
        With ``losses`` (:class:`nettrain.wrappers.Lossy`), a lost request reaches no
        server and a lost reply leaves the worker with what it sent.
        """
        raise NotImplementedError(f"{type(self).__name__} has no centre exchange")

    def centre(self) -> torch.Tensor:
        """The centre variable ``(d,)`` as the servers hold it now (row 0 of their rows)."""
        raise NotImplementedError(f"{type(self).__name__} has no centre")
