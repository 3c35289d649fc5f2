"""A worker process of the shared-memory engine: it runs the method's ``shared_step``.

Worker ``c`` holds its own state (``Method.shared_init``: its momentum, say), its
oracle (:class:`~nettrain.problem.block_oracle.BlockGradient`, the mini-batch stream
``(seed, c)``) and a :class:`~nettrain.engines.shared_memory.comm.SharedBoard`, the
shared-model pattern on the board. For each ticket it claims it runs the method's
``shared_step`` (:meth:`~nettrain.algorithms.base.Method.shared_step`), which reads
and writes the shared model through that pattern; the update rule is the method's,
none is here.
"""

from __future__ import annotations

import itertools
import math
import time
import traceback
from collections.abc import Callable

import torch

from nettrain.algorithms.base import Method
from nettrain.engines.shared_memory.board import Board
from nettrain.engines.shared_memory.comm import SharedBoard
from nettrain.errors import DivergenceError, NettrainError
from nettrain.problem.block_oracle import BlockGradient

POLL_S = 2e-4  # how often a worker held back by the ticket limit looks again


def worker_main(
    c: int,
    board: Board,
    algorithm: Method,
    oracle: Callable[[int], BlockGradient],
    steps: int,
    timeout_s: float,
) -> None:
    """Entry point of worker process ``c`` (spawned): run, and report any failure.

    ``oracle(c)`` builds its oracle; ``steps`` is the number of tickets of the run (all
    workers'); ``timeout_s`` how long a synchronous round waits for its slowest worker."""
    torch.set_num_threads(1)
    try:
        gradient = oracle(c)
        shared = SharedBoard(board, c, len(board.steps), timeout_s)
        state = algorithm.shared_init(board.x)
        board.ready[c] = 1
        for k in itertools.count():  # this worker's step counter
            j = board.claim()
            if j >= steps:
                return
            while j >= int(board.limit[0]):
                time.sleep(POLL_S)
            state, loss = algorithm.shared_step(state, k, gradient, shared)
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"the run diverged at step {k} of worker {c}: the training loss is "
                    f"{loss}. {algorithm.stability_hint}, or check the data for NaN"
                )
            board.loss_sum[c] += loss
            board.samples[c] += gradient.samples
            board.steps[c] += 1
    except BaseException as err:
        detail = str(err) if isinstance(err, NettrainError) else traceback.format_exc()
        board.errors.put((c, type(err).__name__, detail))
        board.barrier.abort()  # release peers of a synchronous round
