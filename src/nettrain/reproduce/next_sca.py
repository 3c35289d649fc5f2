"""``nettrain reproduce next``: the claims of Scardapane and Di Lorenzo (2017) at small scale.

10 agents on an Erdős–Rényi graph train a one-hidden-layer MLP (16 units) with full
local batches on scikit-learn's diabetes (squared loss + l2), breast cancer
(cross-entropy + l2), digits (cross-entropy + l2, label-skewed shards: two classes
per agent) and digits with l1. Methods: NEXT
with each surrogate that fits the loss, DGD (no tracking) and, for every
surrogate, its centralised counterpart: the same iteration on the complete graph with
uniform weights, where every agent holds the exact average after each round (for the
linear surrogate that is centralised full-batch proximal gradient with step
``alpha[k] / tau``). Checked:

1. NEXT's final social objective is within 1% of its centralised counterpart's (mean
   over the seeds).
2. Equal tuning: DGD and NEXT (linear surrogate) each pick ``step0`` from the same grid
   (:data:`STEPS`, one run per point, :mod:`~nettrain.reproduce.tuning`) by their own
   final training objective ``U`` (the paper's optimisation criterion; never the test
   set). With those steps, NEXT reaches the centralised linear run's final stationarity
   x 1.1 (:data:`LEVEL_TOL`) at least 2x sooner, in iterations, than DGD, or DGD stalls
   at a bias NEXT does not have (its final stationarity above that level, NEXT's below,
   or it never reaches the level): the mean over the seeds of the speed-up (DGD's
   iterations / NEXT's, infinite for a stalled DGD, 0 when NEXT never reaches the
   level) is >= 2 on every data set. The chosen steps are printed and written to
   ``tuning.csv``.
3. l1 gives at least 50% exact zeros at a test error within 1 point of l2 (means): the
   l1 run's sparse model (the agents' surrogate minimisers ``w~`` averaged and
   thresholded at their share of zeros, the record's ``sparse_*`` fields) against the
   l2 run's mean model; the zeros are counted in that sparse model.
4. The block-parallel step (2 blocks, block-Jacobi Gauss-Newton) reaches the
   sequential run's objective (within 1%) in at most 10% more iterations (mean of the
   seeds' ratios) and in less wall time: that ratio times the ratio of seconds per
   iteration, B = 1 and B = 2 each timed alone after the other runs (40 iterations,
   twice in turn, medians; :func:`block_timing`).

Every configuration runs for each seed (``seed-<s>/SETTING/METHOD``; the grid points of
claim 2 as ``METHOD step0=V``, the point at the base step being ``METHOD`` itself); the
tables give the mean ± std over the seeds, the plots the mean in a band of ± one std.
All four claims are empirical: :func:`figures` takes one seed's records to the numbers
the claims test, :func:`check` the seeds' numbers to the claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, median
from typing import Any

from nettrain.config import RunConfig, load_config
from nettrain.errors import DivergenceError
from nettrain.experiment import run
from nettrain.report.plots import plot_seeds
from nettrain.reproduce.claims import EMPIRICAL, Claim, Measured, quotient, spread
from nettrain.reproduce.runner import Request, finished_records, run_seeds, seed_tables
from nettrain.reproduce.tuning import Grid, Tuning, final, pick, write_tuning

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
BLOCK_TIMING_ROUNDS = 40  # iterations of each block-parallel timing run
TIMING_FOLDER = "block-timing"  # under --out: the timing runs
STEPS = {True: (0.25, 0.5, 1.0), False: (0.1, 0.25, 0.5, 1.0)}  # claim 2's grid: quick, full
TUNED = ("DGD", "NEXT linear")  # the methods claim 2 tunes, each on the same grid
TUNED_SUFFIX = " tuned"  # results[setting]["DGD tuned"]: the chosen point's records
LEVEL_TOL = 1.1  # claim 2's level: the centralised run's final stationarity x this
MIN_SPEEDUP = 2.0


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
        methods = setting.methods()
        for label, extra in methods.items():
            values = BASE | setting.overrides | extra | schedule
            configs[f"{setting.name}/{label}"] = load_config(values | dict(overrides))
        for method in TUNED if setting.dgd else ():
            base = configs[f"{setting.name}/{method}"].to_dict()
            for step in STEPS[quick]:
                if step != base["step0"]:  # the base step's point is the method's own run
                    configs[f"{setting.name}/{grid_label(method, step)}"] = load_config(
                        base | {"step0": step}
                    )
    return configs


def grid_label(method: str, step: float) -> str:
    """The run of ``method`` at grid point ``step`` (other than the base step)."""
    return f"{method} step0={step:g}"


def tuned(runs: Mapping[str, Records | None], steps: Mapping[str, float], quick: bool) -> Tuning:
    """Claim 2's tuning of one seed and setting: each of :data:`TUNED` picks the point of
    :data:`STEPS` of the smallest final training objective ``U`` (``runs``: label ->
    records; ``steps``: label -> its ``step0``)."""
    grid = Grid.of(step0=STEPS[quick])
    results = {m: [runs[label_at(m, step, steps)] for step in STEPS[quick]] for m in TUNED}
    return pick(results, grid, final("objective"))


def label_at(method: str, step: float, steps: Mapping[str, float]) -> str:
    """The label of ``method``'s run at ``step``: the method's own run at its base step."""
    return method if steps[method] == step else grid_label(method, step)


def reproduce(ask: Request) -> list[Claim]:
    """Run every setting as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`):
    run folders ``seed-<s>/SETTING/METHOD``; plots, ``summary.csv``, ``aggregate.csv``
    and claim 2's ``tuning.csv`` in ``ask.out``. A grid point that diverges is never
    chosen; any other run that diverges stops the reproduction."""

    def done(name: str, records: Records | None, note: str) -> None:
        if records is None:  # a diverged grid point: note is the error
            ask.console.print(f"{name:40s} diverged: {note}")
        else:
            shown = describe(final_row([with_test_error(r) for r in records]))
            ask.console.print(f"{name:40s} {shown} {note}")

    found = run_seeds(ask, plan, done, tolerate=(DivergenceError,))
    steps = {
        seed: {n: c.step0 for n, c in plan(seed, ask.quick, ask.overrides).items()}
        for seed in found
    }
    results = {seed: by_setting(runs) for seed, runs in found.items()}
    rows = [
        {"setting": setting, "method": label, "seed": seed}
        | {"step0": steps[seed][f"{setting}/{label}"], **final_row(records)}
        for seed, settings in results.items()
        for setting, runs in settings.items()
        for label, records in runs.items()
        if records
    ]
    seed_tables(ask, rows, ("setting", "method"), (*FINAL, "wall_time_s"), "NEXT: final values")
    tunings = tune_seeds(found, steps, ask.quick)
    write_tuning_csv(tunings, ask)
    for (seed, setting), tuning in tunings.items():
        for method, values in tuning.chosen.items():
            label = label_at(method, values["step0"], settings_steps(steps[seed], setting))
            results[seed][setting][method + TUNED_SUFFIX] = results[seed][setting][label]
    for setting in SETTINGS:
        labels = list(setting.methods()) + [m + TUNED_SUFFIX for m in TUNED if setting.dgd]
        curves = {
            label: [results[seed][setting.name][label] for seed in results] for label in labels
        }
        plot_seeds(curves, PANELS, ask.out / f"{setting.name}.png", title=setting.title)
    seconds = block_timing(plan(min(found), ask.quick, ask.overrides), ask.out)
    ask.console.print(
        f"block-parallel timing, seconds per iteration: B=1 {seconds[0]:.4g}, B=2 {seconds[1]:.4g}"
    )
    return check([figures(settings) for settings in results.values()], seconds)


def settings_steps(steps: Mapping[str, float], setting: str) -> dict[str, float]:
    """One setting's ``step0`` by label, from one seed's ``SETTING/LABEL`` -> step."""
    return {n.split("/")[1]: v for n, v in steps.items() if n.startswith(f"{setting}/")}


def tune_seeds(
    found: Mapping[int, Mapping[str, Records | None]],
    steps: Mapping[int, Mapping[str, float]],
    quick: bool,
) -> dict[tuple[int, str], Tuning]:
    """Claim 2's tuning (:func:`tuned`) of every seed and setting with DGD."""
    out = {}
    for seed, runs in found.items():
        for setting in (s for s in SETTINGS if s.dgd):
            mine = {n.split("/")[1]: r for n, r in runs.items() if n.startswith(f"{setting.name}/")}
            out[seed, setting.name] = tuned(mine, settings_steps(steps[seed], setting.name), quick)
    return out


def write_tuning_csv(tunings: Mapping[tuple[int, str], Tuning], ask: Request) -> None:
    """``tuning.csv`` (a row per seed, setting, method and grid point) and the chosen
    steps on the console."""
    rows = [
        {"seed": seed, "setting": setting} | row
        for (seed, setting), tuning in tunings.items()
        for row in tuning.rows
    ]
    write_tuning(Tuning({}, rows, "final objective"), ask.out / "tuning.csv")
    ask.console.print(
        f"claim 2, step0 from {list(STEPS[ask.quick])} by the final training objective U:"
    )
    for (seed, setting), tuning in tunings.items():
        ask.console.print(f"  seed {seed} {setting:14s} {tuning.describe()}")


def by_setting(runs: Mapping[str, Records | None]) -> dict[str, dict[str, Records]]:
    """One seed's records, ``SETTING/METHOD`` -> records, as setting -> method -> records
    (with the test error). A diverged grid point of claim 2 gets no records (``[]``); any
    other diverged run is a DivergenceError."""
    out: dict[str, dict[str, Records]] = {s.name: {} for s in SETTINGS}
    for name, records in runs.items():
        setting, label = name.split("/")
        if records is None and "step0=" not in label:
            raise DivergenceError(f"{name} diverged; its claims cannot be checked")
        out[setting][label] = [with_test_error(r) for r in records or []]
    return out


def with_test_error(record: dict[str, Any]) -> dict[str, Any]:
    if "test_accuracy" in record:
        return record | {"test_error": 1 - record["test_accuracy"]}
    return record | {"test_error": None}


FINAL = ("objective", "stationarity", "disagreement", "test_error", "test_loss", "sparsity")


def final_row(records: Records) -> dict[str, Any]:
    last = records[-1]
    return {k: last.get(k) for k in FINAL} | {"wall_time_s": last["wall_time_s"]}


def describe(row: Mapping[str, Any]) -> str:
    shown = [
        f"{k}={row[k]:.4g}"
        for k in ("objective", "stationarity", "test_error", "sparsity")
        if row.get(k) is not None
    ]
    return " ".join(shown) + f" ({row['wall_time_s']:.1f} s)"


def first_round_below(records: Records, target: float, key: str = "objective") -> int | None:
    """The first record's round where ``key`` is at most ``target`` (``None``: never)."""
    return next((r["round"] for r in records if r[key] <= target), None)


@dataclass(frozen=True)
class Race:
    """Claim 2 on one data set and seed: the ``level`` (the centralised linear run's final
    stationarity x :data:`LEVEL_TOL`), the first iterations at which the tuned DGD and
    NEXT runs reach it (``None``: never) and their final stationarity."""

    level: float
    dgd_rounds: int | None
    next_rounds: int | None
    dgd_final: float
    next_final: float

    @property
    def speedup(self) -> float:
        """DGD's iterations over NEXT's; infinite when DGD stalls at a bias NEXT does
        not have (DGD never reaches the level, or ends above it while NEXT ends
        below it), 0 when NEXT never reaches it."""
        if self.next_rounds is None:
            return 0.0
        biased = self.dgd_final > self.level and self.next_final <= self.level
        if biased or self.dgd_rounds is None:
            return math.inf
        return self.dgd_rounds / max(self.next_rounds, 1)

    @classmethod
    def of(cls, central: Records, dgd: Records, nxt: Records) -> Race:
        """The race of the tuned ``dgd`` and ``nxt`` runs to ``central``'s level."""
        level = central[-1]["stationarity"] * LEVEL_TOL
        return cls(
            level,
            first_round_below(dgd, level, "stationarity"),
            first_round_below(nxt, level, "stationarity"),
            dgd[-1]["stationarity"],
            nxt[-1]["stationarity"],
        )


@dataclass(frozen=True)
class Figures:
    """The numbers one seed's runs give the claims.

    ``gaps``: ``"SETTING NEXT s"`` -> ``(U_NEXT - U_central) / |U_central|`` (final
    objectives); ``races``: setting -> claim 2's :class:`Race` of the tuned DGD and NEXT
    linear runs (``"DGD tuned"``, ``"NEXT linear tuned"``);
    ``sparsity``: share of exact zeros in the l1 run's sparse model (digits); ``errors``:
    test error of the l1 run's sparse model and of the l2 run's mean model (digits);
    ``block_rounds``: iterations of B = 1 and B = 2 to B = 1's final objective + 1%
    (diabetes, Gauss-Newton; ``None``: never)."""

    gaps: dict[str, float]
    races: dict[str, Race]
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
    last = {s: {m: recs[-1] for m, recs in runs.items() if recs} for s, runs in results.items()}
    surrogates = {s.name: [f"NEXT {x}" for x in s.surrogates] for s in SETTINGS}

    def gap(setting: str, method: str) -> float:
        central = last[setting][method.replace("NEXT", "central")]["objective"]
        return (last[setting][method]["objective"] - central) / abs(central)

    seq = results["diabetes"]["NEXT gauss_newton"]
    target = seq[-1]["objective"] * (1 + OBJECTIVE_TOL)
    par = results["diabetes"]["NEXT gauss_newton B=2"]
    return Figures(
        gaps={
            f"{s} {m}": gap(s, m) for s, runs in last.items() for m in surrogates[s] if m in runs
        },
        races={
            s: Race.of(
                runs["central linear"],
                runs["DGD" + TUNED_SUFFIX],
                runs["NEXT linear" + TUNED_SUFFIX],
            )
            for s, runs in results.items()
            if "DGD" + TUNED_SUFFIX in runs
        },
        sparsity=last["digits_l1"]["NEXT linear"]["sparse_zeros"],
        errors=(
            1 - last["digits_l1"]["NEXT linear"]["sparse_test_accuracy"],
            last["digits"]["NEXT linear"]["test_error"],
        ),
        block_rounds=(first_round_below(seq, target), first_round_below(par, target)),
    )


def check(seeds: Sequence[Figures], block_seconds: tuple[float, float]) -> list[Claim]:
    """The four claims (see the module docstring) from every seed's :class:`Figures` and
    the block-parallel timing (:func:`block_timing`)."""
    claims = [objective_claim(seeds), dgd_claim(seeds), l1_claim(seeds)]
    return [*claims, block_claim(seeds, block_seconds)]


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
    """Claim 2: with equally tuned steps, NEXT reaches the centralised stationarity level
    at least 2x sooner than DGD, or DGD stalls (mean speed-up over the seeds >= 2 on
    every data set; see :class:`Race`)."""
    settings = list(seeds[0].races)
    speedups = {s: [f.races[s].speedup for f in seeds] for s in settings}
    mean = {s: fmean(v) for s, v in speedups.items()}
    weakest = min(settings, key=lambda s: mean[s])

    def race(f: Figures, s: str) -> str:
        r = f.races[s]
        dgd = "never" if r.dgd_rounds is None else str(r.dgd_rounds)
        nxt = "never" if r.next_rounds is None else str(r.next_rounds)
        return f"{dgd}/{nxt} (final {r.dgd_final:.3g}/{r.next_final:.3g} vs {r.level:.3g})"

    shown = "; ".join(
        f"{s}: speed-up {spread(speedups[s], '.2f')}, DGD/NEXT iterations "
        + ", ".join(race(f, s) for f in seeds)
        for s in settings
    )
    return Claim(
        "NEXT beats DGD when both are tuned alike",
        EMPIRICAL,
        f"DGD and NEXT (linear) each pick step0 from {list(STEPS[True])} (quick) / "
        f"{list(STEPS[False])} (full) by their own final training objective U; then NEXT "
        f"reaches the centralised linear run's final stationarity x {LEVEL_TOL:g} at least "
        f"{MIN_SPEEDUP:g}x sooner (iterations) than DGD, or DGD stalls at a bias NEXT does "
        "not have (speed-up infinite): mean over the seeds of the speed-up >= "
        f"{MIN_SPEEDUP:g} on every data set (measured: the seeds' speed-ups on the data set "
        "of the smallest mean; infinite shown as -)",
        Measured.of(speedups[weakest], shown),
        all(m >= MIN_SPEEDUP for m in mean.values()),
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


def block_claim(seeds: Sequence[Figures], seconds: tuple[float, float]) -> Claim:
    """Claim 4: B = 2 needs at most 10% more iterations than B = 1 (mean ratio) and less
    wall time: that ratio times B = 2's seconds per iteration over B = 1's (``seconds``,
    :func:`block_timing`) is below 1."""
    slowdowns = [f.slowdown for f in seeds]
    rounds = ", ".join(f"{k_seq} / {k_par}" for k_seq, k_par in (f.block_rounds for f in seeds))
    per_iteration = quotient(seconds[1], seconds[0])
    time_ratio = fmean(slowdowns) * per_iteration
    return Claim(
        "the block-parallel step converges like the sequential one, and sooner",
        EMPIRICAL,
        f"iterations of B=2 to reach the B=1 run's final objective + 1% <= "
        f"{BLOCK_SLOWDOWN:.2f} x those of B=1, mean over the seeds, and its wall time to it "
        "below B=1's: the iteration ratio x the ratio of seconds per iteration, each timed "
        "alone (diabetes, Gauss-Newton)",
        Measured.of(
            slowdowns,
            f"B=1 / B=2 iterations by seed: {rounds} (ratio {spread(slowdowns, '.2f')}); "
            f"seconds per iteration {seconds[0]:.4g} / {seconds[1]:.4g}: wall time B=2 / "
            f"B=1 {time_ratio:.2f}",
        ),
        fmean(slowdowns) <= BLOCK_SLOWDOWN and time_ratio < 1.0,
    )


TIMED = {"B1": "diabetes/NEXT gauss_newton", "B2": "diabetes/NEXT gauss_newton B=2"}


def timing_order(reps: int = 2) -> list[tuple[str, str]]:
    """:func:`block_timing`'s runs in the order they run: ``(B1 or B2, folder under
    --out)``, every second pass in reverse."""
    names = list(TIMED)
    order = [(k, names if k % 2 == 0 else names[::-1]) for k in range(reps)]
    return [(name, f"{TIMING_FOLDER}/{name}-{k}") for k, turn in order for name in turn]


def timing_runs(reps: int = 2) -> list[str]:
    """The folders of :func:`block_timing`'s runs under ``--out``, in the order they run."""
    return [folder for _, folder in timing_order(reps)]


def block_timing(
    configs: Mapping[str, RunConfig],
    out: Path,
    rounds: int = BLOCK_TIMING_ROUNDS,
    reps: int = 2,
) -> tuple[float, float]:
    """Seconds per iteration of B = 1 and of B = 2 (``configs``: a seed's plan), each run
    alone for ``rounds`` iterations, in turn ``reps`` times (the second pass in reverse
    order; run folders :func:`timing_runs` under ``out``, kept once finished as every
    run of a reproduction is), the
    median of each: the time between the run's first record and its last, one
    evaluation apart, so start-up is left out."""
    times: dict[str, list[float]] = {name: [] for name in TIMED}
    for name, folder in timing_order(reps):
        values = configs[TIMED[name]].to_dict() | {"rounds": rounds, "eval_every": rounds}
        cfg = load_config(values)
        records = finished_records(out / folder, cfg) or run(cfg, out / folder).records
        times[name].append(records[-1]["wall_time_s"] - records[0]["wall_time_s"])
    seq, par = (median(times[name]) / rounds for name in TIMED)
    return seq, par
