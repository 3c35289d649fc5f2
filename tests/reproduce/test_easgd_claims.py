"""The claim checks of `nettrain reproduce easgd`, on hand-made records and figures."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from nettrain.analysis import ADMM_ETAS, ADMM_RHOS, Verdict, sweep
from nettrain.analysis.stability import admm_instability, easgd_stability
from nettrain.reproduce.claims import BY_CONSTRUCTION, EMPIRICAL
from nettrain.reproduce.easgd import (
    BASELINES,
    CONVERGED,
    DIVERGED,
    METHODS,
    PLAIN,
    TAUS,
    UNSETTLED,
    WITH_A_MOMENTUM,
    WITH_MOMENTUM,
    Figures,
    RuntimeFigures,
    check,
    chosen_point,
    criterion,
    error_at,
    figures,
    grids,
    keys,
    plan,
    runtime_claim,
    scaling_plan,
)

Key = tuple[int, str, int]
SEEDS = 3
STABLE = (Verdict(True, "EASGD stable", 0.99), Verdict(True, "ADMM unstable", 1.02))
# claim 5 on hand-made figures: the linearised ADMM unstable, EASGD stable; the runtime
# ADMM 400 from the optimum (diverged), the runtime EASGD within 1e-4 of it
RUNTIME = RuntimeFigures(
    eta=5e-4,
    rho=5.0,
    alpha=2.5e-3,
    rounds=24000,
    admm_radius=1.0012,
    easgd_radius=0.9996,
    admm_distance=400.0,
    admm_spread=150.0,
    easgd_distance=1e-4,
)


def curve(final_error: float, *, tau: int = 1, vt: float = 1.0) -> list[dict[str, Any]]:
    """Four records; the error falls to ``final_error``; bytes per worker fall as 1/tau."""
    return [
        {
            "centre_test_error": final_error + 0.05 * (3 - k),
            "virtual_time_s": vt * (k + 1),
            "bytes_max_agent": 6400 * (k + 1) // tau,
        }
        for k in range(4)
    ]


def good(seed: int = 0) -> dict[Key, list[dict[str, Any]] | None]:
    """One seed's runs on which every claim holds; ``seed`` moves the errors a little."""
    jitter = 0.002 * seed
    runs: dict[Key, list[dict[str, Any]] | None] = {(4, "allreduce", 1): curve(0.20 + jitter)}
    runs[(4, "mallreduce", 1)] = curve(0.19 + jitter)
    for tau in TAUS:
        runs |= {(4, m, tau): curve(0.18 + jitter, tau=tau) for m in METHODS}
        runs[(4, "eamsgd", tau)] = curve(0.15 + jitter, tau=tau)
        runs[(4, "easgd", tau)] = curve(0.17 + 0.001 * tau + jitter, tau=tau)
        runs[(4, "downpour", tau)] = curve(0.16 + 0.005 * tau - jitter, tau=tau)
    return runs


def good_seeds() -> list[Figures]:
    return [figures(good(seed), 4.0) for seed in range(SEEDS)]


def test_figures_are_read_from_the_records() -> None:
    got = figures(good(1), 4.0)
    assert got.errors[("eamsgd", 4)] == pytest.approx(0.152)
    assert got.errors[("allreduce", 1)] == pytest.approx(0.202)
    assert got.growth["easgd"] == pytest.approx(0.063)
    assert got.growth["downpour"] == pytest.approx(0.315)
    assert got.byte_ratios[("eamsgd", 16)] == pytest.approx(16.0)
    early = figures(good(1), 2.5)  # the budget ends at the second record
    assert early.errors[("eamsgd", 4)] == pytest.approx(0.252)


def test_every_claim_holds_on_good_seeds_and_two_are_by_construction() -> None:
    claims = check(good_seeds(), STABLE, RUNTIME)
    assert [c.holds for c in claims] == [True] * 6
    kinds = [EMPIRICAL, EMPIRICAL, BY_CONSTRUCTION, BY_CONSTRUCTION, EMPIRICAL, EMPIRICAL]
    assert [c.kind for c in claims] == kinds
    # the closest to EAMSGD: DOWNPOUR at tau = 1, whose error falls as EAMSGD's rises
    assert claims[0].measured.per_seed == pytest.approx([0.015, 0.011, 0.007])
    assert "against downpour" in claims[0].measured.text
    assert claims[4].measured.mean == 1.02 and claims[4].measured.per_seed == []


def replaced(key: Key, records: list[dict[str, Any]] | None, seeds: range) -> list[Figures]:
    """Every seed's figures with ``records`` for ``key`` in the seeds of ``seeds``."""
    out = []
    for seed in range(SEEDS):
        runs = good(seed)
        if seed in seeds:
            runs[key] = records
        out.append(figures(runs, 4.0))
    return out


ALL = range(SEEDS)


@pytest.mark.parametrize(
    ("claim", "seeds"),
    [
        (0, replaced((4, "mdownpour", 4), curve(0.14, tau=4), ALL)),
        (0, replaced((4, "allreduce", 1), curve(0.10), ALL)),
        (0, replaced((4, "mallreduce", 1), curve(0.14), ALL)),  # the momentum baseline
        # EAMSGD lowest in two seeds of three, and in the means (0.152 against momentum
        # DOWNPOUR's 0.155), but one seed far below puts the difference within 2 se
        (0, replaced((4, "mdownpour", 4), curve(0.10, tau=4), range(1))),
        (1, replaced((4, "easgd", 64), curve(0.60, tau=64), ALL)),
        # EASGD's mean growth (0.185) below DOWNPOUR's (0.315), but within 2 se
        (1, replaced((4, "easgd", 64), curve(0.60, tau=64), range(1))),
        (2, replaced((4, "eamsgd", 16), curve(0.15, tau=4), range(1))),  # as much as tau = 4
        (2, replaced((4, "easgd", 16), None, range(1))),  # no ratio where a run diverged
    ],
)
def test_each_claim_fails_when_its_seeds_say_so(claim: int, seeds: list[Figures]) -> None:
    claims = check(seeds, STABLE, RUNTIME)
    assert not claims[claim].holds
    assert sum(c.holds for c in claims) == 5


@pytest.mark.parametrize("half", [0, 1])
def test_each_half_of_the_stability_claim_fails_on_its_verdict(half: int) -> None:
    verdicts = list(STABLE)
    verdicts[half] = Verdict(False, "no", 1.5)
    claims = check(good_seeds(), (verdicts[0], verdicts[1]), RUNTIME)
    assert [c.holds for c in claims[3:5]] == [half == 1, half == 0]
    assert claims[3 + half].measured.text == "no"


def test_one_seed_establishes_no_comparison() -> None:
    claims = check(good_seeds()[:1], STABLE, RUNTIME)
    assert [c.holds for c in claims] == [False, False, True, True, True, True]


def test_a_diverged_easgd_fails_its_growth_and_leaves_no_byte_ratio() -> None:
    claims = check(replaced((4, "easgd", 64), None, ALL), STABLE, RUNTIME)
    assert [c.holds for c in claims] == [True, False, False, True, True, True]
    assert claims[2].measured.per_seed == [None] * SEEDS


def test_a_diverged_downpour_counts_as_the_worse_degradation() -> None:
    seeds = replaced((4, "downpour", 64), None, ALL)
    assert [f.growth["downpour"] for f in seeds] == [1.0] * SEEDS
    assert check(seeds, STABLE, RUNTIME)[1].holds


def test_the_best_tau_is_the_one_of_the_lowest_mean() -> None:
    seeds = [dataclasses.replace(f, errors=f.errors | {("easgd", 16): 0.151}) for f in good_seeds()]
    claim = check(seeds, STABLE, RUNTIME)[0]
    assert "easgd (tau=16)" in claim.measured.text and "against easgd" in claim.measured.text


def test_error_at_the_budget_takes_the_last_record_within_it() -> None:
    records = curve(0.1)  # errors 0.25, 0.2, 0.15, 0.1 at times 1, 2, 3, 4
    assert error_at(records, 2.5) == pytest.approx(0.2)
    assert error_at(records, 0.5) == 1.0 and error_at(None, 9) == 1.0


def test_the_stability_verdicts_are_the_analysis_ones() -> None:
    """The two halves on real sweeps (the radii themselves are checked in tests/analysis)."""
    easgd = sweep("easgd", [0.1, 0.5], [0.1, 0.3], p=3)
    stable = easgd_stability(easgd)
    assert stable.holds and stable.radius < 1
    assert admm_instability(sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)).holds
    exact = admm_instability(sweep("admm-exact", ADMM_ETAS, ADMM_RHOS, p=3))
    assert not exact.holds and exact.radius <= 1


def test_the_runtime_claim_holds_on_a_diverging_admm_and_a_converging_easgd() -> None:
    claim = check(good_seeds(), STABLE, RUNTIME)[5]
    assert claim.holds and claim.kind == EMPIRICAL
    assert claim.measured.mean == 400.0 and claim.measured.per_seed == []
    assert "linearised radius 1.001200" in claim.measured.text
    assert "distance 0.0001" in claim.measured.text


@pytest.mark.parametrize(
    "change",
    [
        # an oscillating ADMM: near its start, but its centre swings by more than UNSETTLED
        {"admm_distance": 0.9, "admm_spread": 2 * UNSETTLED},
        # a diverging ADMM that has not yet grown tenfold still counts, by its spread
        {"admm_distance": DIVERGED / 2, "admm_spread": 1.0},
    ],
)
def test_the_runtime_claim_holds_on_an_oscillating_admm(change: dict[str, float]) -> None:
    assert runtime_claim(dataclasses.replace(RUNTIME, **change)).holds


@pytest.mark.parametrize(
    "change",
    [
        # ADMM converges too
        {"admm_distance": 1e-4, "admm_spread": 1e-5},
        # ADMM settles near its start, neither diverging nor swinging
        {"admm_distance": 0.9, "admm_spread": UNSETTLED / 2},
        # EASGD does not converge within the tolerance
        {"easgd_distance": 10 * CONVERGED},
        # EASGD diverged too (an infinite or NaN distance is not converged)
        {"easgd_distance": float("inf")},
        {"easgd_distance": float("nan")},
        # the setting is not one the analysis calls unstable for ADMM ...
        {"admm_radius": 0.999},
        {"admm_radius": 1.0},
        # ... or stable for EASGD
        {"easgd_radius": 1.0},
    ],
)
def test_the_runtime_claim_fails_on_its_figures(change: dict[str, float]) -> None:
    claim = runtime_claim(dataclasses.replace(RUNTIME, **change))
    assert not claim.holds
    assert check(good_seeds(), STABLE, dataclasses.replace(RUNTIME, **change))[5] == claim


def test_every_tuned_run_has_the_same_budget_and_the_values_are_the_grid_s() -> None:
    """Eight runs for every method, both baselines and every tau: the plain ones at eight
    rates with momentum 0, the momentum ones at four rates times two momenta, whose
    effective steps ``lr / (1 - momentum)`` span the plain rates' range within a factor
    of two; ``--set lr`` or ``momentum`` does not move the grid; a validation split is
    held out; the scaling runs take the point their method chose with 4 workers at the
    same tau."""
    assert len(PLAIN.points) == len(WITH_MOMENTUM.points) == 8
    plain = [lr for lr, _ in PLAIN.points]
    effective = [lr / (1 - m) for lr, m in WITH_MOMENTUM.points]
    assert max(effective) == pytest.approx(max(plain))
    assert min(plain) <= min(effective) <= 2 * min(plain)
    configs = plan(0, True, {"lr": 0.3, "momentum": 0.7})
    assert len(configs) == len(keys()) * 8 == 18 * 8
    for run, names in grids().items():
        grid = WITH_MOMENTUM if run.split("_")[1] in WITH_A_MOMENTUM else PLAIN
        assert [(configs[n].lr, configs[n].momentum) for n in names] == list(grid.points), run
        assert {configs[name].validation for name in names} == {0.1}
    assert configs["n4_mallreduce_tau1 lr=0.02 momentum=0.9"].momentum == 0.9
    assert configs["n4_eamsgd_tau16 lr=0.02 momentum=0.5"].tau == 16
    assert configs["n4_easgd_tau16 lr=0.5 momentum=0"].algorithm == "easgd_async"
    chosen = {run: names[k % 8] for k, (run, names) in enumerate(grids().items())}
    # easgd tau 4 is the 7th tuned run (after the two baselines and tau 1's four methods)
    assert chosen_point(chosen, (4, "easgd", 4)) == {"lr": 0.2, "momentum": 0.0}
    assert chosen_point(chosen, (4, "eamsgd", 4)) == {"lr": 0.05, "momentum": 0.9}  # its 8th
    scaled = scaling_plan(chosen)(0, True, {})
    assert (scaled["n16_easgd_tau4"].lr, scaled["n16_easgd_tau4"].agents) == (0.2, 16)
    assert (scaled["n8_eamsgd_tau4"].lr, scaled["n8_eamsgd_tau4"].momentum) == (0.05, 0.9)


def test_the_criterion_is_the_centres_final_validation_loss() -> None:
    """The centre's where the run has one, else the model's (all-reduce); never a test
    figure; infinite without either."""
    assert criterion([{"val_loss": 9.0, "centre_val_loss": 0.4, "centre_test_loss": 0.1}]) == 0.4
    assert criterion([{"val_loss": 0.5, "test_loss": 0.1}]) == 0.5
    assert criterion([{"test_loss": 0.1}]) == math.inf


def test_the_all_reduce_baselines_warm_up_over_5_percent_of_the_rounds() -> None:
    """Goyal et al.'s large-batch treatment for both baselines (448 rounds: 22); the
    workers' methods have no warm-up."""
    configs = plan(0, True, {})
    warmups = {configs[name].lr_warmup for b in BASELINES for name in grids()[f"n4_{b}_tau1"]}
    assert warmups == {22}
    assert configs["n4_easgd_tau4 lr=0.05 momentum=0"].lr_warmup == 0
