"""torch.distributed communicator: this process's agents, ``x: (m, d)``.

A :class:`~.placement.Placement` says which agents each process holds (one when there
are as many processes as agents). Every rank computes ``W(t)`` itself (a pure function
of ``(seed, t)``, see :mod:`nettrain.topology.schedules`), so no rank ever asks another
who its peers are.

* Neighbour mixing: the process's :class:`~.halo.Halo` plan of ``W(t)``: the block of
  its own agents as one kernel over ``x``, and in one ``batch_isend_irecv`` it sends
  each other process the rows of ``x`` that process needs and receives the rows it
  needs; the handle's ``wait()`` waits those requests and adds the received rows'
  terms. Its result is this process's rows of the simulator's ``W @ x``.
* Global mean: the local sum, ``all_reduce(SUM, async_op=True)``, divided by ``n`` in
  ``wait()``; of a gradient handed over bucket by bucket (``start_mean_parts``), one
  per bucket, each started as the backward pass finishes it (:mod:`.buckets`).
* With a codec (:class:`~nettrain.patterns.Codec`, from
  :class:`~nettrain.wrappers.Compressed`), the process encodes its rows once; a mix
  sends each process the payload rows it needs, packed into one ``uint8`` buffer
  (:func:`~nettrain.compression.payloads.pack`) whose length both sides derive from
  ``W(t)``, ``d`` and the compressor, so every receive is posted before anything
  arrives; a mean all-gathers every process's packed payload (padded to the longest).
  ``wait()`` decodes each received row against the receiving agent's ``x_i``
  (:mod:`nettrain.engines.coded`, the simulator's functions).

Traffic is counted per agent as the simulator counts it: agent ``j`` sends one message
of ``d`` elements to each out-neighbour ``i != j`` of a mix, wherever ``i`` is held; an
all-reduce counts as the ring all-reduce (:func:`~nettrain.patterns.ring_allreduce_cost`).
A compressed message counts ``compressor.nbytes`` (exact, bits packed); a compressed
mean counts as a ring all-gather, ``n - 1`` messages of one payload each. What really
crosses processes is counted apart, per process (:attr:`DistCommunicator.wire`).

A failed exchange (a peer died, or did not answer within the group's timeout) raises
:class:`~nettrain.errors.PeerError`, naming this rank and, for neighbour mixing, the peer.

Asynchronous exchanges (``swap``, ``centre_exchange``) are made by this process's agents,
several at once when it holds several: a gossip partner held here is exchanged in place,
as the simulator does (no call; both sides' messages counted), one held elsewhere with one
call to the :class:`~.gossip.Peer` its process hosts for it (:func:`peer_name`), the calls
of one batch all started before any is waited for. They take the engine's faults
(``losses``, from :class:`~nettrain.wrappers.Lossy`, :mod:`nettrain.faults`): a lost request
makes no call (its message and bytes still count: they were sent); a lost reply makes
the call, so the partner or the servers take the request in, and hands the initiator
its reference (``swap``) or what it sent (``centre_exchange``). A gossip partner whose
rpc fails is a lost request too; if its process's heartbeat has stopped as well (the
process is dead, :mod:`.liveness`) that process joins :attr:`dead` and is never called
again, while a slow but live partner is called again at its next draw. The parameter
servers must not die: a failed call to one raises. Each asynchronous exchange carries
:attr:`seq`, the engine's event number: after a resume, an exchange the partner (or a
server) answered before the crash is refused and counted in :attr:`replayed`
(:mod:`.snapshots`). :attr:`delivered` counts, by (initiator, partner), the requests
that reached the partner: an agent, or server ``s`` as ``n + s``; :attr:`answered`
the exchanges answered in place, by (partner, initiator).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.futures import Future

from nettrain.compression import Compressor, Identity
from nettrain.compression.payloads import cat_rows, pack, take_rows, unpack
from nettrain.engines.coded import decode_mean, decode_mix
from nettrain.engines.distributed.buckets import BucketedGather, BucketedMean
from nettrain.engines.distributed.gossip import REPLAYED, Reply, peer_name
from nettrain.engines.distributed.halo import Halo
from nettrain.engines.distributed.liveness import beating
from nettrain.engines.distributed.placement import Placement
from nettrain.engines.distributed.rpc import RpcSession, peer_error
from nettrain.errors import PeerError
from nettrain.patterns import (
    Codec,
    Communicator,
    Handle,
    Losses,
    PartsHandle,
    Traffic,
    ring_allreduce_cost,
)
from nettrain.topology import Topology

TAG_CYCLE = 1 << 20  # tags of successive mixes; tells apart mixes in flight together
T = TypeVar("T")


def guarded(what: str, call: Callable[[], T]) -> T:
    """``call()``, with torch.distributed's failure turned into a :class:`PeerError`."""
    try:
        return call()
    except RuntimeError as err:  # DistError and gloo's plain RuntimeErrors
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise peer_error(rank, what, err) from err


@dataclass
class _Exchange:
    """Requests in flight; ``wait()`` waits for every one, then returns ``finish()``, the
    result read from the buffers they filled."""

    works: Sequence[tuple[str, dist.Work | None]]  # (what, request)
    finish: Callable[[], torch.Tensor]
    comm: DistCommunicator  # which notes the wait (count_wait)

    def wait(self) -> torch.Tensor:
        begin = time.perf_counter()
        for what, work in self.works:
            if work is not None:
                guarded(what, work.wait)
        self.comm.count_wait(begin)
        return self.finish()


class DistCommunicator(Communicator):
    """This process's agents ``placement.groups[rank]`` of ``topology``: ``x: (m, d)``.

    Needs an initialised default process group (or ``group``) of ``placement.processes``
    ranks. The constructor runs a barrier: the first point-to-point call of a group must
    follow a call every rank takes part in. A process outside the group (one that rejoined
    an asynchronous run, whose group cannot take it back) gives its ``rank`` instead and
    makes asynchronous exchanges only. ``servers`` are the parameter servers of a
    centre method: ranks ``P + s`` own the columns ``servers[s]``; ``sync_round`` is their
    next synchronous round (not 0 when a run resumes). ``wire`` counts the messages and
    bytes this process really sent to other processes (a mix sends the halo rows only;
    the per-agent :attr:`traffic` counts what each agent sends, as the simulator does).
    """

    def __init__(
        self,
        topology: Topology,
        placement: Placement | None = None,
        group: dist.ProcessGroup | None = None,
        rpc: RpcSession | None = None,
        servers: list[slice] | None = None,
        sync_round: int = 0,
        rank: int | None = None,
    ) -> None:
        if rank is None:
            world = dist.get_world_size(group)
            placement = placement or Placement.parse("blocks", topology.n, world)
        else:  # outside the process group: one agent a process
            placement = placement or Placement.parse("blocks", topology.n, topology.n)
            world = placement.processes
        if world != placement.processes or placement.n != topology.n:
            raise ValueError(
                f"process group of {world} ranks for a placement of {placement.n} agents on "
                f"{placement.processes} processes ({topology.n} agents in the topology)"
            )
        self.topology, self.placement, self.group = topology, placement, group
        self.rank = dist.get_rank(group) if rank is None else rank
        self.n_agents = topology.n
        self.agents = torch.tensor(placement.groups[self.rank])
        self.traffic = Traffic.zeros(len(self.agents))
        self.wire = Counter({"messages": 0, "bytes": 0})
        # (m, d, itemsize) -> an all-reduce's messages and bytes (m,), and across processes
        self._allreduce_counts: dict[
            tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, tuple[int, int]]
        ] = {}
        self.rpc = rpc  # the asynchronous patterns' session, for algorithms with uses_rpc
        self._slices = servers or []
        self.server_ranks = [placement.processes + s for s in range(len(self._slices))]
        self.sync_rounds = sync_round  # synchronous centre exchanges made: the servers' next
        self.staleness: Counter[int] = Counter()  # of this process's centre exchanges
        # asynchronous exchanges (module docstring): requests that reached each partner,
        # by (initiator, partner: an agent, or server s as n + s); exchanges answered in
        # place, by (partner, initiator); exchanges that lost their request or their
        # reply; ranks found dead; and wall seconds spent waiting for other processes
        self.delivered: Counter[tuple[int, int]] = Counter()
        self.answered: Counter[tuple[int, int]] = Counter()
        self.lost = 0
        self.seq: int | None = None  # the event number of the next asynchronous exchange
        self.incarnation = 0  # of this process (rejoin=true, :mod:`.gossip`)
        self.met: dict[int, int] = {}  # the incarnation of each partner delivered to
        self.replayed = 0  # exchanges refused as answered before a resumed crash
        self.dead: set[int] = set()
        # with a timeline: the (kind, start, end) perf_counter intervals of sending (posting
        # requests) and of waiting for them, since the engine last took them; None: not noted
        self.talks: list[tuple[str, float, float]] | None = None
        self._calls = 0
        self._static: Halo | None = None
        if rank is None:
            dist.barrier(group)

    def _halo(self, t: int, x: torch.Tensor) -> Halo:
        """This process's plan of round ``t``'s mix (:class:`~.halo.Halo`)."""
        if self._static is not None:
            return self._static
        W = self.topology.sparse_weights(t)  # (n, n) float64, coalesced, shared: read only
        halo = Halo.of(W, self.placement, self.rank, x.device, x.dtype)
        if not self.topology.time_varying:
            self._static = halo
        return halo

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        plan = self._halo(t, x)
        if codec is None:
            self.traffic.add(plan.sends, plan.sends * x.shape[1] * x.element_size())
            sent = {q: x.index_select(0, rows) for q, rows in plan.send.items()}  # (k_q, d)
            got = {q: x.new_empty(k, x.shape[1]) for q, k in plan.recv.items()}
            works = self._post(sent, got, t)

            def combine() -> torch.Tensor:  # row A of W @ x
                halo = torch.cat([got[q] for q in plan.recv]) if got else x[:0]
                return plan.combine(x, halo)

            return _Exchange(works, combine, self)
        compressor = codec.compressor
        payload = compressor.encode(x, generator=codec.generator)  # each x_j encoded once
        self.traffic.add(plan.sends, plan.sends * compressor.nbytes(payload))
        sent = {q: pack(take_rows(payload, rows)) for q, rows in plan.send.items()}
        # what arrives from q: k_q payload rows, laid out like k_q of this process's rows
        like = {
            q: take_rows(payload, x.new_zeros(k, dtype=torch.int64)) for q, k in plan.recv.items()
        }
        got = {q: torch.empty_like(pack(p)) for q, p in like.items()}
        works = self._post(sent, got, t)

        def decode() -> torch.Tensor:  # W_ii x_i + sum_j W_ij decode(p_j, x_i)
            received = [unpack(got[q], like[q]) for q in plan.recv]
            return decode_mix(
                x, cat_rows([payload, *received]), compressor, plan.edges, plan.diagonal
            )

        return _Exchange(works, decode, self)

    def _post(
        self, sent: dict[int, torch.Tensor], got: dict[int, torch.Tensor], t: int
    ) -> list[tuple[str, dist.Work]]:
        """``isend(sent[q])`` to every process ``q`` and an ``irecv`` into ``got[q]`` from
        every process ``q``, in one batch: the labelled requests."""
        tag = self._calls % TAG_CYCLE
        self._calls += 1
        ops = [dist.P2POp(dist.isend, b.contiguous(), q, self.group, tag) for q, b in sent.items()]
        ops += [dist.P2POp(dist.irecv, b, q, self.group, tag) for q, b in got.items()]
        for b in sent.values():
            self.wire.update(messages=1, bytes=b.numel() * b.element_size())
        begin = time.perf_counter()
        works = guarded(
            f"posting the exchange of round {t}",
            lambda: dist.batch_isend_irecv(ops) if ops else [],  # it fails on an empty batch
        )
        self._talked("send", begin)
        peers = [f"sending to rank {q}" for q in sent] + [f"receiving from rank {q}" for q in got]
        if len(works) != len(peers):  # one request for the whole batch (NCCL)
            peers = [f"the exchange with ranks {[*sent, *got]}"] * len(works)
        return [(f"round {t}: {p}", w) for p, w in zip(peers, works, strict=True)]

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        n, m = self.n_agents, len(x)
        if codec is None:
            self._count_allreduce(m, x.shape[1], x.element_size())
            total = x.sum(0, keepdim=True)  # (1, d): this process's part of the sum
            what, begin = "the all-reduce", time.perf_counter()
            work = guarded(
                what, lambda: dist.all_reduce(total, dist.ReduceOp.SUM, self.group, async_op=True)
            )
            self._talked("send", begin)
            return _Exchange([(what, work)], lambda: total.div_(n).expand_as(x).clone(), self)
        compressor = codec.compressor
        payload = compressor.encode(x, generator=codec.generator)
        self.count_gathered_mean(payload, compressor)
        what = "the all-gather of a compressed mean"
        work, every = self.start_gather(payload, what)
        return _Exchange([(what, work)], lambda: decode_mean(x, every(), compressor, n), self)

    def count_gathered_mean(self, payload: Any, compressor: Compressor) -> None:
        """Count a compressed mean of this process's ``payload`` as the simulator does: a
        ring all-gather, ``n - 1`` messages of one payload for each local agent."""
        nbytes, n = compressor.nbytes(payload), self.n_agents
        self.traffic.add(torch.full((len(nbytes),), n - 1), (n - 1) * nbytes, True)

    def start_gather(self, payload: Any, what: str) -> tuple[dist.Work, Callable[[], Any]]:
        """Start the all-gather of this process's ``payload`` rows (packed, padded to the
        longest process's): the request, and a function giving every agent's payload rows
        in agent order once it is done; what crosses processes is counted here."""
        processes, mine = self.placement.processes, pack(payload)
        # each process's rows laid out like as many of this one's, padded to the longest
        like = [
            take_rows(payload, torch.zeros(len(g), dtype=torch.int64, device=mine.device))
            for g in self.placement.groups
        ]
        sizes = [pack(p).numel() for p in like]
        longest = max(sizes)
        buffers = [mine.new_empty(longest) for _ in range(processes)]
        padded = torch.cat([mine, mine.new_zeros(longest - len(mine))])
        self._count_wire(processes - 1, (processes - 1) * longest)  # a ring all-gather
        begin = time.perf_counter()
        work = guarded(what, lambda: dist.all_gather(buffers, padded, self.group, async_op=True))
        self._talked("send", begin)

        def every() -> Any:
            rows = [unpack(b[:k], p) for b, k, p in zip(buffers, sizes, like, strict=True)]
            return take_rows(cat_rows(rows), self.placement.position.to(mine.device))

        return work, every

    def _count_allreduce(self, m: int, d: int, size: int) -> None:
        """Count a ring all-reduce of ``d`` values of ``size`` bytes: for each of the ``m``
        local agents as the simulator counts it, and what crosses processes (the counts of
        a shape are made once: this runs every round)."""
        counts = self._allreduce_counts.get((m, d, size))
        if counts is None:
            messages, nbytes = ring_allreduce_cost(self.n_agents, d, size)
            wire = ring_allreduce_cost(self.placement.processes, d, size)
            counts = (torch.full((m,), messages), torch.full((m,), nbytes), wire)
            self._allreduce_counts[m, d, size] = counts
        self.traffic.add(counts[0], counts[1], True)
        self._count_wire(*counts[2])

    def _count_wire(self, messages: int, nbytes: int) -> None:
        """Count what this process sends to other processes (alone, it sends nothing)."""
        if self.placement.processes > 1:
            self.wire.update(messages=messages, bytes=nbytes)

    def start_mean_parts(self, like: torch.Tensor, *, codec: Codec | None = None) -> PartsHandle:
        """The all-reduce of :meth:`start_mean`, each slice's started as soon as it is put
        (:class:`~nettrain.engines.distributed.buckets.BucketedMean`), counted as one;
        with a codec, each slice encoded and its all-gather started as soon as it is put
        (:class:`~nettrain.engines.distributed.buckets.BucketedGather`), counted as one
        all-gather of the whole payload."""
        if codec is not None:
            return BucketedGather(like, self, codec.compressor, guarded)
        self._count_allreduce(like.shape[0], like.shape[1], like.element_size())

        def start(bucket: torch.Tensor) -> dist.Work:
            begin = time.perf_counter()
            work = dist.all_reduce(bucket, dist.ReduceOp.SUM, self.group, async_op=True)
            self._talked("send", begin)
            return work

        return BucketedMean(like, self.n_agents, start, guarded, waited=self.count_wait)

    def count_wait(self, begin: float) -> None:
        """Note the time since ``begin`` (a ``time.perf_counter()`` reading) as waiting
        for other processes (a ``wait`` interval of :attr:`talks`)."""
        self._talked("wait", begin)

    def _talked(self, kind: str, begin: float) -> None:
        """Note ``kind`` from ``begin`` to now in :attr:`talks`, if they are noted."""
        if self.talks is not None:
            self.talks.append((kind, begin, time.perf_counter()))

    def swap(
        self,
        x: torch.Tensor,
        pairs: torch.Tensor,
        ref: torch.Tensor,
        *,
        codec: Codec | None = None,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """This process's agents initiate ``pairs: (k, 2)`` (initiator, partner), on
        disjoint rows of ``x: (m, d)``: a partner held here is exchanged in place, one held
        elsewhere by one ``rpc`` to its :class:`~nettrain.engines.distributed.gossip.Peer`,
        which absorbs the initiator's model and replies with its own published one
        (module docstring). Returns the rows the simulator's swap returns: what each
        initiator, and each partner held here, received, decoded against ``ref``; ``ref``
        where it was lost (the request, or the reply, by ``losses``; the partner down or
        dead)."""
        if self.rpc is None:
            raise RuntimeError("a pairwise exchange needs the engine's rpc session (uses_rpc)")
        rows = self.local_rows(pairs[:, 0])  # raises for an initiator held elsewhere
        compressor = Identity() if codec is None else codec.compressor
        generator = codec and codec.generator
        request_lost, reply_lost = self._lost(losses, len(pairs))
        payload = compressor.encode(x[rows], generator=generator)  # the requests
        sizes = compressor.nbytes(payload)  # (k,)
        self._count(rows, sizes)  # sent, come what may
        out, held, local = ref.clone(), self.held(), rows.tolist()
        calls: list[tuple[int, Future[Any] | None]] = []  # (pair, call) to partners elsewhere
        for k, (me, partner) in enumerate(pairs.tolist()):
            request, reply = take_rows(payload, torch.tensor([k])), None
            if not request_lost[k] and partner in held:
                j = held[partner]
                out[j] = compressor.decode(request, ref[j][None])[0]
                reply = Reply(self.incarnation, compressor.encode(x[j][None], generator=generator))
                self._count(torch.tensor([j]), compressor.nbytes(reply.payload))
                self.answered[(partner, me)] += 1
            elif not request_lost[k] and self.owner(partner) not in self.dead:
                calls.append((k, self._call(me, partner, request, int(sizes[k]))))
                continue
            row = local[k]
            self._received(me, partner, reply, reply_lost[k], out[row], ref[row], compressor)
        begin = time.perf_counter()
        for k, call in calls:
            me, partner = (int(a) for a in pairs[k])
            reply = self._answer(partner, call)
            row = local[k]
            self._received(me, partner, reply, reply_lost[k], out[row], ref[row], compressor)
        if calls:
            self.count_wait(begin)
        return out

    def owner(self, agent: int) -> int:
        """The rank that holds ``agent``."""
        return int(self.placement.owner[agent])

    def _count(self, rows: torch.Tensor, sizes: torch.Tensor) -> None:
        """One message of ``sizes[k]`` bytes sent by the agent on local row ``rows[k]``."""
        messages = torch.zeros_like(self.traffic.messages)
        nbytes = torch.zeros_like(self.traffic.bytes)
        messages.index_add_(0, rows.cpu(), torch.ones_like(rows.cpu()))
        nbytes.index_add_(0, rows.cpu(), sizes.cpu().to(nbytes.dtype))
        self.traffic.add(messages, nbytes)

    def _call(self, me: int, partner: int, request: Any, nbytes: int) -> Future[Any] | None:
        """Start ``me``'s exchange with ``partner``'s peer, held by another process (its
        ``nbytes`` cross processes); None where the call could not even start."""
        assert self.rpc is not None
        self.wire.update(messages=1, bytes=nbytes)
        begin = time.perf_counter()
        try:
            call = self.rpc.remote(self.owner(partner), peer_name(partner))
            return call.rpc_async("exchange", me, request, self.seq, self.incarnation)
        except PeerError:
            return None
        finally:
            self._talked("send", begin)

    def _answer(self, partner: int, call: Future[Any] | None) -> Reply | str | None:
        """The reply of ``partner``'s peer to ``call``: a :class:`Reply`, :data:`REPLAYED`,
        or None (refused, or no answer within ``timeout_s``: dead, or alive but slow; the
        partner's process joins :attr:`dead` where its heartbeat stopped too)."""
        assert self.rpc is not None
        if call is not None:
            try:
                return self.rpc.wait([call], f"the exchange with agent {partner}")[0]
            except PeerError:
                pass
        owner, store = self.owner(partner), self.rpc.store
        if store is None or not beating(store, owner):
            self.dead.add(owner)
        return None

    def _received(
        self,
        me: int,
        partner: int,
        reply: Reply | str | None,
        reply_lost: bool,
        out: torch.Tensor,
        ref: torch.Tensor,
        compressor: Compressor,
    ) -> None:
        """Count ``me``'s exchange with ``partner`` by its ``reply`` (None: the request was
        lost, or the partner refused it), and write into ``out: (d,)`` what ``me``
        received: the reply decoded against ``ref: (d,)``, or ``ref`` where it was lost."""
        if isinstance(reply, str) and reply == REPLAYED:
            self.replayed += 1
            return
        if isinstance(reply, Reply):
            if reply.incarnation > self.met.get(partner, 0):  # it rejoined: count afresh
                self.met[partner] = reply.incarnation
                self.delivered[(me, partner)] = 0
            self.delivered[(me, partner)] += 1
        if not isinstance(reply, Reply) or reply_lost:
            self.lost += 1
            return
        out.copy_(compressor.decode(reply.payload, ref[None])[0])

    @staticmethod
    def _lost(losses: Losses | None, k: int) -> tuple[list[bool], list[bool]]:
        """Whether each of ``k`` exchanges loses its request, and its reply."""
        if losses is None:
            return [False] * k, [False] * k
        return losses.request.tolist(), losses.reply.tolist()

    def centre_exchange(
        self,
        sent: torch.Tensor,
        workers: torch.Tensor,
        synchronous: bool = False,
        *,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """The exchanges of ``workers`` (agents held here; ``sent`` their rows): every
        server gets its slice of each row in one call (``rpc_async`` to all servers at
        once), then the replies; see :mod:`~nettrain.engines.centre`. Lost (by
        ``losses``): ``sent``, the worker stays as it was."""
        if self.rpc is None or not self._slices:
            raise RuntimeError("a centre exchange needs the engine's servers (uses_centre)")
        rows = self.local_rows(workers)
        request, reply = (
            (losses.request.cpu(), losses.reply.cpu())
            if losses is not None
            else (torch.zeros(len(rows), dtype=torch.bool),) * 2
        )
        messages = torch.zeros_like(self.traffic.messages)
        nbytes = torch.zeros_like(self.traffic.bytes)
        messages[rows.cpu()] = len(self._slices)  # sent, come what may
        nbytes[rows.cpu()] = sent.shape[1] * sent.element_size()
        self.traffic.add(messages, nbytes)
        out = sent.clone()
        self.lost += int(reply.sum())  # a lost request loses its reply too
        kept = (~request).nonzero().flatten()
        if not len(kept):
            return out
        ids = workers[kept.to(workers.device)].tolist()
        begin = time.perf_counter()
        head = (ids, self.sync_rounds) if synchronous else (ids, None)
        calls, kept_sent = [], sent[kept.to(sent.device)]
        for owner, cols in zip(self.server_ranks, self._slices, strict=True):
            slices = kept_sent[:, cols].contiguous()  # the wire carries the slice
            self.wire.update(messages=1, bytes=slices.numel() * slices.element_size())
            rows = self.rpc.remote(owner, "centre")
            calls.append(rows.rpc_async("exchange_rows", *head, slices, self.seq))
        self.sync_rounds += synchronous
        answers = self.rpc.wait(calls, "the exchange with the parameter servers")
        self.count_wait(begin)
        for k in range(len(ids)):
            served = [a[k] for a in answers if a[k] is not None]
            if served:
                self.staleness[max(stale for _, stale in served)] += 1
        blocks = []  # each server's slice of the replies; sent where it refused a replay
        for s, (cols, served) in enumerate(zip(self._slices, answers, strict=True)):
            column = self.n_agents + s  # server s
            self.delivered.update((w, column) for w, a in zip(ids, served, strict=True) if a)
            self.replayed += sum(a is None for a in served)
            rows = [kept_sent[k, cols] if a is None else a[0] for k, a in enumerate(served)]
            blocks.append(torch.stack(rows))
        replies = torch.cat(blocks, 1)
        answered = kept[~reply[kept]].to(sent.device)
        out[answered] = replies[~reply[kept].to(replies.device)].to(out.dtype)
        return out

    def release_servers(self) -> None:
        """Tell every parameter server that the run is over (best effort: a server that is
        already gone, or leaves before its answer is out, needs no word)."""
        assert self.rpc is not None
        for rank in self.server_ranks:
            with suppress(RuntimeError, PeerError):
                self.rpc.remote(rank, "centre").rpc_sync("finish")

    def centre(self) -> torch.Tensor:
        """The centre, fetched from every server."""
        if self.rpc is None or not self._slices:
            raise RuntimeError("no parameter servers attached (uses_centre)")
        calls = [self.rpc.remote(r, "centre").rpc_async("centre") for r in self.server_ranks]
        return torch.cat(self.rpc.wait(calls, "reading the centre from the servers"))
