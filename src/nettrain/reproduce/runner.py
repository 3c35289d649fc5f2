"""Run an experiment's configurations: keep finished runs, and run the rest in parallel.

A reproduction is tens of independent runs. :func:`run_all` takes them as a plan
(name -> config), keeps every run whose folder already holds a finished run of the same
config (``summary.json`` next to an equal ``config.json``), so an interrupted
reproduction continues where it stopped, and runs the others one after another or in
``jobs`` worker processes of ``threads`` torch threads each. A run's numbers depend only
on its config (the simulator is deterministic), so neither keeping nor parallelism
changes them; only ``wall_time_s`` does. A folder holding a finished run of another
config is not overwritten unless ``force`` says so (``--force``). ``nettrain compare``
runs its sweeps through :func:`run_all` too (:mod:`nettrain.sweeps`).

A reproduction runs every configuration for ``K`` seeds, ``S, S+1, ..., S+K-1``
(:class:`Request`), each seed's runs in a folder of their own, ``seed-<s>/``
(:func:`run_seeds`); :func:`seed_tables` writes and prints their figures, a row per
run and the mean ± std over the seeds of each configuration.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.console import Console

from nettrain.config import PROVENANCE, RunConfig, coerce, load_config
from nettrain.errors import ConfigError
from nettrain.experiment import run
from nettrain.machine import usable_cores
from nettrain.recording import FAILED, config_json, read_records, refuse_finished, write_json
from nettrain.report.tables import aggregate, aggregate_table, write_csv

Records = list[dict[str, Any]]
ANOTHER_CONFIG = "finished runs of another config (another --quick, --seed or --set)"
DEFAULT_SEEDS = {True: 3, False: 5}  # seeds of a reproduction: quick, full


class Request(NamedTuple):
    """One ``nettrain reproduce NAME``: the folder ``out``, the quick or the full size,
    the first seed, the ``--set`` overrides (applied to every run's config), ``jobs``
    runs at a time (:func:`run_all`), the console its tables go to, ``force``: overwrite
    finished runs of other configs, and ``seeds``: how many seeds from ``seed`` on
    (``None``: :data:`DEFAULT_SEEDS`, 3 quick and 5 full)."""

    out: Path
    quick: bool
    seed: int
    console: Console
    overrides: Mapping[str, Any]
    jobs: int
    force: bool = False
    seeds: int | None = None

    def seed_list(self) -> list[int]:
        """The seeds every configuration runs for: ``seed, seed + 1, ...``."""
        count = DEFAULT_SEEDS[self.quick] if self.seeds is None else self.seeds
        if count < 1:
            raise ConfigError(f"--seeds must be >= 1, got {count}")
        return list(range(self.seed, self.seed + count))


def rounds_given(overrides: Mapping[str, Any], rounds: int) -> int:
    """A run's rounds: the experiment's ``rounds``, or ``--set rounds=R``, which is every
    run's (what follows from the rounds, records and warm-ups, follows it)."""
    return coerce("rounds", overrides["rounds"]) if "rounds" in overrides else rounds


def same_config(folder: Path, cfg: RunConfig) -> bool:
    """Whether ``folder``'s ``config.json`` is ``cfg``'s (provenance aside)."""
    if not (folder / "config.json").is_file():
        return False
    saved = json.loads((folder / "config.json").read_text())
    saved.pop(PROVENANCE, None)
    return saved == config_json(cfg.to_dict())


def finished_records(folder: Path, cfg: RunConfig) -> Records | None:
    """The records of the finished run of ``cfg`` in ``folder``, or ``None`` if there is none."""
    done = (folder / "summary.json").is_file() and same_config(folder, cfg)
    return read_records(folder) if done else None


def earlier_outcome(folder: Path, cfg: RunConfig) -> Records | str | None:
    """What an earlier run of ``cfg`` left in ``folder``: its records if it finished, the
    message of the error it stopped with if :func:`run_all` went on without it
    (``failed.json``), ``None`` if neither (or the folder is another config's)."""
    records = finished_records(folder, cfg)
    if records is not None or not (folder / FAILED).is_file() or not same_config(folder, cfg):
        return records
    return str(json.loads((folder / FAILED).read_text())["error"])


def folder_name(name: str) -> str:
    """A run's folder in the experiment's folder: its name with ``_`` for spaces."""
    return name.replace(" ", "_")


def seed_folder(seed: int) -> str:
    """The folder of one seed's runs in the experiment's folder."""
    return f"seed-{seed}"


def threads_per_job(jobs: int) -> int:
    """Torch threads for each of ``jobs`` workers: this process's cores shared out."""
    return max(1, usable_cores() // jobs)


def _run_in_worker(config: dict[str, Any], folder: str, threads: int) -> Records:
    torch.set_num_threads(threads)
    return run(load_config(config), folder).records


def run_all(
    plan: Mapping[str, RunConfig],
    out: Path,
    *,
    jobs: int = 1,
    done: Callable[[str, Records | None, str], None] = lambda name, records, note: None,
    tolerate: tuple[type[Exception], ...] = (),
    force: bool = False,
    execute: Callable[[RunConfig, Path], Records] | None = None,
    what: str = ANOTHER_CONFIG,
    whole: bool = False,
) -> dict[str, Records | None]:
    """Run every ``plan[name]`` into ``out / folder_name(name)``; return the records in
    plan order.

    ``done(name, records, note)`` is called as each run ends, with ``note`` "kept" (the
    run was already in its folder), "" (it ran) or "again" (it ran although an earlier
    run of it had finished: ``whole``). A run that raises one of ``tolerate`` gets
    ``None`` for records and the error's message as ``note``, and its folder keeps the
    message (``failed.json``), so that a later call keeps that outcome as it keeps a
    finished run; any other error stops the runs and is raised. ``whole``: the plan's
    runs are timed side by side, so the earlier ones are kept only if every run of the
    plan has its outcome; a plan stopped halfway runs again from its start. With
    ``jobs > 1`` the runs go to that many worker processes (spawned, so CUDA works in
    them). A folder that holds a finished run of another config is a ConfigError before
    any run starts, unless ``force`` (``what`` such runs are, for its message).
    ``execute(cfg, folder)`` runs one run in place of :func:`~nettrain.experiment.run`
    and returns its records (``nettrain compare`` launches torchrun with it); it runs in
    this process, so it takes ``jobs=1``.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if execute is not None and jobs != 1:
        raise ConfigError(f"--jobs {jobs}: these runs are launched one at a time; drop --jobs")
    folders = {name: out / folder_name(name) for name in plan}
    earlier = {name: earlier_outcome(folders[name], cfg) for name, cfg in plan.items()}
    if not tolerate:  # an error kept is one this call would tolerate
        earlier = {name: None if isinstance(e, str) else e for name, e in earlier.items()}
    again = whole and None in earlier.values()  # a plan timed side by side runs whole
    todo = [name for name in plan if again or earlier[name] is None]
    refuse_finished([folders[name] for name in todo if earlier[name] is None], force, what)
    results: dict[str, Records | None] = {}

    def finish(name: str, outcome: Callable[[], Records]) -> None:
        try:
            results[name], note = outcome(), "" if earlier[name] is None else "again"
        except tolerate as err:
            results[name], note = None, str(err)
            write_json(folders[name] / FAILED, {"error": note})
        done(name, results[name], note)

    for name, before in earlier.items():
        if name not in todo:
            failed = isinstance(before, str)
            results[name] = None if failed else before
            done(name, results[name], f"{before} (kept)" if failed else "kept")
    if jobs == 1 or not todo:
        one = execute or (lambda cfg, folder: run(cfg, folder).records)
        for name in todo:
            finish(name, lambda name=name: one(plan[name], folders[name]))
        return {name: results[name] for name in plan}
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context) as pool:
        futures = {
            pool.submit(_run_in_worker, plan[name].to_dict(), str(folders[name]), threads): name
            for name in todo
        }
        try:
            for future in as_completed(futures):
                finish(futures[future], future.result)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return {name: results[name] for name in plan}


def run_seeds(
    ask: Request,
    plan_of: Callable[[int, bool, Mapping[str, Any]], Mapping[str, RunConfig]],
    done: Callable[[str, Records | None, str], None],
    tolerate: tuple[type[Exception], ...] = (),
) -> dict[int, dict[str, Records | None]]:
    """Run ``plan_of(seed, ask.quick, ask.overrides)`` (one seed's runs, name -> config)
    for every seed of ``ask`` into ``ask.out / seed-<seed>``, all seeds in one
    :func:`run_all` (so ``ask.jobs`` spreads over them, and a finished run of the same
    config is kept seed by seed); return each seed's records by run name. ``done`` gets
    a run's name with its seed's folder in front (``seed-0/NAME``)."""
    plans = {seed: plan_of(seed, ask.quick, ask.overrides) for seed in ask.seed_list()}
    plan = {f"{seed_folder(s)}/{name}": cfg for s, p in plans.items() for name, cfg in p.items()}
    found = run_all(plan, ask.out, jobs=ask.jobs, done=done, tolerate=tolerate, force=ask.force)
    return {s: {name: found[f"{seed_folder(s)}/{name}"] for name in p} for s, p in plans.items()}


def seed_tables(
    ask: Request,
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    columns: Sequence[str],
    title: str,
) -> None:
    """``summary.csv`` (``rows``, a row per run with its ``seed``) and ``aggregate.csv``
    (a row per group of equal ``by``: the mean and std over the seeds of each of
    ``columns``) in ``ask.out``; the groups printed as ``mean ± std``."""
    write_csv(list(rows), ask.out / "summary.csv")
    groups = aggregate(list(rows), by, columns)
    write_csv(groups, ask.out / "aggregate.csv")
    seeds = len(ask.seed_list())
    ask.console.print(
        aggregate_table(groups, by, f"{title}: mean ± std over {seeds} seeds", columns)
    )
