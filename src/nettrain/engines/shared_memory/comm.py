"""The shared-model pattern on a :class:`~nettrain.engines.shared_memory.board.Board`:
worker ``c``'s :class:`~nettrain.patterns.SharedModel`, which reads and writes the
board's ``x`` in place and keeps its counters (who writes what without a lock: the
board's module)."""

from __future__ import annotations

import torch

from nettrain.engines.shared_memory.board import Board
from nettrain.patterns import SharedModel
from nettrain.problem.flat import block_slices


class SharedBoard(SharedModel):
    """Worker ``worker``'s view of the board's model, cut into ``board.versions``' blocks."""

    def __init__(self, board: Board, worker: int, workers: int, timeout_s: float) -> None:
        self.board, self.worker, self.workers = board, worker, workers
        self.blocks = board.versions.numel()
        self.slices = block_slices(board.x.numel(), self.blocks)
        self.timeout_s = timeout_s
        self._seen: torch.Tensor | None = None  # the versions at the open read, if any

    def read_shared(self) -> torch.Tensor:
        self._seen = self.board.versions.clone()  # (blocks,)
        return self.board.x.clone()  # the inconsistent read

    def _close_read(self) -> None:
        """Count the open read's staleness: the writes its blocks received since."""
        if self._seen is None:
            return
        board, c = self.board, self.worker
        stale = board.versions - self._seen  # (blocks,)
        board.stale_sum[c] += int(stale.sum())
        board.stale_max[c] = max(int(board.stale_max[c]), int(stale.max()))
        board.reads[c] += len(stale)
        self._seen = None

    def write_shared(self, blocks: tuple[int, ...], direction: torch.Tensor, lr: float) -> None:
        self._close_read()
        board = self.board
        for b in blocks:
            s = self.slices[b]
            board.x[s].add_(direction[s], alpha=-lr)  # the lock-free write
        written = torch.tensor(blocks, dtype=torch.int64)
        board.versions[written] += 1
        board.updates[self.worker, written] += 1

    def mean_shared(self, g: torch.Tensor) -> torch.Tensor:
        if self.board.grads.shape[0] != self.workers:
            raise RuntimeError(
                "this board has no gradient rows: mean_shared needs a board created for a "
                "method without shared_writes"
            )
        self._close_read()
        self.board.grads[self.worker] = g
        self.sync_shared()
        return self.board.grads.mean(0)

    def sync_shared(self) -> None:
        self.board.barrier.wait(self.timeout_s)
