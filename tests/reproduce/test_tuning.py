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
from nettrain.reproduce.tuning import Grid, choose, final, grid_plan, pick, tune, write_tuning

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
    with pytest.raises(ConfigError):
        Grid.of(a=(1,), b=(2,), c=(3,))
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
