"""Synchronous data-parallel SGD on one shared model: ``allreduce`` on ``engine=shared_memory``.

``P`` worker processes hold one model ``x: (d,)`` cut into ``P`` blocks, block ``c``
owned by worker ``c``. Every step each worker::

    x~  <- read x                      (consistent: the last step's writes are done)
    g_c <- mini-batch gradient at x~
    g   <- (1/P) sum_p g_p             (mean_shared: a barrier)
    u_c <- m u_c + g_c-block ;  x_c <- x_c - lr_k u_c   (its own block only)
    wait for every worker              (sync_shared: a barrier)

so the model moves as one step of SGD on the mean gradient of ``P`` mini-batches
(with each block's momentum kept by its owner): what ``AllReduceSGD`` does over the
network, written against :class:`~nettrain.patterns.SharedModel`. ``lr_k`` is the
method's step at step ``k`` (``sgd_at(k)``: the warm-up of
:class:`~nettrain.algorithms.sgd.WarmedStep`; ``lr`` without one); the steps are
synchronous, so a worker's ``k`` is the run's step.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from nettrain.algorithms.base import BlockOracle
from nettrain.algorithms.sgd import SGDConfig, masked_direction
from nettrain.patterns import SharedModel


class SharedDataParallel:
    """The shared-memory steps of a synchronous data-parallel method (see the module);
    the method supplies ``sgd_at(k)``, its local step's settings at step ``k``."""

    engines: ClassVar[frozenset[str]] = frozenset({"sim", "distributed", "shared_memory"})

    def sgd_at(self, k: int) -> SGDConfig:  # supplied by the method
        raise NotImplementedError

    def shared_blocks(self, workers: int) -> int:
        """One block per worker."""
        return workers

    def shared_init(self, x: torch.Tensor) -> torch.Tensor:
        """The worker's momentum ``u: (d,)`` (only its own block moves), zero."""
        return torch.zeros_like(x)

    def shared_step(
        self, state: torch.Tensor, k: int, oracle: BlockOracle, shared: SharedModel
    ) -> tuple[torch.Tensor, float]:
        """One synchronous step of every worker (the module's rule)."""
        read = shared.read_shared()
        loss, g = oracle(read, tuple(range(shared.blocks)))
        mean = shared.mean_shared(g)
        mine = shared.owned()
        sgd = self.sgd_at(k)
        direction, u = masked_direction(read, mean, state, shared.mask(mine), sgd)
        shared.write_shared(mine, direction, sgd.lr)
        shared.sync_shared()
        return u, loss
