"""``nettrain reproduce next``: the claims of Scardapane and Di Lorenzo (2017) at small scale.

10 agents on an Erdős–Rényi graph train a one-hidden-layer MLP (16 units) with full
local batches on scikit-learn's diabetes (squared loss + l2), breast cancer
(cross-entropy + l2), digits (cross-entropy + l2, label-skewed shards: two classes
per agent) and digits with l1. Methods: NEXT
with each surrogate that fits the loss, DGD (no tracking, same step) and, for every
surrogate, its centralised counterpart: the same iteration on the complete graph with
uniform weights, where every agent holds the exact average after each round (for the
linear surrogate that is centralised full-batch proximal gradient with step
``alpha[k] / tau``). Checked:

1. NEXT's final social objective is within 1% of its centralised counterpart's (mean
   over the seeds).
2. DGD with the same step is slower or biased: a larger final stationarity measure than
   NEXT's, by more than twice the standard error of the difference of the means, on
   every data set; the ratio DGD / NEXT is stated.
3. l1 gives at least 50% exact zeros at a test error within 1 point of l2 (means): the
   l1 run's sparse model (the agents' surrogate minimisers ``w~`` averaged and
   thresholded at their share of zeros, the record's ``sparse_*`` fields) against the
   l2 run's mean model; the zeros are counted in that sparse model.
4. The block-parallel step (2 blocks, block-Jacobi Gauss-Newton) reaches the
   sequential run's objective (within 1%) in at most 10% more iterations (mean of the
   seeds' ratios).

Every configuration runs for each seed (``seed-<s>/SETTING/METHOD``); the tables give
the mean ± std over the seeds, the plots the mean in a band of ± one std. All four
claims are empirical: :func:`figures` takes one seed's records to the numbers the
claims test, :func:`check` the seeds' numbers to the claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from nettrain.config import RunConfig, load_config
from nettrain.report.plots import plot_seeds
from nettrain.reproduce.claims import EMPIRICAL, Claim, Measured, better, quotient, spread
from nettrain.reproduce.runner import Request, run_seeds, seed_tables

Records = list[dict[str, Any]]

BASE: dict[str, Any] = {
    "agents": 10,
    "topology": "erdos_renyi",
    "model": "mlp",
    "hidden": (16,),
    "batch_size": 0,  # full local batch, as in the paper
    "step0": 0.5,
    "step_decay": 0.01,
    "progress": False,
}
CENTRAL: dict[str, Any] = {"topology": "complete", "weights": "uniform"}
OBJECTIVE_TOL = 0.01
ERROR_POINTS = 0.01
MIN_SPARSITY = 0.5
BLOCK_SLOWDOWN = 1.10


@dataclass(frozen=True)
class Setting:
    name: str
    title: str
    overrides: dict[str, Any]
    surrogates: tuple[str, ...]
    rounds: tuple[int, int]  # (quick, full)
    dgd: bool = True
    blocks: tuple[str, ...] = field(default=())  # surrogates also run with 2 blocks

    def methods(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.surrogates:
            out[f"NEXT {s}"] = {"algorithm": "next", "surrogate": s}
        for s in self.blocks:
            out[f"NEXT {s} B=2"] = {"algorithm": "next", "surrogate": s, "blocks": 2}
        if self.dgd:
            out["DGD"] = {"algorithm": "dgd", "surrogate": "linear"}
        for s in self.surrogates:
            out[f"central {s}"] = {"algorithm": "next", "surrogate": s} | CENTRAL
        return out


CLASSIFICATION = {"loss": "cross_entropy", "prox_tau": 0.3}
DIGITS = CLASSIFICATION | {"dataset": "digits", "partition": "shards", "classes_per_agent": 2}
SETTINGS = (
    Setting(
        "diabetes",
        "diabetes: squared loss + l2",
        {"dataset": "diabetes", "loss": "squared", "regularizer": "l2", "reg_lambda": 1e-3}
        | {"prox_tau": 1.5},
        ("linear", "gauss_newton"),
        rounds=(600, 2000),
        blocks=("gauss_newton",),
    ),
    Setting(
        "breast_cancer",
        "breast cancer: cross-entropy + l2",
        CLASSIFICATION | {"dataset": "breast_cancer", "partition": "iid"}
        | {"regularizer": "l2", "reg_lambda": 1e-2},
        ("linear", "cross_entropy"),
        rounds=(600, 2000),
    ),
    Setting(
        "digits",
        "digits: cross-entropy + l2",
        DIGITS | {"regularizer": "l2", "reg_lambda": 1e-3},
        ("linear", "cross_entropy"),
        rounds=(300, 1500),
    ),
    Setting(
        "digits_l1",
        "digits: cross-entropy + l1",
        DIGITS | {"regularizer": "l1", "reg_lambda": 1.5e-3},
        ("linear",),
        rounds=(300, 1500),
        dgd=False,
    ),
)  # fmt: skip
PANELS = (
    ("objective", "social objective U(mean w)", True),
    ("stationarity", "stationarity ||prox-grad map||", True),
    ("test_error", "test error (mean model)", False),
    ("disagreement", "disagreement max_i ||w_i - mean w||", True),
    ("sparsity", "share of exact zeros in w~", False),
)


def plan(seed: int, quick: bool, overrides: Mapping[str, Any]) -> dict[str, RunConfig]:
    """One seed's runs, ``SETTING/METHOD`` -> config."""
    eval_every = 10 if quick else 25
    configs = {}
    for setting in SETTINGS:
        rounds = setting.rounds[0 if quick else 1]
        schedule = {"rounds": rounds, "eval_every": eval_every, "seed": seed}
        for label, extra in setting.methods().items():
            values = BASE | setting.overrides | extra | schedule
            configs[f"{setting.name}/{label}"] = load_config(values | dict(overrides))
    return configs


def reproduce(ask: Request) -> list[Claim]:
    """Run every setting as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`):
    run folders ``seed-<s>/SETTING/METHOD``; plots, ``summary.csv`` and ``aggregate.csv``
    in ``ask.out``."""

    def done(name: str, records: Records | None, note: str) -> None:
        if records is not None:  # always: no error is tolerated here
            shown = describe(final([with_test_error(r) for r in records]))
            ask.console.print(f"{name:40s} {shown} {note}")

    found = run_seeds(ask, plan, done)
    results = {seed: by_setting(runs) for seed, runs in found.items()}
    rows = [
        {"setting": setting, "method": label, "seed": seed, **final(records)}
        for seed, settings in results.items()
        for setting, runs in settings.items()
        for label, records in runs.items()
    ]
    seed_tables(ask, rows, ("setting", "method"), (*FINAL, "wall_time_s"), "NEXT: final values")
    for setting in SETTINGS:
        curves = {
            label: [results[seed][setting.name][label] for seed in results]
            for label in setting.methods()
        }
        plot_seeds(curves, PANELS, ask.out / f"{setting.name}.png", title=setting.title)
    return check([figures(settings) for settings in results.values()])


def by_setting(runs: Mapping[str, Records | None]) -> dict[str, dict[str, Records]]:
    """One seed's records, ``SETTING/METHOD`` -> records, as setting -> method -> records
    (with the test error)."""
    out: dict[str, dict[str, Records]] = {s.name: {} for s in SETTINGS}
    for name, records in runs.items():
        setting, label = name.split("/")
        out[setting][label] = [with_test_error(r) for r in records or []]
    return out


def with_test_error(record: dict[str, Any]) -> dict[str, Any]:
    if "test_accuracy" in record:
        return record | {"test_error": 1 - record["test_accuracy"]}
    return record | {"test_error": None}


FINAL = ("objective", "stationarity", "disagreement", "test_error", "test_loss", "sparsity")


def final(records: Records) -> dict[str, Any]:
    last = records[-1]
    return {k: last.get(k) for k in FINAL} | {"wall_time_s": last["wall_time_s"]}


def describe(row: Mapping[str, Any]) -> str:
    shown = [
        f"{k}={row[k]:.4g}"
        for k in ("objective", "stationarity", "test_error", "sparsity")
        if row.get(k) is not None
    ]
    return " ".join(shown) + f" ({row['wall_time_s']:.1f} s)"


def first_round_below(records: Records, target: float) -> int | None:
    return next((r["round"] for r in records if r["objective"] <= target), None)


@dataclass(frozen=True)
class Figures:
    """The numbers one seed's runs give the claims.

    ``gaps``: ``"SETTING NEXT s"`` -> ``(U_NEXT - U_central) / |U_central|`` (final
    objectives); ``stationarity``: setting -> final stationarity of (DGD, NEXT linear);
    ``sparsity``: share of exact zeros in the l1 run's sparse model (digits); ``errors``:
    test error of the l1 run's sparse model and of the l2 run's mean model (digits);
    ``block_rounds``: iterations of B = 1 and B = 2 to B = 1's final objective + 1%
    (diabetes, Gauss-Newton; ``None``: never)."""

    gaps: dict[str, float]
    stationarity: dict[str, tuple[float, float]]
    sparsity: float
    errors: tuple[float, float]
    block_rounds: tuple[int | None, int | None]

    @property
    def slowdown(self) -> float:
        """Iterations of B = 2 over those of B = 1 (infinite if either never got there)."""
        k_seq, k_par = self.block_rounds
        return k_par / k_seq if k_par is not None and k_seq else float("inf")


def figures(results: Mapping[str, Mapping[str, Records]]) -> Figures:
    """One seed's :class:`Figures` from its records (setting -> method -> records)."""
    last = {s: {m: recs[-1] for m, recs in runs.items()} for s, runs in results.items()}

    def gap(setting: str, method: str) -> float:
        central = last[setting][method.replace("NEXT", "central")]["objective"]
        return (last[setting][method]["objective"] - central) / abs(central)

    seq = results["diabetes"]["NEXT gauss_newton"]
    target = seq[-1]["objective"] * (1 + OBJECTIVE_TOL)
    par = results["diabetes"]["NEXT gauss_newton B=2"]
    return Figures(
        gaps={
            f"{s} {m}": gap(s, m)
            for s, runs in last.items()
            for m in runs
            if m.startswith("NEXT") and "B=" not in m
        },
        stationarity={
            s: (runs["DGD"]["stationarity"], runs["NEXT linear"]["stationarity"])
            for s, runs in last.items()
            if "DGD" in runs
        },
        sparsity=last["digits_l1"]["NEXT linear"]["sparse_zeros"],
        errors=(
            1 - last["digits_l1"]["NEXT linear"]["sparse_test_accuracy"],
            last["digits"]["NEXT linear"]["test_error"],
        ),
        block_rounds=(first_round_below(seq, target), first_round_below(par, target)),
    )


def check(seeds: Sequence[Figures]) -> list[Claim]:
    """The four claims (see the module docstring) from every seed's :class:`Figures`."""
    return [objective_claim(seeds), dgd_claim(seeds), l1_claim(seeds), block_claim(seeds)]


def objective_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 1: the worst mean gap to the centralised objective is at most 1%."""
    gaps = {k: [f.gaps[k] for f in seeds] for k in seeds[0].gaps}
    worst = max(gaps, key=lambda k: fmean(gaps[k]))
    shown = "; ".join(f"{k}: {spread([100 * v for v in vs], '+.3f')}%" for k, vs in gaps.items())
    return Claim(
        "NEXT reaches the centralised objective",
        EMPIRICAL,
        f"mean over the seeds of (U_NEXT - U_central) / U_central <= {OBJECTIVE_TOL:.0%} for "
        "every data set and surrogate (central: the same iteration with exact averaging)",
        Measured.of(gaps[worst], f"{shown} (worst {worst})"),
        fmean(gaps[worst]) <= OBJECTIVE_TOL,
    )


def dgd_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 2: DGD's final stationarity is above NEXT's by more than 2 standard errors."""
    settings = list(seeds[0].stationarity)
    dgd = {s: [f.stationarity[s][0] for f in seeds] for s in settings}
    nxt = {s: [f.stationarity[s][1] for f in seeds] for s in settings}
    ratios = {s: list(map(quotient, dgd[s], nxt[s])) for s in settings}
    compared = {s: better(nxt[s], dgd[s], lower=True) for s in settings}
    ratio = {s: quotient(fmean(dgd[s]), fmean(nxt[s])) for s in settings}
    weakest = min(settings, key=lambda s: (compared[s].holds, ratio[s]))  # failing first
    shown = "; ".join(
        f"{s}: ratio {ratio[s]:.2f}x (DGD {spread(dgd[s])}, "
        f"NEXT {spread(nxt[s])}; {compared[s].describe()})"
        for s in settings
    )
    return Claim(
        "DGD with the same step is slower or biased",
        EMPIRICAL,
        "final stationarity of DGD above that of NEXT (linear surrogate) on every data set: "
        "mean(DGD) - mean(NEXT) > 2 standard errors (the ratio DGD / NEXT of the means is "
        "stated; measured: the seeds' ratios on a data set where it fails, else on the one "
        "of the smallest ratio)",
        Measured.of(ratios[weakest], shown),
        all(c.holds for c in compared.values()),
    )


def l1_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 3: l1 has >= 50% zeros (mean) at a mean test error within 1 point of l2's."""
    sparsity = [f.sparsity for f in seeds]
    gaps = [f.errors[0] - f.errors[1] for f in seeds]
    zeros, gap = fmean(sparsity), fmean(gaps)
    return Claim(
        "l1 gives exact zeros at the accuracy of l2",
        EMPIRICAL,
        f"digits, means over the seeds: the l1 run's sparse model (w~ averaged, thresholded "
        f"at its share of zeros) has >= {MIN_SPARSITY:.0%} exact zeros and test error(l1 "
        f"sparse) - test error(l2) <= {ERROR_POINTS * 100:.0f} point (measured: the "
        "difference, in points)",
        Measured.of(
            [100 * g for g in gaps],
            f"zeros {spread([100 * v for v in sparsity], '.1f')}%; test error l1 sparse "
            f"{spread([100 * f.errors[0] for f in seeds], '.2f')}%, l2 "
            f"{spread([100 * f.errors[1] for f in seeds], '.2f')}% (difference "
            f"{spread([100 * g for g in gaps], '+.2f')} points)",
        ),
        zeros >= MIN_SPARSITY and gap <= ERROR_POINTS,
    )


def block_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 4: B = 2 needs at most 10% more iterations than B = 1 (mean ratio)."""
    slowdowns = [f.slowdown for f in seeds]
    rounds = ", ".join(f"{k_seq} / {k_par}" for k_seq, k_par in (f.block_rounds for f in seeds))
    return Claim(
        "the block-parallel step converges like the sequential one",
        EMPIRICAL,
        f"iterations of B=2 to reach the B=1 run's final objective + 1% <= "
        f"{BLOCK_SLOWDOWN:.2f} x those of B=1, mean over the seeds (diabetes, Gauss-Newton)",
        Measured.of(
            slowdowns,
            f"B=1 / B=2 iterations by seed: {rounds} (ratio {spread(slowdowns, '.2f')})",
        ),
        fmean(slowdowns) <= BLOCK_SLOWDOWN,
    )
