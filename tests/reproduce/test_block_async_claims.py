"""The claim checks of `nettrain reproduce block-async`, on hand-made records and rows."""

from __future__ import annotations

from typing import Any

import pytest

from nettrain.config import load_config
from nettrain.errors import ConfigError
from nettrain.reproduce.block_async import (
    BASE,
    BATCH,
    FULL_STEPS,
    GRID,
    LRS,
    MOMENTA,
    PARTITIONED,
    SEQUENTIAL,
    SYNCHRONOUS,
    Figures,
    check,
    compare_with_paper,
    config,
    methods,
    point,
    rounds_for,
    row,
)
from nettrain.reproduce.claims import EMPIRICAL
from nettrain.reproduce.tuning import warmup_rounds


def curve(final_acc: float, samples_per_s: float, processes: int = 2) -> list[dict[str, Any]]:
    """Four records of one run: accuracy climbs to ``final_acc`` (0.85 at the third),
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


SEEDS = 3


def seed(changes: dict[str, tuple[float, float]] | None = None, k: int = 0) -> Figures:
    """One seed's rows by method; ``changes[label] = (accuracy, samples/s)``; ``k`` moves
    the partitioned method's figures a little."""
    values = {label: (0.90, 1000.0) for label in methods()}
    values[PARTITIONED] = (0.895 - 0.001 * k, 1500.0 + 10 * k)
    values |= changes or {}
    return {label: row(label, curve(*values[label])) for label in methods()}


def seeds(changes: dict[str, tuple[float, float]] | None = None, where: range = range(SEEDS)):
    return [seed(changes if k in where else None, k) for k in range(SEEDS)]


def test_the_claims_hold_on_good_seeds() -> None:
    claims = check(seeds())
    assert [c.holds for c in claims] == [True, True]
    assert {c.kind for c in claims} == {EMPIRICAL}
    assert claims[1].measured.per_seed == pytest.approx([1.5, 1.51, 1.52])


@pytest.mark.parametrize(
    ("claim", "changes", "where"),
    [
        (0, {PARTITIONED: (0.885, 1500.0)}, range(SEEDS)),  # 1.5 points below sequential SGD
        (0, {PARTITIONED: (0.86, 1500.0)}, range(1)),  # mean 1.57 points below
        (0, {FULL_STEPS: (0.885, 1000.0)}, range(SEEDS)),  # the variant with full steps
        (1, {PARTITIONED: (0.90, 1100.0)}, range(SEEDS)),  # 1.1x synchronous data-parallel
        (1, {SYNCHRONOUS: (0.90, 1400.0)}, range(SEEDS)),
        (1, {SYNCHRONOUS: (0.90, 3000.0)}, range(1)),  # mean ratio 1.17
    ],
)
def test_each_claim_fails_when_its_seeds_say_so(claim: int, changes: dict, where: range) -> None:
    claims = check(seeds(changes, where))
    assert not claims[claim].holds and claims[1 - claim].holds


def test_a_speed_below_the_papers_says_the_ratio_and_why() -> None:
    claim = check(seeds({PARTITIONED: (0.90, 1100.0)}))[1]
    assert "ratio 1.10 ± 0.00x" in claim.measured.text
    assert "below the paper's 1.2x" in claim.measured.text
    assert claim.measured.mean == pytest.approx(1.1)


def test_a_row_is_one_run() -> None:
    r = row(SEQUENTIAL, curve(0.92, 3000.0, processes=1))
    assert r["samples_per_s"] == pytest.approx(3000.0)
    assert (r["P"], r["test_accuracy"]) == (1, 0.92)
    assert r["time_to_85%_s"] == pytest.approx(30.0)  # the third record
    assert row(SEQUENTIAL, curve(0.80, 1000.0))["time_to_85%_s"] is None


def test_the_paper_comparison_is_the_ratio_to_synchronous_data_parallel() -> None:
    got = compare_with_paper(seeds({SYNCHRONOUS: (0.90, 1200.0)}))
    assert got["samples_per_s_ratio_per_seed"] == pytest.approx([1.25, 1.2583, 1.2667], 1e-3)
    assert got["samples_per_s_ratio"] == pytest.approx(1.2583, 1e-3)
    # 85% at the third record (30 s) for synchronous SGD, the fourth (40 s) for partitioned
    assert got["time_to_85%_ratio"] == pytest.approx(0.75)
    assert got["paper_speedup_vs_data_parallel"] == 1.2
    assert "1.2x" in got["explanation"]


def test_rounds_give_equal_epochs_for_every_process_count() -> None:
    assert rounds_for(1, 6400, 2) == 2 * rounds_for(2, 6400, 2) == 2 * 6400 * 2 // (2 * BATCH)
    assert {SEQUENTIAL, PARTITIONED, FULL_STEPS, SYNCHRONOUS} <= set(methods())
    assert methods()[PARTITIONED]["full_every"] == 0  # full steps in the warm-up only
    assert methods()[FULL_STEPS]["full_every"] == 2
    assert methods()[SEQUENTIAL]["processes"] == 1


def test_every_methods_config_is_valid() -> None:
    """Each run's keys are ones its method uses (an unused method key is an error)."""
    for label, extra in methods().items():
        cfg = load_config(BASE | extra | {"dataset": "digits", "rounds": 10})
        assert cfg.algorithm == extra["algorithm"], label


def test_every_method_runs_the_same_grid_of_rates_and_momenta_on_a_validation_split() -> None:
    """Each method at each rate of LRS with each momentum of MOMENTA (``--set lr`` or
    ``momentum`` does not move them), a tenth of the training set held out to choose
    on; one folder a point."""
    grid = GRID.every()
    assert [(g["lr"], g["momentum"]) for g in grid] == [(r, m) for r in LRS for m in MOMENTA]
    for label in methods():
        cfgs = [config(label, at, 0, True, {"lr": 0.5, "momentum": 0.1}) for at in grid]
        assert [(c.lr, c.momentum) for c in cfgs] == [(g["lr"], g["momentum"]) for g in grid]
        assert {c.validation for c in cfgs} == {0.1}
        # the all-reduce baseline, a batch of P x 32, warms up over 5% of its rounds
        warmup = warmup_rounds(cfgs[0].rounds) if label == SYNCHRONOUS else 0
        assert {c.lr_warmup for c in cfgs} == {warmup}
    assert warmup_rounds(config(SYNCHRONOUS, grid[0], 0, True, {}).rounds) == 45  # of 898
    cut = config(SYNCHRONOUS, grid[0], 0, True, {"rounds": "40"})  # --set: what follows too
    assert (cut.rounds, cut.lr_warmup, cut.eval_every) == (40, 2, 4)
    with pytest.raises(ConfigError, match="rounds='many' is not a valid int"):
        config(SYNCHRONOUS, grid[0], 0, True, {"rounds": "many"})
    names = {point(label, at) for label in methods() for at in grid}
    assert len(names) == 5 * len(LRS) * len(MOMENTA)
    assert point(SEQUENTIAL, grid[0]) == "sequential SGD lr=0.003 momentum=0.5"
