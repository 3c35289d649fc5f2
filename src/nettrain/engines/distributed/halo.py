"""One round's neighbour mixing as one process of the distributed engine sees it.

Process ``r`` holds the agents ``A`` (``x: (m, d)``) and needs row ``A`` of ``W(t) @ x``.
Its part splits into what it holds and what crosses processes:

* the local block ``W[A, A]`` as one kernel over ``x``
  (:class:`~nettrain.engines.sim.mixing.Mixing`: a block of a ring is still three
  wrapped diagonals);
* the halo: the agents of other processes with an edge into ``A``, received in one
  ``batch_isend_irecv`` (from each process, its agents that ``A`` needs, ascending) and
  stacked in process order; the edges from the halo into ``A`` are applied by
  ``index_add`` (or one dense product when they are many).

What this process sends each other process is the mirror image, computed from the same
``W(t)``: a ring of ``P`` blocks sends one row to each of two neighbours, not ``m``.
Every process derives every plan from ``W(t)`` itself, so no plan travels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nettrain.engines.distributed.placement import Placement
from nettrain.engines.sim.mixing import DENSE_FROM, Mixing
from nettrain.topology.weights import nonzero_entries


@dataclass(frozen=True)
class Halo:
    """Process ``rank``'s plan of one mix: the local kernel, what it sends and receives,
    the edges that cross into it, and each local agent's messages."""

    local: Mixing  # W[A, A] over x: (m, d)
    send: dict[int, torch.Tensor]  # process -> rows of x it needs, ascending agent id
    recv: dict[int, int]  # process -> rows received from it (its agents, ascending)
    cross: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (local row, halo row, W_ij)
    dense: torch.Tensor | None  # (m, h) W[A, halo] when it is dense enough to multiply
    edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # every i != j edge, extended rows
    diagonal: torch.Tensor  # (m,) W_ii, float64
    sends: torch.Tensor  # (m,) int64: out-neighbours of each local agent (its messages)

    @classmethod
    def of(
        cls,
        W: torch.Tensor,
        placement: Placement,
        rank: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Halo:
        """The plan for the coalesced sparse ``W: (n, n)`` (float64, on the host)."""
        n = W.shape[0]
        owner = placement.owner
        mine = torch.tensor(placement.groups[rank], dtype=torch.int64)
        m = len(mine)
        local_row = torch.full((n,), -1, dtype=torch.int64)
        local_row[mine] = torch.arange(m)
        rows, cols, values = nonzero_entries(W)
        off = rows != cols
        sends = torch.bincount(cols[off], minlength=n)[mine]

        into = owner[rows] == rank  # the entries of this process's rows
        r, c, v = rows[into], cols[into], values[into]
        held = owner[c] == rank
        # the halo: other processes' agents with an edge into A, by process then id
        halo = torch.unique(owner[c[~held]] * n + c[~held]) % n
        halo_row = torch.full((n,), -1, dtype=torch.int64)
        halo_row[halo] = torch.arange(len(halo))
        procs, counts = torch.unique(owner[halo], return_counts=True)
        recv = dict(zip(procs.tolist(), counts.tolist(), strict=True))

        block = torch.sparse_coo_tensor(
            torch.stack([local_row[r[held]], local_row[c[held]]]),
            v[held],
            (m, m),
            check_invariants=False,
        ).coalesce()
        cross = (local_row[r[~held]], halo_row[c[~held]], v[~held])
        dense = None
        if len(halo) and len(cross[0]) >= DENSE_FROM * m * len(halo):
            dense = torch.zeros(m, len(halo), dtype=torch.float64)
            dense[cross[0], cross[1]] = cross[2]
            dense = dense.to(device, dtype)

        # what the other processes need of A: per process, its agents with edges out of A
        leaving = (owner[cols] == rank) & (owner[rows] != rank)
        needed = torch.unique(owner[rows[leaving]] * n + cols[leaving])  # by process, then id
        procs, counts = torch.unique_consecutive(needed // n, return_counts=True)
        parts = local_row[needed % n].to(device).split(counts.tolist())
        send = dict(zip(procs.tolist(), parts, strict=True))

        extended = torch.where(held, local_row[c], m + halo_row[c])  # rows of [x; halo]
        edge = r != c
        diagonal = torch.zeros(m, dtype=torch.float64)
        diagonal[local_row[r[~edge]]] = v[~edge]
        return cls(
            local=Mixing.of(block, device, dtype),
            send=send,
            recv=recv,
            cross=(cross[0].to(device), cross[1].to(device), cross[2].to(device, dtype)),
            dense=dense,
            edges=(local_row[r[edge]], extended[edge], v[edge]),
            diagonal=diagonal,
            sends=sends,
        )

    def combine(self, x: torch.Tensor, halo: torch.Tensor) -> torch.Tensor:
        """Row ``A`` of ``W @ x``: the local kernel over ``x: (m, d)`` plus the edges from
        the received ``halo: (h, d)``."""
        out = self.local(x)
        if self.dense is not None:
            return out.addmm_(self.dense, halo)
        rows, cols, w = self.cross
        if len(rows):
            out.index_add_(0, rows, halo[cols] * w[:, None])
        return out
