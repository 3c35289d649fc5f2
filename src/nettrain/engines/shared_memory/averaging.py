"""Averaging the shared models of several machines while their workers keep writing.

Each machine (one process launched by ``torchrun``) holds its model ``x`` in shared
memory. An averaging is::

    s    <- copy of x                    (the snapshot)
    mean <- (1/W) sum over machines of s (one all-reduce)
    x    <- x + (mean - s)               (in place, no lock)

The update is a *shift*: writes the local workers make to ``x`` between the snapshot
and the shift (the all-reduce takes a while) are kept on top of the mean instead of
being overwritten (the "concurrent parameter servers" strategy of Kungurtsev et al.
2021, :mod:`nettrain.algorithms.block_async`). :meth:`ModelAverager.start` returns a handle
whose ``wait()`` finishes the exchange, so callers may overlap it with other work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class PendingAverage:
    """An averaging in flight; ``wait()`` shifts ``x`` by ``mean - snapshot``."""

    x: torch.Tensor  # (d,) the shared model
    snapshot: torch.Tensor  # (d,)
    total: torch.Tensor  # (d,) becomes the sum over machines
    work: dist.Work
    machines: int

    def wait(self, settled: bool = False) -> torch.Tensor:
        """Finish: ``x += mean - snapshot``; returns the mean ``(d,)``.

        ``settled=True`` says nobody wrote ``x`` since the snapshot (the workers have
        stopped): ``x`` then becomes the mean exactly, so that every machine holds the
        same bits rather than the mean up to the rounding of the shift.
        """
        self.work.wait()
        mean = self.total.div_(self.machines)
        if settled:
            self.x.copy_(mean)
        else:
            self.x.add_(mean - self.snapshot)
        return mean


class ModelAverager:
    """Averages a model over the ranks of the default process group (one rank a machine)."""

    def __init__(self) -> None:
        self.machines = dist.get_world_size()
        self.count = 0  # averagings done
        self.bytes_sent = 0  # payload this machine contributed: d values per averaging

    def start(self, x: torch.Tensor) -> PendingAverage:
        snapshot = x.clone()
        total = snapshot.clone()
        work = dist.all_reduce(total, op=dist.ReduceOp.SUM, async_op=True)
        self.count += 1
        self.bytes_sent += total.numel() * total.element_size()
        return PendingAverage(x, snapshot, total, work, self.machines)

    def average(self, x: torch.Tensor, settled: bool = False) -> torch.Tensor:
        """``start(x).wait(settled)``."""
        return self.start(x).wait(settled)
