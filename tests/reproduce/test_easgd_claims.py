"""The claim checks of `nettrain reproduce easgd`, on hand-made records."""

from __future__ import annotations

from typing import Any

import pytest

from nettrain.analysis import sweep
from nettrain.reproduce.easgd import METHODS, TAUS, check, error_at

Key = tuple[int, str, int]


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


def good() -> dict[Key, list[dict[str, Any]] | None]:
    runs: dict[Key, list[dict[str, Any]] | None] = {(4, "allreduce", 1): curve(0.20)}
    for tau in TAUS:
        runs |= {(4, m, tau): curve(0.18, tau=tau) for m in METHODS}
        runs[(4, "eamsgd", tau)] = curve(0.15, tau=tau)
        runs[(4, "easgd", tau)] = curve(0.17 + 0.001 * tau, tau=tau)
        runs[(4, "downpour", tau)] = curve(0.16 + 0.005 * tau, tau=tau)
    return runs


def test_every_claim_holds_on_good_records() -> None:
    claims = check(good(), 4.0, (True, "stable"))
    assert [c.holds for c in claims] == [True] * 4


@pytest.mark.parametrize(
    ("claim", "key", "records"),
    [
        (0, (4, "mdownpour", 4), curve(0.14, tau=4)),
        (0, (4, "allreduce", 1), curve(0.10)),
        (1, (4, "easgd", 64), curve(0.60, tau=64)),
        (1, (4, "easgd", 64), None),  # EASGD diverged
        (2, (4, "eamsgd", 16), curve(0.15, tau=4)),  # sent as much as at tau = 4
    ],
)
def test_each_claim_fails_when_its_records_say_so(claim: int, key: Key, records) -> None:
    runs = good()
    runs[key] = records
    assert not check(runs, 4.0, (True, "stable"))[claim].holds


def test_a_diverged_downpour_counts_as_the_worse_degradation() -> None:
    runs = good()
    runs[(4, "downpour", 64)] = None
    assert check(runs, 4.0, (True, ""))[1].holds


def test_error_at_the_budget_takes_the_last_record_within_it() -> None:
    records = curve(0.1)  # errors 0.25, 0.2, 0.15, 0.1 at times 1, 2, 3, 4
    assert error_at(records, 2.5) == pytest.approx(0.2)
    assert error_at(records, 0.5) == 1.0 and error_at(None, 9) == 1.0


def test_the_stability_verdict_is_the_analysis_one() -> None:
    """Claim 4 passes the analysis module's verdict through (checked in tests/analysis)."""
    easgd = sweep("easgd", [0.1, 0.5], [0.1, 0.3], p=3)
    assert bool(easgd.stable.all())
    assert not check(good(), 4.0, (False, "ADMM stable everywhere"))[3].holds
