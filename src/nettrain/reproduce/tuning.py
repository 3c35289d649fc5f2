"""Equal tuning: every method of a comparison picks its values from the same grid.

A comparison is fair only when each method, baselines included, gets the same budget:
the same grid of values of one or two keys (``step0`` for NEXT and DGD; ``lr`` and
``momentum`` for the SGD methods), one run per grid point, and the same rule to choose.
The rule is a *criterion* computed from a run's records, smallest best: the final
validation loss (:func:`final`, ``"val_loss"``, on the split of the ``validation`` key,
carved from the training set) or the final training objective (``"objective"``), never
a test-set figure. Ties go to the earlier point in grid order; a run that diverged
(no records) or whose criterion is NaN or infinite is never chosen, and a method none
of whose points gives a finite criterion is a ConfigError.

:func:`tune` runs every grid point of every method through
:func:`~nettrain.reproduce.runner.run_all` (finished runs are kept, ``jobs`` runs at a
time) and returns a :class:`Tuning`: the chosen values per method and a row per point
with its criterion, which :func:`write_tuning` writes as ``tuning.csv``. Over several
seeds, :func:`over_seeds` chooses each method's run of the smallest mean criterion
(the seeds' runs of a grid point, a name per point, already made by the caller's plan).
The all-reduce baselines get the large-batch treatment, a gradual warm-up of
:func:`warmup_rounds`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from nettrain.config import RunConfig, load_config
from nettrain.errors import ConfigError, DivergenceError
from nettrain.report.tables import write_csv
from nettrain.reproduce.runner import Records, run_all

Criterion = Callable[[Records], float]
WARMUP_FRACTION = 0.05  # a large batch's warm-up: Goyal et al.'s 5 of 90 epochs


def warmup_rounds(rounds: int) -> int:
    """The gradual warm-up (``lr_warmup``) of a large-batch run of ``rounds`` rounds:
    :data:`WARMUP_FRACTION` of them, at least one (Goyal et al. 2017, "Accurate, large
    minibatch SGD": 5 of 90 epochs)."""
    return max(1, round(WARMUP_FRACTION * rounds))


def final(key: str) -> Criterion:
    """The criterion ``records[-1][key]`` (``inf`` where the run has no records or the
    last record lacks ``key``)."""

    def criterion(records: Records) -> float:
        value = records[-1].get(key) if records else None
        return math.inf if value is None else float(value)

    criterion.__name__ = f"final {key}"
    return criterion


def shown(values: Mapping[str, Any]) -> str:
    """``{key: value}`` in words, ``key=value`` (floats as ``%g``) joined by spaces."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


@dataclass(frozen=True)
class Grid:
    """The values every method tries: ``points`` (each a value per key of ``keys``,
    one or two keys) in grid order, the order that breaks ties."""

    keys: tuple[str, ...]
    points: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, **axes: Sequence[Any]) -> Grid:
        """The product of the axes ``key=values``, the first key outermost."""
        if not 1 <= len(axes) <= 2 or not all(axes.values()):
            raise ConfigError(f"a grid has one or two keys, each with values; got {axes}")
        return cls(tuple(axes), tuple(itertools.product(*axes.values())))

    def values(self, point: tuple[Any, ...]) -> dict[str, Any]:
        """``point`` as ``{key: value}``."""
        return dict(zip(self.keys, point, strict=True))

    def every(self) -> list[dict[str, Any]]:
        """Every point as ``{key: value}`` (:meth:`values`), in grid order."""
        return [self.values(p) for p in self.points]

    def label(self, point: tuple[Any, ...]) -> str:
        """``point`` in words: ``step0=0.25`` or ``lr=0.1 momentum=0.9``."""
        return shown(self.values(point))


@dataclass(frozen=True)
class Tuning:
    """What equal tuning found: ``chosen`` (method -> ``{key: value}``), ``rows`` (a row
    per method and point in grid order: ``method``, the keys, ``criterion``,
    ``chosen``) and the ``criterion``'s name."""

    chosen: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    criterion: str

    def describe(self) -> str:
        """The chosen values in words: ``DGD: step0=0.25; NEXT: step0=1``."""
        return "; ".join(f"{m}: {shown(values)}" for m, values in self.chosen.items())


def score(records: Records | None, criterion: Criterion) -> float:
    """``criterion(records)``, ``inf`` for a diverged run (``None``) or a NaN."""
    if not records:
        return math.inf
    value = criterion(records)
    return value if math.isfinite(value) else math.inf


def choose(scores: Sequence[float]) -> int | None:
    """The index of the smallest finite score, the first of equal ones (grid order);
    ``None`` when none is finite."""
    best = None
    for i, s in enumerate(scores):
        if math.isfinite(s) and (best is None or s < scores[best]):
            best = i
    return best


def pick(
    results: Mapping[str, Sequence[Records | None]], grid: Grid, criterion: Criterion
) -> Tuning:
    """Each method's point (``results[method][k]``: the records at ``grid.points[k]``,
    ``None`` if it diverged) of the smallest criterion; see the module docstring."""
    chosen: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for method, runs in results.items():
        if len(runs) != len(grid.points):
            raise ValueError(f"{method}: {len(runs)} runs for {len(grid.points)} grid points")
        scores = [score(r, criterion) for r in runs]
        best = choose(scores)
        if best is None:
            raise ConfigError(
                f"{method}: no point of the grid {grid.keys} gave a finite "
                f"{criterion.__name__} (every run diverged); widen the grid to smaller values"
            )
        chosen[method] = grid.values(grid.points[best])
        for k, (point, s) in enumerate(zip(grid.points, scores, strict=True)):
            row = {"method": method, **grid.values(point), "criterion": s}
            rows.append(row | {"chosen": k == best})
    return Tuning(chosen, rows, criterion.__name__)


def grid_plan(bases: Mapping[str, RunConfig], grid: Grid) -> dict[str, RunConfig]:
    """Every method's run at every point: ``"METHOD POINT"`` -> its base config with the
    point's values (:meth:`Grid.label`)."""
    return {
        f"{method} {grid.label(point)}": load_config(base.to_dict() | grid.values(point))
        for method, base in bases.items()
        for point in grid.points
    }


def tune(
    bases: Mapping[str, RunConfig],
    grid: Grid,
    criterion: Criterion,
    out: Path,
    *,
    jobs: int = 1,
    force: bool = False,
    done: Callable[[str, Records | None, str], None] = lambda name, records, note: None,
) -> tuple[Tuning, dict[str, Records | None]]:
    """Run :func:`grid_plan` into ``out`` (:func:`~nettrain.reproduce.runner.run_all`: a
    diverged run is kept as ``None``) and :func:`pick`; return the tuning and every
    run's records by name."""
    plan = grid_plan(bases, grid)
    found = run_all(plan, out, jobs=jobs, done=done, tolerate=(DivergenceError,), force=force)
    results = {m: [found[f"{m} {grid.label(p)}"] for p in grid.points] for m in bases}
    return pick(results, grid, criterion), found


def write_tuning(tuning: Tuning, path: Path) -> Path:
    """``tuning.csv``: a row per method and grid point, its criterion and whether chosen."""
    write_csv(tuning.rows, path)
    return path


def over_seeds(
    found: Mapping[int, Mapping[str, Records | None]],
    grids: Mapping[str, Sequence[str]],
    criterion: Criterion,
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Each method's grid point chosen on every seed's runs at once.

    ``found``: seed -> run name -> records (``None``: diverged); ``grids``: method ->
    the names of its runs at each grid point, in grid order. A point's score is the
    mean over the seeds of :func:`score` (infinite when any seed diverged), and the
    method's choice the point of the smallest finite one, the first of equal ones.
    Returns method -> chosen name, and a row per method and point (``method``,
    ``run``, ``criterion_mean``, ``criterion_per_seed``, ``chosen``) for ``tuning.csv``.
    A method none of whose points has a finite mean is a ConfigError.
    """
    chosen: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for method, names in grids.items():
        scores = {name: [score(runs[name], criterion) for runs in found.values()] for name in names}
        means = [fmean(v) if all(map(math.isfinite, v)) else math.inf for v in scores.values()]
        best = choose(means)
        if best is None:
            raise ConfigError(
                f"{method}: every point of its grid ({', '.join(names)}) diverged or gave no "
                f"finite {criterion.__name__} in some seed; widen the grid to smaller values"
            )
        chosen[method] = names[best]
        for k, (name, values) in enumerate(scores.items()):
            per_seed = " ".join(f"{v:.6g}" for v in values)
            rows.append(
                {"method": method, "run": name, "criterion_mean": means[k]}
                | {"criterion_per_seed": per_seed, "chosen": k == best}
            )
    return chosen, rows
