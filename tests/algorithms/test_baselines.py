"""Every baseline on a least-squares problem whose optimum is known in closed form."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import (
    iid_shards,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms.baselines import (
    DPSGD,
    AllReduceSGD,
    GradientTracking,
    LocalSGD,
    TrackingState,
)
from nettrain.algorithms.sgd import SGDState, sgd_step
from nettrain.compression import TopK
from nettrain.config import build_algorithm, load_config
from nettrain.data import Dataset
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.errors import ConfigError
from nettrain.experiment import run
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 8


def run_quadratic(name: str, lr: float, rounds: int, shards, schedule: str = "static"):
    data = regression_data()
    problem = least_squares_problem(data)
    topology = build_topology(
        "ring", N, schedule=schedule, drop_prob=0.3 if schedule == "edge_drop" else 0.0, seed=1
    )
    algorithm = build_algorithm(load_config({"algorithm": name, "lr": lr, "tau": 4}))
    job = sim_job(problem, shards, topology, algorithm, rounds=rounds)
    x = SimEngine().run(job, RunFolder(None)).x
    return x, least_squares_optimum(data, shards)


@pytest.mark.parametrize(("name", "lr"), [("allreduce", 0.3), ("gradient_tracking", 0.05)])
@pytest.mark.parametrize("schedule", ["static", "edge_drop"])
def test_exact_methods_reach_the_optimum(name: str, lr: float, schedule: str) -> None:
    """Heterogeneous shards; constant step (tracking needs a smaller one on a ring:
    its stable range shrinks with the spectral gap); exact convergence to 1e-8."""
    x, opt = run_quadratic(name, lr=lr, rounds=3000, shards=iid_shards(120, N), schedule=schedule)
    assert (x - opt).norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("name", ["dpsgd", "local_sgd"])
def test_inexact_methods_have_a_bias_that_vanishes_with_the_step(name: str) -> None:
    """D-PSGD and local SGD with a constant step stop at O(lr) from the optimum on
    heterogeneous shards (Yuan, Ling, Yin 2016; Woodworth et al. 2020): a 4x smaller
    step must at least halve the error."""
    shards = [torch.arange(120)[i::N] for i in range(N)]
    errors = []
    for lr in (0.2, 0.05):
        x, opt = run_quadratic(name, lr=lr, rounds=int(300 / lr), shards=shards)
        errors.append(float((x.mean(0) - opt).norm()))
    assert errors[0] < 0.1
    assert errors[1] < errors[0] / 2


@pytest.mark.parametrize("name", ["allreduce", "local_sgd", "dpsgd", "gradient_tracking"])
def test_identical_objectives_every_method_is_exact(name: str) -> None:
    """All agents hold the same data: every method's fixed point is the optimum."""
    shards = [torch.arange(120)] * N
    x, opt = run_quadratic(name, lr=0.1, rounds=1500, shards=shards)
    assert (x - opt).norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("schedule", ["static", "edge_drop", "random_matching"])
def test_gradient_tracking_invariant_every_round(schedule: str) -> None:
    """``sum_i y_i = sum_i g_i`` after every round, with stochastic mini-batches."""
    data = regression_data()
    problem = least_squares_problem(data)
    kind = "complete" if schedule == "random_matching" else "ring"
    topology = build_topology(
        kind, N, schedule=schedule, drop_prob=0.5 if schedule == "edge_drop" else 0.0, seed=3
    )
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(iid_shards(120, N), range(N), batch_size=4, seed=0)
    algo = GradientTracking(lr=0.05)
    state: TrackingState = algo.init(torch.zeros(N, problem.dim, dtype=torch.float64), oracle, comm)
    for t in range(50):
        state, _ = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.y.sum(0), state.g.sum(0), rtol=0, atol=1e-12)
        assert algo.diagnostics(state)["tracking_error"] < 1e-12
    assert not torch.allclose(state.y[0], state.y[1])  # the trackers are genuinely local


def per_agent_least_squares(
    n: int, k: int, d: int
) -> tuple[Problem, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Agent ``i`` holds ``k`` samples ``(A_i, b_i)`` of its own; a linear model without
    bias and the squared loss give ``f_i(x) = ||A_i x - b_i||^2 / (2k)``, whose gradient
    ``A_i^T (A_i x - b_i) / k`` the reference below computes by hand. Returns the problem,
    the shards and every agent's ``A_i`` and ``b_i``."""
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(n * k, d, generator=gen, dtype=torch.float64)
    b = torch.randn(n * k, generator=gen, dtype=torch.float64) + torch.arange(n * k) // k
    data = Dataset("per_agent", a, b, a, b, n_classes=0)
    problem = Problem(
        torch.nn.Linear(d, 1, bias=False).double(), get_loss("squared"), Regularizer(), data
    )
    shards = [torch.arange(i * k, (i + 1) * k) for i in range(n)]
    return problem, shards, [a[s] for s in shards], [b[s] for s in shards]


def hand_gradient(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.T @ (a @ x - b) / len(b)


class MomentumBuffer:
    """``torch.optim.SGD``'s momentum for one agent: ``buf = g`` at the first step, then
    ``buf = momentum buf + g``; the direction is ``buf``, or ``g + momentum buf`` with
    Nesterov."""

    def __init__(self, momentum: float, nesterov: bool) -> None:
        self.momentum, self.nesterov, self.buf = momentum, nesterov, None

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        self.buf = g.clone() if self.buf is None else self.momentum * self.buf + g
        return g + self.momentum * self.buf if self.nesterov else self.buf


MOMENTA = [pytest.param(0.9, False, id="heavy_ball"), pytest.param(0.8, True, id="nesterov")]
STEPS = 6
DECAY = 0.01  # weight decay: the gradient of (DECAY / 2) ||x||^2 joins the step's gradient


def run_steps(algo, x0: torch.Tensor, problem: Problem, shards, topology) -> torch.Tensor:
    """``STEPS`` rounds of ``algo`` from the rows ``x0`` (every agent its own start)."""
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(len(shards)), batch_size=0, seed=0)
    state = algo.init(x0.clone(), oracle, comm)
    for t in range(STEPS):
        state, _ = algo.step(state, t, oracle, comm)
    return state.x


@pytest.mark.parametrize(("momentum", "nesterov"), MOMENTA)
def test_dpsgd_with_momentum_is_the_per_agent_reference(momentum: float, nesterov: bool) -> None:
    """D-PSGD with momentum and weight decay against a loop over agents written from its
    docstring: each agent's gradient at its own pre-mixing point, its own momentum buffer, then
    ``x_i <- sum_j W_ij x_j - lr d_i``. Agents start apart on different data, on a ring,
    so a wrong order (mixing before the gradient), a shared buffer or a wrong momentum
    recursion fails."""
    n, lr = 4, 0.05
    problem, shards, a, b = per_agent_least_squares(n, 3, 2)
    topology = build_topology("ring", n)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    algo = DPSGD(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=DECAY)
    got = run_steps(algo, x0, problem, shards, topology)
    W = topology.weights(0).to(torch.float64)
    bufs = [MomentumBuffer(momentum, nesterov) for _ in range(n)]
    x = [row.clone() for row in x0]
    for _ in range(STEPS):
        d = [bufs[i].direction(hand_gradient(a[i], b[i], x[i]) + DECAY * x[i]) for i in range(n)]
        x = [sum(W[i, j] * x[j] for j in range(n)) - lr * d[i] for i in range(n)]
    torch.testing.assert_close(got, torch.stack(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("momentum", "nesterov"), MOMENTA)
def test_gradient_tracking_with_momentum_is_the_per_agent_reference(
    momentum: float, nesterov: bool
) -> None:
    """Gradient tracking (DIGing) with momentum and weight decay against a loop over agents
    written from its docstring, momentum applied to the tracker ``y_i`` ("``y`` is the local
    step's gradient", the decay's ``DECAY x_i`` added to it)::

        x_i <- sum_j W_ij x_j - lr d(y_i + DECAY x_i)
        y_i <- sum_j W_ij y_j + g_i(x_i new) - g_i(x_i old),   y_i[0] = g_i(x_i[0])
    """
    n, lr = 4, 0.05
    problem, shards, a, b = per_agent_least_squares(n, 3, 2)
    topology = build_topology("ring", n)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    algo = GradientTracking(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=DECAY)
    got = run_steps(algo, x0, problem, shards, topology)
    W = topology.weights(0).to(torch.float64)
    bufs = [MomentumBuffer(momentum, nesterov) for _ in range(n)]
    x = [row.clone() for row in x0]
    g = [hand_gradient(a[i], b[i], x[i]) for i in range(n)]
    y = list(g)
    for _ in range(STEPS):
        d = [bufs[i].direction(y[i] + DECAY * x[i]) for i in range(n)]
        x = [sum(W[i, j] * x[j] for j in range(n)) - lr * d[i] for i in range(n)]
        new_g = [hand_gradient(a[i], b[i], x[i]) for i in range(n)]
        y = [sum(W[i, j] * y[j] for j in range(n)) + new_g[i] - g[i] for i in range(n)]
        g = new_g
    torch.testing.assert_close(got, torch.stack(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", [LocalSGD, DPSGD, GradientTracking])
def test_top_k_on_a_method_that_sends_models_is_refused_by_name(method) -> None:
    message = (
        "quantizer=topk keeps the largest 1% of the coordinates and zeros the rest: it is "
        f"meant for gradients under error feedback (algorithm=allreduce); {method.name} sends "
        "models, which it would shrink towards 0. Use quantizer=lattice, qsgd, fp16 or bf16"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        method(lr=0.1, compressor=TopK(k=2))


class RecordingParts:
    """A :class:`~nettrain.patterns.PartsHandle` that records the slices put into it."""

    def __init__(self, comm: SimCommunicator, like: torch.Tensor) -> None:
        self.comm, self.like, self.parts = comm, like, []
        self.bucket_bytes = 8 * 2  # two float64 columns a slice

    def put(self, cols: slice, part: torch.Tensor) -> None:
        self.parts.append((cols, part.clone()))

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        return self.comm.mean(whole)


@pytest.mark.parametrize(("momentum", "nesterov"), MOMENTA)
def test_allreduce_with_momentum_is_sgd_on_the_mean_gradient(momentum: float, nesterov: bool):
    """All-reduce SGD: one ``torch.optim.SGD``-style buffer on ``mean_i g_i(x) + DECAY x``,
    the same ``x`` everywhere. The mean is fed slice by slice by the backward pass: every
    column of every agent's final gradient is put once, then waited for."""
    n, lr = 4, 0.05
    problem, shards, a, b = per_agent_least_squares(n, 3, 5)
    comm = SimCommunicator(build_topology("ring", n), torch.device("cpu"), torch.float64)
    handles: list[RecordingParts] = []

    def start_mean_parts(like: torch.Tensor) -> RecordingParts:
        handles.append(RecordingParts(comm, like))
        return handles[-1]

    comm.start_mean_parts = start_mean_parts  # type: ignore[method-assign]
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    algo = AllReduceSGD(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=DECAY)
    x0 = torch.randn(5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    state = algo.init(x0.expand(n, -1).clone(), oracle, comm)
    buf, x = MomentumBuffer(momentum, nesterov), x0.clone()
    for t in range(STEPS):
        before = state.x
        state, _ = algo.step(state, t, oracle, comm)
        grads = torch.stack([hand_gradient(a[i], b[i], x) for i in range(n)])
        x = x - lr * buf.direction(grads.mean(0) + DECAY * x)
        torch.testing.assert_close(state.x, x.expand(n, -1), rtol=0, atol=1e-12)
        handle = handles[t]
        assert handle.like is before
        columns = sorted(c for cols, _ in handle.parts for c in range(5)[cols])
        assert columns == list(range(5))  # every column put once
        for cols, part in handle.parts:
            torch.testing.assert_close(part, grads[:, cols], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("momentum", "nesterov"), [*MOMENTA, pytest.param(0.0, False, id="weight_decay_alone")]
)
def test_local_sgd_with_momentum_is_the_per_agent_reference(momentum: float, nesterov: bool):
    """Local SGD with ``tau = 3``: every agent steps with its own momentum buffer (kept
    local, never averaged) and weight decay (alone too: not a plain step); after rounds 3
    and 6 the models are replaced by their mean."""
    n, lr, tau = 4, 0.05, 3
    problem, shards, a, b = per_agent_least_squares(n, 3, 2)
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    algo = LocalSGD(lr=lr, tau=tau, momentum=momentum, nesterov=nesterov, weight_decay=DECAY)
    comm = SimCommunicator(build_topology("ring", n), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    state = algo.init(x0.clone(), oracle, comm)
    bufs = [MomentumBuffer(momentum, nesterov) for _ in range(n)]
    x = [row.clone() for row in x0]
    for t in range(7):
        state, _ = algo.step(state, t, oracle, comm)
        x = [x[i] - lr * bufs[i].direction(hand_gradient(a[i], b[i], x[i]) + DECAY * x[i])
             for i in range(n)]  # fmt: skip
        if t in (2, 5):
            x = [torch.stack(x).mean(0)] * n
        torch.testing.assert_close(state.x, torch.stack(x), rtol=0, atol=1e-12)
    assert not torch.allclose(state.x[0], state.x[1])  # round 7 is local again


def test_local_sgd_steps_in_place_with_the_numbers_of_grad_then_step() -> None:
    """A plain step of local SGD (``Oracle.descend``) on an MLP whose first layer is
    written into the stack straight by ``grad`` (300 KiB an agent in float32) and added
    by blocks by ``descend``: the models of ``grad`` then ``sgd_step``, bit for bit, over
    rounds with and without averaging; ``x0`` is left as it was."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(64, 600, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    data = Dataset("wide", features, labels, features[:8], labels[:8], n_classes=10)
    net = torch.nn.Sequential(torch.nn.Linear(600, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    problem = Problem(net, get_loss("cross_entropy"), Regularizer(), data)
    shards, n, lr = [torch.arange(i, 64, 4) for i in range(4)], 4, 0.1
    comm = SimCommunicator(build_topology("ring", n), torch.device("cpu"), torch.float32)
    stepped, ref = (problem.oracle(shards, range(n), batch_size=8, seed=1) for _ in range(2))
    x0 = problem.initial_params(2).expand(n, -1).clone()
    algo = LocalSGD(lr=lr, tau=2)
    state, x = algo.init(x0, stepped, comm), x0.clone()
    for t in range(3):
        state, loss = algo.step(state, t, stepped, comm)
        expected, g = ref.grad(x)
        x, _ = sgd_step(x, g, SGDState(), algo.sgd)
        x = comm.mean(x) if t == 1 else x
        assert torch.equal(loss, expected) and torch.equal(state.x, x)
    assert torch.equal(x0, problem.initial_params(2).expand(n, -1))


def test_local_sgd_averages_after_at_least_one_step() -> None:
    LocalSGD(lr=0.1, tau=1)  # model averaging every step
    message = "tau must be >= 1 (local steps between averagings), got 0"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        LocalSGD(lr=0.1, tau=0)


# --- the learning-rate warm-up, lr_warmup (WarmedStep; Goyal et al. 2017) ---

WARM_D, ROUNDS = 5, 7


def test_the_step_ramps_linearly_to_lr_at_round_lr_warmup_minus_1() -> None:
    """``lr_t = lr * min(1, (t + 1) / lr_warmup)``: lr/4, 2lr/4, 3lr/4, then lr."""
    algo = AllReduceSGD(lr=0.8, lr_warmup=4)
    assert [algo.lr_at(t) for t in range(6)] == [0.8 * k / 4 for k in (1, 2, 3, 4)] + [0.8] * 2
    assert [algo.sgd_at(t).lr for t in range(6)] == [algo.lr_at(t) for t in range(6)]
    assert algo.sgd_at(4) is not None and algo.sgd_at(4) == algo.sgd
    assert AllReduceSGD(lr=0.8, lr_warmup=1).lr_at(0) == 0.8  # one round: lr from round 0
    none = AllReduceSGD(lr=0.8)
    assert none.lr_warmup == 0 and all(none.sgd_at(t) == none.sgd for t in range(3))


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.8, True)])
def test_allreduce_steps_lr_t_on_the_mean_gradient(momentum: float, nesterov: bool) -> None:
    """All-reduce SGD with ``lr_warmup = 4``, momentum and weight decay, written out::

        b <- mu b + (mean_i g_i(x) + DECAY x);   x <- x - lr (t + 1) / 4 * d   (t < 4)
                                                 x <- x - lr d                 (t >= 4)

    the momentum buffer untouched by the warm-up (it scales the step, not ``d``)."""
    lr, warm = 0.2, 4
    problem, shards, a, b = per_agent_least_squares(N, 3, WARM_D)
    comm = SimCommunicator(build_topology("ring", N), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(N), batch_size=0, seed=0)
    algo = AllReduceSGD(
        lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=DECAY, lr_warmup=warm
    )
    x0 = torch.randn(WARM_D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    state = algo.init(x0.expand(N, -1).clone(), oracle, comm)
    buf, x = MomentumBuffer(momentum, nesterov), x0.clone()
    for t in range(ROUNDS):
        state, _ = algo.step(state, t, oracle, comm)
        grads = torch.stack([hand_gradient(a[i], b[i], x) for i in range(N)])
        step = lr * (t + 1) / warm if t < warm else lr
        d = buf.direction(grads.mean(0) + DECAY * x) if momentum else grads.mean(0) + DECAY * x
        x = x - step * d
        torch.testing.assert_close(state.x, x.expand(N, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", [DPSGD, LocalSGD])
def test_dpsgd_and_local_sgd_take_the_same_steps(method) -> None:
    """D-PSGD (``x_i <- sum_j W_ij x_j - lr_t g_i(x_i)``) and local SGD (``tau = 3``:
    ``x_i <- x_i - lr_t g_i(x_i)``, the mean after rounds 3 and 6), ``lr_warmup = 3``."""
    lr, warm = 0.1, 3
    problem, shards, a, b = per_agent_least_squares(N, 3, 2)
    topology = build_topology("ring", N)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(N), batch_size=0, seed=0)
    extra = {"tau": 3} if method is LocalSGD else {}
    algo = method(lr=lr, lr_warmup=warm, **extra)
    x0 = torch.randn(N, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    state = algo.init(x0.clone(), oracle, comm)
    W = topology.weights(0).to(torch.float64)
    x = [row.clone() for row in x0]
    for t in range(ROUNDS):
        state, _ = algo.step(state, t, oracle, comm)
        step = lr * (t + 1) / warm if t < warm else lr
        g = [hand_gradient(a[i], b[i], x[i]) for i in range(N)]
        if method is DPSGD:
            x = [sum(W[i, j] * x[j] for j in range(N)) - step * g[i] for i in range(N)]
        else:
            x = [x[i] - step * g[i] for i in range(N)]
            if t in (2, 5):
                x = [torch.stack(x).mean(0)] * N
        torch.testing.assert_close(state.x, torch.stack(x), rtol=0, atol=1e-12)


def test_lr_warmup_0_changes_nothing_bit_for_bit() -> None:
    """``lr_warmup = 0`` steps exactly as ``sgd_step`` with ``lr`` (the rule without a
    warm-up), bit for bit, with momentum."""
    problem, shards, _, _ = per_agent_least_squares(N, 3, WARM_D)
    comm = SimCommunicator(build_topology("ring", N), torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(N), batch_size=0, seed=0)
    algo = AllReduceSGD(lr=0.2, momentum=0.9, lr_warmup=0)
    x0 = torch.randn(WARM_D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    state = algo.init(x0.expand(N, -1).clone(), oracle, comm)
    x, sgd = state.x, SGDState()
    for t in range(ROUNDS):
        state, _ = algo.step(state, t, oracle, comm)
        _, g = oracle.grad(x)
        x, sgd = sgd_step(x, comm.mean(g), sgd, algo.sgd)
        assert torch.equal(state.x, x)


def test_a_run_with_lr_warmup_0_is_the_run_without_the_key(tmp_path) -> None:
    base = {"dataset": "digits", "agents": 4, "hidden": [8], "batch_size": 8, "rounds": 12}
    base |= {"algorithm": "allreduce", "momentum": 0.9, "eval_every": 6, "progress": False}
    plain = run(load_config(base), tmp_path / "plain")
    zero = run(load_config(base | {"lr_warmup": 0}), tmp_path / "zero")
    assert torch.equal(plain.x, zero.x)
    warmed = run(load_config(base | {"lr_warmup": 6}), tmp_path / "warmed")
    assert not torch.equal(plain.x, warmed.x)


def test_the_config_builds_it_and_refuses_it_where_unused() -> None:
    algo = build_algorithm(load_config({"algorithm": "allreduce", "lr_warmup": 5}))
    assert isinstance(algo, AllReduceSGD) and algo.lr_warmup == 5
    message = (
        "lr_warmup=5 is not used by algorithm=gradient_tracking; it is used by allreduce, "
        "local_sgd, dpsgd, swarm, adpsgd. Remove it (in `nettrain compare`, give it to one "
        "algorithm: allreduce.lr_warmup=...)"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_config({"algorithm": "gradient_tracking", "lr_warmup": 5})
    assert build_algorithm(load_config({"algorithm": "swarm", "lr_warmup": 5})).lr_warmup == 5
    with pytest.raises(ConfigError, match="lr_warmup"):
        load_config({"algorithm": "allreduce", "lr_warmup": -1})
    with pytest.raises(ConfigError, match=r"^lr_warmup must be >= 0 \(rounds; 0 = none\)"):
        AllReduceSGD(lr_warmup=-1)
