"""The shared-memory steps of the methods (``shared_step``, ``shared_blocks``,
``shared_init``), in one process against a fake :class:`~nettrain.patterns.SharedModel`
that records every call, checked against the update rules written out here."""

from __future__ import annotations

import pytest
import torch

from nettrain.algorithms import DPSGD, AllReduceSGD, BlockAsyncSGD, Hogwild
from nettrain.errors import ConfigError
from nettrain.patterns import SharedModel
from nettrain.problem.flat import block_slices

D = 7
A = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.25, 2.5], dtype=torch.float64)  # curvatures
C = torch.tensor([0.5, -1.0, 2.0, 0.0, -0.5, 1.0, 3.0], dtype=torch.float64)  # minimiser
X0 = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, -2.0, 0.25], dtype=torch.float64)
OTHER = torch.tensor([0.3, -0.7, 1.1, -0.2, 0.9, 0.4, -1.3], dtype=torch.float64)


class FakeShared(SharedModel):
    """A shared model of plain tensors that logs every call: worker ``worker`` of
    ``workers``; ``mean_shared(g)`` is ``(g + other) / 2`` (one other worker)."""

    def __init__(self, worker: int, workers: int, blocks: int, x: torch.Tensor) -> None:
        self.worker, self.workers, self.blocks = worker, workers, blocks
        self.slices = block_slices(x.shape[0], blocks)
        self.x = x.clone()
        self.events: list[str] = []
        self.writes: list[tuple[tuple[int, ...], torch.Tensor, float]] = []
        self.means: list[torch.Tensor] = []

    def read_shared(self) -> torch.Tensor:
        self.events.append("read")
        return self.x.clone()

    def write_shared(self, blocks: tuple[int, ...], direction: torch.Tensor, lr: float) -> None:
        self.events.append("write")
        self.writes.append((tuple(blocks), direction.clone(), lr))
        for b in blocks:
            self.x[self.slices[b]] -= lr * direction[self.slices[b]]

    def mean_shared(self, g: torch.Tensor) -> torch.Tensor:
        self.events.append("mean")
        self.means.append(g.clone())
        return (g + OTHER) / 2

    def sync_shared(self) -> None:
        self.events.append("sync")


class QuadraticOracle:
    """``f(x) = 1/2 sum_i a_i (x_i - c_i)^2``: ``(f(x), a (x - c))`` with the gradient
    zero outside the columns of ``blocks`` (a :class:`BlockOracle`); logs its calls."""

    def __init__(self, slices: list[slice]) -> None:
        self.slices = slices
        self.calls: list[tuple[torch.Tensor, tuple[int, ...]]] = []

    def __call__(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, torch.Tensor]:
        self.calls.append((x.clone(), tuple(blocks)))
        g = torch.zeros_like(x)
        for b in blocks:
            s = self.slices[b]
            g[s] = A[s] * (x[s] - C[s])
        return float(0.5 * (A * (x - C) ** 2).sum()), g


def columns(slices: list[slice], blocks: tuple[int, ...]) -> torch.Tensor:
    """``(d,)`` bool: the columns of ``blocks``."""
    mask = torch.zeros(D, dtype=torch.bool)
    for b in blocks:
        mask[slices[b]] = True
    return mask


# --- SharedDataParallel (AllReduceSGD on engine=shared_memory) ---


def test_data_parallel_cuts_one_block_per_worker_and_starts_from_zero_momentum() -> None:
    """``shared_blocks(P) = P``; ``shared_init(x)`` is a new zero ``u`` shaped like ``x``."""
    algo = AllReduceSGD(lr=0.1)
    assert algo.shared_blocks(2) == 2 and algo.shared_blocks(3) == 3
    x = X0.clone()
    u = algo.shared_init(x)
    assert u.shape == (D,) and u.dtype == torch.float64 and not u.any()
    u += 1
    assert torch.equal(x, X0)  # not a view of the model


@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay"),
    [(0.0, False, 0.0), (0.5, False, 0.1), (0.6, True, 0.2)],
)
def test_data_parallel_step_moves_its_own_block_by_the_mean_gradient(
    momentum: float, nesterov: bool, weight_decay: float
) -> None:
    """Worker 1 of 2, steps 0, 1, 2: ``g = (g_1 + g_other) / 2`` (mean_shared),
    ``g <- g + wd x``, ``u <- m u + g``, ``d = g + m u`` (Nesterov) or ``u`` (or ``g``
    without momentum); ``x_1 <- x_1 - lr d_1`` on its own block only, ``u`` kept on the
    other block; the oracle is asked for every block at the model read; one barrier
    (sync_shared) after the write; the loss returned is the oracle's."""
    lr = 0.1
    algo = AllReduceSGD(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    shared = FakeShared(worker=1, workers=2, blocks=algo.shared_blocks(2), x=X0)
    oracle = QuadraticOracle(shared.slices)
    own = columns(shared.slices, (1,))  # block 1: columns 3..6
    assert own.tolist() == [False, False, False, True, True, True, True]
    x, u = X0.clone(), torch.zeros(D, dtype=torch.float64)
    state = algo.shared_init(shared.x)
    for k in range(3):
        shared.events.clear()
        g_own = A * (x - C)
        g = (g_own + OTHER) / 2 + weight_decay * x
        buf = momentum * u + g
        direction = g + momentum * buf if nesterov else (buf if momentum else g)
        if momentum:
            u = torch.where(own, buf, u)
        x = torch.where(own, x - lr * direction, x)

        state, loss = algo.shared_step(state, k, oracle, shared)

        read, asked = oracle.calls[-1]
        assert asked == (0, 1)
        assert torch.allclose(shared.means[-1], g_own)  # its own gradient, at the read
        assert loss == pytest.approx(0.5 * float((A * (read - C) ** 2).sum()))
        assert shared.events == ["read", "mean", "write", "sync"]
        blocks, sent, step = shared.writes[-1]
        assert blocks == (1,) and step == lr
        assert torch.allclose(sent[own], direction[own])
        assert torch.allclose(shared.x, x) and torch.equal(shared.x[~own], X0[~own])
        assert torch.allclose(state, u)
    assert len(oracle.calls) == 3 and len(shared.writes) == 3
    if momentum == 0:
        assert not state.any()  # no momentum: nothing accumulates
    else:
        assert state[own].abs().min() > 0 and not state[~own].any()


def test_the_shared_memory_step_writes_with_lr_t() -> None:
    """``engine=shared_memory``: worker ``k``'s step writes with ``lr_at(k)``."""
    algo = AllReduceSGD(lr=0.4, lr_warmup=4)
    shared = FakeShared(worker=0, workers=2, blocks=algo.shared_blocks(2), x=X0)
    oracle = QuadraticOracle(shared.slices)
    state = algo.shared_init(shared.x)
    for k in range(6):
        state, _ = algo.shared_step(state, k, oracle, shared)
    assert [lr for _, _, lr in shared.writes] == [0.1, 0.2, 0.4 * 3 / 4, 0.4, 0.4, 0.4]


# --- BlockAsyncSGD / Hogwild ---


def test_block_async_shared_blocks_is_its_blocks_for_its_own_workers_only() -> None:
    """``shared_blocks(P)`` is ``blocks`` when ``P == workers``, else a ConfigError that
    names both numbers."""
    algo = BlockAsyncSGD(workers=2, blocks=5)
    assert algo.shared_blocks(2) == 5
    with pytest.raises(ConfigError, match=r"built for 2 workers but processes=3"):
        algo.shared_blocks(3)
    with pytest.raises(ConfigError, match=r"built for 2 workers but processes=1"):
        algo.shared_blocks(1)
    with pytest.raises(ConfigError, match=r"block_async was built for 4 workers"):
        BlockAsyncSGD(workers=4, blocks=4).shared_blocks(2)


def test_block_async_shared_init_is_a_new_zero_momentum() -> None:
    """``shared_init(x)``: zeros of ``x``'s shape and dtype, not a view of ``x``."""
    x = X0.clone()
    u = BlockAsyncSGD(workers=2, blocks=5).shared_init(x)
    assert u.shape == (D,) and u.dtype == torch.float64 and not u.any()
    u += 1
    assert torch.equal(x, X0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_block_async_step_writes_its_blocks_with_the_diminishing_step(nesterov: bool) -> None:
    """Worker 1 of 2, 5 blocks (it owns 1 and 3), warmup=1, full_every=2: steps 0
    (warm-up) and 2 (the full_every-th after it) write every block, steps 1 and 3 only
    blocks 1 and 3. At step ``k`` the oracle is asked for exactly the written blocks,
    ``g <- g + wd x``, ``u_b <- m u_b + g_b`` on the written blocks (kept elsewhere),
    ``d = g + m u`` (Nesterov) or ``u``, ``x_b <- x_b - gamma(k) d_b`` with
    ``gamma(k) = lr / (1 + step_decay lr k)``; no barrier, no mean."""
    lr, m, wd, decay = 0.1, 0.5, 0.2, 2.0
    algo = BlockAsyncSGD(
        lr=lr,
        momentum=m,
        nesterov=nesterov,
        weight_decay=wd,
        step_decay=decay,
        warmup=1,
        full_every=2,
        workers=2,
        blocks=5,
    )
    shared = FakeShared(worker=1, workers=2, blocks=algo.shared_blocks(2), x=X0)
    assert [(s.start, s.stop) for s in shared.slices] == [(0, 1), (1, 2), (2, 4), (4, 5), (5, 7)]
    oracle = QuadraticOracle(shared.slices)
    every, own = (0, 1, 2, 3, 4), (1, 3)
    expected_blocks = [every, own, every, own]
    gammas = [0.1, 0.1 / 1.2, 0.1 / 1.4, 0.1 / 1.6]  # lr / (1 + 2 * 0.1 * k)
    x, u = X0.clone(), torch.zeros(D, dtype=torch.float64)
    state = algo.shared_init(shared.x)
    after_full = state
    for k in range(4):
        shared.events.clear()
        written = columns(shared.slices, expected_blocks[k])
        g = torch.where(written, A * (x - C), 0.0) + wd * x
        buf = m * u + g
        direction = g + m * buf if nesterov else buf
        u = torch.where(written, buf, u)
        x = torch.where(written, x - gammas[k] * direction, x)

        state, loss = algo.shared_step(state, k, oracle, shared)

        read, asked = oracle.calls[-1]
        assert asked == expected_blocks[k]
        assert loss == pytest.approx(0.5 * float((A * (read - C) ** 2).sum()))
        assert shared.events == ["read", "write"]  # lock-free: no mean, no barrier
        blocks, sent, step = shared.writes[-1]
        assert blocks == expected_blocks[k] and step == pytest.approx(gammas[k], rel=1e-15)
        assert torch.allclose(sent[written], direction[written])
        assert torch.allclose(shared.x, x)
        assert torch.allclose(state, u)
        if k == 2:
            after_full = state.clone()
    assert not shared.means
    # blocks 0, 2, 4 last moved at the full step 2: their momentum is kept exactly since
    others = ~columns(shared.slices, own)
    assert state[others].abs().min() > 0 and torch.equal(state[others], after_full[others])
    assert not torch.equal(state[~others], after_full[~others])


def test_block_async_step_size_is_lr_without_step_decay_and_partitions_by_default() -> None:
    """``step_decay = 0`` keeps ``gamma(k) = lr``; with no warm-up and ``full_every = 0``
    every step writes the owned blocks ``b mod P == worker`` only (worker 0: 0, 2, 4)."""
    algo = BlockAsyncSGD(lr=0.3, workers=2, blocks=5)
    shared = FakeShared(worker=0, workers=2, blocks=5, x=X0)
    oracle = QuadraticOracle(shared.slices)
    state = algo.shared_init(shared.x)
    for k in range(3):
        state, _ = algo.shared_step(state, k, oracle, shared)
        assert oracle.calls[-1][1] == (0, 2, 4)
        assert shared.writes[-1][0] == (0, 2, 4) and shared.writes[-1][2] == 0.3
    assert torch.equal(shared.x[1:2], X0[1:2]) and torch.equal(shared.x[4:5], X0[4:5])
    assert not state.any()  # momentum 0: u stays zero


def test_hogwild_writes_every_block_at_every_step() -> None:
    """Hogwild is never partitioned: worker 1 of 2 writes all 5 blocks at steps 0..3."""
    algo = Hogwild(lr=0.1, workers=2, blocks=5)
    shared = FakeShared(worker=1, workers=2, blocks=5, x=X0)
    oracle = QuadraticOracle(shared.slices)
    state = algo.shared_init(shared.x)
    x = X0.clone()
    for k in range(4):
        x = x - 0.1 * A * (x - C)
        state, _ = algo.shared_step(state, k, oracle, shared)
        assert oracle.calls[-1][1] == (0, 1, 2, 3, 4) == shared.writes[-1][0]
    assert torch.allclose(shared.x, x)


# --- Method's defaults ---


def test_a_method_without_shared_memory_refuses_the_shared_steps() -> None:
    """A method whose engines leave out shared_memory: ``shared_blocks`` and
    ``shared_step`` raise a ConfigError naming it and the engine; ``shared_init`` is
    None."""
    algo = DPSGD(lr=0.1)
    message = r"algorithm=dpsgd does not run on engine=shared_memory: exchanges the models"
    with pytest.raises(ConfigError, match=message):
        algo.shared_blocks(2)
    shared = FakeShared(worker=0, workers=2, blocks=2, x=X0)
    with pytest.raises(ConfigError, match=message):
        algo.shared_step(None, 0, QuadraticOracle(shared.slices), shared)
    assert shared.events == []
    assert algo.shared_init(X0) is None
