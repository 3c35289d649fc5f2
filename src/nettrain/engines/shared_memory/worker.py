"""A worker process of the shared-memory engine: read, compute, write its blocks.

Asynchronous rules (``block_async``, ``hogwild``): worker ``c`` claims a ticket,
copies the shared ``x`` (the inconsistent read: others keep writing), computes the
mini-batch gradient only for the parameter tensors that touch the blocks it will
write (autograd then skips the other weights' gradients, and stops early when a
worker owns only the last layers), and writes each of those blocks in place::

    u_b <- m u_b + g_b ;  x_b <- x_b - gamma_c(k) u_b      (no lock)

Staleness of a step: for every block, the writes it received between the worker's
read and its write (the difference of the block's version counter), counted over
all blocks read.

Synchronous data-parallel SGD (``allreduce``): every worker computes its gradient at
the same ``x``, puts it in its row of ``grads``, waits at a barrier, updates the slice
it owns with the mean gradient (``x_c <- x_c - lr d(mean_p g_p)``), and waits again.
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

from nettrain.algorithms.baselines import AllReduceSGD
from nettrain.algorithms.block_async import BlockAsyncSGD, owned_blocks
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_direction
from nettrain.engines.shared_memory.board import Board
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
    algorithm: BlockAsyncSGD | AllReduceSGD
    stability_hint: str
    timeout_s: float  # how long a synchronous round waits for its slowest worker


class BlockGradient:
    """Mini-batch loss and gradient at ``x: (d,)`` for the parameters that touch some blocks.

    Parameter tensors that intersect no written block get no gradient (their entries of
    ``g`` stay 0): autograd skips their weight gradients, and the whole backward pass
    below the lowest needed layer.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
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

    def __call__(
        self, x: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, blocks: tuple[int, ...]
    ) -> tuple[float, torch.Tensor]:
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
        self.gradient = BlockGradient(spec)
        self.generator = torch.Generator().manual_seed(agent_seed(spec.seed, c))
        self.u = torch.zeros_like(board.x)  # (d,) this worker's momentum
        self.k = 0  # this worker's step counter

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.spec.pool
        if self.spec.batch_size == 0:
            idx = pool
        else:
            idx = pool[torch.randint(len(pool), (self.spec.batch_size,), generator=self.generator)]
        return self.spec.x_train[idx], self.spec.y_train[idx]

    def run(self) -> None:
        spec, board = self.spec, self.board
        total = spec.rounds * spec.workers
        synchronous = isinstance(spec.algorithm, AllReduceSGD)
        board.ready[self.c] = 1
        while True:
            j = board.claim()
            if j >= total:
                return
            while j >= int(board.limit[0]):
                time.sleep(POLL_S)
            loss = self.synchronous_step() if synchronous else self.asynchronous_step()
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"the run diverged at step {self.k} of worker {self.c}: the training loss "
                    f"is {loss}. {spec.stability_hint}, or check the data for NaN"
                )
            board.loss_sum[self.c] += loss
            board.samples[self.c] += spec.batch_size or len(spec.pool)
            self.k += 1
            board.steps[self.c] += 1

    def write(self, blocks: tuple[int, ...], xr: torch.Tensor, g: torch.Tensor, lr: float) -> None:
        """``u_b <- m u_b + g_b; x_b <- x_b - lr d_b`` in place on the shared ``x``, per block."""
        sgd: SGDConfig = self.spec.algorithm.sgd
        for b in blocks:
            a, e = self.gradient.slices[b].start, self.gradient.slices[b].stop
            direction, state = sgd_direction(xr[a:e], g[a:e], SGDState(self.u[a:e]), sgd)
            if state.buf is not None:
                self.u[a:e] = state.buf
            self.board.x[a:e].add_(direction, alpha=-lr)  # the lock-free write

    def asynchronous_step(self) -> float:
        algo, board, c = self.spec.algorithm, self.board, self.c
        assert isinstance(algo, BlockAsyncSGD)
        blocks = algo.written(c, self.k)
        seen = board.versions.clone()  # (blocks,)
        xr = board.x.clone()  # the inconsistent read
        loss, g = self.gradient(xr, *self.batch(), blocks)
        self.write(blocks, xr, g, algo.step_size(self.k))
        stale = board.versions - seen  # writes each block received since the read
        written = torch.tensor(blocks)
        board.versions[written] += 1
        board.updates[c, written] += 1
        board.stale_sum[c] += int(stale.sum())
        board.stale_max[c] = max(int(board.stale_max[c]), int(stale.max()))
        board.reads[c] += len(stale)
        return loss

    def synchronous_step(self) -> float:
        spec, board, c = self.spec, self.board, self.c
        algo, timeout = spec.algorithm, spec.timeout_s
        xr = board.x.clone()  # consistent: every write of the last round is done
        loss, board.grads[c] = self.gradient(xr, *self.batch(), tuple(range(spec.blocks)))
        board.barrier.wait(timeout)
        mine = owned_blocks(c, spec.workers, spec.blocks)
        mean = board.grads.mean(0)  # (d,) only the owned slices are used
        self.write(mine, xr, mean, algo.sgd.lr)
        written = torch.tensor(mine)
        board.versions[written] += 1
        board.updates[c, written] += 1
        board.reads[c] += spec.blocks
        board.barrier.wait(timeout)
        return loss
