"""NEXT's inner solvers (:mod:`nettrain.algorithms.surrogates`) against the mathematics
their docstrings state, on linear networks whose Jacobian is known by construction.

A bias-free linear model ``out_b = X a_b`` has ``J_b = kron(I_o, a_b^T)`` whatever the
expansion point, so ``J^T W J = kron(I_o, A^T W A)``; the inputs ``A`` are built with a
chosen spectrum of ``A^T W A``. The references are written out here on explicit matrices
(``Linearization.jacobian``), one agent at a time, in float64:

* ``_top_eigenvalue``: ``torch.linalg.eigvalsh``, and the power iteration from the
  all-ones vector that its docstring describes;
* ``_conjugate_gradient``: ``torch.linalg.solve``, textbook CG from ``b / damping``, and
  its cost (one ``J v`` per application of ``A``) counted by a wrapper;
* ``_accelerated_prox_gradient``: the constant-momentum scheme of its docstring for a few
  steps (every constant matters there), and plain proximal gradient run to convergence.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import nettrain.algorithms.surrogates as surrogates
from helpers import generator
from nettrain.algorithms.surrogates import (
    Subproblem,
    SurrogateConfig,
    _accelerated_prox_gradient,
    _top_eigenvalue,
    minimize,
)
from nettrain.errors import ConfigError
from nettrain.problem.flat import FlatSpec, block_slices
from nettrain.problem.linearization import Linearization
from nettrain.problem.losses import Regularizer, cross_entropy, squared

B = 8  # samples per agent
SHARE = 1 / 3


def inputs_with_spectrum(spectra: list[list[float]], seed: int) -> torch.Tensor:
    """``(k, B, F)`` inputs whose ``A_i^T A_i / B`` has eigenvalues ``spectra[i]``
    (all zero inputs for an all-zero spectrum)."""
    gen = generator(seed)
    rows = []
    for eigs in spectra:
        F = len(eigs)
        U, _ = torch.linalg.qr(torch.randn(B, F, generator=gen, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(F, F, generator=gen, dtype=torch.float64))
        root = torch.tensor(eigs, dtype=torch.float64).sqrt()
        rows.append(math.sqrt(B) * U @ torch.diag(root) @ V.T)
    return torch.stack(rows)


def linearization(
    inputs: torch.Tensor, outputs: int, loss, targets: torch.Tensor, x: torch.Tensor
) -> Linearization:
    """A bias-free linear model ``(F -> outputs)`` linearised at ``x`` on ``inputs``."""
    model = nn.Linear(inputs.shape[-1], outputs, bias=False).double()
    network = SimpleNamespace(model=model, spec=FlatSpec.of(model), loss=loss)
    weights = torch.full(inputs.shape[:2], 1 / B, dtype=torch.float64)
    return Linearization.at(network, x, inputs, targets, weights)


def explicit(lin: Linearization) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``J (k, B o, d)``, the diagonal of ``W`` ``(k, B o)`` and ``J^T W J (k, d, d)``."""
    J = lin.jacobian()
    Wd = lin.weights.repeat_interleave(lin.out.shape[-1], dim=1)
    return J, Wd, J.mT @ (Wd[:, :, None] * J)


class Counting:
    """A linearisation that counts its ``J v`` products (one per application of ``A``)."""

    def __init__(self, lin: Linearization) -> None:
        self.lin = lin
        self.jvps = 0

    def __getattr__(self, name: str):
        return getattr(self.lin, name)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        self.jvps += 1
        return self.lin.jvp(v)


# --- _top_eigenvalue -------------------------------------------------------------------


def test_top_eigenvalue_is_lambda_max_per_agent_on_a_separated_spectrum() -> None:
    """Three agents in one batch: a spectrum above 1, one below 1, and ``J = 0``. With a
    ratio of 1/100 between the two largest eigenvalues, ``POWER_ITERS`` steps give
    ``lambda_max`` to rounding; each agent's own, not one shared normalisation."""
    spectra = [[3.0, 0.03, 0.01], [0.5, 0.005, 0.001], [0.0, 0.0, 0.0]]
    inputs = inputs_with_spectrum(spectra, seed=0)
    x = torch.zeros(3, 3, dtype=torch.float64)
    lin = linearization(inputs, 1, squared, torch.zeros(3, B, dtype=torch.float64), x)
    _, _, H = explicit(lin)
    exact = torch.linalg.eigvalsh(H)[:, -1]
    torch.testing.assert_close(exact, torch.tensor([3.0, 0.5, 0.0], dtype=torch.float64))
    estimate = _top_eigenvalue(lin, slice(0, 3), 3)
    assert estimate.shape == (3,)
    torch.testing.assert_close(estimate, exact, rtol=1e-12, atol=1e-15)
    assert estimate[2] == 0  # no clamp above the true value: J = 0 has lambda_max = 0


def test_top_eigenvalue_is_the_power_iteration_from_all_ones_on_the_block() -> None:
    """On a block ``c`` of a generic (unseparated) ``J^T W J``: exactly ``POWER_ITERS``
    steps of the power iteration on ``H_cc`` from the all-ones vector (the Rayleigh
    quotient of the last normalised iterate), hence a lower bound on ``lambda_max(H_cc)``;
    and an agent's estimate is the same whichever agents share the batch."""
    gen = generator(1)
    inputs = torch.randn(2, B, 2, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, B), generator=gen)
    x = 0.1 * torch.randn(2, 6, generator=gen, dtype=torch.float64)
    lin = linearization(inputs, 3, cross_entropy, targets, x)
    _, _, H = explicit(lin)
    c = slice(1, 5)
    estimate = _top_eigenvalue(lin, c, 6)
    for i in range(2):
        Hc = H[i, c, c]
        v = torch.ones(4, dtype=torch.float64)
        for _ in range(surrogates.POWER_ITERS):
            v = v / v.norm()
            lam, v = v @ Hc @ v, Hc @ v
        torch.testing.assert_close(estimate[i], lam, rtol=1e-12, atol=0)
        assert estimate[i] <= torch.linalg.eigvalsh(Hc)[-1] * (1 + 1e-12)
        alone = linearization(inputs[i : i + 1], 3, cross_entropy, targets[i : i + 1], x[i : i + 1])
        torch.testing.assert_close(_top_eigenvalue(alone, c, 6)[0], estimate[i], rtol=1e-13, atol=0)


# --- _conjugate_gradient ---------------------------------------------------------------


def cg_subproblem(
    spectra: list[list[float]], y_scale: list[float], reg: Regularizer, seed: int = 2
) -> tuple[Subproblem, Counting, torch.Tensor]:
    """A Gauss-Newton subproblem for ``len(spectra)`` agents with ``y_i`` scaled by
    ``y_scale[i]``, its counting linearisation and the explicit ``J^T W J``."""
    k, d = len(spectra), len(spectra[0])
    gen = generator(seed)
    inputs = inputs_with_spectrum(spectra, seed=seed)
    w = torch.randn(k, d, generator=gen, dtype=torch.float64)
    targets = torch.randn(k, B, generator=gen, dtype=torch.float64)
    lin = Counting(linearization(inputs, 1, squared, targets, w))
    y = torch.randn(k, d, generator=gen, dtype=torch.float64)
    y = y * torch.tensor(y_scale, dtype=torch.float64)[:, None]
    _, _, H = explicit(lin.lin)
    return Subproblem(w, y, SHARE, reg, lin, lin.grad()), lin, H  # type: ignore[arg-type]


def normal_equations(sp: Subproblem, H: torch.Tensor, tau: float) -> torch.Tensor:
    """``w + v`` with ``(s H + (tau + 2 lam) I) v = -(y + 2 lam w)``, by ``linalg.solve``."""
    l2 = 2 * sp.reg.lam if sp.reg.kind == "l2" else 0.0
    eye = torch.eye(H.shape[-1], dtype=H.dtype)
    A = SHARE * H + (tau + l2) * eye
    return sp.w + torch.linalg.solve(A, -(sp.y + l2 * sp.w))


SPREAD = [4.0, 2.0, 1.0, 0.5, 0.25]  # 5 distinct eigenvalues: CG needs all 5 steps


@pytest.mark.parametrize(
    "reg",
    [Regularizer(), Regularizer("none", 0.5), Regularizer("l2", 0.05)],
    ids=["none", "none_with_a_lambda", "l2"],
)
def test_conjugate_gradient_solves_the_system_in_at_most_d_steps(reg: Regularizer) -> None:
    """The normal equations to 1e-10 (a lambda without a regulariser adds nothing); ``A``
    has ``d = 5`` distinct eigenvalues, so CG terminates in at most 5 steps: 1 + 5
    applications of ``A`` at most."""
    sp, lin, H = cg_subproblem([SPREAD, [3.0, 1.5, 0.7, 0.2, 0.1]], [1.0, 1.0], reg)
    tau = 0.05
    out = minimize(SurrogateConfig("gauss_newton", tau=tau, solver="cg"), sp)
    torch.testing.assert_close(out, normal_equations(sp, H, tau), rtol=0, atol=1e-10)
    assert 3 <= lin.jvps <= 1 + 5


def test_conjugate_gradient_iterates_are_textbook_cg_from_b_over_damping(monkeypatch) -> None:
    """Cut to two iterations (``CG_MAX_ITERS = 2``), the iterate is that of textbook CG
    (Hestenes-Stiefel, ``beta = r_new^T r_new / r^T r``) started at ``b / damping``."""
    reg = Regularizer("l2", 0.05)
    sp, _, H = cg_subproblem([SPREAD, [3.0, 1.5, 0.7, 0.2, 0.1]], [1.0, 1.0], reg)
    tau = 0.05
    damping = tau + 2 * reg.lam
    monkeypatch.setattr(surrogates, "CG_MAX_ITERS", 2)
    out = minimize(SurrogateConfig("gauss_newton", tau=tau, solver="cg"), sp)
    for i in range(2):
        A = SHARE * H[i] + damping * torch.eye(5, dtype=torch.float64)
        b = -(sp.y[i] + 2 * reg.lam * sp.w[i])
        v = b / damping
        r = b - A @ v
        p = r
        for _ in range(2):
            alpha = (r @ r) / (p @ A @ p)
            v = v + alpha * p
            r_new = r - alpha * (A @ p)
            p = r_new + (r_new @ r_new) / (r @ r) * p
            r = r_new
        assert r.norm() > 1e-3 * b.norm()  # not converged: the iterate is not the solution
        torch.testing.assert_close(out[i], sp.w[i] + v, rtol=0, atol=1e-12)


def test_conjugate_gradient_starts_at_the_exact_answer_when_j_is_zero() -> None:
    """``J = 0`` (``A = damping I``): the start ``b / damping`` is the answer, so no
    iteration is taken (one application of ``A``, for the first residual)."""
    reg = Regularizer("l2", 0.05)
    sp, lin, _ = cg_subproblem([[0.0] * 5, [0.0] * 5], [1.0, 3.0], reg)
    tau = 0.3
    out = minimize(SurrogateConfig("gauss_newton", tau=tau, solver="cg"), sp)
    closed = (tau * sp.w - sp.y) / (tau + 2 * reg.lam)  # the linear surrogate's closed form
    torch.testing.assert_close(out, closed, rtol=1e-15, atol=1e-15)
    assert lin.jvps == 1


def test_conjugate_gradient_returns_w_for_a_zero_right_hand_side() -> None:
    """``b = 0`` for every agent: ``v = 0`` exactly, with no iteration."""
    sp, lin, _ = cg_subproblem([SPREAD, SPREAD[::-1]], [0.0, 0.0], Regularizer())
    out = minimize(SurrogateConfig("gauss_newton", tau=0.05, solver="cg"), sp)
    assert torch.equal(out, sp.w)
    assert lin.jvps == 1


def test_conjugate_gradient_tolerance_is_relative_per_agent() -> None:
    """Agent 0 (``J = 0``) is solved at the start; agent 1's right-hand side is ``2^-30``
    times smaller, and is still solved to 1e-10 of its own scale: the stopping rule is
    relative to each agent's ``b``, not to the stack's."""
    sp, lin, H = cg_subproblem([[0.0] * 5, SPREAD], [1.0, 2.0**-30], Regularizer())
    tau = 0.05
    out = minimize(SurrogateConfig("gauss_newton", tau=tau, solver="cg"), sp)
    want = normal_equations(sp, H, tau)
    torch.testing.assert_close(out[0], want[0], rtol=0, atol=1e-12)
    v, v_want = out[1] - sp.w[1], want[1] - sp.w[1]
    assert (v - v_want).norm() <= 1e-10 * v_want.norm()
    assert lin.jvps > 1


@pytest.mark.parametrize("scale", [2.0**-30, 2.0**30], ids=["2^-30", "2^30"])
def test_conjugate_gradient_is_scale_invariant(scale: float) -> None:
    """Scaling ``b`` by a power of two scales every CG quantity exactly (residuals, and the
    tolerance ``sqrt(eps) ||b||`` with them): the same number of steps, the answer scaled
    bit for bit. Regulariser none and ``w = 0``, so ``w~ = v`` is linear in ``y``."""
    sp, lin, _ = cg_subproblem([SPREAD, [3.0, 1.5, 0.7, 0.2, 0.1]], [1.0, 1.0], Regularizer())
    sp = Subproblem(torch.zeros_like(sp.w), sp.y, SHARE, sp.reg, sp.lin, sp.g)
    cfg = SurrogateConfig("gauss_newton", tau=0.05, solver="cg")
    base = minimize(cfg, sp)
    steps = lin.jvps
    lin.jvps = 0
    scaled = minimize(cfg, Subproblem(sp.w, scale * sp.y, SHARE, sp.reg, sp.lin, sp.g))
    assert torch.equal(scaled, scale * base)
    assert lin.jvps == steps


# --- _accelerated_prox_gradient ---------------------------------------------------------


def prox(reg: Regularizer, x: torch.Tensor, step: float) -> torch.Tensor:
    if reg.kind == "l1":
        return x.sign() * (x.abs() - reg.lam * step).clamp_min(0)
    if reg.kind == "l2":
        return x / (1 + 2 * reg.lam * step)
    return x


def loss_grad_wrt_outputs(kind: str, z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``d loss / d out`` per sample, ``z: (B, o)``: ``z - t`` (squared, real targets, o = 1)
    or ``softmax(z) - onehot(t)`` (cross-entropy)."""
    if kind == "gauss_newton":
        return z - targets[:, None]
    return torch.softmax(z, dim=1) - nn.functional.one_hot(targets, z.shape[1]).double()


def reference_apg(
    kind: str, sp: Subproblem, tau: float, steps: int, c: slice, momentum: bool = True
) -> torch.Tensor:
    """``steps`` of proximal gradient on block ``c``, agent by agent, on explicit matrices:
    step ``1/L``, ``L = s h lambda_max(J_c^T W J_c) 1.05 + tau`` (``h = 1`` squared loss,
    ``1/2`` cross-entropy), momentum ``(sqrt(L/tau) - 1) / (sqrt(L/tau) + 1)`` on the
    iterates (0 for plain ISTA with the exact ``L = s h lambda_max + tau``)."""
    lin = sp.lin
    assert lin is not None and sp.g is not None
    J, Wd, _ = explicit(lin)
    o = lin.out.shape[-1]
    h = 1.0 if kind == "gauss_newton" else 0.5
    rows = []
    for i in range(sp.w.shape[0]):
        Jc = J[i][:, c]
        lam_max = torch.linalg.eigvalsh(Jc.T @ (Wd[i][:, None] * Jc))[-1].item()
        L = SHARE * h * lam_max * (1.05 if momentum else 1.0) + tau
        beta = (math.sqrt(L / tau) - 1) / (math.sqrt(L / tau) + 1) if momentum else 0.0
        w, y, g = sp.w[i, c], sp.y[i, c], sp.g[i, c]
        out0 = lin.out[i].reshape(-1)

        def grad_q(v, i=i, Jc=Jc, y=y, g=g, out0=out0):
            z = (out0 + Jc @ v).reshape(B, o)
            dz = loss_grad_wrt_outputs(kind, z, lin.targets[i]).reshape(-1)
            return SHARE * (Jc.T @ (Wd[i] * dz) - g) + y + tau * v

        u = u_prev = w
        for _ in range(steps):
            probe = u + beta * (u - u_prev)
            u_prev = u
            u = prox(sp.reg, probe - grad_q(probe - w) / L, 1 / L)
        rows.append(u)
    return torch.stack(rows)


def apg_subproblem(kind: str, reg: Regularizer) -> Subproblem:
    """Two agents; Gauss-Newton on a 1-output model with spectra ``[6, 0.06, 0.02]`` and
    ``[2, 0.02, 0.01]`` (d = 3), or cross-entropy on 3 classes (d = 9, each class's block
    of ``J^T W J`` equal to ``A^T W A``), where the power iteration is exact."""
    gen = generator(3)
    spectra = [[6.0, 0.06, 0.02], [2.0, 0.02, 0.01]]
    inputs = inputs_with_spectrum(spectra, seed=3)
    if kind == "gauss_newton":
        targets = torch.randn(2, B, generator=gen, dtype=torch.float64)
        w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
        lin = linearization(inputs, 1, squared, targets, w)
    else:
        targets = torch.randint(0, 3, (2, B), generator=gen)
        w = 0.5 * torch.randn(2, 9, generator=gen, dtype=torch.float64)
        lin = linearization(inputs, 3, cross_entropy, targets, w)
    y = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    return Subproblem(w, y, SHARE, reg, lin, lin.grad())


@pytest.mark.parametrize(
    ("kind", "reg", "blocks"),
    [
        ("gauss_newton", Regularizer("l1", 0.1), 1),
        ("cross_entropy", Regularizer("l1", 0.05), 3),
        ("cross_entropy", Regularizer("l2", 0.1), 1),
    ],
    ids=["gauss_newton-l1", "cross_entropy-l1-3blocks", "cross_entropy-l2"],
)
def test_accelerated_prox_gradient_takes_the_documented_steps(
    kind: str, reg: Regularizer, blocks: int
) -> None:
    """Three inner steps, with ``tau != 1`` and ``s h != s / h``: the iterate equals the
    written-out scheme to 1e-12 (a different constant in ``L``, ``h``, ``kappa`` or the
    momentum, or momentum of the other sign, moves it by far more)."""
    sp = apg_subproblem(kind, reg)
    tau = 0.5
    cfg = SurrogateConfig(kind, tau=tau, blocks=blocks, inner_steps=3, parallel=False)
    out = minimize(cfg, sp)
    d = sp.w.shape[1]
    want = torch.cat([reference_apg(kind, sp, tau, 3, c) for c in block_slices(d, blocks)], 1)
    assert (out - sp.w).abs().max() > 1e-3  # the steps move
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_accelerated_prox_gradient_reaches_the_lasso_surrogate_minimiser() -> None:
    """Gauss-Newton with l1 (a lasso in ``v``): 100 accelerated steps reach the minimiser
    found by 500 steps of plain ISTA (contraction ``1 - tau / L <= 0.8`` per step), with
    the same exact zeros, and it satisfies the l1 optimality conditions."""
    reg = Regularizer("l1", 0.4)
    sp = apg_subproblem("gauss_newton", reg)
    tau = 0.5
    u = _accelerated_prox_gradient(
        SurrogateConfig("gauss_newton", tau=tau, inner_steps=100), sp, slice(0, 3)
    )
    ista = reference_apg("gauss_newton", sp, tau, 500, slice(0, 3), momentum=False)
    zeros = ista == 0
    assert zeros.any() and not zeros.all()  # the l1 term is active somewhere, not everywhere
    assert torch.equal(u == 0, zeros)
    torch.testing.assert_close(u, ista, rtol=0, atol=1e-12)
    assert sp.lin is not None and sp.g is not None
    J, Wd, _ = explicit(sp.lin)
    v = u - sp.w
    z = sp.lin.out[:, :, 0] + (J @ v[:, :, None])[:, :, 0]  # (k, B): one output
    grad = SHARE * ((J.mT @ (Wd * (z - sp.lin.targets))[:, :, None])[:, :, 0] - sp.g)
    grad = grad + sp.y + tau * v  # of q at v; + lam sign(u) is the l1 part
    assert torch.all(grad[zeros].abs() <= reg.lam + 1e-12)
    torch.testing.assert_close(grad[~zeros], -reg.lam * u[~zeros].sign(), rtol=0, atol=1e-12)


def test_the_linearised_loss_is_per_agent() -> None:
    """``sum_b w_b loss(out_b, t_b)`` for each agent separately: ``(k, B, o) -> (k,)``."""
    inputs = inputs_with_spectrum([[1.0, 2.0], [0.5, 3.0]], seed=5)
    targets = torch.randn(2, B, generator=generator(6), dtype=torch.float64)
    x = torch.randn(2, 2, generator=generator(7), dtype=torch.float64)
    lin = linearization(inputs, 1, squared, targets, x)
    out = torch.einsum("kbf,kf->kb", inputs, x)[..., None]
    expected = ((out[..., 0] - targets).square() / 2 / B).sum(1)
    torch.testing.assert_close(lin.loss(lin.out), expected, rtol=0, atol=1e-12)


# --- _solver: which solver, and the linear surrogate's closed form --------------------


def dispatch_subproblem(kind: str, reg: Regularizer, d: int) -> Subproblem:
    """One agent, a bias-free linear model with ``d`` parameters: ``d`` features and one
    output (Gauss-Newton, real targets) or ``d / 3`` features and 3 classes
    (cross-entropy)."""
    gen = generator(11)
    outputs = 1 if kind == "gauss_newton" else 3
    inputs = torch.randn(1, B, d // outputs, generator=gen, dtype=torch.float64)
    if kind == "gauss_newton":
        loss, targets = squared, torch.randn(1, B, generator=gen, dtype=torch.float64)
    else:
        loss, targets = cross_entropy, torch.randint(0, outputs, (1, B), generator=gen)
    w = 0.1 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    lin = linearization(inputs, outputs, loss, targets, w)
    y = torch.randn(1, d, generator=gen, dtype=torch.float64)
    return Subproblem(w, y, SHARE, reg, lin, lin.grad())


@pytest.fixture
def solver_calls(monkeypatch) -> list[str]:
    """Names of the private solvers ``minimize`` calls, in order; each still runs.

    ``_solver`` returns lambdas that look ``_direct``, ``_conjugate_gradient`` and
    ``_accelerated_prox_gradient`` up in the module's globals when called (nothing is
    bound at import), so patching the module attributes takes effect."""
    calls: list[str] = []
    for name in ("_direct", "_conjugate_gradient", "_accelerated_prox_gradient"):
        original = getattr(surrogates, name)

        def spy(*args, _name=name, _original=original):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(surrogates, name, spy)
    return calls


@pytest.mark.parametrize(
    ("kind", "reg", "solver", "d", "expected"),
    [
        ("gauss_newton", "none", "auto", 4, "_direct"),
        ("gauss_newton", "l2", "auto", 4, "_direct"),
        ("gauss_newton", "none", "auto", 256, "_direct"),  # d = DIRECT_MAX_DIM: direct
        ("gauss_newton", "none", "auto", 257, "_conjugate_gradient"),  # one above: CG
        ("gauss_newton", "l2", "auto", 257, "_conjugate_gradient"),
        ("gauss_newton", "none", "direct", 257, "_direct"),  # forced, whatever d
        ("gauss_newton", "l2", "direct", 4, "_direct"),
        ("gauss_newton", "none", "cg", 4, "_conjugate_gradient"),  # forced, whatever d
        ("gauss_newton", "l2", "cg", 4, "_conjugate_gradient"),
        ("gauss_newton", "l1", "auto", 4, "_accelerated_prox_gradient"),
        ("gauss_newton", "l1", "direct", 4, "_accelerated_prox_gradient"),
        ("gauss_newton", "l1", "cg", 4, "_accelerated_prox_gradient"),
        ("cross_entropy", "none", "auto", 6, "_accelerated_prox_gradient"),
        ("cross_entropy", "l2", "direct", 6, "_accelerated_prox_gradient"),
        ("cross_entropy", "l1", "cg", 6, "_accelerated_prox_gradient"),
    ],
)
def test_solver_choice_follows_the_documented_table(
    kind: str, reg: str, solver: str, d: int, expected: str, solver_calls: list[str]
) -> None:
    """Gauss-Newton with r in {none, l2}: Cholesky for ``solver=direct``, or ``auto`` with
    ``d <= DIRECT_MAX_DIM = 256``; CG for ``solver=cg`` or ``auto`` above 256.
    Gauss-Newton with l1, and cross-entropy, whatever ``solver``: accelerated proximal
    gradient. One block: exactly one call, and a ``(k, d)`` answer."""
    assert surrogates.DIRECT_MAX_DIM == 256
    sp = dispatch_subproblem(kind, Regularizer(reg, 0.05), d)
    out = minimize(SurrogateConfig(kind, tau=0.5, inner_steps=1, solver=solver), sp)
    assert solver_calls == [expected]
    assert out.shape == (1, d)


@pytest.mark.parametrize("solver", ["auto", "direct", "cg"])
def test_linear_surrogate_calls_no_inner_solver(solver: str, solver_calls: list[str]) -> None:
    """The linear surrogate has a closed form: none of the iterative or factorising solvers
    runs, even with a linearisation at hand."""
    sp = dispatch_subproblem("gauss_newton", Regularizer("l2", 0.05), 4)
    minimize(SurrogateConfig("linear", tau=0.5, solver=solver), sp)
    assert solver_calls == []


@pytest.mark.parametrize("tau", [0.25, 4.0])
def test_linear_surrogate_is_the_documented_closed_form(tau: float) -> None:
    """``w~ = prox_{r/tau}(w - y/tau)`` written out by hand, with ``tau != 1`` (so ``y/tau``
    differs from ``y tau`` and the prox step ``1/tau`` from ``tau``): none ``w - y/tau``,
    l2 ``(tau w - y) / (tau + 2 lam)``, l1 soft-thresholding of ``u = w - y/tau`` at
    ``lam / tau``, with exact zeros where ``|u| <= lam / tau`` (``lam = 0.3 tau``: the
    threshold 0.3 falls among the entries of ``u`` whatever ``tau``)."""
    w = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.5, -1.0, 2.0]], dtype=torch.float64)
    u_set = torch.tensor([[0.1, -2.0, 0.5, 3.5], [0.0, 1.5, -0.2, -1.0]], dtype=torch.float64)
    y = tau * (w - u_set)  # so that w - y / tau is u_set (to rounding)
    lam = 0.3 * tau
    cfg = SurrogateConfig("linear", tau=tau)
    u = w - y / tau
    want = {
        "none": u,
        "l2": (tau * w - y) / (tau + 2 * lam),
        "l1": u.sign() * (u.abs() - lam / tau).clamp_min(0),
    }
    for kind, expected in want.items():
        out = minimize(cfg, Subproblem(w, y, SHARE, Regularizer(kind, lam)))
        torch.testing.assert_close(out, expected, rtol=1e-15, atol=1e-15)
    thresholded = minimize(cfg, Subproblem(w, y, SHARE, Regularizer("l1", lam)))
    zeros = u.abs() <= lam / tau
    assert zeros.any() and not zeros.all()
    assert torch.equal(thresholded == 0, zeros)


@pytest.mark.parametrize("kind", ["gauss_newton", "cross_entropy"])
@pytest.mark.parametrize("missing", ["lin", "g"])
def test_a_missing_linearisation_is_refused_by_name(kind: str, missing: str) -> None:
    """Either the linearisation or the gradient missing (each alone) is a ValueError that
    names the surrogate, before any solve."""
    d = 4 if kind == "gauss_newton" else 6
    sp = dispatch_subproblem(kind, Regularizer(), d)
    if missing == "lin":
        sp = Subproblem(sp.w, sp.y, SHARE, sp.reg, None, sp.g)
    else:
        sp = Subproblem(sp.w, sp.y, SHARE, sp.reg, sp.lin, None)
    message = f"surrogate={kind} needs the network's linearisation"
    with pytest.raises(ValueError, match=f"^{message}$"):
        minimize(SurrogateConfig(kind, solver="direct"), sp)
    with pytest.raises(ValueError, match=f"^{message}$"):
        surrogates._solver(SurrogateConfig(kind, solver="cg"), sp)


@pytest.mark.parametrize("parallel", [True, False], ids=["pool", "sequential"])
def test_blocks_of_a_separable_surrogate_give_the_one_block_answer(parallel: bool) -> None:
    """The linear surrogate with l1 is separable: 1 block (solved inline), 2 or 3 blocks
    (each solved on its slice, then concatenated) give the same ``(k, d)`` answer bit for
    bit. Two blocks matter too: solving only the first slice inline would return a
    ``(k, 3)`` answer."""
    gen = generator(12)
    w = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    sp = Subproblem(w, y, SHARE, Regularizer("l1", 0.4))
    one = minimize(SurrogateConfig("linear", tau=0.5), sp)
    u = w - y / 0.5
    torch.testing.assert_close(one, u.sign() * (u.abs() - 0.8).clamp_min(0), rtol=0, atol=0)
    for blocks in (2, 3):
        out = minimize(SurrogateConfig("linear", tau=0.5, blocks=blocks, parallel=parallel), sp)
        assert out.shape == (2, 6)
        assert torch.equal(out, one)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"kind": "newton"},
            "surrogate='newton' is unknown; choose one of linear, gauss_newton, cross_entropy",
        ),
        ({"solver": "lu"}, "solver='lu' is unknown; choose one of auto, direct, cg"),
        ({"tau": 0.0}, "prox_tau must be > 0 (it makes the surrogate strongly convex), got 0.0"),
        ({"blocks": 0}, "blocks and inner_steps must be >= 1, got 0 and 10"),
        ({"inner_steps": 0}, "blocks and inner_steps must be >= 1, got 1 and 0"),
    ],
)
def test_bad_surrogate_settings_are_refused_each_alone(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        SurrogateConfig(**({"kind": "linear"} | settings))
