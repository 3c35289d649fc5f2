"""Communication patterns: the small closed set every engine implements.

An algorithm talks to other agents only through a :class:`Communicator`; it never
knows whether the agents live in one process (the ``sim`` engine stacks all ``n`` of
them, ``m = n``) or one per process (the ``distributed`` engine, ``m = 1``). Every
method takes and returns the local stack ``x: (m, d)``.

The patterns:

* neighbour mixing ``x_i <- sum_j W_ij(t) x_j`` (:meth:`Communicator.start_mix`);
* global mean ``x_i <- (1/n) sum_j x_j``, an all-reduce (:meth:`Communicator.start_mean`;
  :meth:`Communicator.start_mean_parts` takes its input in column slices as they are
  ready, e.g. a gradient bucket by bucket during the backward pass);
* pairwise exchange on disjoint pairs (:meth:`Communicator.swap`);
* worker-to-centre exchange with centre variables held by (sharded) parameter
  servers (:meth:`Communicator.centre_exchange`), each server applying the method's
  :class:`ServerRule` to its slice;
* one model shared by worker processes, cut into blocks, read and written in place
  without locks (:class:`SharedModel`: ``read_shared``, ``write_shared``,
  ``mean_shared``), the pattern of the ``shared_memory`` engine.

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

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nettrain.compression import Compressor


class Handle(Protocol):
    """A communication in flight; ``wait()`` blocks until it is done and returns ``(m, d)``,
    a new tensor that the caller owns (it may update it in place)."""

    def wait(self) -> torch.Tensor: ...


class PartsHandle(Protocol):
    """A pattern whose input ``(m, d)`` is handed over in column slices as they become
    final (a gradient bucket by bucket, :class:`~nettrain.problem.buckets.GradientSink`),
    so that it can start sending them before the rest exists."""

    bucket_bytes: int  # the largest slice it wants at once, in bytes; 0: no preference

    def put(self, cols: slice, part: torch.Tensor) -> None:
        """Columns ``cols`` of the input are final: ``part = whole[:, cols]``."""
        ...

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        """The result for the whole input ``whole: (m, d)``, a new tensor the caller owns.
        The slices put so far must be ``whole``'s; columns never put are sent now."""
        ...


def never_put(puts: list[slice], d: int) -> list[slice]:
    """The column ranges of ``[0, d)`` that none of ``puts`` covers (the slices a
    :class:`PartsHandle` was given, disjoint, in any order), ascending: what its ``wait``
    has left to send."""
    gaps, start = [], 0
    for cols in sorted(puts, key=lambda c: c.start):
        if cols.start > start:
            gaps.append(slice(start, cols.start))
        start = max(start, cols.stop)
    return [*gaps, slice(start, d)] if start < d else gaps


@dataclass
class AtTheEnd:
    """A :class:`PartsHandle` that sends nothing early: ``wait(whole)`` starts
    ``start(whole)`` and waits for it (the simulator's, and a compressed exchange's,
    which encodes the whole vector at once)."""

    start: Callable[[torch.Tensor], Handle]
    bucket_bytes: int = 0

    def put(self, cols: slice, part: torch.Tensor) -> None:
        return None

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        return self.start(whole).wait()


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


@dataclass(frozen=True)
class Deferred:
    """A handle that computes its result when waited for: the simulator's mixing, whose
    ``(m, d)`` result then does not exist while the work it overlaps (a gradient) runs,
    one stack less at a round's peak. Its input must not change before ``wait``, as for
    any exchange in flight."""

    compute: Callable[[], torch.Tensor]

    def wait(self) -> torch.Tensor:
        return self.compute()


@dataclass
class Traffic:
    """Messages and bytes sent by each local agent since the last :meth:`reset`, and of
    those messages the ones sent within collectives (all-reduces, all-gathers), which a
    calibrated clock charges at the collective's own latency."""

    messages: torch.Tensor  # (m,) int64
    bytes: torch.Tensor  # (m,) int64
    collective: torch.Tensor  # (m,) int64, messages within collectives (of ``messages``)

    @classmethod
    def zeros(cls, m: int) -> Traffic:
        return cls(*(torch.zeros(m, dtype=torch.int64) for _ in range(3)))

    def add(self, messages: torch.Tensor, nbytes: torch.Tensor, collective: bool = False) -> None:
        self.messages += messages
        self.bytes += nbytes
        if collective:
            self.collective += messages

    def reset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(messages, bytes, collective)`` since the last call, and start again from 0."""
        out = (self.messages, self.bytes, self.collective)
        self.messages, self.bytes, self.collective = (torch.zeros_like(t) for t in out)
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

    def held(self) -> dict[int, int]:
        """The row of the local stack ``x: (m, d)`` of each agent held here, by global id."""
        return {int(a): k for k, a in enumerate(self.agents.tolist())}

    def local_rows(self, ids: torch.Tensor, held_only: bool = False) -> torch.Tensor:
        """The rows of the local stack ``x: (m, d)`` that hold the global agent ids
        ``ids: (k,)``, in their order, ``(k,)`` int64. An id held by another process is
        an error, unless ``held_only``: then it is left out (a partner held elsewhere)."""
        where = self.held()
        missing = [int(a) for a in ids if int(a) not in where]
        if missing and not held_only:
            raise ValueError(
                f"agents {missing} are not held here (this process holds {list(where)})"
            )
        rows = [where[int(a)] for a in ids if int(a) in where]
        return torch.tensor(rows, dtype=torch.int64, device=ids.device)

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

    def start_mean_parts(self, like: torch.Tensor, *, codec: Codec | None = None) -> PartsHandle:
        """Start the all-reduce of :meth:`start_mean` on an input shaped like ``like:
        (m, d)`` that is handed over in column slices (``put``) as they become final,
        and finished by ``wait(whole)``: the same mean, counted the same way (one ring
        all-reduce of ``d``, or with a ``codec``, whose compressor must be
        :attr:`~nettrain.compression.Compressor.columnwise`, one all-gather of the whole
        payload). A communicator may send each slice as soon as it is put (the
        distributed one, as DDP's buckets); by default nothing is sent before ``wait``
        (:class:`AtTheEnd`), which then is ``start_mean(whole, codec=codec).wait()``."""
        return AtTheEnd(functools.partial(self.start_mean, codec=codec))

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
        synchronous: bool = False,
        *,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """Exchanges of ``workers: (k,)`` (global ids, local here) with the centre servers.

        Worker ``w`` sends ``sent[w]: (d,)``, split into the servers' contiguous slices;
        each server applies its rule (the method's :class:`ServerRule`, given to the servers
        when they were built) to its slice atomically (a lock per server,
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


class SharedModel(ABC):
    """One model ``x: (d,)`` in memory that ``workers`` processes map, cut into ``blocks``
    contiguous blocks (:func:`~nettrain.problem.flat.block_slices`); the view of worker
    ``worker``. One per worker of the ``shared_memory`` engine.

    Reads and writes take no lock: others write while a worker reads (the inconsistent
    read of Hogwild). The pattern counts, per block, the writes it has received (its
    *version*) and per worker the writes it made to each block; the *staleness* of a
    read is, summed over its blocks, the writes they received after it until it is used
    (the worker's next ``write_shared`` or ``mean_shared``).
    """

    worker: int  # c, this worker
    workers: int  # P, all workers
    blocks: int  # the blocks the model is cut into
    slices: list[slice]  # the blocks' columns

    def owned(self) -> tuple[int, ...]:
        """The blocks this worker owns, round robin: ``b`` with ``b mod P = worker``."""
        return tuple(range(self.worker, self.blocks, self.workers))

    def mask(self, blocks: tuple[int, ...]) -> torch.Tensor:
        """``(d,)`` bool: the coordinates of ``blocks``."""
        mask = torch.zeros(self.slices[-1].stop, dtype=torch.bool)
        for b in blocks:
            mask[self.slices[b]] = True
        return mask

    @abstractmethod
    def read_shared(self) -> torch.Tensor:
        """A private copy of the shared ``x`` ``(d,)`` as it is now (others may be writing);
        remembers the blocks' versions for the read's staleness."""

    @abstractmethod
    def write_shared(self, blocks: tuple[int, ...], direction: torch.Tensor, lr: float) -> None:
        """``x_b <- x_b - lr direction_b`` in place for every ``b`` in ``blocks``, one
        block after another, no lock; ``direction: (d,)``. Each written block's version
        and this worker's count of writes to it go up by one."""

    @abstractmethod
    def mean_shared(self, g: torch.Tensor) -> torch.Tensor:
        """``(1/P) sum_p g_p`` ``(d,)``: every worker puts its ``g: (d,)`` and waits for all
        the others (a barrier), so every worker must call it in the same step."""

    @abstractmethod
    def sync_shared(self) -> None:
        """Wait until every worker has reached this call (a barrier)."""


def shared_fields(
    stale_sum: torch.Tensor, reads: torch.Tensor, stale_max: torch.Tensor, updates: torch.Tensor
) -> dict[str, Any]:
    """Record fields from a shared model's counters: the staleness of its block reads
    (mean over every block read, and max) and ``updates: (blocks,)``, writes per block."""
    return {
        "staleness_mean": float(stale_sum) / max(int(reads), 1),
        "staleness_max": int(stale_max),
        "updates_per_block_min": int(updates.min()),
        "updates_per_block_max": int(updates.max()),
        "updates_per_block": [int(v) for v in updates],
    }
