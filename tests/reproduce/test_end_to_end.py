"""`nettrain reproduce NAME --quick --seeds K` end to end, at a tiny size given with ``--set``.

The claim checks are tested on hand-made records (``test_*_claims.py``); here every
experiment runs through the command line (``nettrain.cli.main``, in this process), as a
user runs it, and each test checks that:

* the exit code is 0 exactly when every empirical claim in ``claims.json`` holds, 1
  otherwise;
* ``claims.json`` is a list of the experiment's claims, each with its five keys, a
  ``kind``, a boolean ``holds`` and ``measured`` figures for each seed (2 seeds for
  next and swarm; 1 for easgd and block-async, the slowest);
* every run folder the experiment declares holds, for each seed (``seed-<s>/``), a
  finished run of the ``--set`` config at that seed (``config.json``, ``summary.json``,
  ``metrics.jsonl`` up to the last round, ``final.pt``);
* ``summary.csv`` has one row per run, ``aggregate.csv`` one per configuration, and the
  plots and files the experiment promises are written;
* the same command again keeps the finished runs: no run starts, no file of a run
  folder changes, and the claims come out the same (block-async, whose seeds are timed
  whole, keeps its finished seeds; ``test_runner.py`` stops one halfway).

The sizes shrink rounds (and data) for every run with ``--set``; easgd and swarm train on
scikit-learn's digits in place of Fashion-MNIST, which is read again and evaluated on
its 10,000 test images in every run (seconds each). The tuning grids of easgd and
block-async shrink to two points a method (:data:`SMALL`: 42 runs of a seed in place of
150, and 10 in place of 40), and easgd's runtime round robin (claim 5) to 2,000 rounds:
the choice over a grid is tested in ``test_tuning.py`` and claim 5 at its full 24,000
rounds in ``test_round_robin.py``. At this size the claims need not hold; the exit code
is checked against ``claims.json`` whichever way they come out.
Every run also draws its own ``plot.png`` (``tests/test_cli.py`` checks it); at about a
second each for some 150 runs that would be most of the time, so the tests replace it with a
stub that counts the runs that finish. block-async takes the longest: each of its runs
starts fresh worker processes, which import torch.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from nettrain.cli import main
from nettrain.reproduce import block_async, easgd, next_sca, swarm
from nettrain.reproduce.runner import folder_name, seed_folder
from nettrain.reproduce.tuning import Grid

Row = dict[str, str]
SEEDS = (3, 4)  # --seed 3 --seeds 2; the slowest two experiments run --seeds 1
# module -> its grids, two points a method, set for the test (see the module docstring)
SMALL = {
    easgd: {
        "PLAIN": Grid.of(lr=(0.01, 0.05), momentum=(0.0,)),
        "WITH_MOMENTUM": Grid.of(lr=(0.005, 0.02), momentum=(0.9,)),
    },
    block_async: {"GRID": Grid.of(lr=(0.01, 0.03), momentum=(0.9,))},
}
RUNTIME_ROUNDS = 2_000  # easgd's runtime round robin here


class Case(NamedTuple):
    """One experiment: its ``--set`` sizes, what it declares, and what it writes."""

    name: str
    sizes: dict[str, str]  # --set KEY=VALUE, every run
    claims: int
    configs: list[str]  # a seed's run folders, relative to its seed-<s> folder
    row_key: Callable[[Row], str]  # a row of summary.csv -> the run it is about (no seed)
    files: list[str]  # the plots and tables beside summary.csv and claims.json
    seeds: tuple[int, ...] = SEEDS  # --seed seeds[0] --seeds len(seeds)
    timing: tuple[str, ...] = ()  # runs that time something after the seeds', under --out
    # the runs summary.csv is about, from what --out holds (default: every run)
    summarised: Callable[[Path], list[str]] | None = None

    @property
    def runs(self) -> list[str]:
        """Every run folder, relative to --out."""
        return [f"{seed_folder(s)}/{run}" for s in self.seeds for run in self.configs]

    def tabled(self, out: Path) -> list[str]:
        """The runs summary.csv has a row of, in a seed's folder."""
        return self.summarised(out) if self.summarised else self.configs


def next_case() -> Case:
    # every run of the quick plan: the settings' methods and claim 2's grid points
    runs = [folder_name(name) for name in next_sca.plan(SEEDS[0], True, {})]
    return Case(
        "next",
        {"rounds": "10"},
        4,
        runs,
        lambda r: f"{r['setting']}/{folder_name(r['method'])}",
        [f"{s.name}.png" for s in next_sca.SETTINGS] + ["tuning.csv"],
        timing=tuple(next_sca.timing_runs()),
    )


def chosen_points(out: Path, points: int) -> list[str]:
    """The run folders of the grid points ``tuning.csv`` (one row for each of ``points``)
    marks chosen."""
    with open(out / "tuning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == points
    return [folder_name(r["run"]) for r in rows if r["chosen"] == "True"]


def easgd_case() -> Case:
    tuned = [folder_name(name) for name in easgd.plan(SEEDS[0], True, {})]  # grid points
    scaling = [easgd.run_name(key) for key in easgd.scaling_keys()]
    plots = [
        f"tau{t}_{x}.png" for t in easgd.TAUS for x in ("virtual_time_s", "exchanges_per_worker")
    ]

    def row_key(r: Row) -> str:  # a tuned run's row (4 workers) is about its grid point
        key = (int(r["n"]), r["method"], int(r["tau"]))
        at = {k: float(r[k]) for k in ("lr", "momentum")}
        return folder_name(easgd.run_name(key, at if key[0] == 4 else None))

    return Case(
        "easgd",
        # every tau divides 64 rounds (local steps per worker): tau = 64 exchanges once
        {"dataset": "digits", "train_samples": "640", "rounds": "64", "eval_every": "32"},
        6,
        tuned + scaling,
        row_key,
        [
            *plots,
            "tuning.csv",
            "stability.png",
            "stability.csv",
            "stability_summary.csv",
            "round_robin.csv",
            "round_robin.png",
        ],
        SEEDS[:1],
        summarised=lambda out: chosen_points(out, len(tuned)) + scaling,
    )


def swarm_case() -> Case:
    runs = [folder_name(name) for name in swarm.plan(SEEDS[0], True, {})]  # grids included
    return Case(
        "swarm",
        {"dataset": "digits", "train_samples": "1024", "rounds": "8"},
        5,
        runs,
        lambda r: folder_name(f"n{r['n']} {r['method']}"),
        ["n16.png", "tuning.csv"],
    )


def block_async_case() -> Case:
    grid = block_async.GRID
    runs = [
        folder_name(block_async.point(label, at))
        for label in block_async.methods()
        for at in grid.every()
    ]
    return Case(
        "block-async",
        # about 30 steps per process: the 20 full ones of the (hard-coded) warm-up, then
        # partitioned ones
        {"rounds": "30"},
        2,
        runs,
        lambda r: folder_name(block_async.point(r["method"], {k: float(r[k]) for k in grid.keys})),
        ["accuracy.png", "speedup.json", "tuning.csv"],
        SEEDS[:1],
        summarised=lambda out: chosen_points(out, len(runs)),
    )


CASES = {
    "next": next_case,
    "easgd": easgd_case,
    "swarm": swarm_case,
    "block-async": block_async_case,
}
COUNTS = {"next": 30, "easgd": 42, "swarm": 19, "block-async": 10}  # a seed's runs, by hand


def reproduce(case: Case, out: Path) -> int:
    sets = [f"{k}={v}" for k, v in case.sizes.items()] + ["tensorboard=false"]
    seeds = ["--seed", str(case.seeds[0]), "--seeds", str(len(case.seeds))]
    return main(["reproduce", case.name, "--quick", *seeds, "--out", str(out), "--set", *sets])


def stamps(out: Path, runs: list[str]) -> dict[str, tuple[int, int]]:
    """(modification time, size) of every file in the run folders."""
    return {
        str(path): (path.stat().st_mtime_ns, path.stat().st_size)
        for run in runs
        for path in sorted((out / run).iterdir())
    }


def check_run_folder(folder: Path, sizes: dict[str, str], seed: int) -> None:
    for name in ("config.json", "summary.json", "metrics.jsonl", "final.pt"):
        assert (folder / name).is_file(), folder / name
    config = json.loads((folder / "config.json").read_text())
    assert {k: str(config[k]) for k in sizes} == sizes, folder
    assert config["tensorboard"] is False and config["seed"] == seed
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["round"] == 0 and records[-1]["round"] == int(sizes["rounds"]), folder
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rounds"] == int(sizes["rounds"]), folder


def check_file(path: Path) -> None:
    """A plot is a PNG image, a table has rows, a JSON file an object."""
    assert path.is_file(), path
    if path.suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        assert path.stat().st_size > 10_000, path
    elif path.suffix == ".csv":
        assert len(path.read_text().splitlines()) >= 2, path
    else:
        assert json.loads(path.read_text()), path


@pytest.mark.parametrize("name", list(CASES))
def test_reproduce_runs_end_to_end_and_keeps_its_runs(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for module, grids in SMALL.items():
        for attribute, grid in grids.items():
            monkeypatch.setattr(module, attribute, grid)
    monkeypatch.setattr(easgd, "runtime", functools.partial(easgd.runtime, rounds=RUNTIME_ROUNDS))
    case = CASES[name]()
    assert len(case.configs) == len(set(case.configs)) == COUNTS[name]
    finished: list[str] = []

    def plot_run(records: Any, path: Path, title: str = "", **kw: Any) -> None:
        finished.append(str(Path(path).parent.relative_to(tmp_path)))

    monkeypatch.setattr("nettrain.report.plots.plot_run", plot_run)

    code = reproduce(case, tmp_path)
    capsys.readouterr()
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert isinstance(claims, list) and len(claims) == case.claims
    for claim in claims:
        assert set(claim) == {"claim", "kind", "expected", "measured", "holds"}
        assert claim["kind"] in ("empirical", "by_construction")
        assert isinstance(claim["holds"], bool)
        assert claim["claim"] and claim["expected"] and claim["measured"]["text"]
        assert set(claim["measured"]) == {"mean", "std", "per_seed", "text"}
        assert len(claim["measured"]["per_seed"]) in (0, len(case.seeds))  # 0: an analysis
    empirical = [c["holds"] for c in claims if c["kind"] == "empirical"]
    assert empirical and code == (0 if all(empirical) else 1)

    assert sorted(finished) == sorted([*case.runs, *case.timing])  # each ran, once
    for seed in case.seeds:
        for run in case.configs:
            check_run_folder(tmp_path / seed_folder(seed) / run, case.sizes, seed)
    with open(tmp_path / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tabled = case.tabled(tmp_path)
    assert sorted(f"{seed_folder(int(r['seed']))}/{case.row_key(r)}" for r in rows) == sorted(
        f"{seed_folder(s)}/{run}" for s in case.seeds for run in tabled
    )
    with open(tmp_path / "aggregate.csv", newline="") as f:
        groups = list(csv.DictReader(f))
    assert sorted(map(case.row_key, groups)) == sorted(tabled)
    assert {g["runs"] for g in groups} == {str(len(case.seeds))}
    for file in case.files:
        check_file(tmp_path / file)

    before = stamps(tmp_path, case.runs)
    finished.clear()
    again = reproduce(case, tmp_path)
    assert finished == []  # no run ran again
    assert stamps(tmp_path, case.runs) == before
    assert again == code
    assert json.loads((tmp_path / "claims.json").read_text()) == claims
