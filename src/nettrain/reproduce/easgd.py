"""``nettrain reproduce easgd``: the claims of Zhang, Choromanska & LeCun (NIPS 2015).

"Deep learning with Elastic Averaging SGD" (arXiv 1412.6651), at small scale in the
simulator's event engine: ``p = 4`` workers with the centre on one parameter server,
``tau`` in {1, 4, 16, 64} local steps between exchanges, for asynchronous EASGD,
EAMSGD, DOWNPOUR and momentum DOWNPOUR, against all-reduce SGD, plain and with
momentum; ``beta = p alpha = 0.9`` (the paper's). All-reduce's step averages the ``p``
workers' mini-batches, a batch ``p`` times theirs, so its runs get Goyal et al. 2017's
large-batch treatment, a gradual warm-up over the first 5% of the rounds
(``lr_warmup``). Every method is tuned alike, at every ``tau`` as the paper did, with
the same budget of eight runs: a plain method (momentum 0) tries the eight learning
rates of :data:`PLAIN`, a method with a momentum (EAMSGD's Nesterov ``delta``, momentum
DOWNPOUR's, the momentum all-reduce's) the four rates times two momenta of
:data:`WITH_MOMENTUM`, whose effective steps ``lr / (1 - momentum)`` span the same
range, 0.004 to 0.5 against 0.002 to 0.5. Each run picks the point of the lowest final
loss of the centre on a validation split of 10% carved from the training set
(``validation=0.1``; the all-reduce's model for all-reduce; mean over the seeds, never
the test set; :func:`~nettrain.reproduce.tuning.over_seeds`; ``tuning.csv``). The
scaling table repeats EASGD, EAMSGD and DOWNPOUR at ``tau = 4`` with 8 and 16 workers,
each at the point its method chose with 4 workers. ``--quick``: Fashion-MNIST on 6,000
training samples, MLP 784-64-10, mini-batches of 32; the full run: all 60,000 samples, the small
CNN, mini-batches of 128 (the paper's; many hours on a 2-core CPU: ``--set
device=cuda`` on a GPU, or ``--set model=mlp hidden=128`` for an MLP). Every run has
the same number of local steps per worker; a seed's time budget is the shortest virtual
time any of its chosen runs took, and a method's test error at the budget is its
centre's at its last record within it. Every configuration runs for each seed
(``seed-<s>/n4_easgd_tau1_lr=0.05_momentum=0``, ...); the tables give the mean ± std over
the seeds, the plots the mean in a band of ± one std. Checked:

1. EAMSGD reaches the lowest test error at the time budget (empirical): each method at
   its ``tau`` of the lowest mean error, both all-reduce baselines included; EAMSGD's
   mean is below every other's by more than twice the standard error of the difference.
2. EASGD degrades gracefully with ``tau`` (empirical): its final error grows by less
   from ``tau = 1`` to ``tau = 64`` than DOWNPOUR's, by more than twice the standard
   error (a diverged run counts as a growth of 1, the largest).
3. Communication falls as ``1/tau`` (by construction: a message has a fixed size and a
   worker exchanges every ``tau`` steps): the bytes each worker sends at ``tau`` are
   within 10% of ``1/tau`` of those at ``tau = 1``, for every centre method and seed.
4. The stability analysis on the 1-D quadratic (round robin, ``p = 3``;
   :mod:`nettrain.analysis.stability`, table and map in the folder): EASGD is stable
   wherever its condition predicts (by construction: the theorem evaluated), and the
   linearised ADMM is unstable in part of that region, where EASGD is stable
   (empirical). The map and ``stability_summary.csv`` show how close to 1 the radii
   come (contours at ``1 ± 10^-k``; ADMM's largest radius in EASGD's region and where).
5. The runtime ADMM diverges or oscillates where the runtime EASGD converges
   (empirical): the classes ``algorithm=admm`` and ``algorithm=easgd_async`` run, with
   their own update code and parameter server, in round robin on ``f(x) = x^2 / 2``
   (``p = 3``, exact gradients, from ``x = 1``; :mod:`nettrain.reproduce.round_robin`)
   for :data:`RUNTIME_ROUNDS` rounds, at a point of the analysis' ADMM sweep where the
   linearised radius is above 1 (``eta = 5e-4``, ``rho = 5``: radius 1.0012) and at the
   same ``eta`` with ``alpha = eta rho`` for EASGD (radius < 1). ADMM must end farther
   than :data:`DIVERGED` from the optimum or its centre spread over more than
   :data:`UNSETTLED` in the last :data:`RUNTIME_WINDOW` rounds; EASGD must end within
   :data:`CONVERGED` of it. ``round_robin.csv`` and ``round_robin.png`` hold both runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from rich.console import Console

from nettrain.analysis import (
    ADMM_ETAS,
    ADMM_RHOS,
    EASGD_ALPHAS,
    EASGD_ETAS,
    Verdict,
    admm_instability,
    admm_round_robin_map,
    easgd_round_robin_map,
    easgd_stability,
    format_radius_table,
    largest_in_region,
    plot_stability_map,
    spectral_radius,
    stability_summary,
    stability_table,
    sweep,
)
from nettrain.analysis.stability import UNSTABLE_TOL
from nettrain.config import RunConfig, load_config
from nettrain.errors import DivergenceError
from nettrain.report.plots import plot_seeds
from nettrain.report.tables import write_csv
from nettrain.reproduce import round_robin
from nettrain.reproduce.claims import (
    BY_CONSTRUCTION,
    EMPIRICAL,
    Claim,
    Measured,
    better,
    spread,
)
from nettrain.reproduce.round_robin import Trajectory
from nettrain.reproduce.runner import Request, rounds_given, run_seeds, seed_tables
from nettrain.reproduce.tuning import Grid, over_seeds, warmup_rounds
from nettrain.reproduce.tuning import shown as in_words

Records = list[dict[str, Any]]
Key = tuple[int, str, int]  # (workers, method, tau)

METHODS: dict[str, dict[str, Any]] = {
    "easgd": {"algorithm": "easgd_async"},
    "eamsgd": {"algorithm": "eamsgd"},
    "downpour": {"algorithm": "downpour"},
    "mdownpour": {"algorithm": "mdownpour"},
}
BASELINES: dict[str, dict[str, Any]] = {  # at tau = 1: one all-reduce a step
    "allreduce": {"algorithm": "allreduce"},
    "mallreduce": {"algorithm": "allreduce"},
}
WITH_A_MOMENTUM = ("eamsgd", "mdownpour", "mallreduce")
# Eight runs for every method: the plain ones' rates, and the momentum methods' four rates
# times two momenta, whose effective steps lr / (1 - momentum) cover the same range.
PLAIN = Grid.of(lr=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5), momentum=(0.0,))
WITH_MOMENTUM = Grid.of(lr=(0.002, 0.005, 0.02, 0.05), momentum=(0.5, 0.9))
VALIDATION = 0.1  # the share of the training set held out to choose the rates
TAUS = (1, 4, 16, 64)
SCALING = {"workers": (8, 16), "tau": 4, "methods": ("easgd", "eamsgd", "downpour")}
EVALS = 16
PANELS = (("centre_test_error", "test error of the centre", True),)
COLUMNS = (
    "error_at_budget",
    "final_error",
    "bytes_per_worker",
    "exchanges_per_worker",
    "staleness_mean",
    "virtual_time_s",
    "wall_time_s",
)

# Claim 5: the runtime algorithms at one grid point of the ADMM sweep (ADMM_ETAS[4],
# ADMM_RHOS[49]) where the linearised radius is 1.0012, near the sweep's largest (1.0014
# at eta = 2e-4, rho = 10): at that smaller eta EASGD, whose rate is bounded by eta h,
# needs 2.5 times the rounds to converge. The runtime ADMM's radius there is 1.00064:
# from x = 1 it first decays to 0.025 (round 8,300) and passes 10 near round 18,000.
RUNTIME_ETA = 5e-4
RUNTIME_RHO = 5.0
RUNTIME_ALPHA = RUNTIME_ETA * RUNTIME_RHO  # EASGD's moving rate: alpha = eta rho
RUNTIME_P = 3
RUNTIME_ROUNDS = 24_000  # both runs: 12 s on the 2-core CPU, 30 s under load
RUNTIME_WINDOW = 1_000  # rounds over which the centre's spread is taken
DIVERGED = 10.0  # ADMM's distance to the optimum beyond this (10x the start): diverged
UNSETTLED = 0.1  # its centre's spread over the window above this: oscillates
CONVERGED = 1e-3  # EASGD's distance to the optimum below this: converged


def settings(quick: bool) -> tuple[dict[str, Any], int]:
    """The runs' common settings and their local steps per worker (a multiple of 64)."""
    if quick:
        base = {"train_samples": 6000, "model": "mlp", "hidden": (64,), "batch_size": 32}
        return base, 7 * 64
    return {"train_samples": 0, "model": "cnn", "batch_size": 128}, 16 * 64


def keys() -> list[Key]:
    """The tuned runs of one seed: both all-reduce baselines, and each method at each tau
    with 4 workers."""
    return [(4, b, 1) for b in BASELINES] + [(4, m, tau) for tau in TAUS for m in METHODS]


def scaling_keys() -> list[Key]:
    """The scaling runs: more workers at one tau, at the rates chosen with 4."""
    tau = SCALING["tau"]
    return [(n, m, tau) for n in SCALING["workers"] for m in SCALING["methods"]]


def grid(method: str) -> Grid:
    """``method``'s grid: :data:`WITH_MOMENTUM` where it has a momentum, else :data:`PLAIN`."""
    return WITH_MOMENTUM if method in WITH_A_MOMENTUM else PLAIN


def points(key: Key) -> list[dict[str, float]]:
    """The grid points of ``key``'s method, ``{lr, momentum}`` each, in grid order."""
    return grid(key[1]).every()


def run_name(key: Key, at: Mapping[str, float] | None = None) -> str:
    """``n{N}_{METHOD}_tau{TAU}``, with `` lr=LR momentum=M`` for the grid point ``at``."""
    n, method, tau = key
    return f"n{n}_{method}_tau{tau}" + ("" if at is None else f" {in_words(at)}")


def config(
    key: Key, at: Mapping[str, float], seed: int, quick: bool, overrides: Mapping[str, Any]
) -> RunConfig:
    """The run of ``key`` at the grid point ``at`` (whose values ``overrides`` do not
    change)."""
    base, rounds = settings(quick)
    rounds = rounds_given(overrides, rounds)
    base = base | {"dataset": "fashion_mnist", "seed": seed, "progress": False, "servers": 1}
    base |= {"rounds": rounds, "eval_every": max(1, rounds // EVALS), "validation": VALIDATION}
    n, method, tau = key
    if method in BASELINES:  # the large-batch treatment: a warm-up of 5% of the rounds
        extra = BASELINES[method] | {"lr_warmup": warmup_rounds(rounds)}
    else:
        extra = METHODS[method] | {"tau": tau}
    return load_config(base | extra | {"agents": n} | dict(overrides) | dict(at))


def plan(seed: int, quick: bool, overrides: Mapping[str, Any]) -> dict[str, RunConfig]:
    """One seed's tuned runs: every key of :func:`keys` at every point of its grid."""
    return {
        run_name(key, at): config(key, at, seed, quick, overrides)
        for key in keys()
        for at in points(key)
    }


def grids() -> dict[str, list[str]]:
    """Each tuned run's grid points, ``n4_easgd_tau1`` -> its run names in grid order."""
    return {run_name(key): [run_name(key, at) for at in points(key)] for key in keys()}


def scaling_plan(chosen: Mapping[str, str]) -> Callable[..., dict[str, RunConfig]]:
    """The plan of the scaling runs (:func:`scaling_keys`), each at the point its method
    chose at the same tau with 4 workers (``chosen``: :func:`tune`'s, run -> point)."""

    def planned(seed: int, quick: bool, overrides: Mapping[str, Any]) -> dict[str, RunConfig]:
        configs = {}
        for key in scaling_keys():
            _, method, tau = key
            at = chosen_point(chosen, (4, method, tau))
            configs[run_name(key)] = config(key, at, seed, quick, overrides)
        return configs

    return planned


def grid_values() -> dict[str, dict[str, float]]:
    """Every grid point's run name -> its values, ``{lr, momentum}``."""
    return {run_name(key, at): at for key in keys() for at in points(key)}


def chosen_point(chosen: Mapping[str, str], key: Key) -> dict[str, float]:
    """The values of ``key``'s chosen grid point (``chosen``: run -> point's name)."""
    return grid_values()[chosen[run_name(key)]]


CRITERION_KEYS = ("centre_val_loss", "val_loss")  # the centre's, else the model's


def criterion(records: Records) -> float:
    """The final validation loss of the centre (of all-reduce's model for all-reduce)."""
    last = records[-1]
    value = next((last[k] for k in CRITERION_KEYS if k in last), None)
    return math.inf if value is None else float(value)


criterion.__name__ = "final validation loss"


def tune(ask: Request, found: Mapping[int, Mapping[str, Records | None]]) -> dict[str, str]:
    """Each tuned run's grid point (run -> the chosen point's name), by the mean final
    validation loss over the seeds; printed, and written to ``tuning.csv``."""
    chosen, rows = over_seeds(found, grids(), criterion)
    values = grid_values()
    for row in rows:
        row |= values[row["run"]]
    write_csv(rows, ask.out / "tuning.csv")
    picked = ", ".join(run_name(key, chosen_point(chosen, key)) for key in keys())
    ask.console.print(f"chosen: {picked}")
    return chosen


def reproduce(ask: Request) -> list[Claim]:
    """Run the experiment as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`)."""

    def done(name: str, records: Records | None, note: str) -> None:
        if records is None:
            ask.console.print(f"{name}: diverged ({note})")
        else:
            error = 1 - records[-1].get("centre_test_accuracy", records[-1]["test_accuracy"])
            ask.console.print(f"{name:34s} error {error:.4f} {note}")

    found = run_seeds(ask, plan, done, tolerate=(DivergenceError,))
    chosen = tune(ask, found)
    scaled = run_seeds(ask, scaling_plan(chosen), done, tolerate=(DivergenceError,))
    picked = {key: chosen_point(chosen, key) for key in keys()}
    picked |= {key: chosen_point(chosen, (4, key[1], key[2])) for key in scaling_keys()}
    results = {
        seed: {key: with_errors(runs[chosen[run_name(key)]], key[0]) for key in keys()}
        | {key: with_errors(scaled[seed][run_name(key)], key[0]) for key in scaling_keys()}
        for seed, runs in found.items()
    }
    budgets = {seed: budget(runs) for seed, runs in results.items()}
    rows = [
        row(key, records, budgets[seed]) | picked[key] | {"seed": seed}
        for seed, runs in results.items()
        for key, records in runs.items()
    ]
    title = f"EASGD family (time budget {spread(list(budgets.values()))} virtual s)"
    seed_tables(ask, rows, ("n", "method", "tau", "lr", "momentum"), COLUMNS, title)
    plots(results, ask.out)
    seeds = [figures(runs, budgets[seed]) for seed, runs in results.items()]
    return check(seeds, stability(ask.out, ask.console), runtime(ask.out, ask.console))


def budget(runs: Mapping[Key, Records | None]) -> float:
    """A seed's time budget: the shortest virtual time any of its runs took."""
    return min(r[-1]["virtual_time_s"] for r in runs.values() if r)


def with_errors(records: Records | None, n: int) -> Records | None:
    """Add each record's centre test error and exchanges per worker (one all-reduce per
    round for all-reduce SGD); ``None`` (diverged) stays ``None``."""
    if not records:
        return None
    out = []
    for r in records:
        accuracy = r.get("centre_test_accuracy", r["test_accuracy"])
        exchanges = r["events"] / n if "events" in r else r["round"]
        out.append(r | {"centre_test_error": 1 - accuracy, "exchanges_per_worker": exchanges})
    return out


def error_at(records: Records | None, budget: float) -> float:
    """The centre's test error at the last record within ``budget``; 1 if diverged."""
    if not records:
        return 1.0
    within = [r for r in records if r["virtual_time_s"] <= budget * (1 + 1e-9)]
    return within[-1]["centre_test_error"] if within else 1.0


def row(key: Key, records: Records | None, budget: float) -> dict[str, Any]:
    n, method, tau = key
    last = records[-1] if records else {}
    return {
        "n": n,
        "method": method,
        "tau": tau,
        "error_at_budget": error_at(records, budget),
        "final_error": last.get("centre_test_error", 1.0),
        "bytes_per_worker": last.get("bytes_max_agent"),
        "exchanges_per_worker": last.get("exchanges_per_worker"),
        "staleness_mean": last.get("staleness_mean"),
        "virtual_time_s": last.get("virtual_time_s"),
        "wall_time_s": last.get("wall_time_s"),
    }


def plots(results: Mapping[int, Mapping[Key, Records | None]], out: Path) -> None:
    """Centre test error against virtual time and against exchanges, one figure per tau:
    each method's mean over the seeds (runs that diverged left out) in its band."""
    for tau in TAUS:
        keys_at = {m: (4, m, tau) for m in METHODS} | {b: (4, b, 1) for b in BASELINES}
        curves = {
            m: [r for runs in results.values() if (r := runs[key])] for m, key in keys_at.items()
        }
        for x in (
            ("virtual_time_s", "virtual time (s)"),
            ("exchanges_per_worker", "exchanges per worker"),
        ):
            plot_seeds(
                curves, PANELS, out / f"tau{tau}_{x[0]}.png", title=f"4 workers, tau = {tau}", x=x
            )


DIVERGED_GROWTH = 1.0  # a diverged run's growth of error: the largest an error can grow


@dataclass(frozen=True)
class Figures:
    """The numbers one seed's runs give the claims.

    ``errors``: ``(method, tau)`` -> the centre's test error at the seed's time budget,
    4 workers (the baselines' at ``tau = 1`` too; 1 if diverged); ``growth``: method -> final
    error at ``tau = 64`` minus at ``tau = 1`` (:data:`DIVERGED_GROWTH` if either
    diverged), for EASGD and DOWNPOUR; ``byte_ratios``: ``(method, tau)`` -> bytes per
    worker at ``tau = 1`` over those at ``tau`` (``None`` if either diverged)."""

    errors: dict[tuple[str, int], float]
    growth: dict[str, float]
    byte_ratios: dict[tuple[str, int], float | None]


def figures(results: Mapping[Key, Records | None], budget: float) -> Figures:
    """One seed's :class:`Figures` from its records (with :func:`with_errors`)."""

    def growth(method: str) -> float:
        first, last = results[(4, method, 1)], results[(4, method, TAUS[-1])]
        if not first or not last:
            return DIVERGED_GROWTH
        return last[-1]["centre_test_error"] - first[-1]["centre_test_error"]

    def byte_ratio(method: str, tau: int) -> float | None:
        one, other = results[(4, method, 1)], results[(4, method, tau)]
        if not one or not other:
            return None
        return one[-1]["bytes_max_agent"] / other[-1]["bytes_max_agent"]

    errors = {(m, t): error_at(results[(4, m, t)], budget) for m in METHODS for t in TAUS}
    return Figures(
        errors=errors | {(b, 1): error_at(results[(4, b, 1)], budget) for b in BASELINES},
        growth={m: growth(m) for m in ("easgd", "downpour")},
        byte_ratios={(m, t): byte_ratio(m, t) for m in METHODS for t in TAUS[1:]},
    )


def check(
    seeds: Sequence[Figures], stability: tuple[Verdict, Verdict], runtime: RuntimeFigures
) -> list[Claim]:
    """The six claims (see the module docstring) from every seed's :class:`Figures`;
    ``stability``: the analysis' verdicts on EASGD and on ADMM; ``runtime``: the runtime
    round-robin runs' figures."""
    easgd, admm = stability
    return [
        lowest_error_claim(seeds),
        growth_claim(seeds),
        bytes_claim(seeds),
        Claim(
            "EASGD is stable where its condition predicts",
            BY_CONSTRUCTION,
            "round robin on the 1-D quadratic, p = 3: spectral radius < 1 on EASGD's "
            "predicted region (measured: the largest radius there)",
            Measured.exact(easgd.radius, easgd.measured),
            easgd.holds,
        ),
        Claim(
            "the linearised ADMM is unstable in part of EASGD's stable region",
            EMPIRICAL,
            "round robin on the 1-D quadratic, p = 3: radius > 1 for ADMM at some (eta, "
            "alpha = eta rho) inside EASGD's region, where EASGD's radius < 1 (measured: "
            "the largest ADMM radius there)",
            Measured.exact(admm.radius, admm.measured),
            admm.holds,
        ),
        runtime_claim(runtime),
    ]


def best_tau(seeds: Sequence[Figures], method: str) -> int:
    """The tau of ``method``'s lowest mean error at the budget over the seeds."""
    taus = [t for m, t in seeds[0].errors if m == method]
    return min(taus, key=lambda t: fmean(f.errors[(method, t)] for f in seeds))


def lowest_error_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 1: EAMSGD's error at the budget is below every other method's by > 2 se."""
    methods = [*METHODS, *BASELINES]
    tau = {m: best_tau(seeds, m) for m in methods}
    errors = {m: [f.errors[(m, tau[m])] for f in seeds] for m in methods}
    others = [m for m in methods if m != "eamsgd"]
    compared = {m: better(errors["eamsgd"], errors[m], lower=True) for m in others}
    rival = min(others, key=lambda m: compared[m].difference)
    gaps = [o - e for o, e in zip(errors[rival], errors["eamsgd"], strict=True)]
    shown = ", ".join(f"{m} (tau={tau[m]}) {spread(errors[m])}" for m in methods)
    return Claim(
        "EAMSGD reaches the lowest test error at the time budget",
        EMPIRICAL,
        "centre's test error at each seed's time budget, each method at its tau of the lowest "
        "mean: mean(other) - mean(EAMSGD) > 2 standard errors for every other method "
        "(measured: the difference to the closest)",
        Measured.of(gaps, f"{shown}; against {rival}: {compared[rival].describe()}"),
        all(c.holds for c in compared.values()),
    )


def growth_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 2: EASGD's error grows less from tau = 1 to 64 than DOWNPOUR's, by > 2 se."""
    easgd = [f.growth["easgd"] for f in seeds]
    downpour = [f.growth["downpour"] for f in seeds]
    compared = better(easgd, downpour, lower=True)
    return Claim(
        "EASGD degrades more gracefully with tau than DOWNPOUR",
        EMPIRICAL,
        f"final error(tau={TAUS[-1]}) - error(tau=1), {DIVERGED_GROWTH:g} for a diverged run: "
        "mean(DOWNPOUR) - mean(EASGD) > 2 standard errors (measured: DOWNPOUR's growth "
        "minus EASGD's)",
        Measured.of(
            [d - e for d, e in zip(downpour, easgd, strict=True)],
            f"EASGD {spread(easgd, '+.4f')}, DOWNPOUR {spread(downpour, '+.4f')}; "
            + compared.describe(),
        ),
        compared.holds,
    )


def bytes_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 3 (by construction): bytes(tau = 1) / bytes(tau) within 10% of tau."""

    def deviation(f: Figures) -> float | None:
        ratios = f.byte_ratios.values()
        if None in ratios:
            return None
        return max(abs(r / t - 1) for (_, t), r in f.byte_ratios.items() if r is not None)

    deviations = [deviation(f) for f in seeds]
    shown = ", ".join(
        f"easgd tau={t}: {spread([f.byte_ratios[('easgd', t)] for f in seeds], '.3g')}"
        for t in TAUS[1:]
    )
    return Claim(
        "bytes per worker fall as 1/tau",
        BY_CONSTRUCTION,
        "bytes(tau=1) / bytes(tau) within 10% of tau, every centre method, every seed "
        "(measured: the largest relative deviation from tau)",
        Measured.of(deviations, f"{shown} ({len(seeds[0].byte_ratios)} ratios a seed)"),
        all(d is not None and d <= 0.1 for d in deviations),
    )


def stability(out: Path, console: Console) -> tuple[Verdict, Verdict]:
    """Sweep EASGD over (eta, alpha) and ADMM over (eta, rho); table, map and the
    verdicts of the claims' two halves."""
    easgd = sweep("easgd", EASGD_ETAS, EASGD_ALPHAS, p=3)
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    write_csv(stability_table(easgd) + stability_table(admm), out / "stability.csv")
    write_csv(stability_summary([easgd, admm]), out / "stability_summary.csv")
    plot_stability_map(easgd, admm, out / "stability.png", **stability_points())
    console.print(format_radius_table(easgd))
    console.print(format_radius_table(admm))
    largest = largest_in_region(admm)
    console.print(
        f"largest ADMM radius in EASGD's region: {largest.radius:.6f} "
        f"({largest.where(admm.second_name)})"
    )
    return easgd_stability(easgd), admm_instability(admm)


def stability_points() -> dict[str, tuple[float, float]]:
    """Where claim 5 runs, marked on the stability map: ``(eta, alpha)`` and ``(eta, rho)``."""
    return {
        "easgd_point": (RUNTIME_ETA, RUNTIME_ALPHA),
        "admm_point": (RUNTIME_ETA, RUNTIME_RHO),
    }


@dataclass(frozen=True)
class RuntimeFigures:
    """The numbers claim 5 tests: the analysis' radii at the two settings (the linearised
    ADMM's at ``(eta, rho)``, EASGD's at ``(eta, alpha)``), and, after the runtime runs,
    each one's distance to the optimum (the largest ``|x_i|``, ``|x~|``) and ADMM's
    centre's spread over the last :data:`RUNTIME_WINDOW` rounds."""

    eta: float
    rho: float
    alpha: float
    rounds: int
    admm_radius: float
    easgd_radius: float
    admm_distance: float
    admm_spread: float
    easgd_distance: float


def diverged_or_oscillating(distance: float, spread: float) -> bool:
    """ADMM fails to converge: farther than :data:`DIVERGED` from the optimum, or its
    centre spread over more than :data:`UNSETTLED` at the end (NaN counts as neither)."""
    return distance > DIVERGED or spread > UNSETTLED


def converged(distance: float) -> bool:
    """Within :data:`CONVERGED` of the optimum (NaN is not)."""
    return distance < CONVERGED


def runtime_figures(
    admm_run: Trajectory, easgd_run: Trajectory, eta: float, rho: float, alpha: float
) -> RuntimeFigures:
    """:class:`RuntimeFigures` from the two runs and the analysis' maps at their settings
    (``p`` = :data:`RUNTIME_P`, ``h = 1``)."""
    return RuntimeFigures(
        eta=eta,
        rho=rho,
        alpha=alpha,
        rounds=admm_run.rounds,
        admm_radius=spectral_radius(admm_round_robin_map(eta, rho, RUNTIME_P)),
        easgd_radius=spectral_radius(easgd_round_robin_map(eta, alpha, RUNTIME_P)),
        admm_distance=admm_run.final,
        admm_spread=admm_run.spread(RUNTIME_WINDOW),
        easgd_distance=easgd_run.final,
    )


def runtime_claim(f: RuntimeFigures) -> Claim:
    """Claim 5: at a setting where the linearised ADMM's radius exceeds 1 and EASGD's is
    below 1, the runtime ADMM diverges or oscillates (:func:`diverged_or_oscillating`)
    and the runtime EASGD converges (:func:`converged`)."""
    setting = f.admm_radius > 1.0 + UNSTABLE_TOL and f.easgd_radius < 1.0
    holds = (
        setting
        and diverged_or_oscillating(f.admm_distance, f.admm_spread)
        and converged(f.easgd_distance)
    )
    text = (
        f"after {f.rounds} rounds: ADMM (eta={f.eta:g}, rho={f.rho:g}; linearised radius "
        f"{f.admm_radius:.6f}) distance {f.admm_distance:.4g}, centre spread "
        f"{f.admm_spread:.4g} over the last {RUNTIME_WINDOW}; EASGD (eta={f.eta:g}, "
        f"alpha={f.alpha:g}; radius {f.easgd_radius:.6f}) distance {f.easgd_distance:.3g}"
    )
    return Claim(
        "the runtime round-robin ADMM diverges or oscillates where the runtime EASGD converges",
        EMPIRICAL,
        f"algorithm=admm and easgd_async's own update code, round robin on f(x) = x^2/2, "
        f"p = {RUNTIME_P}, from x = 1, {f.rounds} rounds, at a setting where the linearised "
        f"ADMM's radius > 1 and EASGD's (same eta, alpha = eta rho) < 1: ADMM's distance "
        f"to the optimum > {DIVERGED:g} or its centre's spread over the last "
        f"{RUNTIME_WINDOW} rounds > {UNSETTLED:g}, and EASGD's distance < {CONVERGED:g} "
        "(measured: ADMM's distance)",
        Measured.exact(f.admm_distance, text),
        holds,
    )


def runtime(out: Path, console: Console, rounds: int = RUNTIME_ROUNDS) -> RuntimeFigures:
    """Run the runtime ADMM and EASGD in round robin (claim 5); write their distances
    (``round_robin.csv``, every 100th round) and plot them (``round_robin.png``)."""
    runs = {
        "admm": round_robin.run(round_robin.admm(RUNTIME_ETA, RUNTIME_RHO), rounds, RUNTIME_P),
        "easgd": round_robin.run(round_robin.easgd(RUNTIME_ETA, RUNTIME_ALPHA), rounds, RUNTIME_P),
    }
    write_csv(round_robin.trajectory_rows(runs), out / "round_robin.csv")
    bounds = {"diverged": DIVERGED, "converged": CONVERGED}
    shown = {
        f"ADMM, eta={RUNTIME_ETA:g}, rho={RUNTIME_RHO:g}": runs["admm"],
        f"EASGD, eta={RUNTIME_ETA:g}, alpha={RUNTIME_ALPHA:g}": runs["easgd"],
    }
    title = f"runtime round robin on f(x) = x^2/2, p = {RUNTIME_P}"
    round_robin.plot_trajectories(shown, out / "round_robin.png", bounds, title)
    found = runtime_figures(runs["admm"], runs["easgd"], RUNTIME_ETA, RUNTIME_RHO, RUNTIME_ALPHA)
    console.print(
        f"runtime round robin, {rounds} rounds: ADMM distance {found.admm_distance:.4g}, "
        f"EASGD distance {found.easgd_distance:.3g}"
    )
    return found
