"""In-process communicator: every agent in one stack ``x: (n, d)``.

Neighbour mixing is one matrix product ``W(t) @ x`` (dense for small or dense
graphs, sparse otherwise, so a 256-agent ring costs ``3 n d`` multiply-adds and
not ``n^2 d``; COO, since CSR is still marked beta); the global mean is
``x.mean(0)``; a pairwise exchange encodes the senders' rows at once and decodes them
against the receivers' references. Traffic is counted as the real protocol would send it: in a mix,
agent ``i`` sends ``x_i`` to every ``j != i`` with ``W_ji(t) != 0``; an all-reduce
costs the ring all-reduce's messages and bytes.
"""

from __future__ import annotations

import torch

from nettrain.compression import Compressor
from nettrain.patterns import Communicator, Handle, Ready, Traffic, ring_allreduce_cost
from nettrain.topology import Topology

SPARSE_BELOW = 0.15  # use a sparse matrix for W when the share of nonzeros is below this


class SimCommunicator(Communicator):
    """All ``n`` agents of ``topology`` in this process (``m = n``)."""

    def __init__(self, topology: Topology, device: torch.device, dtype: torch.dtype) -> None:
        self.topology = topology
        self.n_agents = topology.n
        self.agents = torch.arange(topology.n)
        self.traffic = Traffic.zeros(topology.n)
        self.device, self.dtype = device, dtype
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None

    def _weights(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``W(t)`` ready for ``@`` on the device, and the out-degree ``(n,)`` of each agent."""
        if self._static is not None:
            return self._static
        W = self.topology.weights(t)  # (n, n) float64
        nonzero = W != 0
        sends = nonzero.sum(0) - nonzero.diagonal().to(torch.int64)  # j != i with W_ji != 0
        W = W.to(device=self.device, dtype=self.dtype)
        if nonzero.float().mean() < SPARSE_BELOW:
            W = W.to_sparse()  # COO; torch.sparse.mm below
        out = (W, sends)
        if not self.topology.time_varying:
            self._static = out
        return out

    def start_mix(self, x: torch.Tensor, t: int) -> Handle:
        W, sends = self._weights(t)
        self.traffic.add(sends, sends * x.shape[1] * x.element_size())
        return Ready(torch.sparse.mm(W, x) if W.is_sparse else W @ x)  # (n, n) @ (n, d)

    def start_mean(self, x: torch.Tensor) -> Handle:
        messages, nbytes = ring_allreduce_cost(self.n_agents, x.shape[1], x.element_size())
        self.traffic.add(
            torch.full((self.n_agents,), messages), torch.full((self.n_agents,), nbytes)
        )
        return Ready(x.mean(0, keepdim=True).expand_as(x).clone())

    def swap(
        self,
        x: torch.Tensor,
        pairs: torch.Tensor,
        compressor: Compressor,
        ref: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        i, j = pairs[:, 0], pairs[:, 1]
        senders, receivers = torch.cat([j, i]), torch.cat([i, j])  # (2p,)
        payload = compressor.encode(x[senders], generator=generator)
        out = x.clone()
        out[receivers] = compressor.decode(payload, ref[receivers])
        messages = torch.zeros(self.n_agents, dtype=torch.int64)
        nbytes = torch.zeros(self.n_agents, dtype=torch.int64)
        messages[senders.cpu()] += 1
        nbytes[senders.cpu()] += compressor.nbytes(payload)
        self.traffic.add(messages, nbytes)
        return out
