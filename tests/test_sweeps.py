"""Sweeps (`nettrain compare KEY=A,B ...`): one folder per run of the Cartesian product,
mean ± std over seeds per group, finished runs kept, every config checked first."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

import nettrain
from nettrain.cli import _compare_items, main
from nettrain.config import RunConfig
from nettrain.errors import ConfigError
from nettrain.reproduce import runner
from nettrain.sweeps import plan_sweep, split_values

TINY = [
    *("dataset=digits", "agents=4", "rounds=6", "eval_every=3", "hidden=8"),
    *("progress=false", "tensorboard=false"),
]
RUNS = [f"lr={lr},seed={seed}" for lr in ("0.05", "0.1") for seed in (0, 1, 2)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_sweep_reports_mean_and_std_over_seeds_and_keeps_finished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    args = ["compare", *TINY, "lr=0.05,0.1", "seed=0,1,2", "--algorithms", "dpsgd"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "dpsgd").iterdir()) == RUNS
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    runs = read_csv(tmp_path / "summary.csv")
    assert [(r["algorithm"], r["lr"], r["seed"]) for r in runs] == [
        ("dpsgd", lr, seed) for lr in ("0.05", "0.1") for seed in "012"
    ]
    table = read_csv(tmp_path / "aggregate.csv")
    assert [(r["algorithm"], r["lr"], r["runs"]) for r in table] == [
        ("dpsgd", "0.05", "3"),
        ("dpsgd", "0.1", "3"),
    ]
    assert "seed" not in table[0]
    for row, lr in zip(table, ("0.05", "0.1"), strict=True):
        summaries = [
            json.loads((tmp_path / "dpsgd" / f"lr={lr},seed={s}" / "summary.json").read_text())
            for s in range(3)
        ]
        assert [s["seed"] for s in summaries] == [0, 1, 2]
        for metric in ("test_accuracy", "test_loss", "consensus_distance"):
            values = [s[metric] for s in summaries]
            assert len(set(values)) > 1  # the seeds differ, so the spread is no accident
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(row[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
    assert "0.05" in capsys.readouterr().out  # the aggregate table on the terminal

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("dpsgd/*/summary.json")}
    ran: list[str] = []
    real_run = runner.run

    def counted_run(cfg: RunConfig, out: Path) -> Any:
        ran.append(str(out))
        return real_run(cfg, out)

    monkeypatch.setattr(runner, "run", counted_run)
    assert main([*args, "--out", str(tmp_path)]) == 0  # the same sweep again
    assert ran == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert capsys.readouterr().out.count(": kept") == 6
    assert read_csv(tmp_path / "aggregate.csv") == table

    assert main([*args, "rounds=3", "--out", str(tmp_path)]) == 2  # another config
    assert "pass --force" in capsys.readouterr().err
    assert ran == [] and {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr=0.05,abc", "lr='abc' is not a valid float"),
        ("topology=ring,moebius", "topology='moebius' is not allowed"),
        ("hidden=[8],[8,x]", "hidden='8,x' is not a valid"),
        ("lr=0.05,,0.1", "lr=0.05,,0.1 has an empty value"),
        ("hidden=[8],[8", "a bracketed list is [VALUE],[VALUE]"),
        ("dpsgd.lr=0.05,0.1", "a key scoped to one algorithm takes one value"),
    ],
)
def test_a_bad_value_in_a_list_fails_before_any_run(
    tmp_path: Path, item: str, message: str, capsys
) -> None:
    out = tmp_path / "sweep"
    args = ["compare", *TINY, "seed=0,1", item, "--algorithms", "dpsgd", "--out", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_list_valued_keys_are_swept_in_brackets_only() -> None:
    assert split_values("lr", "0.05,0.1") == ["0.05", "0.1"]
    assert split_values("hidden", "64,32") == ["64,32"]  # one value: two layers
    assert split_values("hidden", "[64],[64,32]") == ["64", "64,32"]
    assert split_values("crash", "1@3,2@4") == ["1@3,2@4"]
    assert split_values("topology", "[ring],[torus]") == ["ring", "torus"]
    plan = plan_sweep({"dataset": "digits"}, {"hidden": ["8", "8,4"]}, ["dpsgd"])
    assert {name: cfg.hidden for name, cfg in plan.configs.items()} == {
        "dpsgd/hidden=8": (8,),
        "dpsgd/hidden=8-4": (8, 4),
    }
    items = _compare_items(["hidden=64,32", "lr=0.05,0.1"], ["dpsgd"])
    assert items.shared == {"hidden": "64,32"} and items.grid == {"lr": ["0.05", "0.1"]}


def test_algorithm_items_are_one_more_axis() -> None:
    by_key = _compare_items(["algorithm=dpsgd,allreduce", "topology=ring,complete"])
    by_option = _compare_items(["topology=ring,complete"], ["dpsgd", "allreduce"])
    assert by_key == by_option
    plan = plan_sweep({}, by_key.grid, by_key.algorithms)
    assert list(plan.configs) == [
        "dpsgd/topology=ring",
        "dpsgd/topology=complete",
        "allreduce/topology=ring",
        "allreduce/topology=complete",
    ]
    assert plan.group_keys == ("algorithm", "topology")
    scoped = _compare_items(["swarm.local_steps=2", "seed=0,1"], ["swarm", "dpsgd"])
    plan = plan_sweep({}, scoped.grid, scoped.algorithms, scoped.settings)
    assert {name: cfg.local_steps for name, cfg in plan.configs.items()} == {
        "swarm/seed=0": 2,
        "swarm/seed=1": 2,
        "dpsgd/seed=0": 1,
        "dpsgd/seed=1": 1,
    }
    with pytest.raises(ConfigError, match="given twice"):
        _compare_items(["algorithm=dpsgd"], ["allreduce"])
    with pytest.raises(ConfigError, match="a grid maps each key to a list"):
        plan_sweep({}, {"lr": "0.1"}, ["dpsgd"])


def test_the_python_sweep_with_one_seed_leaves_the_spread_blank(tmp_path: Path) -> None:
    config = dict(arg.split("=") for arg in TINY)
    result = nettrain.sweep(
        config, {"topology": ["ring", "complete"]}, tmp_path, algorithms=["dpsgd"], jobs=2
    )
    assert [r["topology"] for r in result.rows] == ["ring", "complete"]
    assert [(r["topology"], r["runs"]) for r in result.aggregate] == [("ring", 1), ("complete", 1)]
    for row, run in zip(result.aggregate, result.rows, strict=True):
        assert row["test_accuracy_mean"] == run["test_accuracy"]
        assert row["test_accuracy_std"] is None
    table = read_csv(tmp_path / "aggregate.csv")
    assert table[0]["test_accuracy_std"] == ""
    assert (tmp_path / "dpsgd" / "topology=complete" / "summary.json").is_file()
