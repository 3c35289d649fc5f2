"""NEXT: in-network successive convex approximation, and DGD as its ablation.

Di Lorenzo and Scutari, "NEXT: In-Network Nonconvex Optimization" (IEEE TSIPN 2016);
for neural networks, Scardapane and Di Lorenzo, "A Framework for Parallel and
Distributed Training of Neural Networks" (Neural Networks 91, 2017, arXiv 1610.07448).

Social cost ``U(w) = (1/n) sum_i f_i(w) + r(w)``, ``f_i`` agent ``i``'s mean loss,
``r`` convex (none, l2, l1). In the papers' notation ``g_i = f_i / n``. Round ``k``,
agent ``i``, with mixing matrix ``C = W(k)``::

    pi_i   = n y_i - grad g_i(w_i)                           (others' gradients)
    w~_i   = argmin_w  g~_i(w; w_i) + pi_i^T (w - w_i) + (tau/2)||w - w_i||^2 + r(w)
    z_i    = w_i + alpha[k] (w~_i - w_i)
    w_i   <- sum_j C_ij z_j                                   (consensus)
    y_i   <- sum_j C_ij y_j + grad f_i(w_i_new) - grad f_i(w_i_old)   (tracking)

with ``y_i[0] = grad f_i(w_i[0])``, so that ``sum_i y_i = sum_i grad f_i`` every round
and each ``y_i`` tracks the gradient of ``(1/n) sum_j f_j``. The surrogates ``g~_i``
and their solvers are in :mod:`nettrain.algorithms.surrogates`. Step rule
``alpha[k+1] = alpha[k] (1 - eps alpha[k])`` (``alpha[0] = 0.1``, ``eps = 0.01``): it
sums to infinity, its squares do not. DGD (no tracking) replaces ``y_i`` by the local
gradient ``grad f_i(w_i)``; with the linear surrogate and ``r = 0`` that is
``w_i <- sum_j C_ij (w_i - (alpha[k]/tau) grad f_i(w_i))``, plain decentralised
gradient descent (Nedic and Ozdaglar 2009), whose fixed points are biased unless the
step vanishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nettrain.algorithms.base import Algorithm
from nettrain.algorithms.surrogates import Subproblem, SurrogateConfig, minimize
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.flat import block_slices
from nettrain.problem.oracle import Oracle, Problem


@dataclass(frozen=True)
class StepRule:
    """``alpha[0] = step0``, ``alpha[k+1] = alpha[k] (1 - decay * alpha[k])``."""

    step0: float = 0.1
    decay: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.step0 <= 1:
            raise ConfigError(f"step0 (alpha[0] of NEXT) must be in (0, 1], got {self.step0}")
        if not 0 <= self.decay * self.step0 < 1:
            raise ConfigError(
                f"step_decay must be >= 0 and step_decay * step0 < 1 (else alpha[1] <= 0), "
                f"got step_decay={self.decay}, step0={self.step0}"
            )

    def next(self, alpha: float) -> float:
        return alpha * (1 - self.decay * alpha)


@dataclass(frozen=True)
class NextState:
    x: torch.Tensor  # (m, d) parameters w_i
    y: torch.Tensor  # (m, d) tracker of the average gradient (DGD: the local gradient)
    g: torch.Tensor  # (m, d) grad f_i(w_i) on the last batch, no regulariser
    w_tilde: torch.Tensor  # (m, d) last surrogate minimiser: exact zeros under l1
    alpha: float  # alpha[k]


@dataclass(frozen=True)
class NEXT(Algorithm[NextState]):
    """NEXT with gradient tracking; see the module docstring for the update rule."""

    surrogate: str = "linear"
    prox_tau: float = 1.0
    blocks: int = 1
    inner_steps: int = 10
    solver: str = "auto"
    step0: float = 0.1
    step_decay: float = 0.01
    tracking: bool = True
    name = "next"
    records_objective = True
    stability_hint = "Lower the first step (step0=) or raise the proximal weight (prox_tau=)"
    default_batch_size = 0  # full local batch: the surrogates model the whole local loss

    def __post_init__(self) -> None:
        self.surrogate_config  # noqa: B018 (both validate on construction)
        self.steps  # noqa: B018

    @property
    def surrogate_config(self) -> SurrogateConfig:
        """The surrogate, its proximal weight ``tau = prox_tau`` and how it is minimised."""
        return SurrogateConfig(
            self.surrogate, self.prox_tau, self.blocks, self.inner_steps, self.solver
        )

    @property
    def steps(self) -> StepRule:
        """``alpha[0] = step0``, ``alpha[k+1] = alpha[k] (1 - step_decay alpha[k])``."""
        return StepRule(self.step0, self.step_decay)

    def check(self, problem: Problem) -> None:
        self.surrogate_config.check_loss(problem.loss)
        if self.surrogate_config.needs_linearization and not problem.stateless:
            raise ConfigError(
                f"surrogate={self.surrogate} linearises the network, which needs a model "
                f"without buffers or dropout ({type(problem.template).__name__} has them); "
                "use surrogate=linear"
            )
        block_slices(problem.dim, self.surrogate_config.blocks)

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> NextState:
        _, g = oracle.grad(x0, smooth=True)  # (m, d)
        return NextState(x0, g, g, x0, self.steps.step0)

    def step(self, state: NextState, t: int, oracle: Oracle, comm: Communicator):
        mix_y = comm.start_mix(state.y, t) if self.tracking else None  # overlaps the solve
        lin = oracle.linearize(state.x) if self.surrogate_config.needs_linearization else None
        sub = Subproblem(
            w=state.x,
            y=state.y,
            share=1 / comm.n_agents,
            reg=oracle.problem.regularizer,
            lin=lin,
            g=lin.grad() if lin is not None else state.g,
        )
        w_tilde = minimize(self.surrogate_config, sub)  # (m, d)
        z = state.x + state.alpha * (w_tilde - state.x)
        x = comm.mix(z, t)
        loss, g = oracle.grad(x, smooth=True)
        y = mix_y.wait() + g - state.g if mix_y is not None else g
        loss = loss + oracle.problem.regularizer.value(x)
        return NextState(x, y, g, w_tilde, self.steps.next(state.alpha)), loss

    def diagnostics(self, state: NextState) -> dict[str, Any]:
        """The step ``alpha[k]``, the tracking error ``||sum_i y_i - sum_i g_i||`` and sparsity.

        ``sparsity`` is the share of exact zeros in the surrogate minimisers ``w~_i``: the
        iterates ``w_i`` are convex combinations and mixtures of them, so an l1 prox's
        zeros show in ``w~_i`` (which tend to the same limit as ``w_i``), not in ``w_i``.
        """
        out: dict[str, Any] = {
            "alpha": state.alpha,
            "sparsity": float((state.w_tilde == 0).float().mean()),
            "sparse_zeros": float((sparse_average(state.w_tilde) == 0).float().mean()),
        }
        if self.tracking:
            out["tracking_error"] = float((state.y.sum(0) - state.g.sum(0)).norm())
        return out

    def judged(self, state: NextState) -> dict[str, torch.Tensor]:
        """``sparse``: the surrogate minimisers averaged and thresholded at their share of
        zeros (:func:`sparse_average`), the sparse model an l1 run delivers."""
        return {"sparse": sparse_average(state.w_tilde)}


def sparse_average(w_tilde: torch.Tensor) -> torch.Tensor:
    """The mean of the agents' surrogate minimisers ``w~: (n, d)`` with its
    ``round(z d)`` smallest entries in magnitude set to zero, ``z`` the share of exact
    zeros in ``w~``: averaging alone keeps a coordinate unless every agent zeroed it, so
    the average is thresholded back to the sparsity the l1 prox gave each agent."""
    average = w_tilde.mean(0)
    k = round(float((w_tilde == 0).float().mean()) * average.numel())
    if k:
        average[average.abs().argsort()[:k]] = 0
    return average


@dataclass(frozen=True)
class DGD(NEXT):
    """NEXT without tracking (decentralised gradient descent on the surrogate): the ablation."""

    tracking: bool = False
    name = "dgd"
