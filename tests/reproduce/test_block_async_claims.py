"""The claim checks of `nettrain reproduce block-async`, on hand-made records."""

from __future__ import annotations

from typing import Any

import pytest

from nettrain.config import load_config
from nettrain.reproduce.block_async import (
    BASE,
    BATCH,
    PARTITIONED,
    SEQUENTIAL,
    SYNCHRONOUS,
    check,
    compare_with_paper,
    methods,
    rounds_for,
    row,
)


def curve(final_acc: float, samples_per_s: float, processes: int = 2) -> list[dict[str, Any]]:
    """Four records of one pass: accuracy climbs to ``final_acc`` (0.85 at the third),
    10 s of training per record."""
    return [
        {
            "test_accuracy": final_acc - 0.05 * (3 - k) if k < 3 else final_acc,
            "train_time_s": 10.0 * (k + 1),
            "samples": int(samples_per_s * 10.0 * (k + 1)),
            "samples_per_s": samples_per_s,
            "processes": processes,
            "staleness_mean": 0.5,
            "epoch": float(k + 1),
            "wall_time_s": 11.0 * (k + 1),
        }
        for k in range(4)
    ]


def rows(changes: dict[str, tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    """Every method with two identical passes; ``changes[label] = (accuracy, samples/s)``."""
    values = {label: (0.90, 1000.0) for label in methods()}
    values[PARTITIONED] = (0.895, 1500.0)
    values |= changes or {}
    return [row(label, [curve(*values[label])] * 2) for label in methods()]


def test_the_claims_hold_on_good_records() -> None:
    assert [c.holds for c in check(rows())] == [True, True]


@pytest.mark.parametrize(
    ("claim", "change"),
    [
        (0, {PARTITIONED: (0.885, 1500.0)}),  # 1.5 points below sequential SGD
        (1, {PARTITIONED: (0.90, 999.0)}),  # slower than sequential SGD
        (1, {SEQUENTIAL: (0.90, 1600.0)}),
    ],
)
def test_each_claim_fails_when_its_records_say_so(claim: int, change: dict) -> None:
    assert not check(rows(change))[claim].holds


def test_a_row_pools_the_passes() -> None:
    slow, fast = curve(0.90, 1000.0), curve(0.92, 3000.0)
    r = row(SEQUENTIAL, [slow, fast])
    assert r["samples_per_s"] == pytest.approx(2000.0)  # all samples over all time
    assert r["best_samples_per_s"] == pytest.approx(3000.0)
    assert r["test_accuracy"] == pytest.approx(0.91)
    assert r["time_to_85%_s"] == pytest.approx(30.0)  # the third record of each pass
    never = curve(0.80, 1000.0)
    assert row(SEQUENTIAL, [slow, never])["time_to_85%_s"] is None


def test_the_paper_comparison_is_the_ratio_to_synchronous_data_parallel() -> None:
    got = compare_with_paper(rows({SYNCHRONOUS: (0.90, 1200.0)}))
    assert got["samples_per_s_ratio"] == pytest.approx(1500.0 / 1200.0)
    assert got["paper_speedup_vs_data_parallel"] == 1.2
    assert "1.2x" in got["explanation"]


def test_rounds_give_equal_epochs_for_every_process_count() -> None:
    assert rounds_for(1, 6400, 2) == 2 * rounds_for(2, 6400, 2) == 2 * 6400 * 2 // (2 * BATCH)
    assert {SEQUENTIAL, PARTITIONED, SYNCHRONOUS} <= set(methods())
    assert methods()[SEQUENTIAL]["processes"] == 1


def test_every_methods_config_is_valid() -> None:
    """Each run's keys are ones its method uses (an unused method key is an error)."""
    for label, extra in methods().items():
        cfg = load_config(BASE | extra | {"dataset": "digits", "rounds": 10})
        assert cfg.algorithm == extra["algorithm"], label
