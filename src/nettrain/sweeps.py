"""Sweeps: run every combination of some keys' values, and report mean ± std over seeds.

``nettrain compare lr=0.05,0.1 seed=0,1,2 --algorithms dpsgd,allreduce`` is a sweep: a
base config, a grid (key -> values) and the compared algorithms (one more axis of the
grid). Every run of the Cartesian product is planned and validated before any starts
(:func:`plan_sweep`), then run by :func:`nettrain.reproduce.runner.run_all`: a finished
run of the same config in its folder is kept (an interrupted sweep continues where it
stopped), a finished run of another config is refused unless ``force``, and ``jobs``
runs go at a time in worker processes.

Folders: each run has its own, ``OUT/ALGORITHM`` when only algorithms are compared,
else ``OUT/ALGORITHM/KEY=VALUE,KEY=VALUE`` with the grid's keys in the order given
(``OUT/dpsgd/lr=0.05,seed=0``); in a value, a list is written with ``-`` between its
items (``hidden=64-32``) and any character but letters, digits and ``._+-`` becomes
``_``, so the names are safe on every file system and ``tensorboard --logdir OUT``
shows them side by side.

Reports: ``summary.csv`` has one row per run, the varied keys first. A sweep (a key
other than ``algorithm`` varied) also writes ``aggregate.csv``: runs grouped by every
varied key but ``seed``, one row per group with ``runs`` and ``<metric>_mean`` and
``<metric>_std`` (the sample standard deviation, blank for one run), and draws
``compare.png`` as one line per group with a band of ± one standard deviation. A
comparison of algorithms alone writes ``summary.csv`` and ``compare.png`` as
:func:`nettrain.experiment.compare` does.

On the command line a value with commas is a list of values to sweep
(:func:`split_values`), except for the keys whose one value is itself a comma list
(:data:`COMMA_KEYS`: ``hidden``, ``tree_periods``, ``crash``, ``placement``); those are
swept with brackets, ``hidden=[64],[64,32]`` (quote it in a shell).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from nettrain.config import FIELDS, RunConfig, coerce
from nettrain.description import describe_runs
from nettrain.errors import ConfigError
from nettrain.experiment import as_config, comparison_configs, write_comparison
from nettrain.report.plots import plot_bands
from nettrain.report.tables import METRICS, aggregate, write_csv
from nettrain.reproduce.runner import Records, run_all

# Keys whose one value is itself a comma list (a tuple of ints, or a spec of items):
# on the command line they are swept with brackets only.
LIST_KEYS = frozenset(name for name, f in FIELDS.items() if isinstance(f.default, tuple))
COMMA_KEYS = LIST_KEYS | {"crash", "placement"}
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
Execute = Callable[[RunConfig, Path], Records]


def split_values(name: str, text: str) -> list[str]:
    """The values ``name=text`` gives on the command line: ``lr=0.05,0.1`` is two,
    ``hidden=64,32`` one (a key of :data:`COMMA_KEYS`), ``hidden=[64],[64,32]`` two
    (brackets work for every key). An empty item is a ConfigError."""
    if text.startswith("["):
        items = _BRACKETS.findall(text)
        if ",".join(f"[{item}]" for item in items) != text:
            raise ConfigError(
                f"{name}={text}: a bracketed list is [VALUE],[VALUE],... e.g. "
                f"{name}=[64],[64,32] (quote it in a shell)"
            )
        values = items
    elif name in COMMA_KEYS:
        values = [text]
    else:
        values = text.split(",")
    if not all(value.strip() for value in values):
        raise ConfigError(
            f"{name}={text} has an empty value; give the values between commas, e.g. {name}=A,B"
        )
    return [value.strip() for value in values]


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, validated: its config and its values of the varied keys,
    by run name (its folder under the sweep's folder), algorithm after algorithm."""

    configs: dict[str, RunConfig]
    values: dict[str, dict[str, Any]]
    varied: tuple[str, ...]  # "algorithm", then the grid's keys

    @property
    def is_sweep(self) -> bool:
        """Whether a key other than ``algorithm`` varies (else: a plain comparison)."""
        return len(self.varied) > 1

    @property
    def group_keys(self) -> tuple[str, ...]:
        """The keys runs are grouped by: every varied key but ``seed``."""
        return tuple(key for key in self.varied if key != "seed")

    def groups(self) -> dict[str, list[str]]:
        """Run names by group label (``dpsgd lr=0.05``), in plan order."""
        out: dict[str, list[str]] = {}
        for name, values in self.values.items():
            label = " ".join(
                [str(values["algorithm"])]
                + [f"{k}={plain(values[k])}" for k in self.group_keys if k != "algorithm"]
            )
            out.setdefault(label, []).append(name)
        return out


def plain(value: Any) -> Any:
    """A varied value as tables show it: a tuple as ``64,32``, anything else as is."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def folder_value(value: Any) -> str:
    """A value as a folder name shows it (see the module's docstring)."""
    if isinstance(value, tuple):
        text = "-".join(map(str, value))
    elif isinstance(value, bool):
        text = str(value).lower()
    else:
        text = str(value)
    return _UNSAFE.sub("_", text) or "_"


def run_name(algorithm: str, values: Mapping[str, Any]) -> str:
    """``ALGORITHM`` or ``ALGORITHM/KEY=VALUE,KEY=VALUE``: a run's folder in the sweep's."""
    if not values:
        return algorithm
    return f"{algorithm}/" + ",".join(f"{k}={folder_value(v)}" for k, v in values.items())


def _axes(grid: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
    """The grid's keys with their values converted to the keys' types; an unknown key, a
    bad value, an empty list or a value given twice is a ConfigError."""
    axes: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(
                f"grid[{name!r}] is {values!r}; a grid maps each key to a list of values, "
                f"e.g. {{{name!r}: [A, B]}}"
            )
        if not values:
            raise ConfigError(f"grid[{name!r}] is empty; give it at least one value")
        typed = [coerce(name, value) for value in values]
        if len(set(map(str, typed))) < len(typed):
            raise ConfigError(f"{name} has a value twice in {list(values)}; give each once")
        axes[name] = typed
    return axes


def plan_sweep(
    config: RunConfig | Mapping[str, Any] | str | Path | None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    algorithms: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> SweepPlan:
    """The validated config of every run of the grid's Cartesian product, before any
    run starts. ``algorithms`` (or ``grid["algorithm"]``, not both; default the
    config's) is the first axis; ``settings[name]`` holds one algorithm's own keys.
    Under ``engine=distributed`` each run gets its own ``master_port`` (the configured
    one plus its index), so no launch waits for the last one's port."""
    axes = _axes(grid or {})
    if "algorithm" in axes and algorithms is not None:
        raise ConfigError("give the algorithms once: as algorithms=[...] or in the grid")
    if isinstance(config, (RunConfig, str, Path)):
        base: dict[str, Any] = as_config(config).to_dict()
    else:  # a mapping stays raw: its keys are checked with each algorithm, not alone
        base = dict(config or {})
    names = list(axes.pop("algorithm", None) or algorithms or [as_config(base).algorithm])
    runs: dict[str, dict[str, RunConfig]] = {name: {} for name in names}
    values: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo, strict=True))
        for algorithm, cfg in comparison_configs(base | chosen, names, settings).items():
            name = run_name(algorithm, chosen)
            if name in values:
                raise ConfigError(
                    f"two runs of the sweep would share the folder {name}; give values that "
                    "differ in letters, digits or ._+-"
                )
            runs[algorithm][name] = cfg
            values[name] = {"algorithm": algorithm} | chosen
    configs = {name: cfg for by_name in runs.values() for name, cfg in by_name.items()}
    if any(cfg.engine == "distributed" for cfg in configs.values()):
        configs = {
            name: cfg.replace(master_port=cfg.master_port + k)
            for k, (name, cfg) in enumerate(configs.items())
        }
    return SweepPlan(configs, {name: values[name] for name in configs}, ("algorithm", *axes))


class SweepResult(NamedTuple):
    """What a sweep reports: ``rows``, one per run (the varied keys, then its summary),
    ``aggregate``, one per group of runs (empty for a plain comparison), ``by``, the
    keys the runs are grouped by, and the ``configs`` of the runs, by run name."""

    rows: list[dict[str, Any]]
    aggregate: list[dict[str, Any]]
    by: tuple[str, ...]
    configs: dict[str, RunConfig]


def sweep(
    config: RunConfig | Mapping[str, Any] | str | Path | None,
    grid: Mapping[str, Sequence[Any]] | None,
    out: str | Path,
    *,
    algorithms: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    jobs: int = 1,
    force: bool = False,
    execute: Execute | None = None,
    done: Callable[[str, Records | None, str], None] = lambda name, records, note: None,
) -> SweepResult:
    """Run every combination of ``grid``'s values (and of ``algorithms``) on ``config``
    into ``out``; write ``summary.csv``, ``aggregate.csv`` and ``compare.png``::

        nettrain.sweep({"dataset": "digits"}, {"lr": [0.05, 0.1], "seed": [0, 1, 2]},
                       "runs/lr", algorithms=["dpsgd"], jobs=2)

    Finished runs of the same config in ``out`` are kept; ``force`` overwrites
    finished runs of other configs (else a ConfigError before any run). ``jobs`` runs
    go at a time in worker processes. ``execute(cfg, folder)`` runs one run in place
    of :func:`nettrain.experiment.run` and returns its records (the command line
    launches torchrun with it for ``engine=distributed``; ``jobs`` must be 1).
    ``done(name, records, note)`` is called as each run ends (``note`` "kept" for a
    run found finished). Built-in names only: to compare your own model, data or
    method objects, see :func:`nettrain.experiment.compare`."""
    plan = plan_sweep(config, grid, algorithms, settings)
    out = Path(out)
    curves = run_all(
        plan.configs,
        out,
        jobs=jobs,
        done=done,
        force=force,
        execute=execute,
        what="finished runs of another config",
    )
    if os.environ.get("RANK", "0") != "0":  # a rank of `torchrun ... compare`: rank 0 reports
        return SweepResult([], [], plan.group_keys, plan.configs)
    summaries = {
        name: json.loads((out / name / "summary.json").read_text()) for name in plan.configs
    }
    return write_sweep(plan, summaries, {k: v or [] for k, v in curves.items()}, out)


def write_sweep(
    plan: SweepPlan,
    summaries: Mapping[str, dict[str, Any]],
    curves: Mapping[str, Sequence[dict[str, Any]]],
    out: Path,
) -> SweepResult:
    """The sweep's reports in ``out`` (see the module's docstring)."""
    first = next(iter(plan.configs.values()))
    if not plan.is_sweep:
        write_comparison(first, list(summaries.values()), curves, out)
        return SweepResult(list(summaries.values()), [], plan.group_keys, plan.configs)
    rows = [
        {k: plain(v) for k, v in plan.values[name].items()} | summaries[name]
        for name in plan.configs
    ]
    write_csv(rows, out / "summary.csv")
    table = aggregate(rows, plan.group_keys, METRICS)
    write_csv(table, out / "aggregate.csv")
    groups = {label: [curves[n] for n in names] for label, names in plan.groups().items()}
    about = describe_runs({name: cfg.to_dict() for name, cfg in plan.configs.items()})
    plot_bands(groups, out / "compare.png", title=about.title(prefix="mean ± std over seeds"))
    return SweepResult(rows, table, plan.group_keys, plan.configs)
