"""NEXT against centralised optima computed by independent solvers.

Least squares: the normal equations (``helpers.least_squares_optimum``); lasso:
scikit-learn's coordinate descent; l2-logistic regression: SciPy's L-BFGS on a NumPy
objective. All in float64 on 8 agents of a ring with heterogeneous shards, full local
batches. Tolerances: ``1e-6`` on the parameters (distance of every agent to the
optimum), far above float64 rounding and far below any visible bias (DGD's is ~1e-2).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import scipy.optimize
import torch
from sklearn.linear_model import Lasso

import nettrain.algorithms.surrogates as surrogates
from helpers import (
    identity_quadratics,
    iid_shards,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms import DGD, NEXT, SurrogateConfig
from nettrain.algorithms.next_sca import NextState, StepRule, sparse_average
from nettrain.algorithms.surrogates import Subproblem, minimize
from nettrain.data import Dataset, load_dataset
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.errors import ConfigError
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 8
TOL = 1e-6


def run(problem: Problem, shards, algorithm, rounds: int, schedule: str = "static"):
    topology = build_topology(
        "ring", N, schedule=schedule, drop_prob=0.4 if schedule == "edge_drop" else 0.0, seed=3
    )
    job = sim_job(problem, shards, topology, algorithm, rounds=rounds, train_objective=True)
    return SimEngine().run(job, RunFolder(None))


def heterogeneous_shards() -> list[torch.Tensor]:
    """Samples sorted by target, then cut: every agent's local optimum differs."""
    order = regression_data().y_train.argsort()
    return [order[i * 15 : (i + 1) * 15] for i in range(N)]


@pytest.mark.parametrize("surrogate", ["linear", "gauss_newton"])
@pytest.mark.parametrize(("reg", "schedule"), [("none", "static"), ("l2", "edge_drop")])
def test_least_squares_reaches_the_normal_equations(
    surrogate: str, reg: str, schedule: str
) -> None:
    """Also with 40% of the ring's edges down in every round (union over a window connected)."""
    lam = 0.05 if reg == "l2" else 0.0
    problem = least_squares_problem(regression_data(), Regularizer(reg, lam))
    shards = heterogeneous_shards()
    algo = NEXT(surrogate, prox_tau=1.0, step0=0.5, step_decay=0.01)
    result = run(problem, shards, algo, rounds=400, schedule=schedule)
    opt = least_squares_optimum(regression_data(), shards, l2=lam)
    assert (result.x - opt).norm(dim=1).max() < TOL
    assert result.records[-1]["stationarity"] < TOL


def test_dgd_with_the_same_step_is_biased() -> None:
    """Constant step: NEXT is exact, DGD stops at a visible distance (its fixed points
    balance the local gradients against disagreement)."""
    problem = least_squares_problem(regression_data())
    shards = heterogeneous_shards()
    opt = least_squares_optimum(regression_data(), shards)
    exact = run(problem, shards, NEXT(step0=0.5, step_decay=0.0), rounds=400).x
    biased = run(problem, shards, DGD(step0=0.5, step_decay=0.0), rounds=400).x
    assert (exact - opt).norm(dim=1).max() < TOL
    assert (biased - opt).norm(dim=1).max() > 1e-2


@pytest.mark.parametrize("surrogate", ["linear", "gauss_newton"])
def test_lasso_reaches_scikit_learn_and_gives_exact_zeros(surrogate: str) -> None:
    """Equal shards make ``U = (1/N) sum (a^T w + b - y)^2 / 2 + lam ||(w, b)||_1``, which is
    scikit-learn's Lasso on ``[a, 1]`` without intercept; the zeros of NEXT's surrogate
    minimisers ``w~`` are exactly the optimum's zeros."""
    data = sparse_regression()
    lam = 0.1
    problem = least_squares_problem(data, Regularizer("l1", lam))
    shards = iid_shards(len(data.y_train), N)
    algo = NEXT(surrogate, prox_tau=1.0, inner_steps=30, step0=0.5, step_decay=0.01)
    result = run(problem, shards, algo, rounds=400)
    design = np.hstack([data.x_train.numpy(), np.ones((len(data.y_train), 1))])
    ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-14, max_iter=100_000)
    opt = torch.from_numpy(ref.fit(design, data.y_train.numpy()).coef_)
    assert (opt == 0).sum() >= 3, "the reference solution should be sparse"
    assert (result.x - opt).norm(dim=1).max() < TOL
    zeros = float((opt == 0).double().mean())
    last = result.records[-1]
    assert last["sparsity"] == pytest.approx(zeros)
    # the sparse model (w~ averaged, thresholded at its zeros) is the optimum, zeros included
    assert last["sparse_zeros"] == pytest.approx(zeros)
    assert last["sparse_test_loss"] == pytest.approx(last["test_loss"], rel=1e-3)


def test_the_sparse_model_is_the_average_thresholded_back_to_the_share_of_zeros() -> None:
    """Two agents, 4 coordinates, 3 zeros in 8 entries: the average keeps all but
    round(3/8 * 4) = 2 of its entries, the largest in magnitude; without zeros it is
    the plain mean."""
    w = torch.tensor([[0.0, 0.4, -2.0, 0.0], [0.2, 0.0, -1.0, 0.6]])
    assert torch.equal(sparse_average(w), torch.tensor([0.0, 0.0, -1.5, 0.3]))
    w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    assert torch.equal(sparse_average(w), w.mean(0))


def sparse_regression() -> Dataset:
    """Regression data whose targets use 3 of 10 features."""
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(160, 10, generator=gen, dtype=torch.float64)
    y = a[:, :3] @ torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64)
    y = y + 0.1 * torch.randn(160, generator=gen, dtype=torch.float64)
    return Dataset("sparse", a, y, a[:20], y[:20], n_classes=0)


@pytest.mark.parametrize("surrogate", ["linear", "cross_entropy"])
def test_l2_logistic_regression_reaches_lbfgs(surrogate: str) -> None:
    """l2 weight 0.1: the two-class softmax is flat along ``W_0 - W_1``-preserving shifts but
    for the regulariser, whose curvature ``2 lam`` then sets the rate in that direction."""
    data = binary_data()
    lam = 0.1
    model = build_model("linear", data.n_features, 2).double()
    problem = Problem(model, get_loss("cross_entropy"), Regularizer("l2", lam), data)
    shards = [torch.arange(len(data.y_train))[i::N] for i in range(N)]
    algo = NEXT(surrogate, prox_tau=1.0, inner_steps=10, step0=0.5, step_decay=0.01)
    result = run(problem, shards, algo, rounds=400)
    opt = logistic_optimum(data, shards, lam)
    assert (result.x - opt).norm(dim=1).max() < TOL


def binary_data() -> Dataset:
    data = load_dataset("breast_cancer", seed=0)
    return Dataset(
        "breast_cancer",
        data.x_train[:200].double(),
        data.y_train[:200],
        data.x_test.double(),
        data.y_test,
        n_classes=2,
    )


def logistic_optimum(data: Dataset, shards: list[torch.Tensor], lam: float) -> torch.Tensor:
    """``argmin (1/n) sum_i mean_{S_i} CE(softmax(W a + b), y) + lam ||(W, b)||^2`` by L-BFGS.

    NumPy, independent of nettrain; flat layout of ``nn.Linear``: ``(W (2, F), b (2,))``.
    """
    a = data.x_train.numpy()
    y = data.y_train.numpy()
    weight = np.zeros(len(y))
    for s in shards:
        weight[s.numpy()] = 1.0 / (len(shards) * len(s))
    F = a.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: 2 * F].reshape(2, F), theta[2 * F :]
        z = a @ W.T + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        value = -(weight * np.log(p[np.arange(len(y)), y])).sum() + lam * theta @ theta
        dz = weight[:, None] * (p - np.eye(2)[y])
        grad = np.concatenate([(dz.T @ a).ravel(), dz.sum(0)]) + 2 * lam * theta
        return value, grad

    res = scipy.optimize.minimize(
        objective, np.zeros(2 * F + 2), jac=True, method="L-BFGS-B",
        options={"gtol": 1e-12, "ftol": 0, "maxiter": 10_000},
    )  # fmt: skip
    return torch.from_numpy(res.x)


def test_tracking_invariant_holds_every_round() -> None:
    """``sum_i y_i = sum_i grad f_i(w_i)`` after every round, on a time-varying graph."""
    problem = least_squares_problem(regression_data(), Regularizer("l1", 0.05))
    topology = build_topology("ring", N, schedule="edge_drop", drop_prob=0.4, seed=2)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(heterogeneous_shards(), range(N), batch_size=0, seed=0)
    algo = NEXT("gauss_newton", step0=0.5, step_decay=0.01)
    state = algo.init(torch.zeros(N, problem.dim, dtype=torch.float64), oracle, comm)
    for t in range(50):
        state, _ = algo.step(state, t, oracle, comm)
        _, g = oracle.grad(state.x, smooth=True)
        assert torch.allclose(state.y.sum(0), g.sum(0), rtol=0, atol=1e-12)
        assert algo.diagnostics(state)["tracking_error"] < 1e-12


def mlp_subproblem(loss: str, reg: Regularizer, blocks: int) -> tuple[Subproblem, int]:
    """An MLP's linearised subproblem on 3 agents of digits, float64."""
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.n_features, data.n_outputs, hidden=(6,)).double()
    problem = Problem(model, get_loss(loss), reg, data)
    problem.data = Dataset(
        "digits", data.x_train.double(), data.y_train, data.x_test.double(), data.y_test,
        n_classes=10,
    )  # fmt: skip
    shards = iid_shards(60, 3)
    oracle = problem.oracle(shards, range(3), batch_size=0, seed=0)
    x = problem.initial_params(0).expand(3, -1).clone()
    lin = oracle.linearize(x)
    y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return Subproblem(x, 0.1 * y, 1 / 3, reg, lin, lin.grad()), blocks


@pytest.mark.parametrize(
    ("kind", "loss", "reg", "solver"),
    [
        ("linear", "squared", Regularizer("l1", 0.01), "auto"),
        ("gauss_newton", "squared", Regularizer("l2", 0.01), "direct"),
        ("gauss_newton", "squared", Regularizer("l2", 0.01), "cg"),
        ("cross_entropy", "cross_entropy", Regularizer("l1", 0.001), "auto"),
    ],
)
def test_block_parallel_step_equals_the_sequential_one(
    kind: str, loss: str, reg: Regularizer, solver: str, monkeypatch
) -> None:
    """Same block-separable surrogate, blocks solved on a thread pool or one after another:
    the same numbers. A barrier in every block's solve proves the pool runs them at once
    (one after another, the first would wait forever: BrokenBarrierError after 30 s)."""
    sp, blocks = mlp_subproblem(loss, reg, blocks=3)
    sequential = minimize(SurrogateConfig(kind, blocks=blocks, solver=solver, parallel=False), sp)
    together = threading.Barrier(blocks, timeout=30)
    original = surrogates._solver

    def spy(cfg, sp):
        solve = original(cfg, sp)

        def traced(c):
            together.wait()
            return solve(c)

        return traced

    monkeypatch.setattr(surrogates, "_solver", spy)
    parallel = minimize(SurrogateConfig(kind, blocks=blocks, solver=solver), sp)
    assert torch.equal(parallel, sequential)
    if kind == "linear":  # separable as it is: one block gives the same answer
        monkeypatch.setattr(surrogates, "_solver", original)
        assert torch.equal(parallel, minimize(SurrogateConfig(kind), sp))


def test_direct_and_conjugate_gradient_solve_the_same_system() -> None:
    sp, _ = mlp_subproblem("squared", Regularizer("l2", 0.01), blocks=1)
    direct = minimize(SurrogateConfig("gauss_newton", solver="direct"), sp)
    cg = minimize(SurrogateConfig("gauss_newton", solver="cg"), sp)
    assert torch.allclose(direct, cg, rtol=0, atol=1e-7)


def test_the_surrogate_minimiser_is_stationary() -> None:
    """Optimality of the cross-entropy surrogate's inner solve: ``w~`` is a fixed point of
    its own prox-gradient map (checked with an independent finite computation)."""
    reg = Regularizer("l2", 0.01)
    sp, _ = mlp_subproblem("cross_entropy", reg, blocks=1)
    cfg = SurrogateConfig("cross_entropy", tau=1.0, inner_steps=200)
    w_tilde = minimize(cfg, sp)
    assert sp.lin is not None and sp.g is not None
    v = w_tilde - sp.w
    out = sp.lin.out + sp.lin.jvp(v)
    grad = sp.share * (sp.lin.vjp(sp.lin.loss_grad(out)) - sp.g) + sp.y + cfg.tau * v
    grad = grad + reg.grad(w_tilde)
    assert grad.norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("tracking", [True, False], ids=["next", "dgd"])
def test_next_rounds_are_the_update_rule_written_out(tracking: bool) -> None:
    """Two rounds on ``f_i = ||w - a_i||^2 / 2`` (a linear model, so the Gauss-Newton
    surrogate is ``f_i`` itself, ``J^T W J = I``) with ``r = lam ||w||^2``, four agents
    starting apart on a ring, against the module docstring's rule with the surrogate
    minimiser in closed form, ``w~ = w - (y + 2 lam w) / (1/n + tau + 2 lam)``::

        z = w + alpha (w~ - w);  w <- C z;  y <- C y + g(w new) - g(w old)

    (DGD: ``y`` is the local gradient), ``alpha[k+1] = alpha[k] (1 - eps alpha[k])``; the
    reported loss adds the regulariser."""
    n, d, lam, tau, alpha, eps = 4, 3, 0.05, 0.7, 0.3, 0.2
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(80), dtype=torch.float64)
    problem, shards = identity_quadratics(targets, Regularizer("l2", lam))
    algo = NEXT("gauss_newton", prox_tau=tau, solver="direct", step0=alpha, step_decay=eps,
                tracking=tracking)  # fmt: skip
    topology = build_topology("ring", n)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(81), dtype=torch.float64)
    state = algo.init(w.clone(), oracle, comm)
    C = topology.weights(0).to(torch.float64)
    g = w - targets
    y = g
    for t in range(2):
        w_tilde = w - (y + 2 * lam * w) / (1 / n + tau + 2 * lam)
        w = C @ (w + alpha * (w_tilde - w))
        new_g = w - targets
        y = C @ y + new_g - g if tracking else new_g
        g, alpha = new_g, alpha * (1 - eps * alpha)
        state, loss = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.w_tilde, w_tilde, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.x, w, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.y, y, rtol=0, atol=1e-12)
        assert state.alpha == pytest.approx(alpha, rel=1e-15)
        expected = 0.5 * (w - targets).square().sum(1) + lam * w.square().sum(1)
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)


# --- the step rule's bounds, and the diagnostics ---------------------------------------


def step0_message(step0: float) -> str:
    return f"step0 (alpha[0] of NEXT) must be in (0, 1], got {step0}"


def decay_message(decay: float, step0: float) -> str:
    return (
        "step_decay must be >= 0 and step_decay * step0 < 1 (else alpha[1] <= 0), "
        f"got step_decay={decay}, step0={step0}"
    )


@pytest.mark.parametrize(
    ("step0", "decay"), [(1.0, 0.0), (1.0, 0.999), (0.5, 1.998), (1e-9, 0.0), (0.1, 0.01)]
)
def test_step_rule_accepts_its_closed_bounds(step0: float, decay: float) -> None:
    """``step0 = 1`` is allowed (the interval is ``(0, 1]``), ``decay = 0`` too, and any
    ``decay * step0`` below 1; the rule then holds ``alpha[0] = step0``."""
    rule = StepRule(step0, decay)
    assert (rule.step0, rule.decay) == (step0, decay)
    assert rule.next(step0) == step0 * (1 - decay * step0) > 0
    algo = NEXT(step0=step0, step_decay=decay)
    assert algo.steps == rule


@pytest.mark.parametrize(
    ("step0", "decay", "message"),
    [
        (0.0, 0.0, step0_message(0.0)),
        (-0.5, 0.0, step0_message(-0.5)),
        (1.000001, 0.0, step0_message(1.000001)),
        (2.0, 0.1, step0_message(2.0)),
        (0.5, 2.0, decay_message(2.0, 0.5)),  # decay * step0 exactly 1: alpha[1] = 0
        (1.0, 1.0, decay_message(1.0, 1.0)),
        (0.5, 3.0, decay_message(3.0, 0.5)),
        (0.5, -0.1, decay_message(-0.1, 0.5)),
    ],
)
def test_step_rule_refuses_out_of_range_values_with_its_message(
    step0: float, decay: float, message: str
) -> None:
    """The whole message, from the rule itself and from NEXT's constructor."""
    with pytest.raises(ConfigError) as raised:
        StepRule(step0, decay)
    assert str(raised.value) == message
    with pytest.raises(ConfigError) as raised:
        NEXT(step0=step0, step_decay=decay)
    assert str(raised.value) == message


def test_diagnostics_of_a_hand_made_state() -> None:
    """``alpha`` as held; ``sparsity``: 3 exact zeros (one of them ``-0.0``) among the 8
    entries of ``w~`` (none in ``x``, which must not be counted): 0.375; tracking error
    ``||sum_i y_i - sum_i g_i|| = ||(4, 6) - (1, 2)|| = ||(3, 4)|| = 5``. Without
    tracking (``tracking=False``, DGD) no tracking error is reported."""
    x = torch.ones(2, 4, dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], dtype=torch.float64)
    w_tilde = torch.tensor([[0.0, 1.0, -0.0, 2.0], [3.0, 1e-300, 0.0, -4.0]], dtype=torch.float64)
    state = NextState(x, y, g, w_tilde, 0.125)
    out = NEXT().diagnostics(state)
    assert set(out) == {"alpha", "sparsity", "sparse_zeros", "tracking_error"}
    # the mean of w~ is (1.5, 0.5, 0, -1); round(0.375 * 4) = 2 smallest set to zero
    assert out["sparse_zeros"] == 0.5
    assert out["alpha"] == 0.125
    assert out["sparsity"] == 0.375
    assert isinstance(out["sparsity"], float)
    assert out["tracking_error"] == pytest.approx(5.0, rel=1e-15)
    for untracked in (NEXT(tracking=False), DGD()):
        assert untracked.diagnostics(state) == {
            "alpha": 0.125,
            "sparsity": 0.375,
            "sparse_zeros": 0.5,
        }
    # the sparse model is what a run evaluates as "sparse_*"; with one zero among 8
    # entries, round(0.5) = 0 entries are thresholded and its mean has no zero
    ((name, model),) = NEXT().judged(state).items()
    assert name == "sparse" and torch.equal(model, sparse_average(w_tilde))
    dense = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    out = NEXT().diagnostics(NextState(x, y, g, dense, 0.125))
    assert (out["sparsity"], out["sparse_zeros"]) == (0.125, 0.0)


def test_next_checks_the_loss_the_model_and_the_blocks_of_its_surrogate() -> None:
    """The linearising surrogates are written for one loss each and a model without
    buffers or dropout; blocks cannot outnumber the parameters; the linear surrogate
    takes any of them."""
    squared_problem = least_squares_problem(regression_data(n_features=3))  # dim 4
    NEXT("gauss_newton", blocks=4).check(squared_problem)
    NEXT("linear").check(squared_problem)
    message = (
        "surrogate=cross_entropy linearises the network inside the cross-entropy loss; "
        "use loss=cross_entropy or surrogate=linear"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        NEXT("cross_entropy").check(squared_problem)
    x = squared_problem.data.x_train
    labels = (x[:, 0] > 0).long()
    two_classes = Dataset("signs", x, labels, x, labels, n_classes=2)
    entropy_problem = Problem(
        torch.nn.Linear(3, 2).double(), get_loss("cross_entropy"), Regularizer(), two_classes
    )
    NEXT("cross_entropy").check(entropy_problem)
    with pytest.raises(ConfigError, match=r"^surrogate=gauss_newton .* inside the squared loss;"):
        NEXT("gauss_newton").check(entropy_problem)
    with pytest.raises(ConfigError, match="more than"):
        NEXT("linear", blocks=5).check(squared_problem)
    data = regression_data(n_features=3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.1), torch.nn.Linear(3, 1))
    dropped = Problem(net.double(), get_loss("squared"), Regularizer(), data)
    with pytest.raises(ConfigError, match=r"^surrogate=gauss_newton linearises the network, .*"
                       r"\(Sequential has them\); use surrogate=linear$"):  # fmt: skip
        NEXT("gauss_newton").check(dropped)
    NEXT("linear").check(dropped)


def test_linear_next_rounds_are_the_closed_form_and_draw_one_batch_each() -> None:
    """Two rounds of the linear surrogate on ``f_i = ||w - a_i||^2 / 2`` with
    ``r = lam ||w||^2``, four agents on a ring, against the module docstrings: the
    surrogate minimiser in closed form ``w~ = (tau w - y) / (tau + 2 lam)``, then
    ``z = w + alpha (w~ - w)``, ``w <- C z``, ``y <- C y + g(w new) - g(w old)``. The
    linear surrogate needs no linearisation, so each round draws exactly one batch per
    agent (its gradient, counted as the shard's ``d`` samples), after the one of
    ``init``. Before any round ``w~`` is the
    start (its zeros are the sparsity reported)."""
    n, d, lam, tau, alpha, eps = 4, 3, 0.05, 0.7, 0.3, 0.2
    targets = torch.randn(n, d, generator=torch.Generator().manual_seed(82), dtype=torch.float64)
    problem, shards = identity_quadratics(targets, Regularizer("l2", lam))
    algo = NEXT("linear", prox_tau=tau, step0=alpha, step_decay=eps)
    topology = build_topology("ring", n)
    comm = SimCommunicator(topology, torch.device("cpu"), torch.float64)
    oracle = problem.oracle(shards, range(n), batch_size=0, seed=0)
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(83), dtype=torch.float64)
    w[0, :] = 0.0  # 3 of the 12 entries
    state = algo.init(w.clone(), oracle, comm)
    torch.testing.assert_close(state.w_tilde, w, rtol=0, atol=0)
    assert algo.diagnostics(state)["sparsity"] == 0.25
    assert oracle.meter.samples.tolist() == [d] * n  # a full batch: the shard's d samples
    C = topology.weights(0).to(torch.float64)
    g = y = w - targets
    for t in range(2):
        w_tilde = (tau * w - y) / (tau + 2 * lam)
        w = C @ (w + alpha * (w_tilde - w))
        new_g = w - targets
        y, g, alpha = C @ y + new_g - g, new_g, alpha * (1 - eps * alpha)
        state, loss = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.w_tilde, w_tilde, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.x, w, rtol=0, atol=1e-12)
        torch.testing.assert_close(state.y, y, rtol=0, atol=1e-12)
        expected = 0.5 * (w - targets).square().sum(1) + lam * w.square().sum(1)
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
        assert oracle.meter.samples.tolist() == [d * (t + 2)] * n


def test_the_linearised_surrogate_uses_the_gradient_of_its_own_mini_batch() -> None:
    """``f_i`` of one parameter whose samples share the feature 1 and differ in target,
    read in mini-batches of one sample: every batch's loss is ``(w - t_b)^2 / 2``, of
    curvature 1, so the Gauss-Newton surrogate of the round's batch, with its own
    gradient ``g``, is ``q(v) = s v^2 / 2 + y v + tau v^2 / 2`` whatever the sample
    (``grad q(0) = y``), and with ``r = lam |w|`` its minimiser is the soft-threshold
    ``w~ = soft(w - y / (s + tau), lam / (s + tau))`` (accelerated proximal gradient,
    converged). The gradient of an earlier batch would leave ``s (t_b' - t_b)`` in
    ``grad q(0)``."""
    n, lam, tau = 2, 0.01, 0.5
    targets = torch.tensor([0.0, 1.0, -2.0, 3.0, 0.5, -1.0, 2.0, -3.0], dtype=torch.float64)
    ones = torch.ones(len(targets), 1, dtype=torch.float64)
    data = Dataset("targets", ones, targets, ones, targets, n_classes=0)
    model = torch.nn.Linear(1, 1, bias=False).double()
    problem = Problem(model, get_loss("squared"), Regularizer("l1", lam), data)
    shards = [torch.arange(4), torch.arange(4, 8)]
    oracle = problem.oracle(shards, range(n), batch_size=1, seed=0)
    comm = SimCommunicator(build_topology("complete", n), torch.device("cpu"), torch.float64)
    algo = NEXT("gauss_newton", prox_tau=tau, inner_steps=60, step0=0.5, step_decay=0.0)
    state = algo.init(torch.tensor([[0.3], [-0.7]], dtype=torch.float64), oracle, comm)
    s = 1 / n
    for t in range(4):
        u = state.x - state.y / (s + tau)
        expected = u.sign() * (u.abs() - lam / (s + tau)).clamp_min(0)
        state, _ = algo.step(state, t, oracle, comm)
        torch.testing.assert_close(state.w_tilde, expected, rtol=0, atol=1e-12)
