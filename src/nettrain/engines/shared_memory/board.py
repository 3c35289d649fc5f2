"""What the processes of the shared-memory engine share: one model, counters, a few locks.

Every tensor here lives in shared memory (``share_memory_()``), so the main process
and the ``P`` workers map the same pages. Each counter row is written by one worker
only (row ``c`` by worker ``c``), so the counters need no lock; the model ``x`` and the
per-block ``versions`` are written by every worker without locks (a concurrent
read-modify-write can lose an increment of ``versions``: staleness is counted
approximately, as Hogwild itself is).

Work is handed out as *tickets*: ``rounds * P`` of them, one per step, claimed from a
locked counter. A worker may run the step of ticket ``j`` only while ``j < limit``;
the main process raises ``limit`` after each evaluation, so every record sees the
model after exactly ``round * P`` finished steps while fast workers still take more
steps than slow ones in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from typing import Any

import torch


@dataclass(frozen=True)
class Board:
    x: torch.Tensor  # (d,) the shared model
    versions: torch.Tensor  # (blocks,) int64 writes each block has received
    steps: torch.Tensor  # (P,) int64 steps finished by each worker
    samples: torch.Tensor  # (P,) int64 training samples processed by each worker
    updates: torch.Tensor  # (P, blocks) int64 writes of each worker to each block
    stale_sum: torch.Tensor  # (P,) int64 sum of the staleness of every block read
    stale_max: torch.Tensor  # (P,) int64 largest staleness of a block read
    reads: torch.Tensor  # (P,) int64 block reads counted
    loss_sum: torch.Tensor  # (P,) float64 sum of the training losses of the steps
    ready: torch.Tensor  # (P,) int64 1 once a worker has set up and waits for tickets
    limit: torch.Tensor  # (1,) int64 tickets below limit may run (raised by the main process)
    grads: torch.Tensor  # (P, d) the gradients of mean_shared; (0, d) without it
    tickets: Any  # multiprocessing Value('q'): the next ticket
    barrier: Any  # multiprocessing Barrier(P): the rounds of synchronous data-parallel SGD
    errors: Any  # multiprocessing Queue of (worker, error class name, message)

    @classmethod
    def create(
        cls, x0: torch.Tensor, blocks: int, workers: int, synchronous: bool, ctx: SpawnContext
    ) -> Board:
        """Fresh shared tensors for ``workers`` processes; the model starts at ``x0: (d,)``;
        rows for ``mean_shared`` when ``synchronous``."""
        P, d = workers, x0.numel()

        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype).share_memory_()

        return cls(
            x=x0.detach().clone().share_memory_(),
            versions=zeros(blocks),
            steps=zeros(P),
            samples=zeros(P),
            updates=zeros(P, blocks),
            stale_sum=zeros(P),
            stale_max=zeros(P),
            reads=zeros(P),
            loss_sum=zeros(P, dtype=torch.float64),
            ready=zeros(P),
            limit=zeros(1),
            grads=zeros(P if synchronous else 0, d, dtype=x0.dtype),
            tickets=ctx.Value("q", 0),
            barrier=ctx.Barrier(P),
            errors=ctx.Queue(),
        )

    def claim(self) -> int:
        """The next ticket (one step of work)."""
        with self.tickets.get_lock():
            j = self.tickets.value
            self.tickets.value = j + 1
        return int(j)

    def finished(self) -> int:
        """Steps finished by all workers together."""
        return int(self.steps.sum())
