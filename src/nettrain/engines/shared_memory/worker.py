"""A worker process of the shared-memory engine: it runs the method's ``shared_step``.

Worker ``c`` holds its own state (``Method.shared_init``: its momentum, say), its
mini-batch stream and a :class:`~nettrain.engines.shared_memory.comm.SharedBoard`, the
shared-model pattern on the board. For each ticket it claims it runs the method's
``shared_step`` (:meth:`~nettrain.algorithms.base.Method.shared_step`), which reads
and writes the shared model through that pattern; the update rule is the method's,
none is here. The gradient it gets (:class:`BlockGradient`) is computed only for
the parameter tensors that touch the blocks the step will write (autograd then skips
the other weights' gradients, and stops early when a worker owns only the last
layers).
"""

from __future__ import annotations

import itertools
import math
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from nettrain.algorithms.base import Method
from nettrain.engines.shared_memory.board import Board
from nettrain.engines.shared_memory.comm import SharedBoard
from nettrain.errors import DivergenceError, NettrainError
from nettrain.problem.flat import FlatSpec, block_slices
from nettrain.problem.losses import Regularizer
from nettrain.problem.oracle import agent_seed

POLL_S = 2e-4  # how often a worker held back by the ticket limit looks again


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs, pickled once at spawn (tensors travel as shared memory)."""

    model: torch.nn.Module  # template: its parameters are replaced by views of x
    loss: Any  # (out (B, k), y (B,)) -> (B,)
    regularizer: Regularizer
    x_train: torch.Tensor  # (N, F)
    y_train: torch.Tensor  # (N,)
    pool: torch.Tensor  # (M,) training indices the workers draw from
    batch_size: int  # 0 = every sample of the pool
    seed: int
    rounds: int
    workers: int
    blocks: int
    algorithm: Method  # engine=shared_memory in its engines
    stability_hint: str
    timeout_s: float  # how long a synchronous round waits for its slowest worker


class BlockGradient:
    """Worker ``c``'s oracle (:class:`~nettrain.algorithms.base.BlockOracle`): each call
    draws its next mini-batch and gives the loss and gradient at ``x: (d,)`` for the
    parameters that touch some blocks.

    Parameter tensors that intersect no written block get no gradient (their entries of
    ``g`` stay 0): autograd skips their weight gradients, and the whole backward pass
    below the lowest needed layer. Mini-batches come from the stream ``(seed, c)``.
    """

    def __init__(self, spec: WorkerSpec, c: int) -> None:
        self.spec = spec
        self.generator = torch.Generator().manual_seed(agent_seed(spec.seed, c))
        self.flat = FlatSpec.of(spec.model)
        starts = torch.tensor((0, *self.flat.numels)).cumsum(0).tolist()
        self.ranges = list(itertools.pairwise(starts))  # per parameter tensor
        self.slices = block_slices(self.flat.dim, spec.blocks)
        self._need: dict[tuple[int, ...], tuple[bool, ...]] = {}

    def needed(self, blocks: tuple[int, ...]) -> tuple[bool, ...]:
        """Which parameter tensors intersect ``blocks`` (cached per set of blocks)."""
        if blocks not in self._need:
            spans = [(self.slices[b].start, self.slices[b].stop) for b in blocks]
            self._need[blocks] = tuple(
                any(a < e and s < b for s, e in spans) for a, b in self.ranges
            )
        return self._need[blocks]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch (the whole pool when ``batch_size == 0``)."""
        pool = self.spec.pool
        if self.spec.batch_size == 0:
            idx = pool
        else:
            idx = pool[torch.randint(len(pool), (self.spec.batch_size,), generator=self.generator)]
        return self.spec.x_train[idx], self.spec.y_train[idx]

    def __call__(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, torch.Tensor]:
        xb, yb = self.batch()
        params, leaves, where = {}, [], []
        for name, shape, (a, b), need in zip(
            self.flat.names, self.flat.shapes, self.ranges, self.needed(blocks), strict=True
        ):
            view = x[a:b].view(shape)
            if need:
                view = view.detach().requires_grad_(True)
                leaves.append(view)
                where.append((a, b))
            params[name] = view
        with torch.enable_grad():
            out = functional_call(self.spec.model, params, (xb,))
            loss = self.spec.loss(out, yb).mean()
            grads = torch.autograd.grad(loss, leaves)
        g = torch.zeros_like(x)  # (d,)
        for (a, b), gp in zip(where, grads, strict=True):
            g[a:b] = gp.reshape(-1)
        value = float(loss.detach())
        reg = self.spec.regularizer
        if reg.kind != "none":
            value += float(reg.value(x))
            g += reg.grad(x)
        return value, g


def worker_main(c: int, spec: WorkerSpec, board: Board) -> None:
    """Entry point of worker process ``c`` (spawned): run, and report any failure."""
    torch.set_num_threads(1)
    try:
        Worker(c, spec, board).run()
    except BaseException as err:
        detail = str(err) if isinstance(err, NettrainError) else traceback.format_exc()
        board.errors.put((c, type(err).__name__, detail))
        board.barrier.abort()  # release peers of a synchronous round


class Worker:
    """Worker ``c``'s loop over its tickets (see the module docstring)."""

    def __init__(self, c: int, spec: WorkerSpec, board: Board) -> None:
        self.c, self.spec, self.board = c, spec, board
        self.oracle = BlockGradient(spec, c)
        self.shared = SharedBoard(board, c, spec.workers, spec.timeout_s)
        self.state = spec.algorithm.shared_init(board.x)
        self.k = 0  # this worker's step counter

    def run(self) -> None:
        spec, board, algo = self.spec, self.board, self.spec.algorithm
        total = spec.rounds * spec.workers
        board.ready[self.c] = 1
        while True:
            j = board.claim()
            if j >= total:
                return
            while j >= int(board.limit[0]):
                time.sleep(POLL_S)
            self.state, loss = algo.shared_step(self.state, self.k, self.oracle, self.shared)
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"the run diverged at step {self.k} of worker {self.c}: the training loss "
                    f"is {loss}. {spec.stability_hint}, or check the data for NaN"
                )
            board.loss_sum[self.c] += loss
            board.samples[self.c] += spec.batch_size or len(spec.pool)
            self.k += 1
            board.steps[self.c] += 1
