"""Stability of round-robin EASGD and ADMM on the one-dimensional quadratic.

Source: Zhang, Choromanska & LeCun, "Deep learning with Elastic Averaging SGD", NIPS 2015
(arXiv 1412.6651), Sec. 3 "Stability analysis of EASGD and ADMM in the round-robin scheme",
Eqs. (7)-(11) and Fig. 1; the same analysis is a chapter of Zhang's PhD thesis (2016,
arXiv 1605.02216). [check] The equations below are the NIPS paper's as recalled, not
re-read: neither text could be fetched when this was written. What depends on the recall is
marked below; the closed-form EASGD condition is derived here and does not.

Setting: ``p`` workers, ``f(x) = h x^2 / 2`` (the paper takes ``h = 1``), exact gradients
``h x``. Round robin: the global clock ``t`` activates worker ``i = t mod p`` only; that
worker makes its exchange with the master, then the master updates. One *round* is the ``p``
exchanges of workers ``1, ..., p`` in this fixed order, so the state after a round is
``s <- M s`` with ``M = F^p ... F^2 F^1`` (``F^i`` is the linear map of worker ``i``'s turn).
A method is stable at ``(eta, alpha)`` or ``(eta, rho)`` when the spectral radius of ``M`` is
below one: then ``s_k = M^k s_0 -> 0`` from every start (here ``0`` is the optimum).

EASGD (Eqs. (10)-(11)), state ``(x_1, ..., x_p, x~)`` of size ``p + 1``; at worker ``i``'s
turn, with the elastic difference taken *before* either side moves (the symmetric exchange
``d = alpha (x_i - x~)`` of the asynchronous algorithm)::

    x_i <- x_i - eta h x_i - alpha (x_i - x~)
    x~  <- x~ + alpha (x_i - x~)                 (old x_i)

``F^i`` is the identity except on the coordinates ``(x_i, x~)``, where it is the symmetric
block ``B = [[1 - eta h - alpha, alpha], [alpha, 1 - alpha]]``.

ADMM (Eqs. (7)-(9)), state ``(lam_1, x_1, ..., lam_p, x_p, x~)`` of size ``2p + 1``, with the
multiplier scaled as in the paper, ``lam = l / rho`` for the multiplier ``l`` of the
Lagrangian ``f(x_i) - l_i (x_i - x~) + (rho/2)(x_i - x~)^2``. At worker ``i``'s turn, in the
paper's order (dual ascent first, then the local variable, then the master)::

    lam_i <- lam_i - (x_i - x~)                              F1: dual ascent
    x_i   <- argmin of the (linearised) augmented Lagrangian  F2: see X_UPDATES
    x~    <- (1/p) sum_j (x_j - lam_j)                        F3: master minimisation

so ``F^i = F3 F2^i F1^i``. [check] the order dual-then-local; the textbook order
local-then-dual (``x_i``, then ``lam_i`` with the new ``x_i``) gave the same spectral radius
(to 1e-10) in 900 random cases, ``p <= 8``, every x-update (numerically, not proved), so the
stability maps do not depend on it. The paper linearises ``f`` around ``x_i`` with a proximal
term ``(1/(2 eta)) (x - x_i)^2`` (its ref. [22]), which gives the ``"linearised"`` update
``x_i <- ((1 - eta h) x_i + eta rho (lam_i + x~)) / (1 + eta rho)``. Two variants are also
provided: ``"gradient"``, one explicit gradient step on the augmented Lagrangian
``x_i <- x_i - eta (h x_i - rho lam_i + rho (x_i - x~))``, and ``"exact"``, the exact
minimiser ``x_i = rho (lam_i + x~) / (h + rho)`` (no ``eta``).

Findings this module reproduces (see the tests): EASGD's condition
(:func:`easgd_predicted_stable`) guarantees stability for every ``p``; the linearised ADMM
of the paper is unstable at points with ``alpha = eta rho`` well inside that region (for
example the paper's ``eta = 0.001``, ``rho = 2.5``, ``p = 3`` or ``8``); the exact-minimisation
ADMM variant shows no unstable point on the same grid. :mod:`nettrain.reproduce.round_robin`
runs the runtime classes (``algorithm=admm``, ``easgd_async``) in this setting, where
their update rules differ a little from these maps (its docstring says how).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from nettrain.errors import ConfigError

Array = npt.NDArray[np.float64]
Method = Literal["easgd", "admm", "admm-gradient", "admm-exact"]
XUpdate = Literal["linearised", "gradient", "exact"]

# Default grids. EASGD: the whole region 0 < eta h < 2 and a margin beyond it. ADMM: the
# window of the paper's Fig. 1, eta in (0, 1e-2), rho in (0, 10).
EASGD_ETAS: Array = np.linspace(0.025, 2.4, 96)
EASGD_ALPHAS: Array = np.linspace(0.0125, 1.2, 96)
ADMM_ETAS: Array = np.linspace(1e-4, 1e-2, 100)
ADMM_RHOS: Array = np.linspace(0.1, 10.0, 100)

# A radius must exceed 1 by this much to count as evidence of instability (eigvals of these
# small, well-scaled matrices are accurate to ~1e-14).
UNSTABLE_TOL = 1e-9

# How close to 1 a radius is: the map draws the contours radius = 1 ± 10^-k of these k
# (those the grid crosses), the summary counts the points within NEAR_ONE of 1.
CLOSENESS_DECADES = (1, 2, 3, 4)
NEAR_ONE = 1e-3


# ----------------------------------------------------------------------------- checks


def _check_p(p: int) -> int:
    if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1:
        raise ConfigError(f"p (number of workers) must be an integer >= 1, got {p!r}")
    return int(p)


def _check_h(h: float) -> float:
    if not np.isfinite(h) or h <= 0:
        raise ConfigError(
            f"h (curvature of f(x) = h x^2 / 2) must be finite and > 0, got {h!r}; "
            "the analysis is for a strongly convex quadratic"
        )
    return float(h)


def _check_worker(i: int, p: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < p:
        raise ConfigError(f"worker index i must be an integer in 0..{p - 1}, got {i!r}")
    return int(i)


def _finite(name: str, value: npt.ArrayLike) -> Array:
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return array


def _admm_params(eta: npt.ArrayLike, rho: npt.ArrayLike) -> tuple[Array, Array]:
    eta_a, rho_a = _finite("eta", eta), _finite("rho", rho)
    if np.any(eta_a < 0):
        raise ConfigError(f"eta (ADMM step) must be >= 0, got {eta!r}")
    if np.any(rho_a <= 0):
        raise ConfigError(f"rho (ADMM penalty) must be > 0, got {rho!r}")
    return eta_a, rho_a


# ----------------------------------------------------------------------------- EASGD


def _easgd_worker_maps(eta: Array, alpha: Array, i: int, p: int, h: float) -> Array:
    """``F^i`` for every ``(eta, alpha)`` of the broadcast shape ``S``: ``(*S, p+1, p+1)``."""
    eta, alpha = np.broadcast_arrays(eta, alpha)
    maps = np.broadcast_to(np.eye(p + 1), (*eta.shape, p + 1, p + 1)).copy()
    maps[..., i, i] = 1.0 - eta * h - alpha
    maps[..., i, p] = alpha
    maps[..., p, i] = alpha
    maps[..., p, p] = 1.0 - alpha
    return maps


def _easgd_round_maps(eta: Array, alpha: Array, p: int, h: float) -> Array:
    """``M = F^p ... F^1`` for every ``(eta, alpha)``: ``(*S, p+1, p+1)``."""
    shape = np.broadcast_shapes(np.shape(eta), np.shape(alpha))
    m = np.broadcast_to(np.eye(p + 1), (*shape, p + 1, p + 1)).copy()
    for i in range(p):
        m = _easgd_worker_maps(eta, alpha, i, p, h) @ m
    return m


def easgd_worker_map(eta: float, alpha: float, i: int, p: int, h: float = 1.0) -> Array:
    """The ``(p+1, p+1)`` map ``F^i`` of worker ``i``'s turn (``i`` counts from 0).

    State ``(x_1, ..., x_p, x~)``. ``F^i`` is the identity except on ``(x_i, x~)``, where it
    is ``[[1 - eta h - alpha, alpha], [alpha, 1 - alpha]]`` (paper Sec. 3, ``F^1, F^2`` for
    ``p = 2``). It is symmetric, which is what makes EASGD's condition simple.
    """
    p = _check_p(p)
    i = _check_worker(i, p)
    return _easgd_worker_maps(_finite("eta", eta), _finite("alpha", alpha), i, p, _check_h(h))


def easgd_round_robin_map(eta: float, alpha: float, p: int, h: float = 1.0) -> Array:
    """The ``(p+1, p+1)`` map of one round, ``M = F^p ... F^2 F^1`` (workers 1, ..., p)."""
    p = _check_p(p)
    return _easgd_round_maps(_finite("eta", eta), _finite("alpha", alpha), p, _check_h(h))


def easgd_alpha_max(eta: npt.ArrayLike, h: float = 1.0) -> Array:
    """The upper end of the stable ``alpha`` range, ``(4 - 2 eta h) / (4 - eta h)``.

    Meaningful for ``0 < eta h < 2``, where it decreases from 1 to 0; it is where the block
    ``B`` of :func:`easgd_worker_map` has the eigenvalue ``-1``.
    """
    e = _finite("eta", eta) * _check_h(h)
    return (4.0 - 2.0 * e) / (4.0 - e)


def easgd_predicted_stable(
    eta: npt.ArrayLike, alpha: npt.ArrayLike, h: float = 1.0
) -> npt.NDArray[np.bool_]:
    """EASGD's stability condition: ``0 < eta h < 2`` and ``0 < alpha < (4 - 2 eta h)/(4 - eta h)``.

    Paper Sec. 3 states it, for ``h = 1`` and ``|lambda| <= 1``, as ``0 <= eta <= 2``,
    ``0 <= alpha <= (4 - 2 eta)/(4 - eta)``; this is the strict version for ``|lambda| < 1``.

    Derivation. The eigenvalues of the block ``B = [[1 - eta h - alpha, alpha],
    [alpha, 1 - alpha]]`` are ``lambda = (2 - eta h - 2 alpha +- sqrt(eta^2 h^2 + 4 alpha^2))/2``,
    the roots of ``P(l) = l^2 - (2 - eta h - 2 alpha) l + (1 - eta h - 2 alpha + eta h alpha)``.
    By the Jury (Schur-Cohn) test both lie in the open unit disc iff ``P(1) = eta h alpha > 0``,
    ``P(-1) = 4 - 2 eta h - (4 - eta h) alpha > 0`` and ``|P(0)| < 1``, which reduces to the
    condition above (``P(0) > -1`` is ``(2 - eta h)(1 - alpha) > 0``).

    Exact or sufficient:
        * ``p = 1``: ``M = B``, so the condition is exact (necessary and sufficient).
        * every ``p``: sufficient. Each ``F^i`` is symmetric with ``||F^i||_2 <= 1`` and
          ``||B||_2 < 1``, so ``||M||_2 <= 1``. If ``M v = lambda v`` with ``|lambda| = 1``,
          every factor must preserve the norm, which forces the ``(x_1, x~)`` part of ``v``
          to vanish, then ``F^1 v = v`` and the ``(x_2, x~)`` part vanishes, and so on: ``v = 0``.
          Hence ``rho(M) < 1``.
        * ``p >= 2``: not necessary. The round map can be stable slightly beyond the
          boundary ``alpha = alpha_max(eta)`` (e.g. ``p = 2``, ``eta = 0.07``,
          ``alpha = 0.986``: radius 0.996), because the composite of maps that each
          expand some direction can still contract.

    The condition does not depend on ``p``. Arrays broadcast.
    """
    e = _finite("eta", eta) * _check_h(h)
    a = _finite("alpha", alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (4.0 - 2.0 * e) / (4.0 - e)
    return (e > 0) & (e < 2) & (a > 0) & (a < bound)


# ----------------------------------------------------------------------------- ADMM


def _linearised(eta: Array, rho: Array, h: float) -> tuple[Array, Array, Array]:
    d = 1.0 + eta * rho
    return eta * rho / d, (1.0 - eta * h) / d, eta * rho / d


def _gradient(eta: Array, rho: Array, h: float) -> tuple[Array, Array, Array]:
    return eta * rho, 1.0 - eta * h - eta * rho, eta * rho


def _exact(eta: Array, rho: Array, h: float) -> tuple[Array, Array, Array]:
    c = rho / (h + rho)  # eta plays no part
    return c, np.zeros_like(c), c


# x_i <- a_lam * lam_i + a_x * x_i + a_c * x~ : the coefficients (a_lam, a_x, a_c).
X_UPDATES: dict[str, Callable[[Array, Array, float], tuple[Array, Array, Array]]] = {
    "linearised": _linearised,  # paper Eq. (8): proximal linearisation of f
    "gradient": _gradient,  # one explicit gradient step on the augmented Lagrangian
    "exact": _exact,  # exact argmin of f(x) - l (x - x~) + (rho/2)(x - x~)^2
}


def _check_x_update(x_update: str) -> None:
    if x_update not in X_UPDATES:
        raise ConfigError(
            f"unknown ADMM x_update {x_update!r}; choose one of {', '.join(X_UPDATES)}"
        )


def _admm_fixed_maps(i: int, p: int) -> tuple[Array, Array]:
    """``F1^i`` (dual ascent of worker ``i``) and ``F3`` (master), which hold no parameter."""
    n = 2 * p + 1
    lam, x, centre = 2 * i, 2 * i + 1, 2 * p
    dual = np.eye(n)
    dual[lam, x] -= 1.0
    dual[lam, centre] += 1.0
    master = np.eye(n)
    master[centre, :] = 0.0
    master[centre, 0 : 2 * p : 2] = -1.0 / p  # -lam_j / p
    master[centre, 1 : 2 * p : 2] = 1.0 / p  # +x_j / p
    return dual, master


def _admm_worker_maps(eta: Array, rho: Array, i: int, p: int, h: float, x_update: str) -> Array:
    """``F^i = F3 F2^i F1^i`` for every ``(eta, rho)``: ``(*S, 2p+1, 2p+1)``."""
    eta, rho = np.broadcast_arrays(eta, rho)
    n = 2 * p + 1
    lam, x, centre = 2 * i, 2 * i + 1, 2 * p
    a_lam, a_x, a_c = X_UPDATES[x_update](eta, rho, h)
    local = np.broadcast_to(np.eye(n), (*eta.shape, n, n)).copy()
    local[..., x, x] = a_x
    local[..., x, lam] = a_lam
    local[..., x, centre] = a_c
    dual, master = _admm_fixed_maps(i, p)
    return master @ local @ dual


def _admm_round_maps(eta: Array, rho: Array, p: int, h: float, x_update: str) -> Array:
    shape = np.broadcast_shapes(np.shape(eta), np.shape(rho))
    n = 2 * p + 1
    m = np.broadcast_to(np.eye(n), (*shape, n, n)).copy()
    for i in range(p):
        m = _admm_worker_maps(eta, rho, i, p, h, x_update) @ m
    return m


def admm_worker_map(
    eta: float, rho: float, i: int, p: int, h: float = 1.0, x_update: XUpdate = "linearised"
) -> Array:
    """The ``(2p+1, 2p+1)`` map ``F^i = F3 F2^i F1^i`` of worker ``i``'s turn (from 0).

    State ``(lam_1, x_1, ..., lam_p, x_p, x~)`` with ``lam = l / rho``; see the module
    docstring for ``F1`` (dual ascent), ``F2`` (``x_update``) and ``F3`` (master).
    """
    p = _check_p(p)
    i = _check_worker(i, p)
    _check_x_update(x_update)
    eta_a, rho_a = _admm_params(eta, rho)
    return _admm_worker_maps(eta_a, rho_a, i, p, _check_h(h), x_update)


def admm_round_robin_map(
    eta: float, rho: float, p: int, h: float = 1.0, x_update: XUpdate = "linearised"
) -> Array:
    """The ``(2p+1, 2p+1)`` map of one round of ADMM, ``M = F^p ... F^1``.

    ``x_update="linearised"`` is the paper's Eq. (8) and the one its Fig. 1 sweeps over
    ``(eta, rho)``; ``"exact"`` ignores ``eta``.
    """
    p = _check_p(p)
    _check_x_update(x_update)
    eta_a, rho_a = _admm_params(eta, rho)
    return _admm_round_maps(eta_a, rho_a, p, _check_h(h), x_update)


# ----------------------------------------------------------------------------- sweeps


def spectral_radius(m: npt.ArrayLike) -> float:
    """``max |lambda|`` over the eigenvalues of the square matrix ``m``."""
    array = np.asarray(m, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ConfigError(f"spectral_radius needs a square matrix, got shape {array.shape}")
    return float(spectral_radii(array))


def spectral_radii(stack: npt.ArrayLike) -> Array:
    """Spectral radius of each matrix of a ``(..., n, n)`` stack: shape ``(...)``."""
    return np.abs(np.linalg.eigvals(np.asarray(stack, dtype=np.float64))).max(axis=-1)


def _easgd_sweep_maps(eta: Array, alpha: Array, p: int, h: float) -> Array:
    return _easgd_round_maps(eta, _finite("alpha", alpha), p, h)


def _admm_sweep(x_update: str) -> Callable[[Array, Array, int, float], Array]:
    def maps(eta: Array, rho: Array, p: int, h: float) -> Array:
        eta_a, rho_a = _admm_params(eta, rho)
        return _admm_round_maps(eta_a, rho_a, p, h, x_update)

    return maps


# method -> (name of the second parameter, batched round map (eta, second, p, h))
METHODS: dict[str, tuple[str, Callable[[Array, Array, int, float], Array]]] = {
    "easgd": ("alpha", _easgd_sweep_maps),
    "admm": ("rho", _admm_sweep("linearised")),
    "admm-gradient": ("rho", _admm_sweep("gradient")),
    "admm-exact": ("rho", _admm_sweep("exact")),
}


@dataclass(frozen=True)
class StabilitySweep:
    """Spectral radii of one method's round map over a grid.

    ``radius[a, b]`` is the radius at ``(etas[a], second[b])``; ``second`` is ``alpha`` for
    EASGD and ``rho`` for the ADMM methods.
    """

    method: str
    p: int
    h: float
    etas: Array  # (n_eta,)
    second: Array  # (n_second,)
    radius: Array  # (n_eta, n_second)

    @property
    def second_name(self) -> str:
        return METHODS[self.method][0]

    @property
    def stable(self) -> npt.NDArray[np.bool_]:
        """``radius < 1``: the iterates go to the optimum from every start."""
        return self.radius < 1.0

    @property
    def alpha(self) -> Array:
        """The EASGD moving rate of each point: ``alpha`` itself, or ``eta * rho`` for ADMM.

        The identification ``alpha = eta rho`` is the one of the EASGD objective (the elastic
        term ``(rho/2)(x_i - x~)^2`` and step ``eta`` give the moving rate ``alpha = eta rho``).
        """
        if self.method == "easgd":
            return np.broadcast_to(self.second[None, :], self.radius.shape)
        return self.etas[:, None] * self.second[None, :]

    @property
    def in_easgd_region(self) -> npt.NDArray[np.bool_]:
        """Where EASGD's condition predicts stability, at ``(eta, alpha)`` of each point."""
        return easgd_predicted_stable(self.etas[:, None], self.alpha, self.h)


def sweep(
    method: Method,
    etas: npt.ArrayLike,
    second: npt.ArrayLike,
    p: int = 3,
    h: float = 1.0,
) -> StabilitySweep:
    """Spectral radius of the round map on the grid ``etas x second``, vectorised.

    All ``len(etas) * len(second)`` maps are built as one ``(n_eta, n_second, d, d)`` stack
    (``d = p + 1`` or ``2p + 1``) and their eigenvalues found in one ``eigvals`` call.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    p, h = _check_p(p), _check_h(h)
    eta_a = _finite("etas", etas).ravel()
    second_a = _finite(METHODS[method][0], second).ravel()
    if eta_a.size == 0 or second_a.size == 0:
        raise ConfigError("sweep needs at least one eta and one second-parameter value")
    maps = METHODS[method][1](eta_a[:, None], second_a[None, :], p, h)
    return StabilitySweep(method, p, h, eta_a, second_a, spectral_radii(maps))


# ----------------------------------------------------------------------------- reports


def stability_table(result: StabilitySweep) -> list[dict[str, Any]]:
    """One row per grid point (e.g. for :func:`nettrain.report.tables.write_csv`).

    Keys: ``method, p, h, eta, alpha|rho, radius, radius_minus_1, stable,
    easgd_predicted_stable``; ``radius_minus_1`` says how close to the edge of stability a
    point is (``> 0``: unstable); for ADMM the last key is EASGD's condition at
    ``alpha = eta rho``.
    """
    rows = []
    region = result.in_easgd_region
    for a, eta in enumerate(result.etas):
        for b, value in enumerate(result.second):
            rows.append(
                {
                    "method": result.method,
                    "p": result.p,
                    "h": result.h,
                    "eta": float(eta),
                    result.second_name: float(value),
                    "radius": float(result.radius[a, b]),
                    "radius_minus_1": float(result.radius[a, b] - 1.0),
                    "stable": bool(result.stable[a, b]),
                    "easgd_predicted_stable": bool(region[a, b]),
                }
            )
    return rows


def stability_summary(results: Sequence[StabilitySweep]) -> list[dict[str, Any]]:
    """One row per sweep: grid, counts of stable / unstable points, radius range.

    ``in_region``: points where EASGD's condition holds (``alpha = eta rho`` for ADMM);
    ``unstable_in_region``: those of them with ``radius >= 1``; ``radius_max_in_region``
    and ``at_max_in_region``: the largest radius there and its ``(eta, alpha|rho)`` (NaN
    and empty without such points); ``near_1``: points with ``|radius - 1| <``
    :data:`NEAR_ONE`.
    """
    rows = []
    for r in results:
        region = r.in_easgd_region
        largest = largest_in_region(r)
        rows.append(
            {
                "method": r.method,
                "p": r.p,
                "h": r.h,
                "eta": f"[{r.etas.min():.4g}, {r.etas.max():.4g}] x{r.etas.size}",
                "second": f"{r.second_name} [{r.second.min():.4g}, {r.second.max():.4g}]"
                f" x{r.second.size}",
                "points": int(r.radius.size),
                "stable": int(r.stable.sum()),
                "unstable": int((~r.stable).sum()),
                "in_region": int(region.sum()),
                "unstable_in_region": int((region & ~r.stable).sum()),
                "radius_min": float(r.radius.min()),
                "radius_max": float(r.radius.max()),
                "radius_max_in_region": largest.radius,
                "at_max_in_region": largest.where(r.second_name),
                "near_1": int((np.abs(r.radius - 1.0) < NEAR_ONE).sum()),
            }
        )
    return rows


class GridPoint(NamedTuple):
    """A point of a sweep's grid and its radius."""

    eta: float
    second: float  # alpha (EASGD) or rho (ADMM)
    radius: float

    def where(self, second_name: str) -> str:
        """``"eta=..., rho=..."``; empty for the NaN point of an empty region."""
        if np.isnan(self.radius):
            return ""
        return f"eta={self.eta:.4g}, {second_name}={self.second:.4g}"


def largest_in_region(result: StabilitySweep) -> GridPoint:
    """The point of the largest radius among those where EASGD's condition holds
    (``alpha = eta rho`` for ADMM); all NaN when there is none."""
    region = result.in_easgd_region
    if not region.any():
        return GridPoint(float("nan"), float("nan"), float("nan"))
    a, b = np.unravel_index(np.argmax(np.where(region, result.radius, -np.inf)), region.shape)
    return GridPoint(float(result.etas[a]), float(result.second[b]), float(result.radius[a, b]))


def format_radius_table(result: StabilitySweep, rows: int = 8, cols: int = 8) -> str:
    """A text table of the radius on an evenly thinned ``rows x cols`` sub-grid.

    Rows are ``eta``, columns the second parameter; ``*`` marks ``radius >= 1``.
    """
    ia = np.unique(np.linspace(0, result.etas.size - 1, min(rows, result.etas.size)).round())
    ib = np.unique(np.linspace(0, result.second.size - 1, min(cols, result.second.size)).round())
    ia, ib = ia.astype(int), ib.astype(int)
    corner = "eta | " + result.second_name
    head = f"{corner:>12}" + "".join(f"{result.second[b]:>11.4g}" for b in ib)
    lines = [f"{result.method}, p={result.p}, h={result.h:g}: spectral radius", head]
    for a in ia:
        cells = "".join(
            f"{result.radius[a, b]:>10.5f}{'*' if result.radius[a, b] >= 1 else ' '}" for b in ib
        )
        lines.append(f"{result.etas[a]:>12.4g}" + cells)
    return "\n".join(lines)


def stability_claim(
    easgd: StabilitySweep, admm: StabilitySweep, tol: float = UNSTABLE_TOL
) -> tuple[bool, str]:
    """Check "EASGD is stable wherever its condition predicts; ADMM is unstable in part of it".

    Holds when (1) the EASGD sweep has predicted-stable points and all of them have
    ``radius < 1``, (2) some ADMM point with ``(eta, alpha = eta rho)`` inside EASGD's region
    has ``radius > 1 + tol``, and (3) EASGD itself, run at those same ``(eta, eta rho)`` with
    the ADMM sweep's ``p`` and ``h``, has ``radius < 1`` there. (1) is
    :func:`easgd_stability`, (2) and (3) :func:`admm_instability`.

    Returns:
        ``(holds, measured)``, ``measured`` the counts and radii found, in words.
    """
    stable, unstable = easgd_stability(easgd), admm_instability(admm, tol)
    return stable.holds and unstable.holds, f"{stable.measured}; {unstable.measured}"


class Verdict(NamedTuple):
    """One half of :func:`stability_claim`: whether it holds, the counts and radii in
    words, and the radius it rests on."""

    holds: bool
    measured: str
    radius: float


def easgd_stability(easgd: StabilitySweep) -> Verdict:
    """Whether the EASGD sweep has predicted-stable points and all of them have
    ``radius < 1`` (the condition evaluated: it holds by the theorem); ``radius``: the
    largest at those points."""
    if easgd.method != "easgd":
        raise ConfigError(f"first sweep must be an EASGD sweep, got {easgd.method!r}")
    predicted = easgd.in_easgd_region
    n_predicted = int(predicted.sum())
    broken = int((predicted & ~easgd.stable).sum())
    worst = float(easgd.radius[predicted].max()) if n_predicted else float("nan")
    measured = (
        f"EASGD p={easgd.p}: {n_predicted - broken}/{n_predicted} predicted-stable grid points "
        f"have radius < 1 (max {worst:.6f})"
    )
    return Verdict(n_predicted > 0 and broken == 0, measured, worst)


def admm_instability(admm: StabilitySweep, tol: float = UNSTABLE_TOL) -> Verdict:
    """Whether some ADMM point with ``(eta, alpha = eta rho)`` inside EASGD's region has
    ``radius > 1 + tol`` while EASGD at those same ``(eta, eta rho)`` (the sweep's ``p``
    and ``h``) has ``radius < 1``; ``radius``: the largest ADMM radius in the region."""
    if not admm.method.startswith("admm"):
        raise ConfigError(f"second sweep must be an ADMM sweep, got {admm.method!r}")
    region = admm.in_easgd_region
    largest = float(admm.radius[region].max()) if region.any() else float("nan")
    unstable = region & (admm.radius > 1.0 + tol)
    n_unstable = int(unstable.sum())
    if n_unstable:
        eta = np.broadcast_to(admm.etas[:, None], admm.radius.shape)[unstable]
        mirror = spectral_radii(_easgd_round_maps(eta, admm.alpha[unstable], admm.p, admm.h))
        mirror_max = float(mirror.max())
    else:
        mirror_max = float("nan")
    measured = (
        f"{admm.method} p={admm.p}: {n_unstable} of {int(region.sum())} points inside "
        f"EASGD's region (alpha = eta*rho) have radius > 1 (max {largest:.6f}); EASGD at "
        f"those points: max radius {mirror_max:.6f}"
    )
    return Verdict(n_unstable > 0 and mirror_max < 1.0, measured, largest)


# ----------------------------------------------------------------------------- plot


_PREDICTED: dict[str, Any] = {"color": "tab:green", "ls": "--", "lw": 2.0}


def _heatmap(fig: Figure, ax: Any, result: StabilitySweep) -> None:
    log_r = np.log10(result.radius)  # (n_eta, n_second)
    lo, hi = float(log_r.min()), float(log_r.max())
    span = max(abs(lo), abs(hi), 1e-12)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=min(lo, -1e-3 * span), vmax=max(hi, 1e-3 * span))
    mesh = ax.pcolormesh(
        result.etas, result.second, log_r.T, shading="nearest", cmap="RdBu_r", norm=norm
    )
    fig.colorbar(mesh, ax=ax, label="log10 spectral radius (red: unstable)")
    _closeness_contours(ax, result, log_r)
    if lo < 0.0 < hi and min(log_r.shape) >= 2:
        ax.contour(result.etas, result.second, log_r.T, levels=[0.0], colors="k")
    ax.set_xlabel("eta")
    ax.set_ylabel(result.second_name)
    ax.set_title(f"{result.method}, p={result.p}, h={result.h:g}")


def closeness_levels(radius: Array) -> list[float]:
    """The radii ``1 ± 10^-k`` (``k`` in :data:`CLOSENESS_DECADES`) strictly inside the
    range of ``radius``, ascending: the contours that show how close to 1 it comes."""
    lo, hi = float(radius.min()), float(radius.max())
    levels = [1.0 + sign * 10.0**-k for k in CLOSENESS_DECADES for sign in (-1.0, 1.0)]
    return sorted(level for level in levels if lo < level < hi)


def _closeness_contours(ax: Any, result: StabilitySweep, log_r: Array) -> None:
    """Thin labelled contours at the radii of :func:`closeness_levels` (the grid must
    cross a level: matplotlib warns at one it never reaches)."""
    levels = closeness_levels(result.radius)
    if not levels or min(log_r.shape) < 2:
        return
    lines = ax.contour(
        result.etas,
        result.second,
        log_r.T,
        levels=np.log10(levels),
        colors="0.35",
        linewidths=0.6,
        linestyles=":",
    )
    ax.clabel(lines, fmt=lambda v: f"{10.0**v:.4g}", fontsize=6, inline=True)


def plot_stability_map(
    easgd: StabilitySweep,
    admm: StabilitySweep,
    path: str | Path,
    *,
    easgd_point: tuple[float, float] | None = None,
    admm_point: tuple[float, float] | None = None,
) -> Path:
    """Two heatmaps of ``log10`` radius: EASGD over ``(eta, alpha)``, ADMM over ``(eta, rho)``.

    Both show the measured boundary ``radius = 1`` (black contour, where it crosses the grid),
    how close to 1 the radius comes (dotted, labelled contours at ``1 ± 10^-k``,
    :func:`closeness_levels`) and EASGD's predicted boundary (green, dashed):
    ``alpha = (4 - 2 eta h)/(4 - eta h)`` and ``eta h = 2`` on the left; on the right the
    same curve mapped by ``rho = alpha / eta``. The right title names ADMM's largest radius
    in EASGD's region and where it is (:func:`largest_in_region`). ``easgd_point``
    ``(eta, alpha)`` and ``admm_point`` ``(eta, rho)``, if given, are marked (a star):
    the settings at which the runtime algorithms were run.
    """
    fig = Figure(figsize=(12, 4.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    measured = Line2D([], [], color="k", label="radius = 1 (measured)")
    near = Line2D([], [], color="0.35", lw=0.6, ls=":", label="radius = 1 ± 10^-k")
    predicted = Line2D([], [], **_PREDICTED, label="EASGD condition (predicted)")

    _heatmap(fig, left, easgd)
    e = np.linspace(0.0, 2.0 / easgd.h, 200)
    left.plot(e, easgd_alpha_max(e, easgd.h), **_PREDICTED)
    left.axvline(2.0 / easgd.h, **_PREDICTED)
    left.set_xlim(easgd.etas.min(), easgd.etas.max())
    left.set_ylim(easgd.second.min(), easgd.second.max())
    left.legend(
        handles=[measured, near, predicted, *_mark(left, easgd_point)],
        loc="upper right",
        fontsize="small",
    )

    _heatmap(fig, right, admm)
    e = admm.etas[admm.etas * admm.h < 2.0]
    if e.size:
        right.plot(e, easgd_alpha_max(e, admm.h) / e, **_PREDICTED)
    right.set_xlim(admm.etas.min(), admm.etas.max())
    right.set_ylim(admm.second.min(), admm.second.max())
    inside = int(admm.in_easgd_region.sum())
    largest = largest_in_region(admm)
    right.set_title(
        f"{admm.method}, p={admm.p}: {inside}/{admm.radius.size} points in EASGD's "
        f"region (alpha = eta rho);\nlargest radius there {largest.radius:.6f} "
        f"({largest.where(admm.second_name)})",
        fontsize="medium",
    )
    right.legend(
        handles=[measured, near, predicted, *_mark(right, admm_point)],
        loc="upper right",
        fontsize="small",
    )
    fig.savefig(path, dpi=110)
    return Path(path)


def _mark(ax: Any, point: tuple[float, float] | None) -> list[Line2D]:
    """A star at ``point`` ``(eta, second)``; its legend handle (none without a point)."""
    if point is None:
        return []
    (star,) = ax.plot(*point, marker="*", ms=13, mec="k", mfc="gold", ls="", clip_on=False)
    star.set_label("runtime check")
    return [star]
