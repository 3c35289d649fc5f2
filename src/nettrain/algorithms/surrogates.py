"""The local step of NEXT: a strongly convex surrogate of the agent's share, minimised.

Agent ``i`` at ``w`` with tracker ``y`` (its estimate of the gradient of the smooth
part of the social cost) solves, over the move ``v``::

    w~ = w + argmin_v  q(v) + r(w + v)
    q(v) = s * [ L~(v) - L~(0) - g^T v ] + y^T v + (tau / 2) ||v||^2

where ``s = 1/n`` is the agent's share of ``U(w) = (1/n) sum_i f_i(w) + r(w)``, ``g``
the gradient of its loss at ``w`` and ``L~`` a convex model of that loss; in the
notation of Di Lorenzo and Scutari's NEXT, ``s * grad f_i + pi_i = y``, so ``grad q(0)
= y`` whatever the model. The surrogates (Scardapane and Di Lorenzo 2017, Sec. 4):

* ``linear``: ``L~(v) = g^T v``; closed form ``w~ = prox_{r/tau}(w - y / tau)``
  (``(tau w - y) / (tau + 2 lam)`` for l2, soft-thresholding for l1).
* ``gauss_newton``: the network linearised inside the squared loss,
  ``L~(v) = sum_b w_b ||out_b + J_b v - t_b||^2 / 2``; with r in {none, l2} the
  minimiser solves ``(s J^T W J + (tau + 2 lam) I) v = -(y + 2 lam w)``:
  directly (Cholesky of the ``d x d`` matrix, ``O(B o d^2 + d^3)``, best for small
  ``d``) or by conjugate gradients with one ``J v`` and one ``J^T u`` per iteration
  (``O(B o d)`` each, no matrix formed, best for large ``d``); ``solver=auto`` picks
  direct for ``d <= DIRECT_MAX_DIM``. With l1, accelerated proximal gradient.
* ``cross_entropy``: the network linearised inside cross-entropy, ``L~(v) = sum_b
  w_b CE(out_b + J_b v, t_b)``: convex, not quadratic, minimised by ``inner_steps``
  of accelerated proximal gradient (the softmax Hessian is below ``I/2``; the
  constant comes from a power iteration on ``J^T W J``).

Block-parallel step: the coordinates are split into ``blocks`` contiguous slices
(:func:`~nettrain.problem.flat.block_slices`) and the surrogate is made
block-separable by keeping, in each block's subproblem, only that block's columns of
``J`` (block-Jacobi; the linear surrogate is separable as it is). The blocks'
subproblems are then independent and run on a thread pool, one block per core (torch
releases the GIL inside its kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from nettrain.errors import ConfigError
from nettrain.problem.flat import block_slices
from nettrain.problem.linearization import Linearization
from nettrain.problem.losses import Regularizer, cross_entropy, squared

SURROGATES = ("linear", "gauss_newton", "cross_entropy")
SOLVERS = ("auto", "direct", "cg")
DIRECT_MAX_DIM = 256  # above this a Cholesky of d x d costs more than ~d/(B o) CG iterations
CG_MAX_ITERS = 100
POWER_ITERS = 8


@dataclass(frozen=True)
class SurrogateConfig:
    """Which surrogate, its proximal weight ``tau`` and how it is minimised."""

    kind: str = "linear"
    tau: float = 1.0
    blocks: int = 1
    inner_steps: int = 10
    solver: str = "auto"
    parallel: bool = True  # blocks on a thread pool; False runs them one after another

    def __post_init__(self) -> None:
        if self.kind not in SURROGATES:
            raise ConfigError(
                f"surrogate={self.kind!r} is unknown; choose one of {', '.join(SURROGATES)}"
            )
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver={self.solver!r} is unknown; choose one of auto, direct, cg")
        if not self.tau > 0:
            raise ConfigError(
                f"prox_tau must be > 0 (it makes the surrogate strongly convex), got {self.tau}"
            )
        if self.blocks < 1 or self.inner_steps < 1:
            raise ConfigError(
                f"blocks and inner_steps must be >= 1, got {self.blocks} and {self.inner_steps}"
            )

    @property
    def needs_linearization(self) -> bool:
        return self.kind != "linear"

    def check_loss(self, loss: Callable) -> None:
        """The network-linearising surrogates are written for one loss each."""
        wanted = {"gauss_newton": squared, "cross_entropy": cross_entropy}.get(self.kind)
        if wanted is not None and loss is not wanted:
            raise ConfigError(
                f"surrogate={self.kind} linearises the network inside the "
                f"{wanted.__name__.replace('_', '-')} loss; use loss={wanted.__name__} or "
                "surrogate=linear"
            )


@dataclass(frozen=True)
class Subproblem:
    """``min_v q(v) + r(w + v)`` for ``k`` agents (see the module docstring)."""

    w: torch.Tensor  # (k, d)
    y: torch.Tensor  # (k, d) gradient of q at v = 0
    share: float  # s = 1/n
    reg: Regularizer
    lin: Linearization | None = None
    g: torch.Tensor | None = None  # (k, d) gradient of the loss at w on lin's batch


def minimize(cfg: SurrogateConfig, sp: Subproblem) -> torch.Tensor:
    """``w~: (k, d)``, the surrogate's minimiser, block by block."""
    slices = block_slices(sp.w.shape[1], cfg.blocks)
    solve = _solver(cfg, sp)
    if len(slices) == 1:
        return solve(slices[0])
    if cfg.parallel:
        with ThreadPoolExecutor(max_workers=len(slices), thread_name_prefix="next-block") as pool:
            parts = list(pool.map(solve, slices))
    else:
        parts = [solve(c) for c in slices]
    return torch.cat(parts, dim=1)


def _solver(cfg: SurrogateConfig, sp: Subproblem) -> Callable[[slice], torch.Tensor]:
    if cfg.kind == "linear":
        return lambda c: sp.reg.prox(sp.w[:, c] - sp.y[:, c] / cfg.tau, 1 / cfg.tau)
    if sp.lin is None or sp.g is None:
        raise ValueError(f"surrogate={cfg.kind} needs the network's linearisation")
    quadratic = cfg.kind == "gauss_newton" and sp.reg.kind != "l1"
    if not quadratic:
        return lambda c: _accelerated_prox_gradient(cfg, sp, c)
    direct = cfg.solver == "direct" or (cfg.solver == "auto" and sp.w.shape[1] <= DIRECT_MAX_DIM)
    if not direct:
        return lambda c: _conjugate_gradient(cfg, sp, c)
    J = sp.lin.jacobian()  # (k, B * o, d), shared by the blocks
    return lambda c: _direct(cfg, sp, J[:, :, c], c)


def _embed(v: torch.Tensor, c: slice, d: int) -> torch.Tensor:
    """``(k, |c|)`` -> ``(k, d)``, zero outside block ``c``."""
    out = v.new_zeros(v.shape[0], d)
    out[:, c] = v
    return out


def _row_weights(sp: Subproblem) -> torch.Tensor:
    """Sample weights repeated over the outputs: ``(k, B * o)``, the diagonal of ``W``."""
    assert sp.lin is not None
    o = sp.lin.out.shape[-1]
    return sp.lin.weights.repeat_interleave(o, dim=1)


def _l2(sp: Subproblem) -> float:
    return 2 * sp.reg.lam if sp.reg.kind == "l2" else 0.0


def _direct(cfg: SurrogateConfig, sp: Subproblem, J: torch.Tensor, c: slice) -> torch.Tensor:
    """Cholesky solve of ``(s J^T W J + (tau + 2 lam) I) v = -(y + 2 lam w)`` on block ``c``."""
    H = sp.share * J.mT @ (_row_weights(sp)[:, :, None] * J)  # (k, |c|, |c|)
    H.diagonal(dim1=1, dim2=2).add_(cfg.tau + _l2(sp))
    rhs = -(sp.y[:, c] + _l2(sp) * sp.w[:, c])
    L = torch.linalg.cholesky(H)
    return sp.w[:, c] + torch.cholesky_solve(rhs[:, :, None], L)[:, :, 0]


def _conjugate_gradient(cfg: SurrogateConfig, sp: Subproblem, c: slice) -> torch.Tensor:
    """The same system as :func:`_direct` by conjugate gradients, batched over agents.

    ``A v = s J^T W J v + (tau + 2 lam) v`` costs one ``jvp`` and one ``vjp``; stops when
    every agent's residual is below ``sqrt(eps)`` of its right-hand side.
    """
    assert sp.lin is not None
    lin, d = sp.lin, sp.w.shape[1]
    damping = cfg.tau + _l2(sp)

    def A(v: torch.Tensor) -> torch.Tensor:
        Jv = lin.jvp(_embed(v, c, d))  # (k, B, o)
        return sp.share * lin.vjp(lin.weights[:, :, None] * Jv)[:, c] + damping * v

    b = -(sp.y[:, c] + _l2(sp) * sp.w[:, c])  # (k, |c|)
    v = b / damping  # exact when J = 0
    r = b - A(v)
    p = r.clone()
    rr = (r * r).sum(1)
    tol = math.sqrt(torch.finfo(b.dtype).eps) * b.norm(dim=1)
    for _ in range(CG_MAX_ITERS):
        if bool((rr.sqrt() <= tol).all()):
            break
        Ap = A(p)
        step = rr / (p * Ap).sum(1).clamp_min(torch.finfo(b.dtype).tiny)
        v = v + step[:, None] * p
        r = r - step[:, None] * Ap
        rr_new = (r * r).sum(1)
        p = r + (rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny))[:, None] * p
        rr = rr_new
    return sp.w[:, c] + v


def _accelerated_prox_gradient(cfg: SurrogateConfig, sp: Subproblem, c: slice) -> torch.Tensor:
    """``inner_steps`` of accelerated proximal gradient on block ``c`` (Beck and Teboulle 2009).

    ``q`` is ``tau``-strongly convex with an ``L``-Lipschitz gradient, ``L = s * h *
    lambda_max(J^T W J) + tau`` (``h = 1`` for squared loss, ``1/2`` for cross-entropy),
    taken 5% above the power iteration's estimate of ``lambda_max`` (an estimate from
    below); constant momentum ``(sqrt(L/tau) - 1) / (sqrt(L/tau) + 1)`` (Nesterov 2004, 2.2.19).
    """
    assert sp.lin is not None and sp.g is not None
    lin, d = sp.lin, sp.w.shape[1]
    w, y, g = sp.w[:, c], sp.y[:, c], sp.g[:, c]
    h = 1.0 if cfg.kind == "gauss_newton" else 0.5

    def grad_q(v: torch.Tensor) -> torch.Tensor:
        out = lin.out + lin.jvp(_embed(v, c, d))
        return sp.share * (lin.vjp(lin.loss_grad(out))[:, c] - g) + y + cfg.tau * v

    L = sp.share * h * _top_eigenvalue(lin, c, d) * 1.05 + cfg.tau  # (k,)
    kappa = L / cfg.tau
    momentum = ((kappa.sqrt() - 1) / (kappa.sqrt() + 1))[:, None]
    step = (1 / L)[:, None]
    u = w  # iterate w + v
    u_prev = w
    for _ in range(cfg.inner_steps):
        probe = u + momentum * (u - u_prev)
        u_prev = u
        u = sp.reg.prox(probe - step * grad_q(probe - w), step)
    return u


def _top_eigenvalue(lin: Linearization, c: slice, d: int) -> torch.Tensor:
    """``lambda_max(J_c^T W J_c)`` per agent by power iteration, ``(k,)``.

    Starts from the all-ones vector, not a random one, so that an agent's estimate does
    not depend on which other agents share its process.
    """
    v = lin.x.new_ones(lin.x.shape[0], c.stop - c.start)
    lam = v.new_zeros(v.shape[0])
    for _ in range(POWER_ITERS):
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        Hv = lin.vjp(lin.weights[:, :, None] * lin.jvp(_embed(v, c, d)))[:, c]
        lam = (v * Hv).sum(1)
        v = Hv
    return lam.clamp_min(0)
