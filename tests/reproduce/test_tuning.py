"""Equal tuning (:mod:`nettrain.reproduce.tuning`) on hand-made records, and one tiny
real grid through ``run_all``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

from nettrain import load_config
from nettrain.errors import ConfigError
from nettrain.reproduce.tuning import (
    Grid,
    choose,
    final,
    grid_plan,
    pick,
    tune,
    warmup_rounds,
    write_tuning,
)

GRID = Grid.of(step0=(0.1, 0.25, 0.5))


def recs(value: float | None, key: str = "val_loss") -> list[dict[str, Any]]:
    last = {"round": 10} if value is None else {"round": 10, key: value}
    return [{"round": 0, key: 9.0}, last]


def test_each_method_gets_the_point_of_the_smallest_criterion() -> None:
    results = {"DGD": [recs(0.3), recs(0.2), recs(0.4)], "NEXT": [recs(0.5), recs(0.4), recs(0.1)]}
    got = pick(results, GRID, final("val_loss"))
    assert got.chosen == {"DGD": {"step0": 0.25}, "NEXT": {"step0": 0.5}}
    assert got.criterion == "final val_loss"
    assert [r["criterion"] for r in got.rows] == [0.3, 0.2, 0.4, 0.5, 0.4, 0.1]
    assert [r["chosen"] for r in got.rows] == [False, True, False, False, False, True]
    assert got.describe() == "DGD: step0=0.25; NEXT: step0=0.5"


def test_the_criterion_is_the_last_records_and_infinite_without_records() -> None:
    records = [{"val_loss": 3.0}, {"val_loss": 2.0}, {"val_loss": 1.0}]
    assert final("val_loss")(records) == 1.0
    assert final("val_loss")([]) == math.inf


def test_a_large_batch_warms_up_over_five_percent_of_its_rounds() -> None:
    assert [warmup_rounds(r) for r in (4, 40, 188, 898)] == [1, 2, 9, 45]


def test_ties_go_to_the_earlier_grid_point() -> None:
    got = pick({"m": [recs(0.3), recs(0.2), recs(0.2)]}, GRID, final("val_loss"))
    assert got.chosen == {"m": {"step0": 0.25}}
    assert choose([1.0, 1.0]) == 0


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_a_diverged_or_nan_run_is_never_chosen(bad: float | None) -> None:
    diverged = None if bad is None else recs(bad)
    got = pick({"m": [recs(5.0), diverged, recs(7.0)]}, GRID, final("val_loss"))
    assert got.chosen == {"m": {"step0": 0.1}}
    assert got.rows[1]["criterion"] == math.inf


def test_a_missing_figure_counts_as_diverged() -> None:
    got = pick({"m": [recs(None), recs(3.0), recs(None)]}, GRID, final("val_loss"))
    assert got.chosen == {"m": {"step0": 0.25}}


def test_a_method_whose_every_run_diverged_is_an_error() -> None:
    with pytest.raises(ConfigError, match="every run diverged"):
        pick({"m": [None, recs(math.nan), None]}, GRID, final("val_loss"))


def test_a_two_key_grid_runs_the_product_in_order() -> None:
    grid = Grid.of(lr=(0.1, 0.01), momentum=(0.0, 0.9))
    assert grid.points == ((0.1, 0.0), (0.1, 0.9), (0.01, 0.0), (0.01, 0.9))
    assert grid.label(grid.points[1]) == "lr=0.1 momentum=0.9"
    assert grid.every()[2] == {"lr": 0.01, "momentum": 0.0} and len(grid.every()) == 4
    with pytest.raises(ConfigError, match="a grid has one or two keys, each with values"):
        Grid.of(a=(1,), b=(2,), c=(3,))
    with pytest.raises(ValueError, match="m: 2 runs for 4 grid points"):
        pick({"m": [None, None]}, grid, final("val_loss"))
    plan = grid_plan({"DSGD": load_config({"algorithm": "dpsgd"})}, grid)
    assert list(plan) == [f"DSGD {grid.label(p)}" for p in grid.points]
    assert (plan["DSGD lr=0.01 momentum=0.9"].lr, plan["DSGD lr=0.01 momentum=0.9"].momentum) == (
        0.01,
        0.9,
    )


def test_tune_runs_every_point_once_and_keeps_finished_runs(tmp_path: Path) -> None:
    base = {"agents": 3, "rounds": 4, "eval_every": 2, "progress": False, "hidden": (4,)}
    base |= {"train_samples": 200, "validation": 0.2, "tensorboard": False}
    bases = {m: load_config(base | {"algorithm": m}) for m in ("dgd", "next")}
    grid = Grid.of(step0=(0.1, 0.5))
    ran: list[str] = []
    tuning, found = tune(
        bases, grid, final("val_loss"), tmp_path, done=lambda n, r, note: ran.append(note)
    )
    assert len(found) == 4 and ran == [""] * 4 and set(tuning.chosen) == {"dgd", "next"}
    again, _ = tune(
        bases, grid, final("val_loss"), tmp_path, done=lambda n, r, note: ran.append(note)
    )
    assert ran[4:] == ["kept"] * 4 and again == tuning
    with open(write_tuning(tuning, tmp_path / "tuning.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["dgd", "dgd", "next", "next"]
    assert sum(r["chosen"] == "True" for r in rows) == 2


def test_tune_goes_on_past_a_point_that_diverges_and_keeps_it_so(tmp_path: Path) -> None:
    base = {"agents": 4, "rounds": 30, "eval_every": 10, "progress": False, "model": "mlp"}
    base |= {"dataset": "digits", "validation": 0.2, "tensorboard": False}
    bases = {"dpsgd": load_config(base | {"algorithm": "dpsgd"})}
    grid = Grid.of(lr=(0.1, 1e6))  # the second diverges to inf
    notes: list[str] = []
    tuning, found = tune(bases, grid, final("val_loss"), tmp_path)
    assert found["dpsgd lr=1e+06"] is None and tuning.chosen == {"dpsgd": {"lr": 0.1}}
    again, _ = tune(
        bases, grid, final("val_loss"), tmp_path, done=lambda n, r, note: notes.append(note)
    )
    assert notes[0] == "kept" and notes[1].endswith("(kept)") and again == tuning
    other = {"dpsgd": bases["dpsgd"].replace(seed=1)}
    with pytest.raises(ConfigError, match="finished runs of another config"):
        tune(other, grid, final("val_loss"), tmp_path)  # not without force
