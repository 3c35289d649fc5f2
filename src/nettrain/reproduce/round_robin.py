"""The runtime ADMM and EASGD in round robin on the 1-D quadratic of the stability analysis.

:mod:`nettrain.analysis.stability` decides stability from the spectral radius of the
round-robin maps it writes out (Zhang, Choromanska & LeCun, NIPS 2015, Sec. 3, Eqs.
(7)-(11); Zhang's thesis, arXiv 1605.02216). Here the same setting is *run* with the
classes the engines run: :class:`~nettrain.algorithms.ADMM` (``algorithm=admm``) and
:class:`~nettrain.algorithms.EASGDAsync` (``algorithm=easgd_async``), ``tau = 1``,
their own ``init`` and ``interact``, the centre held by a
:class:`~nettrain.engines.centre.CentreShard` (the parameter server of both engines)
applying their own ``serve``. ``p`` workers, ``f(x) = h x^2 / 2`` for every worker, exact
gradients ``h x`` (no noise, deterministic), every coordinate starting at ``x0`` (the
multipliers at 0); worker ``i = t mod p`` makes the ``t``-th exchange, so a round is the
``p`` exchanges of workers ``0, ..., p-1`` in turn. The optimum is 0.

The update rules as the classes implement them (their module docstrings), worker ``i``'s
turn, ``eta = lr``:

ADMM (:mod:`nettrain.algorithms.downpour`; ``rho = alpha / lr``; ``x~_i`` the centre
worker ``i`` pulled at its last exchange)::

    x_i <- x_i - eta (h x_i - l_i + rho (x_i - x~_i))      one gradient step on the
                                                          augmented Lagrangian
    l_i <- l_i - rho (x_i - x~_i)                          dual ascent, with the new x_i
    x~  <- x~ + (u_i' - u_i) / p,  u_i = x_i - l_i / rho   so x~ = mean_j u_j
    x~_i <- x~                                             the pull

EASGD (:mod:`nettrain.algorithms.elastic`)::

    x_i <- x_i - eta h x_i;  d = alpha (x_i - x~);  x_i <- x_i - d;  x~ <- x~ + d

They differ from the analysed maps: ADMM takes one explicit gradient step where the paper
linearises ``f`` with a proximal term (Eq. (8)), updates the multiplier after ``x_i`` and
reads a centre ``p - 1`` exchanges old; EASGD takes its elastic difference after the
gradient step. For small ``eta (h + rho)`` (the paper's Fig. 1 window) the radii stay on
the same side of 1 away from it (tests/reproduce/test_round_robin.py); for large
``eta (h + rho)`` the explicit step of the runtime ADMM diverges where the linearised one
is stable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nettrain.algorithms import ADMM, EASGDAsync
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.patterns import Communicator, Handle, ServerRule, Traffic

Array = npt.NDArray[np.float64]


class QuadraticOracle:
    """The oracle of ``f(x) = h ||x||^2 / 2`` for every agent: exact gradients ``h x``."""

    def __init__(self, h: float = 1.0) -> None:
        self.h = h

    def grad(
        self, x: torch.Tensor, local: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``(k,)`` and gradients ``(k, d)`` of the rows of ``x: (k, d)``."""
        return 0.5 * self.h * (x * x).sum(-1), self.h * x


class RoundRobinComm(Communicator):
    """All ``p`` workers in this process and one :class:`CentreShard` holding the whole
    centre; exchanges are applied in row order, each on the centre the earlier left."""

    def __init__(self, rule: ServerRule, x0: torch.Tensor, p: int) -> None:
        self.n_agents = p
        self.agents = torch.arange(p)
        self.traffic = Traffic.zeros(p)
        self.shard = CentreShard(rule, shard_rows(x0, rule, slice(0, x0.numel())), p, 0.0)

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Any = None) -> Handle:
        raise NotImplementedError("round robin with a centre: no neighbour mixing")

    def start_mean(self, x: torch.Tensor, *, codec: Any = None) -> Handle:
        raise NotImplementedError("round robin with a centre: no all-reduce")

    def centre_exchange(
        self,
        sent: torch.Tensor,
        workers: torch.Tensor,
        synchronous: bool = False,
        *,
        losses: Any = None,
    ) -> torch.Tensor:
        replies = [self.shard.exchange(int(w), sent[row])[0] for row, w in enumerate(workers)]
        return torch.stack(replies)

    def centre(self) -> torch.Tensor:
        return self.shard.centre()


def admm(eta: float, rho: float) -> ADMM:
    """The runtime ADMM at step ``eta`` and penalty ``rho`` (``alpha = eta rho``), ``tau = 1``."""
    return ADMM(lr=eta, alpha=eta * rho, tau=1)


def easgd(eta: float, alpha: float) -> EASGDAsync:
    """The runtime asynchronous EASGD at step ``eta`` and moving rate ``alpha``, ``tau = 1``."""
    return EASGDAsync(lr=eta, alpha=alpha, tau=1)


@dataclass(frozen=True)
class Trajectory:
    """A round-robin run: after round ``k`` (``k = 0``: the start), ``distance[k]``, the
    largest ``|x_i|`` and ``|x~|`` (the distance to the optimum 0, ``inf`` once not
    finite), and ``centre[k]``, the centre ``x~``."""

    distance: Array  # (rounds + 1,)
    centre: Array  # (rounds + 1,)

    @property
    def rounds(self) -> int:
        return len(self.distance) - 1

    @property
    def final(self) -> float:
        """The distance to the optimum after the last round."""
        return float(self.distance[-1])

    def spread(self, window: int) -> float:
        """``max - min`` of the centre over the last ``window`` rounds (``inf`` if not finite):
        how far it is from settling."""
        tail = self.centre[-window:]
        return float(np.ptp(tail)) if np.all(np.isfinite(tail)) else float("inf")


def _distance(x: torch.Tensor, centre: torch.Tensor) -> float:
    value = float(torch.cat([x.flatten(), centre.flatten()]).abs().max())
    return value if np.isfinite(value) else float("inf")


def run(
    algorithm: ADMM | EASGDAsync, rounds: int, p: int = 3, h: float = 1.0, x0: float = 1.0
) -> Trajectory:
    """Run ``algorithm`` (one local step per exchange) for ``rounds`` rounds of ``p``
    exchanges in turn on ``f(x) = h x^2 / 2`` from ``x_i = x~ = x0``; see the module
    docstring."""
    start = torch.full((p, 1), x0, dtype=torch.float64)
    oracle, comm = QuadraticOracle(h), RoundRobinComm(algorithm, start[0], p)
    state = algorithm.init(start, oracle, comm)  # type: ignore[arg-type]
    one = torch.ones((1, 1), dtype=torch.int64)
    turns = [torch.tensor([[i, -1]]) for i in range(p)]
    distance, centre = [_distance(state.x, comm.centre())], [x0]
    for _ in range(rounds):
        for pair in turns:
            state, _ = algorithm.interact(state, pair, oracle, comm, one)  # type: ignore[arg-type]
        distance.append(_distance(state.x, comm.centre()))
        centre.append(float(comm.centre()[0]))
    return Trajectory(np.asarray(distance), np.asarray(centre))


def trajectory_rows(runs: Mapping[str, Trajectory], every: int = 100) -> list[dict[str, Any]]:
    """Every ``every``-th round (and the last) of equally long runs, one row a round:
    ``round``, then ``<name>_distance`` and ``<name>_centre`` for each run."""
    rounds = {t.rounds for t in runs.values()}
    if len(rounds) != 1:
        raise ValueError(f"the runs have different lengths: {sorted(rounds)}")
    (last,) = rounds
    rows = []
    for k in sorted({*range(0, last + 1, every), last}):
        row: dict[str, Any] = {"round": k}
        for name, t in runs.items():
            row |= {f"{name}_distance": float(t.distance[k]), f"{name}_centre": float(t.centre[k])}
        rows.append(row)
    return rows


def plot_trajectories(
    runs: Mapping[str, Trajectory],
    path: str | Path,
    bounds: Mapping[str, float],
    title: str = "runtime round robin on f(x) = x^2/2",
) -> Path:
    """The distance to the optimum against the round, log scale, one line a run (its
    label: the key of ``runs``); a dashed horizontal line at each of ``bounds``
    (label -> value)."""
    fig = Figure(figsize=(7, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, t in runs.items():
        shown = np.where(np.isfinite(t.distance) & (t.distance > 0), t.distance, np.nan)
        ax.semilogy(np.arange(t.rounds + 1), shown, label=name)
    for label, value in bounds.items():
        ax.axhline(value, color="0.4", ls="--", lw=0.8)
        ax.annotate(label, (0, value), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel("round (p exchanges in turn)")
    ax.set_ylabel("distance to the optimum, max |x_i|, |x~|")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return Path(path)
