"""The shared-model pattern on the shared-memory engine's board (``SharedBoard``), in one
process: what one worker writes another reads, and the counters say who wrote what."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.multiprocessing as mp

from nettrain.algorithms import AllReduceSGD, Hogwild
from nettrain.engines.shared_memory.board import Board
from nettrain.engines.shared_memory.comm import SharedBoard
from nettrain.problem.flat import block_slices


def board(d: int = 10, blocks: int = 4, workers: int = 2, synchronous: bool = False) -> Board:
    x0 = torch.arange(d, dtype=torch.float64)
    return Board.create(x0, blocks, workers, synchronous, mp.get_context("spawn"))


def test_a_write_is_seen_by_the_next_read_of_another_worker_and_counted() -> None:
    b = board()
    w0, w1 = SharedBoard(b, 0, 2, 5.0), SharedBoard(b, 1, 2, 5.0)
    assert w0.slices == block_slices(10, 4) and w1.owned() == (1, 3)
    before = w0.read_shared()
    direction = torch.ones(10, dtype=torch.float64)
    w1.write_shared((1, 3), direction, lr=0.5)
    after = w0.read_shared()
    written = w1.mask((1, 3))
    assert torch.equal(after[written], before[written] - 0.5)
    assert torch.equal(after[~written], before[~written])  # only the blocks written move
    assert b.versions.tolist() == [0, 1, 0, 1]
    assert b.updates.tolist() == [[0, 0, 0, 0], [0, 1, 0, 1]]


def test_the_staleness_of_a_read_is_the_writes_its_blocks_received_until_it_is_used() -> None:
    b = board()
    w0, w1 = SharedBoard(b, 0, 2, 5.0), SharedBoard(b, 1, 2, 5.0)
    zero = torch.zeros(10, dtype=torch.float64)
    w0.read_shared()
    w1.write_shared((0, 1), zero, lr=1.0)
    w1.write_shared((1,), zero, lr=1.0)
    w0.write_shared((0,), zero, lr=1.0)  # uses the read: 1 + 2 writes since, at most 2
    assert (int(b.stale_sum[0]), int(b.stale_max[0]), int(b.reads[0])) == (3, 2, 4)
    assert (int(b.stale_sum[1]), int(b.reads[1])) == (0, 0)  # worker 1 never read
    w0.write_shared((2,), zero, lr=1.0)  # no read open: nothing more counted
    assert int(b.reads[0]) == 4 and b.versions.tolist() == [2, 2, 1, 0]


def test_mean_shared_waits_for_every_worker_and_averages() -> None:
    b = board(blocks=2, synchronous=True)
    views = [SharedBoard(b, c, 2, 5.0) for c in range(2)]
    grads = [torch.full((10,), 1.0, dtype=torch.float64), torch.full((10,), 3.0)]
    means: list[torch.Tensor] = [torch.empty(0)] * 2

    def worker(c: int) -> None:
        views[c].read_shared()
        means[c] = views[c].mean_shared(grads[c].double())
        views[c].sync_shared()

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(torch.equal(m, torch.full((10,), 2.0, dtype=torch.float64)) for m in means)
    assert b.reads.tolist() == [2, 2] and b.stale_sum.tolist() == [0, 0]


def test_mean_shared_needs_a_board_with_gradient_rows() -> None:
    view = SharedBoard(board(), 0, 2, 5.0)
    with pytest.raises(RuntimeError, match="no gradient rows"):
        view.mean_shared(torch.zeros(10, dtype=torch.float64))


def test_a_methods_shared_step_writes_its_rule_through_the_pattern() -> None:
    """Hogwild's step: ``u <- m u + g; x <- x - gamma(k) u`` on every block, with the
    gradient the oracle gave at the value read; AllReduceSGD with one worker is SGD."""
    g = torch.linspace(-1, 1, 10, dtype=torch.float64)
    asked: list[tuple[int, ...]] = []

    def oracle(x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, torch.Tensor]:
        asked.append(blocks)
        return 0.25, g

    algo = Hogwild(lr=0.1, momentum=0.5, step_decay=1.0, workers=1, blocks=4)
    b = board(workers=1, blocks=algo.shared_blocks(1))
    shared = SharedBoard(b, 0, 1, 5.0)
    x = b.x.clone()
    u, ref_u = algo.shared_init(b.x), torch.zeros(10, dtype=torch.float64)
    for k in range(3):
        u, loss = algo.shared_step(u, k, oracle, shared)
        ref_u = 0.5 * ref_u + g
        x = x - algo.step_size(k) * ref_u
        assert loss == 0.25 and torch.allclose(b.x, x) and torch.allclose(u, ref_u)
    assert asked == [(0, 1, 2, 3)] * 3 and b.versions.tolist() == [3, 3, 3, 3]

    sgd = AllReduceSGD(lr=0.2)
    b = board(workers=1, blocks=sgd.shared_blocks(1), synchronous=True)
    x = b.x.clone()
    u, loss = sgd.shared_step(sgd.shared_init(b.x), 0, oracle, SharedBoard(b, 0, 1, 5.0))
    assert torch.allclose(b.x, x - 0.2 * g) and b.updates.tolist() == [[1]]
