"""In-process communicator: every agent in one stack ``x: (n, d)``.

Neighbour mixing is ``W(t) @ x`` by the cheapest exact kernel for ``W(t)``
(:mod:`~nettrain.engines.sim.mixing`: wrapped diagonals for rings and circulant
graphs, dense for dense graphs, sparse otherwise, so a 256-agent ring costs
``3 n d`` multiply-adds and not ``n^2 d``); the global mean is
``x.mean(0)``; a pairwise exchange encodes the senders' rows at once and decodes them
against the receivers' references; exchanges with the centre go to the
:class:`~nettrain.engines.sim.servers.SimServers`. Traffic is counted as the real
protocol would send it: in a mix,
agent ``i`` sends ``x_i`` to every ``j != i`` with ``W_ji(t) != 0``; an all-reduce
costs the ring all-reduce's messages and bytes.

With a codec (:class:`~nettrain.patterns.Codec`, from
:class:`~nettrain.wrappers.Compressed`) each message costs the compressor's ``nbytes``
(the decoding: :mod:`nettrain.engines.coded`).
"""

from __future__ import annotations

from functools import partial

import torch

from nettrain.compression import Compressor, Identity
from nettrain.engines.coded import decode_mean, decode_mix
from nettrain.engines.sim.mixing import Mixing
from nettrain.engines.sim.servers import SimServers
from nettrain.patterns import (
    Codec,
    Communicator,
    Deferred,
    Handle,
    Losses,
    Ready,
    Traffic,
    ring_allreduce_cost,
)
from nettrain.topology import Topology
from nettrain.topology.weights import nonzero_entries


class SimCommunicator(Communicator):
    """All ``n`` agents of ``topology`` in this process (``m = n``); ``servers`` hold the
    centre of a method that has one (``uses_centre``)."""

    def __init__(
        self,
        topology: Topology,
        device: torch.device,
        dtype: torch.dtype,
        servers: SimServers | None = None,
    ) -> None:
        self.topology = topology
        self.n_agents = topology.n
        self.agents = torch.arange(topology.n)
        self.traffic = Traffic.zeros(topology.n)
        self.device, self.dtype = device, dtype
        self._static: tuple[Mixing, torch.Tensor] | None = None
        self.servers = servers

    def _weights(self, t: int) -> tuple[Mixing, torch.Tensor]:
        """``W(t)``'s kernel on the device, and the out-degree ``(n,)`` of each agent."""
        if self._static is not None:
            return self._static
        W = self.topology.sparse_weights(t)  # (n, n) float64, coalesced
        rows, cols, _ = nonzero_entries(W)
        sends = torch.bincount(cols[rows != cols], minlength=self.n_agents)  # i != j, W_ij != 0
        out = (Mixing.of(W, self.device, self.dtype), sends)
        if not self.topology.time_varying:
            self._static = out
        return out

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        mixing, sends = self._weights(t)
        if codec is not None:
            compressor = codec.compressor
            payload = compressor.encode(x, generator=codec.generator)  # each x_j encoded once
            self.traffic.add(sends, sends * compressor.nbytes(payload))
            return Ready(self._decode_mix(x, payload, compressor, t))
        self.traffic.add(sends, sends * x.shape[1] * x.element_size())
        return Deferred(partial(mixing, x))  # (n, n) @ (n, d), at wait

    def _decode_mix(
        self, x: torch.Tensor, payload: object, compressor: Compressor, t: int
    ) -> torch.Tensor:
        """Every agent's row of the compressed mix (:func:`~nettrain.engines.coded.decode_mix`),
        the edges ``j -> i`` in ``(i, j)`` order."""
        rows, cols, values = nonzero_entries(self.topology.sparse_weights(t))  # row-major
        edge = rows != cols
        diagonal = torch.zeros(self.n_agents, dtype=torch.float64, device=values.device)
        diagonal[rows[~edge]] = values[~edge]
        return decode_mix(x, payload, compressor, (rows[edge], cols[edge], values[edge]), diagonal)

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        if codec is not None:
            return Ready(self._decode_mean(x, codec.compressor, codec.generator))
        messages, nbytes = ring_allreduce_cost(self.n_agents, x.shape[1], x.element_size())
        self.traffic.add(
            torch.full_like(self.traffic.messages, messages),
            torch.full_like(self.traffic.bytes, nbytes),
            collective=True,
        )
        return Ready(x.mean(0, keepdim=True).expand_as(x).clone())

    def _decode_mean(
        self, x: torch.Tensor, compressor: Compressor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``(1/n) sum_j decode(p_j, x_i)`` for every ``i``; costs a ring all-gather of
        the payloads: ``n - 1`` messages and ``(n - 1) nbytes(p_i)`` bytes an agent."""
        n = self.n_agents
        payload = compressor.encode(x, generator=generator)  # (n rows)
        self.traffic.add(
            torch.full_like(self.traffic.messages, n - 1),
            (n - 1) * compressor.nbytes(payload),
            collective=True,
        )
        return decode_mean(x, payload, compressor, n)

    def swap(
        self,
        x: torch.Tensor,
        pairs: torch.Tensor,
        ref: torch.Tensor,
        *,
        codec: Codec | None = None,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        compressor = Identity() if codec is None else codec.compressor
        i, j = pairs[:, 0], pairs[:, 1]
        senders, receivers = torch.cat([j, i]), torch.cat([i, j])  # (2p,) replies, requests
        payload = compressor.encode(x[senders], generator=codec and codec.generator)
        out = x.clone()
        out[receivers] = compressor.decode(payload, ref[receivers])
        sent = torch.ones(len(senders), dtype=torch.bool, device=senders.device)
        if losses is not None:  # what is lost leaves its receiver with its reference
            lost = torch.cat([losses.reply, losses.request])
            out[receivers[lost]] = ref[receivers[lost]]
            sent[: len(i)] = ~losses.request  # no request, no reply
        messages = torch.zeros_like(self.traffic.messages)  # (n,) int64, where the counters are
        nbytes = torch.zeros_like(self.traffic.bytes)
        messages.index_add_(
            0,
            senders[sent].cpu(),
            torch.ones(int(sent.sum()), dtype=torch.int64, device=messages.device),
        )
        nbytes.index_add_(0, senders[sent].cpu(), compressor.nbytes(payload)[sent.cpu()])
        self.traffic.add(messages, nbytes)
        return out

    def centre_exchange(
        self,
        sent: torch.Tensor,
        workers: torch.Tensor,
        synchronous: bool = False,
        *,
        losses: Losses | None = None,
    ) -> torch.Tensor:
        if self.servers is None:
            raise RuntimeError("no parameter servers: build the communicator with servers=")
        if losses is None:
            replies = self.servers.exchange(sent, workers, synchronous)  # the shards hold the rule
        else:  # a lost request reaches no server; a lost reply leaves the worker as it was
            replies = sent.clone()
            kept = ~losses.request
            if kept.any():
                replies[kept] = self.servers.exchange(sent[kept], workers[kept], synchronous)
            replies[losses.reply] = sent[losses.reply]
        messages = torch.zeros_like(self.traffic.messages)  # (n,) int64, where the counters are
        nbytes = torch.zeros_like(self.traffic.bytes)
        messages[workers.cpu()] = len(self.servers.slices)  # one slice to each server
        nbytes[workers.cpu()] = sent.shape[1] * sent.element_size()
        self.traffic.add(messages, nbytes)
        return replies

    def centre(self) -> torch.Tensor:
        if self.servers is None:
            raise RuntimeError("no parameter servers: build the communicator with servers=")
        return self.servers.centre()
