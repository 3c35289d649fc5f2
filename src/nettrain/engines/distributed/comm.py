"""torch.distributed communicator: one agent per process (``m = 1``).

Every rank computes ``W(t)`` itself (a pure function of ``(seed, t)``, see
:mod:`nettrain.topology.schedules`), so no rank ever asks another who its peers are.

* Neighbour mixing (Bluefog-style): agent ``i`` posts ``isend(x_i)`` to every
  ``j != i`` with ``W_ji(t) != 0`` and ``irecv`` from every ``j != i`` with
  ``W_ij(t) != 0`` in one ``batch_isend_irecv``; the handle's ``wait()`` waits those
  requests and returns ``sum_j W_ij x_j`` with ``j`` in ascending order, as one
  ``(1, k) @ (k, d)`` product, the row of the simulator's ``W @ x``.
* Global mean: ``all_reduce(SUM, async_op=True)``, divided by ``n`` in ``wait()``; of a
  gradient handed over bucket by bucket (``start_mean_parts``), one per bucket, each
  started as the backward pass finishes it (:mod:`.buckets`).
* With a codec (:class:`~nettrain.patterns.Codec`, from
  :class:`~nettrain.wrappers.Compressed`), agent ``i`` encodes ``x_i`` once and packs
  the payload into one ``uint8`` buffer (:func:`~nettrain.compression.payloads.pack`),
  whose length is fixed by ``d`` and the compressor, so every receive is posted before
  anything arrives. A mix sends that buffer where it would send ``x_i``; a mean
  all-gathers the buffers. ``wait()`` decodes each received payload against ``x_i``
  and combines as above.

Traffic is counted from what this rank sends: one message of ``d`` elements per
``isend``; an all-reduce counts as the ring all-reduce
(:func:`~nettrain.patterns.ring_allreduce_cost`). A compressed message counts
``compressor.nbytes`` (exact, bits packed); a compressed mean counts as a ring all-gather,
``n - 1`` messages of one payload each.

A failed exchange (a peer died, or did not answer within the group's timeout) raises
:class:`~nettrain.errors.PeerError`, naming this rank and, for neighbour mixing, the peer.

Asynchronous exchanges (``swap``, ``centre_exchange``) take the engine's faults
(``losses``, from :class:`~nettrain.wrappers.Lossy`, :mod:`nettrain.faults`): a lost request
makes no call (its message and bytes still count: they were sent); a lost reply makes
the call, so the partner or the servers take the request in, and hands the initiator
its reference (``swap``) or what it sent (``centre_exchange``). A gossip partner whose
rpc fails is a lost request too; if its heartbeat has stopped as well (the process is
dead, :mod:`.liveness`) it joins :attr:`dead` and is never called again, while a slow
but live partner is called again at its next draw. The parameter servers must not
die: a failed call to one raises.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from nettrain.compression import Identity
from nettrain.compression.payloads import pack, unpack
from nettrain.engines.distributed.buckets import BucketedMean
from nettrain.engines.distributed.liveness import beating
from nettrain.engines.distributed.rpc import RpcSession, peer_error
from nettrain.errors import PeerError
from nettrain.patterns import (
    Codec,
    Communicator,
    Handle,
    Losses,
    PartsHandle,
    ServerRule,
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

    def wait(self) -> torch.Tensor:
        for what, work in self.works:
            if work is not None:
                guarded(what, work.wait)
        return self.finish()


class DistCommunicator(Communicator):
    """Agent ``rank`` of ``topology`` in this process; ``x`` is always ``(1, d)``.

    Needs an initialised default process group whose size is ``topology.n``. The
    constructor runs a barrier: the first point-to-point call of a group must follow
    a call every rank takes part in. ``servers`` are the parameter servers of a centre
    method: ranks ``n + s`` own the columns ``servers[s]``; ``sync_round`` is their next
    synchronous round (not 0 when a run resumes).
    """

    def __init__(
        self,
        topology: Topology,
        group: dist.ProcessGroup | None = None,
        rpc: RpcSession | None = None,
        servers: list[slice] | None = None,
        sync_round: int = 0,
    ) -> None:
        world = dist.get_world_size(group)
        if world != topology.n:
            raise ValueError(f"process group of {world} ranks for {topology.n} agents")
        self.topology = topology
        self.group = group
        self.rank = dist.get_rank(group)
        self.n_agents = topology.n
        self.agents = torch.tensor([self.rank])
        self.traffic = Traffic.zeros(1)
        self.rpc = rpc  # the asynchronous patterns' session, for algorithms with uses_rpc
        self._slices = servers or []
        self.server_ranks = [topology.n + s for s in range(len(self._slices))]
        self.sync_rounds = sync_round  # synchronous centre exchanges made: the servers' next
        self.staleness: Counter[int] = Counter()  # of this worker's centre exchanges
        # asynchronous exchanges: requests that reached each partner (a centre exchange
        # counts under this rank), exchanges that lost their request or their reply,
        # ranks found dead, and wall seconds spent waiting for rpc replies
        self.delivered: Counter[int] = Counter()
        self.lost = 0
        self.dead: set[int] = set()
        self.talk_s = 0.0
        self._calls = 0
        self._static: tuple[list[int], list[int], torch.Tensor] | None = None
        dist.barrier(group)

    def _peers(self, t: int) -> tuple[list[int], list[int], torch.Tensor]:
        """Ranks to send to, ranks to receive from, and row ``i`` of ``W(t)`` (float64)."""
        if self._static is not None:
            return self._static
        i = self.rank
        W = self.topology.weights(t)  # (n, n) float64, shared: read only
        row, col = W[i], W[:, i]
        send = [j for j in col.nonzero().flatten().tolist() if j != i]
        recv = [j for j in row.nonzero().flatten().tolist() if j != i]
        out = (send, recv, row.clone())
        if not self.topology.time_varying:
            self._static = out
        return out

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        send, recv, row = self._peers(t)
        mine, nbytes, read = self._message(x, codec)
        works, got = self._post(mine, send, recv, t)
        self.traffic.add(torch.tensor([len(send)]), torch.as_tensor(len(send) * nbytes))
        own = mine if codec is None else x[0]  # (d,) this agent's own term
        order = row.nonzero().flatten().tolist()  # recv, and i if W_ii != 0: ascending j
        weights = row[order].to(device=x.device, dtype=x.dtype)

        def combine() -> torch.Tensor:  # (1, k) @ (k, d) -> (1, d), the row of W @ x
            values = [own if j == self.rank else read(got[j])[0] for j in order]
            return weights[None, :] @ torch.stack(values)

        return _Exchange(works, combine)

    @staticmethod
    def _message(
        x: torch.Tensor, codec: Codec | None
    ) -> tuple[torch.Tensor, int | torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """What this agent sends of ``x``: the buffer (``x_i``; with a codec its payload,
        encoded once and packed into one ``uint8`` buffer whose length is fixed by ``d``
        and the compressor), its bytes, and ``read``: a received buffer of that layout as
        a ``(1, d)`` row, decoded against ``x``."""
        if codec is None:
            mine = x[0].contiguous()  # (d,)
            return mine, mine.numel() * x.element_size(), lambda b: b[None]
        compressor = codec.compressor
        payload = compressor.encode(x, generator=codec.generator)

        def read(b: torch.Tensor) -> torch.Tensor:
            return compressor.decode(unpack(b, payload), x)

        return pack(payload), compressor.nbytes(payload), read

    def _post(
        self, buffer: torch.Tensor, send: list[int], recv: list[int], t: int
    ) -> tuple[list[tuple[str, dist.Work]], dict[int, torch.Tensor]]:
        """``isend(buffer)`` to every ``send`` rank and an ``irecv`` of the same shape from
        every ``recv`` rank, in one batch: the labelled requests and the receive buffers."""
        tag = self._calls % TAG_CYCLE
        self._calls += 1
        ops = [dist.P2POp(dist.isend, buffer, j, self.group, tag) for j in send]
        got = {j: torch.empty_like(buffer) for j in recv}
        ops += [dist.P2POp(dist.irecv, got[j], j, self.group, tag) for j in recv]
        works = guarded(
            f"posting the exchange of round {t}",
            lambda: dist.batch_isend_irecv(ops) if ops else [],  # it fails on an empty batch
        )
        peers = [f"sending to rank {j}" for j in send] + [f"receiving from rank {j}" for j in recv]
        if len(works) != len(peers):  # one request for the whole batch (NCCL)
            peers = [f"the exchange with ranks {send + recv}"] * len(works)
        return [(f"round {t}: {p}", w) for p, w in zip(peers, works, strict=True)], got

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        n = self.n_agents
        if codec is None:
            messages, nbytes = ring_allreduce_cost(n, x.shape[1], x.element_size())
            self.traffic.add(torch.tensor([messages]), torch.tensor([nbytes]))
            total = x.clone(memory_format=torch.contiguous_format)  # (1, d)
            what = "the all-reduce"
            work = guarded(
                what, lambda: dist.all_reduce(total, dist.ReduceOp.SUM, self.group, async_op=True)
            )
            return _Exchange([(what, work)], lambda: total.div_(n))
        mine, nbytes, read = self._message(x, codec)
        buffers = [torch.empty_like(mine) for _ in range(n)]  # the same length on every rank
        self.traffic.add(torch.tensor([n - 1]), torch.as_tensor((n - 1) * nbytes))
        what = "the all-gather of a compressed mean"
        work = guarded(what, lambda: dist.all_gather(buffers, mine, self.group, async_op=True))

        def average() -> torch.Tensor:  # every payload decoded against x_i, in rank order
            total = torch.zeros_like(x)  # (1, d)
            for b in buffers:
                total += read(b)
            return total / n

        return _Exchange([(what, work)], average)

    def start_mean_parts(self, like: torch.Tensor) -> PartsHandle:
        """The all-reduce of :meth:`start_mean`, each slice's started as soon as it is put
        (:class:`~nettrain.engines.distributed.buckets.BucketedMean`), counted as one."""
        messages, nbytes = ring_allreduce_cost(self.n_agents, like.shape[1], like.element_size())
        self.traffic.add(torch.tensor([messages]), torch.tensor([nbytes]))
        return BucketedMean(
            like,
            self.n_agents,
            lambda b: dist.all_reduce(b, dist.ReduceOp.SUM, self.group, async_op=True),
            guarded,
        )

    def swap(
        self,
        x: torch.Tensor,
        pairs: torch.Tensor,
        ref: torch.Tensor,
        *,
        codec: Codec | None = None,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """This rank initiates ``pairs = [[rank, j]]``: one ``rpc_sync`` to ``j``'s peer
        (:class:`~nettrain.engines.distributed.gossip.Peer`), which absorbs this model and
        replies with its own published one, decoded here against ``ref``.

        Lost (the request, or the reply, by ``losses``; ``j`` down or dead): ``ref``.
        """
        if self.rpc is None:
            raise RuntimeError("a pairwise exchange needs the engine's rpc session (uses_rpc)")
        me, partner = int(pairs[0, 0]), int(pairs[0, 1])
        if me != self.rank or len(pairs) != 1:
            raise ValueError(f"rank {self.rank} can only initiate its own exchange, got {pairs}")
        request_lost, reply_lost = self._lost(losses)
        compressor = Identity() if codec is None else codec.compressor
        payload = compressor.encode(x, generator=codec and codec.generator)
        self.traffic.add(torch.tensor([1]), compressor.nbytes(payload))  # sent, come what may
        reply = None
        if not request_lost and partner not in self.dead:
            begin = time.perf_counter()
            try:
                reply = self.rpc.remote(partner, "peer").rpc_sync("exchange", me, payload)
            except PeerError:  # no answer within timeout_s: dead, or alive but slow
                store = self.rpc.store
                if store is None or not beating(store, partner):
                    self.dead.add(partner)
            self.talk_s += time.perf_counter() - begin
        if reply is not None:  # None: the partner is down and refused the request
            self.delivered[partner] += 1
        if reply is None or reply_lost:
            self.lost += 1
            return ref.clone()
        return compressor.decode(reply, ref)

    @staticmethod
    def _lost(losses: Losses | None) -> tuple[bool, bool]:
        """Whether this rank's exchange loses its request, and its reply."""
        if losses is None:
            return False, False
        return bool(losses.request[0]), bool(losses.reply[0])

    def centre_exchange(
        self,
        sent: torch.Tensor,
        workers: torch.Tensor,
        rule: ServerRule,
        synchronous: bool = False,
        *,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        """This worker's exchange: its slices to every server at once (``rpc_async``),
        then the replies; see :mod:`~nettrain.engines.centre`. Lost (by ``losses``):
        ``sent``, the worker stays as it was."""
        if self.rpc is None or not self._slices:
            raise RuntimeError("a centre exchange needs the engine's servers (uses_centre)")
        if workers.tolist() != [self.rank]:
            raise ValueError(f"rank {self.rank} can only make its own exchange, got {workers}")
        request_lost, reply_lost = self._lost(losses)
        self.traffic.add(  # sent, come what may
            torch.tensor([len(self._slices)]), torch.tensor([sent.shape[1] * sent.element_size()])
        )
        if request_lost:
            self.lost += 1
            return sent.clone()
        begin = time.perf_counter()
        method = "exchange_sync" if synchronous else "exchange"
        head = (self.rank, self.sync_rounds) if synchronous else (self.rank,)
        calls = [  # each slice cloned to own its storage: the wire carries only the slice
            self.rpc.remote(owner, "centre").rpc_async(method, *head, sent[0, cols].clone())
            for owner, cols in zip(self.server_ranks, self._slices, strict=True)
        ]
        self.sync_rounds += synchronous
        answers = self.rpc.wait(calls, "the exchange with the parameter servers")
        self.talk_s += time.perf_counter() - begin
        self.staleness[max(stale for _, stale in answers)] += 1
        self.delivered[self.rank] += 1
        if reply_lost:
            self.lost += 1
            return sent.clone()
        return torch.cat([reply for reply, _ in answers])[None]

    def centre(self) -> torch.Tensor:
        """The centre, fetched from every server."""
        if self.rpc is None or not self._slices:
            raise RuntimeError("no parameter servers attached (uses_centre)")
        calls = [self.rpc.remote(r, "centre").rpc_async("centre") for r in self.server_ranks]
        return torch.cat(self.rpc.wait(calls, "reading the centre from the servers"))
