"""The claim checks of `nettrain reproduce next`, on hand-made records and figures.

The experiment itself takes minutes (`nettrain reproduce next --quick`); here each
claim is shown to hold on seeds that satisfy it and to fail on seeds that do not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from nettrain.reproduce.claims import EMPIRICAL
from nettrain.reproduce.next_sca import SETTINGS, Figures, check, figures

SEEDS = 3


def record(round_: int = 100, **values: Any) -> dict[str, Any]:
    base = {"round": round_, "objective": 1.0, "stationarity": 0.01, "test_error": 0.05}
    return base | {"sparsity": 0.0} | values


def good_results(seed: int = 0) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """One seed's records on which every claim holds; ``seed`` moves the figures a little."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for setting in SETTINGS:
        results[setting.name] = {m: [record()] for m in setting.methods()}
        if setting.dgd:
            results[setting.name]["DGD"] = [record(stationarity=0.03 + 0.001 * seed)]
    # the l1 run's claim reads its sparse model, not the dense mean model nor w~'s zeros
    l1 = record(sparsity=0.9, sparse_zeros=0.7 - 0.01 * seed, test_error=0.3)
    l1["sparse_test_accuracy"] = 0.945
    results["digits_l1"]["NEXT linear"] = [l1]
    curve = [record(10, objective=2.0), record(50, objective=1.005), record(100)]
    results["diabetes"]["NEXT gauss_newton"] = curve
    results["diabetes"]["NEXT gauss_newton B=2"] = curve
    return results


def good_seeds() -> list[Figures]:
    return [figures(good_results(seed)) for seed in range(SEEDS)]


def test_figures_are_read_from_the_records() -> None:
    got = figures(good_results(1))
    assert got.gaps["digits NEXT cross_entropy"] == 0.0
    assert got.stationarity["breast_cancer"] == pytest.approx((0.031, 0.01))
    assert "digits_l1" not in got.stationarity  # no DGD there
    assert (got.sparsity, got.errors) == (pytest.approx(0.69), pytest.approx((0.055, 0.05)))
    assert got.block_rounds == (50, 50) and got.slowdown == 1.0


def test_every_claim_holds_on_good_seeds() -> None:
    claims = check(good_seeds())
    assert len(claims) == 4
    assert all(c.holds for c in claims), [c for c in claims if not c.holds]
    assert {c.kind for c in claims} == {EMPIRICAL}
    assert all(len(c.measured.per_seed) == SEEDS for c in claims)


def with_seed(seeds: list[Figures], k: int, **change: Any) -> list[Figures]:
    return [dataclasses.replace(f, **change) if i == k else f for i, f in enumerate(seeds)]


def everywhere(seeds: list[Figures], **change: Any) -> list[Figures]:
    return [dataclasses.replace(f, **change) for f in seeds]


def gaps(key: str, value: float) -> dict[str, float]:
    return good_seeds()[0].gaps | {key: value}


def stationarity(setting: str, dgd: float, nxt: float = 0.01) -> dict[str, tuple[float, float]]:
    return good_seeds()[0].stationarity | {setting: (dgd, nxt)}


@pytest.mark.parametrize(
    ("claim", "seeds"),
    [
        # NEXT 2% above its centralised counterpart in every seed
        (0, everywhere(good_seeds(), gaps=gaps("digits NEXT cross_entropy", 0.02))),
        # 4% in one seed of three: the mean, 1.33%, is above 1%
        (0, with_seed(good_seeds(), 1, gaps=gaps("diabetes NEXT linear", 0.04))),
        # DGD below NEXT on one data set
        (1, everywhere(good_seeds(), stationarity=stationarity("breast_cancer", 0.009))),
        # DGD above NEXT in every seed, but the difference of the means (0.014) is within
        # 2 se (0.0175): DGD 0.030, 0.031, 0.005; NEXT 0.010, 0.010, 0.004
        (1, with_seed(good_seeds(), 2, stationarity=stationarity("digits", 0.005, 0.004))),
        (2, everywhere(good_seeds(), sparsity=0.4)),
        (2, everywhere(good_seeds(), errors=(0.07, 0.05))),  # 2 points worse than l2
        (3, everywhere(good_seeds(), block_rounds=(50, 100))),  # twice the iterations
        (3, with_seed(good_seeds(), 0, block_rounds=(50, None))),  # B=2 never got there
    ],
)
def test_each_claim_fails_when_its_seeds_say_so(claim: int, seeds: list[Figures]) -> None:
    claims = check(seeds)
    assert not claims[claim].holds
    assert sum(c.holds for c in claims) == 3


def test_the_dgd_claim_states_the_ratio_and_needs_more_than_one_seed() -> None:
    claims = check(good_seeds())
    dgd = claims[1].measured
    assert dgd.per_seed == pytest.approx([3.0, 3.1, 3.2])  # every data set alike: the first
    assert "ratio 3.10x" in dgd.text
    noisy = with_seed(good_seeds(), 2, stationarity=stationarity("digits", 0.005, 0.004))
    assert check(noisy)[1].measured.per_seed == pytest.approx([3.0, 3.1, 1.25])  # digits
    assert not check(good_seeds()[:1])[1].holds  # one seed: no standard error
    assert "one seed" in check(good_seeds()[:1])[1].measured.text


def test_a_slower_block_parallel_run_is_read_from_its_curve() -> None:
    results = good_results()
    slow = [record(10, objective=2.0), record(50, objective=1.5), record(100)]
    results["diabetes"]["NEXT gauss_newton B=2"] = slow
    assert figures(results).block_rounds == (50, 100)
    claim = check([figures(results)] * SEEDS)[3]
    assert not claim.holds and claim.measured.per_seed == [2.0] * SEEDS
    assert "50 / 100" in claim.measured.text
