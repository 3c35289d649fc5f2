"""run_all: finished runs are kept, unfinished ones run again, changed ones only with
force, parallel runs give the same numbers, an error one run is allowed to raise
leaves the others and is kept as its outcome, a plan timed whole runs again whole if it
stopped halfway; run_seeds: a folder per seed, finished seeds kept; seed_tables: a
row per run and the mean ± std over the seeds."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from nettrain.config import RunConfig, load_config
from nettrain.errors import ConfigError, DivergenceError
from nettrain.recording import read_records
from nettrain.reproduce import runner
from nettrain.reproduce.runner import Request, finished_records, run_all, run_seeds, seed_tables


def tiny(**overrides: Any) -> RunConfig:
    values = {"dataset": "digits", "model": "linear", "agents": 4, "rounds": 6}
    return load_config(values | {"eval_every": 3, "progress": False} | overrides)


def plan() -> dict[str, RunConfig]:
    return {"a dpsgd": tiny(algorithm="dpsgd"), "b allreduce": tiny(algorithm="allreduce")}


def numbers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("wall_time_s", "samples_per_s")} for r in records
    ]


def count_runs(monkeypatch: pytest.MonkeyPatch, root: Path) -> list[str]:
    """From now on every run of run_all appends its folder, relative to ``root``, to the
    list returned."""
    ran: list[str] = []
    real_run = runner.run

    def counted_run(cfg: RunConfig, out: Path) -> Any:
        ran.append(str(Path(out).relative_to(root)))
        return real_run(cfg, out)

    monkeypatch.setattr(runner, "run", counted_run)
    return ran


def test_a_finished_run_is_kept_and_a_changed_one_runs_again_with_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_all(plan(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dpsgd", "b_allreduce"]
    assert first["a dpsgd"] == read_records(tmp_path / "a_dpsgd")

    ran = count_runs(monkeypatch, tmp_path)
    notes: dict[str, str] = {}
    changed = plan() | {"b allreduce": tiny(algorithm="allreduce", lr=0.05)}
    with pytest.raises(ConfigError, match=r"b_allreduce: finished runs of another config"):
        run_all(changed, tmp_path)  # the changed run's folder holds the first one's
    assert ran == []  # refused before any run started
    second = run_all(
        changed,
        tmp_path,
        done=lambda name, records, note: notes.update({name: note}),
        force=True,
    )
    assert ran == ["b_allreduce"]  # the config changed: it ran again
    assert notes == {"a dpsgd": "kept", "b allreduce": ""}
    assert second["a dpsgd"] == first["a dpsgd"]
    assert second["b allreduce"] != first["b allreduce"]


def test_an_unfinished_run_is_not_kept(tmp_path: Path) -> None:
    cfg = tiny(algorithm="dpsgd")
    run_all({"x": cfg}, tmp_path)
    assert finished_records(tmp_path / "x", cfg) is not None
    (tmp_path / "x" / "summary.json").unlink()  # as if the run stopped before its end
    assert finished_records(tmp_path / "x", cfg) is None
    run_all({"x": cfg}, tmp_path)
    assert finished_records(tmp_path / "x", cfg) is not None


def test_a_run_whose_plot_fails_is_not_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """summary.json, which a rerun keeps the run by, is written last."""

    def broken_plot(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("nettrain.report.plots.plot_run", broken_plot)
    cfg = tiny(algorithm="dpsgd")
    with pytest.raises(OSError, match="disk full"):
        run_all({"x": cfg}, tmp_path)
    assert (tmp_path / "x" / "final.pt").is_file()
    assert finished_records(tmp_path / "x", cfg) is None  # it runs again next time


def test_parallel_runs_give_the_same_numbers(tmp_path: Path) -> None:
    one = run_all(plan(), tmp_path / "one")
    two = run_all(plan(), tmp_path / "two", jobs=2)
    assert list(two) == list(plan())  # plan order, whatever finished first
    for name in plan():
        assert numbers(two[name]) == numbers(one[name])


def test_a_tolerated_error_gives_none_and_its_message_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tiny(algorithm="dpsgd", model="mlp", lr=1e6, rounds=30)  # diverges to inf
    notes: dict[str, str] = {}
    found = run_all(
        {"bad": bad, "good": tiny(algorithm="dpsgd")},
        tmp_path,
        done=lambda name, records, note: notes.update({name: note}),
        tolerate=(DivergenceError,),
    )
    assert found["bad"] is None and "diverg" in notes["bad"]
    assert found["good"] is not None and notes["good"] == ""
    assert json.loads((tmp_path / "bad" / "failed.json").read_text()) == {"error": notes["bad"]}

    ran = count_runs(monkeypatch, tmp_path)
    again = run_all(
        {"bad": bad},
        tmp_path,
        done=lambda name, records, note: notes.update({name: note}),
        tolerate=(DivergenceError,),
    )
    assert ran == [] and again == {"bad": None}  # its outcome kept, as a finished run is
    assert notes["bad"].endswith("(kept)") and "diverg" in notes["bad"]
    with pytest.raises(DivergenceError):  # not tolerated: it runs, and raises
        run_all({"bad": bad}, tmp_path)
    assert ran == ["bad"] and not (tmp_path / "bad" / "failed.json").exists()


def test_a_plan_timed_whole_runs_again_from_its_start_if_stopped_halfway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_all(plan(), tmp_path, whole=True)
    ran = count_runs(monkeypatch, tmp_path)
    notes: dict[str, str] = {}

    def whole() -> dict[str, Any]:
        done = lambda name, records, note: notes.update({name: note})  # noqa: E731
        return run_all(plan(), tmp_path, done=done, whole=True)

    assert numbers(whole()["b allreduce"]) == numbers(first["b allreduce"])
    assert ran == [] and set(notes.values()) == {"kept"}  # every run had finished
    (tmp_path / "b_allreduce" / "summary.json").unlink()  # stopped before its end
    again = whole()
    assert ran == ["a_dpsgd", "b_allreduce"]  # the finished one too, beside the other
    assert notes == {"a dpsgd": "again", "b allreduce": ""}
    assert numbers(again["a dpsgd"]) == numbers(first["a dpsgd"])


def test_jobs_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--jobs"):
        run_all(plan(), tmp_path, jobs=0)


def ask_for(out: Path, seeds: int, console: Console | None = None) -> Request:
    return Request(out, True, 5, console or Console(), {}, 1, seeds=seeds)


def seeded_plan(seed: int, quick: bool, overrides: Any) -> dict[str, RunConfig]:
    return {"a dpsgd": tiny(algorithm="dpsgd", seed=seed)}


def test_every_seed_has_its_folder_and_keeps_its_finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []
    found = run_seeds(ask_for(tmp_path, 2), seeded_plan, lambda name, r, note: names.append(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-5", "seed-6"]
    assert names == ["seed-5/a dpsgd", "seed-6/a dpsgd"]
    for seed in (5, 6):
        folder = tmp_path / f"seed-{seed}" / "a_dpsgd"
        assert json.loads((folder / "config.json").read_text())["seed"] == seed
        assert found[seed]["a dpsgd"] == read_records(folder)
    assert numbers(found[5]["a dpsgd"]) != numbers(found[6]["a dpsgd"])  # another seed

    ran = count_runs(monkeypatch, tmp_path)
    again = run_seeds(ask_for(tmp_path, 3), seeded_plan, lambda name, r, note: None)
    assert ran == ["seed-7/a_dpsgd"]  # seeds 5 and 6 were finished: kept
    assert list(again) == [5, 6, 7] and again[5] == found[5]


def test_seed_tables_write_each_run_and_print_mean_and_std(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    rows = [
        {"method": "a", "seed": 0, "test_accuracy": 0.8},
        {"method": "a", "seed": 1, "test_accuracy": 0.9},
        {"method": "b", "seed": 0, "test_accuracy": 0.5},
        {"method": "b", "seed": 1, "test_accuracy": 0.5},
    ]
    seed_tables(ask_for(tmp_path, 2, console), rows, ("method",), ("test_accuracy",), "T")
    with open(tmp_path / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(tmp_path / "aggregate.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert [g["method"] for g in groups] == ["a", "b"]
    assert float(groups[0]["test_accuracy_mean"]) == pytest.approx(0.85)
    assert float(groups[0]["test_accuracy_std"]) == pytest.approx(0.0707, abs=1e-4)
    shown = console.export_text()
    assert "T: mean ± std over 2 seeds" in shown and "0.85 ± 0.07071" in shown
