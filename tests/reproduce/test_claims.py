"""The statistics the claims of `nettrain reproduce` rest on, on numbers worked by hand:
the two-standard-error rule of a comparison, the every-seed rule of an ordering, one
seed, the figures kept per seed, and which claims count for the exit status."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from nettrain.errors import ConfigError
from nettrain.reproduce.claims import (
    BY_CONSTRUCTION,
    EMPIRICAL,
    Claim,
    Measured,
    all_hold,
    better,
    claims_table,
    counted,
    ordered,
    quotient,
    spread,
    standard_error,
    write_claims,
)
from nettrain.reproduce.runner import Request


def test_the_standard_error_of_independent_seeds() -> None:
    # sample variances 0.04 and 0.01, three seeds each: sqrt(0.04/3 + 0.01/3)
    assert standard_error([1.0, 1.2, 1.4], [0.5, 0.6, 0.7]) == pytest.approx(math.sqrt(0.05 / 3))
    assert standard_error([1.0], [0.5, 0.6]) is None  # one seed has no spread


def test_a_difference_beyond_two_standard_errors_holds() -> None:
    a, b = [1.0, 1.2, 1.4], [0.5, 0.7, 0.9]  # means 1.2 and 0.7, both sd 0.2
    se = math.sqrt(0.04 / 3 + 0.04 / 3)  # 0.163: 2 se = 0.327 < 0.5
    got = better(a, b)
    assert got.holds and got.difference == pytest.approx(0.5) and got.se == pytest.approx(se)
    closer = better(a, [0.8, 1.0, 1.2])  # difference 0.2 < 2 se
    assert not closer.holds and closer.difference == pytest.approx(0.2)
    assert "not > 2 se" in closer.describe()
    assert got.describe() == f"difference +0.5, standard error {se:.3g} (> 2 se)"
    assert not better(b, a).holds  # the other way round


def test_lower_is_better_turns_the_difference_round() -> None:
    errors_a, errors_b = [0.10, 0.11, 0.12], [0.20, 0.21, 0.22]
    assert better(errors_a, errors_b, lower=True).holds
    assert better(errors_a, errors_b, lower=True).difference == pytest.approx(0.1)
    assert not better(errors_a, errors_b).holds


def test_equal_values_over_seeds_need_only_a_positive_difference() -> None:
    assert better([1.0, 1.0], [0.9, 0.9]).holds  # se = 0
    assert not better([1.0, 1.0], [1.0, 1.0]).holds


def test_one_seed_cannot_establish_a_comparison() -> None:
    got = better([0.9], [0.1])
    assert got.se is None and not got.holds
    assert got.describe() == "difference +0.8; one seed: no standard error, not established"


def test_an_ordering_must_hold_in_every_seed() -> None:
    low, mid, high = [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]
    assert ordered([low, mid, high])
    assert not ordered([low, high, mid])
    # ordered in the means (1 < 2.33 < 3) but not in the third seed
    assert not ordered([low, [2.0, 2.0, 3.0], [3.0, 3.0, 2.5]])
    assert ordered([[1.0], [2.0]])  # one seed decides
    assert not ordered([low, [1.0, 2.0, 2.0], high])  # a tie in a seed is no order
    with pytest.raises(ValueError):  # every series holds every seed
        ordered([low, [2.0, 2.0]])


def test_a_ratio_to_nothing_is_infinite() -> None:
    assert quotient(3.0, 2.0) == 1.5
    assert quotient(3.0, 0.0) == math.inf


def test_measured_keeps_every_seed_with_mean_and_std() -> None:
    got = Measured.of([1.0, 2.0, 3.0], "text")
    assert (got.mean, got.std, got.per_seed) == (2.0, 1.0, [1.0, 2.0, 3.0])
    one = Measured.of([4.0], "t")
    assert (one.mean, one.std, one.per_seed) == (4.0, None, [4.0])
    never = Measured.of([1.0, math.inf], "a target never reached")
    assert (never.mean, never.std, never.per_seed) == (None, None, [1.0, None])
    assert never.text == "a target never reached"
    exact = Measured.exact(0.99, "an analysis")
    assert (exact.mean, exact.std, exact.per_seed) == (0.99, None, [])
    assert Measured.exact(math.nan, "diverged").mean is None


def test_spread_says_mean_and_std_or_each_seed() -> None:
    assert spread([1.0, 2.0, 3.0]) == "2 ± 1"
    assert spread([0.5]) == "0.5"
    assert spread([1.0, None, math.inf]) == "[1, -, -]"
    assert spread([1e-5, 3e-5]) == "2e-05 ± 1.414e-05"


def claim(kind: str, holds: bool) -> Claim:
    return Claim("c", kind, "e", Measured.of([1.0, 2.0], "m"), holds)  # type: ignore[arg-type]


def test_only_empirical_claims_count() -> None:
    claims = [claim(EMPIRICAL, True), claim(BY_CONSTRUCTION, False)]
    assert all_hold(claims) and counted(claims) == claims[:1]
    assert not all_hold([*claims, claim(EMPIRICAL, False)])


def test_the_claims_table_says_each_claim_its_kind_and_whether_it_holds() -> None:
    console = Console(record=True, width=200)
    shown = [
        Claim("faster", EMPIRICAL, "ratio >= 2", Measured.of([3.0], "3x"), True),
        Claim("fewer bytes", BY_CONSTRUCTION, "by design", Measured.of([4.0], "4x"), False),
    ]
    console.print(claims_table(shown))
    lines = [line.split() for line in console.export_text().splitlines() if line.strip()]
    assert lines[0] == ["claims"]
    assert lines[1] == ["claim", "kind", "expected", "measured", "holds"]
    assert lines[3] == ["faster", "empirical", "ratio", ">=", "2", "3x", "yes"]
    assert lines[4] == [
        "fewer",
        "bytes",
        "by",
        "construction",
        "(not",
        "counted)",
        "by",
        "design",
        "4x",
        "NO",
    ]
    assert len(lines) == 5
    narrow = Console(record=True, width=50)  # a long figure folds, none of it is cut
    narrow.print(claims_table([Claim("c", EMPIRICAL, "e", Measured.of([1.0], "z" * 60), True)]))
    assert "".join(narrow.export_text().split()).count("z") == 60


def test_claims_json_is_a_list_of_keyed_objects(tmp_path: Path) -> None:
    path = write_claims([claim(BY_CONSTRUCTION, True)], tmp_path / "claims.json")
    assert json.loads(path.read_text()) == [
        {
            "claim": "c",
            "kind": "by_construction",
            "expected": "e",
            "measured": {"mean": 1.5, "std": pytest.approx(0.7071, abs=1e-4)}
            | {"per_seed": [1.0, 2.0], "text": "m"},
            "holds": True,
        }
    ]


@pytest.mark.parametrize(
    ("quick", "seeds", "expected"),
    [(True, None, [7, 8, 9]), (False, None, [7, 8, 9, 10, 11]), (True, 2, [7, 8])],
)
def test_the_seeds_of_a_request(quick: bool, seeds: int | None, expected: list[int]) -> None:
    ask = Request(Path("."), quick, 7, Console(), {}, 1, seeds=seeds)
    assert ask.seed_list() == expected


def test_no_seeds_is_refused() -> None:
    with pytest.raises(ConfigError, match="--seeds must be >= 1, got 0"):
        Request(Path("."), True, 0, Console(), {}, 1, seeds=0).seed_list()


def test_a_signed_spread_signs_the_mean_only() -> None:
    assert spread([1.0, 2.0, 3.0], "+.2f") == "+2.00 ± 1.00"
