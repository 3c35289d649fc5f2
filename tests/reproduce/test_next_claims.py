"""The claim checks of `nettrain reproduce next`, on hand-made records.

The experiment itself takes minutes (`nettrain reproduce next --quick`); here each
claim is shown to hold on records that satisfy it and to fail on records that do not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from nettrain.reproduce.claims import Claim, write_claims
from nettrain.reproduce.next_sca import SETTINGS, check


def record(round_: int = 100, **values: Any) -> dict[str, Any]:
    base = {"round": round_, "objective": 1.0, "stationarity": 0.01, "test_error": 0.05}
    return base | {"sparsity": 0.0} | values


def good_results() -> dict[str, dict[str, list[dict[str, Any]]]]:
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for setting in SETTINGS:
        results[setting.name] = {m: [record()] for m in setting.methods()}
        if setting.dgd:
            results[setting.name]["DGD"] = [record(stationarity=0.03)]
    results["digits_l1"]["NEXT linear"] = [record(sparsity=0.7, test_error=0.055)]
    curve = [record(10, objective=2.0), record(50, objective=1.005), record(100)]
    results["diabetes"]["NEXT gauss_newton"] = curve
    results["diabetes"]["NEXT gauss_newton B=2"] = curve
    return results


def test_every_claim_holds_on_good_records() -> None:
    claims = check(good_results())
    assert len(claims) == 4
    assert all(c.holds for c in claims), [c for c in claims if not c.holds]


@pytest.mark.parametrize(
    ("claim", "setting", "method", "change"),
    [
        (0, "digits", "NEXT cross_entropy", {"objective": 1.02}),
        (1, "breast_cancer", "DGD", {"stationarity": 0.009}),
        (2, "digits_l1", "NEXT linear", {"sparsity": 0.4, "test_error": 0.055}),
        (2, "digits_l1", "NEXT linear", {"sparsity": 0.7, "test_error": 0.07}),
    ],
)
def test_each_claim_fails_when_its_records_say_so(
    claim: int, setting: str, method: str, change: dict[str, float]
) -> None:
    results = good_results()
    results[setting][method] = [record(**change)]
    claims = check(results)
    assert not claims[claim].holds
    assert sum(c.holds for c in claims) == 3


def test_a_slower_block_parallel_run_fails_its_claim() -> None:
    results = good_results()
    slow = [record(10, objective=2.0), record(50, objective=1.5), record(100)]
    results["diabetes"]["NEXT gauss_newton B=2"] = slow
    claims = check(results)
    assert not claims[3].holds
    assert "B=1: 50, B=2: 100" in claims[3].measured


def test_claims_json_is_a_list_of_four_keyed_objects(tmp_path) -> None:
    path = write_claims([Claim("c", "e", "m", True)], tmp_path / "claims.json")
    assert json.loads(path.read_text()) == [
        {"claim": "c", "expected": "e", "measured": "m", "holds": True}
    ]
