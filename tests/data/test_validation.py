"""The validation split (the ``validation`` key): held out of every shard, drawn by the
seed, evaluated as the test set is, and absent (bit for bit) at ``validation=0``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nettrain import load_config, run
from nettrain.data import load_dataset
from nettrain.data.validation import hold_out, validation_indices
from nettrain.errors import ConfigError
from nettrain.experiment import build_job

CONFIG = {"agents": 4, "rounds": 6, "eval_every": 3, "progress": False, "hidden": (8,)}
CONFIG |= {"train_samples": 400, "tensorboard": False}


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_the_split_is_disjoint_from_every_shard_and_stratified() -> None:
    job = build_job(load_config(CONFIG | {"validation": 0.25}))
    data = job.problem.data
    assert data.x_val is not None and data.y_val is not None
    assert (len(data.x_val), len(data.x_train)) == (100, 300)
    shards = torch.cat(job.shards)
    assert sorted(shards.tolist()) == list(range(300))  # every remaining sample, once
    assert not rows(data.x_train) & rows(data.x_val)  # no validation sample in a shard
    full = build_job(load_config(CONFIG)).problem.data
    assert rows(full.x_train) == rows(data.x_train) | rows(data.x_val)
    assert torch.equal(full.x_test, data.x_test)  # the test set is untouched
    share = torch.bincount(data.y_val, minlength=10) / torch.bincount(full.y_train, minlength=10)
    assert share.min() > 0.15 and share.max() < 0.35  # stratified: about 1/4 of each class


def test_the_split_is_drawn_by_the_seed() -> None:
    data = load_dataset("digits", seed=0)
    one = validation_indices(data.y_train, 0.1, 0, classification=True)
    assert (one == validation_indices(data.y_train, 0.1, 0, classification=True)).all()
    assert not (one == validation_indices(data.y_train, 0.1, 1, classification=True)).all()
    assert hold_out(data, 0.0, 0) is data


def test_records_carry_the_validation_figures(tmp_path: Path) -> None:
    records = run(load_config(CONFIG | {"validation": 0.2}), out=tmp_path / "v").records
    assert all({"val_loss", "val_accuracy"} <= set(r) for r in records)
    assert 0 <= records[-1]["val_accuracy"] <= 1 and records[-1]["val_loss"] > 0
    plain = run(load_config(CONFIG), out=tmp_path / "p").records
    assert "val_loss" not in plain[-1] and "val_accuracy" not in plain[-1]


def test_validation_zero_changes_nothing(tmp_path: Path) -> None:
    a = run(load_config(CONFIG), out=tmp_path / "a")
    b = run(load_config(CONFIG | {"validation": 0.0}), out=tmp_path / "b")
    drop = ("wall_time_s", "samples_per_s")
    strip = [[{k: v for k, v in r.items() if k not in drop} for r in x.records] for x in (a, b)]
    assert strip[0] == strip[1]
    assert torch.equal(a.x, b.x)


def test_regression_sets_get_a_validation_loss(tmp_path: Path) -> None:
    cfg = CONFIG | {"dataset": "diabetes", "train_samples": 0, "validation": 0.1}
    last = run(load_config(cfg), out=tmp_path / "r").records[-1]
    assert last["val_loss"] > 0 and "val_accuracy" not in last


@pytest.mark.parametrize(("value", "says"), [(1.0, "[0, 1)"), (-0.1, ">= 0"), (0.99, "leaving")])
def test_a_bad_share_is_a_config_error(value: float, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace(")", r"\)")):
        build_job(load_config(CONFIG | {"train_samples": 100, "agents": 4} | {"validation": value}))
