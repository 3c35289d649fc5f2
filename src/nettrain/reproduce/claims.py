"""A paper's claim, what it expects, what was measured over the seeds, and whether it holds.

A claim is ``empirical`` (a wrong implementation could fail it: it counts for the exit
status of ``nettrain reproduce``) or ``by_construction`` (it follows from how the
experiment is set up, such as message sizes fixed by the bit width or a cost model
evaluated: reported, never counted as evidence).

Every figure a claim tests is measured once per seed; :class:`Measured` keeps the values
of every seed with their mean and sample standard deviation. The rules:

* a threshold ("at most 1 point", "at least 4x") is tested on the mean over the seeds;
* a comparison "A better than B" holds when the difference of the means exceeds twice
  its standard error (:func:`better`);
* an ordering (``x < y < z``) holds when it holds in every seed (:func:`ordered`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rich import box
from rich.table import Table

from nettrain.recording import write_json

Kind = Literal["empirical", "by_construction"]
EMPIRICAL: Kind = "empirical"
BY_CONSTRUCTION: Kind = "by_construction"
STANDARD_ERRORS = 2.0  # a difference of means is established beyond this many standard errors


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean of ``values`` and their sample standard deviation (``None`` for one value:
    one seed says nothing of the spread)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def quotient(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, infinite where the denominator is 0."""
    return numerator / denominator if denominator else math.inf


@dataclass(frozen=True)
class Measured:
    """The figure a claim tests: ``per_seed`` (one value per seed, ``None`` where the
    figure does not exist, such as a target never reached), their ``mean`` and sample
    ``std`` (``None`` where a seed has no value, and ``std`` also for one seed), and
    ``text``, the figures in words. A figure of an analysis, which depends on no seed,
    has its value as ``mean`` and an empty ``per_seed``."""

    mean: float | None
    std: float | None
    per_seed: list[float | None]
    text: str

    @classmethod
    def of(cls, values: Sequence[float | None], text: str) -> Measured:
        """The figure measured in each seed, ``values[k]`` in the ``k``-th one."""
        per_seed = [float(v) if _finite(v) else None for v in values]
        known = [v for v in per_seed if v is not None]
        if not known or len(known) < len(per_seed):
            return cls(None, None, per_seed, text)
        mean, std = mean_std(known)
        return cls(mean, std, per_seed, text)

    @classmethod
    def exact(cls, value: float | None, text: str) -> Measured:
        """A figure that depends on no seed (an analysis)."""
        return cls(float(value) if _finite(value) else None, None, [], text)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper as ``claims.json`` holds it."""

    claim: str  # the statement, in words
    kind: Kind  # EMPIRICAL (counts for the exit status) or BY_CONSTRUCTION (reported)
    expected: str  # the test it must pass, with its threshold and rule
    measured: Measured  # the figures found, per seed
    holds: bool


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`better`: ``difference`` (by how much A is better, in the
    figure's units), its standard error ``se`` (``None`` with one seed) and ``holds``."""

    difference: float
    se: float | None
    holds: bool

    def describe(self) -> str:
        """The difference and its standard error, in words."""
        if self.se is None:
            shown = f"difference {self.difference:+.4g}"
            return f"{shown}; one seed: no standard error, not established"
        return (
            f"difference {self.difference:+.4g}, standard error {self.se:.3g} "
            f"({'>' if self.holds else 'not >'} {STANDARD_ERRORS:g} se)"
        )


def standard_error(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The standard error of ``mean(a) - mean(b)`` for independent seeds,
    ``se = sqrt(sA^2 / KA + sB^2 / KB)`` (``sA``, ``sB`` the sample standard deviations,
    ``KA``, ``KB`` the numbers of seeds; ``KA = KB = K`` here); ``None`` when either has a
    single seed, which has no standard deviation."""
    if len(a) < 2 or len(b) < 2:
        return None
    return math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))


def better(a: Sequence[float], b: Sequence[float], *, lower: bool = False) -> Comparison:
    """Whether A is better than B over the seeds (``a``, ``b``: the figure in each seed;
    larger is better, or smaller with ``lower``).

    With ``d = mean(a) - mean(b)`` (``mean(b) - mean(a)`` with ``lower``) and
    ``se = sqrt(sA^2 / K + sB^2 / K)`` (:func:`standard_error`), the claim holds when
    ``d > 2 se``. Two sets of equal values (``se = 0``) need only ``d > 0``. With one seed
    there is no standard error: the difference cannot be told from the noise of a single
    run, and the comparison does not hold, whichever way that seed points. A seed whose
    figure is not finite (a run that diverged) is left to the caller: give the figure
    the worst value it can take.
    """
    sign = -1.0 if lower else 1.0
    difference = sign * (statistics.fmean(a) - statistics.fmean(b))
    se = standard_error(a, b)
    return Comparison(difference, se, se is not None and difference > STANDARD_ERRORS * se)


def ordered(series: Sequence[Sequence[float]]) -> bool:
    """Whether ``series[0][k] < series[1][k] < ...`` in every seed ``k`` (``series[i]``: one
    figure over the seeds): an ordering holds when it holds in each seed, not only in
    the means. With one seed that seed decides."""
    return all(
        all(x < y for x, y in itertools.pairwise(values)) for values in zip(*series, strict=True)
    )


def spread(values: Sequence[float | None], digits: str = ".4g") -> str:
    """``mean ± std`` of ``values`` over the seeds (the mean alone for one seed); where a
    seed has no value, the values seed by seed, ``-`` for the missing ones."""
    if not all(_finite(v) for v in values):
        return "[" + ", ".join(format(v, digits) if _finite(v) else "-" for v in values) + "]"
    mean, std = mean_std([float(v) for v in values if v is not None])
    return format(mean, digits) + ("" if std is None else f" ± {std:{digits.lstrip('+')}}")


def counted(claims: Sequence[Claim]) -> list[Claim]:
    """The empirical claims: those the exit status of ``nettrain reproduce`` rests on."""
    return [c for c in claims if c.kind == EMPIRICAL]


def all_hold(claims: Sequence[Claim]) -> bool:
    """Whether every empirical claim holds (by-construction ones are not counted)."""
    return all(c.holds for c in counted(claims))


def write_claims(claims: Sequence[Claim], path: str | Path) -> Path:
    """``claims.json``: a list of ``{"claim", "kind", "expected", "measured", "holds"}``,
    ``measured`` an object ``{"mean", "std", "per_seed", "text"}``."""
    write_json(Path(path), [asdict(c) for c in claims])
    return Path(path)


def claims_table(claims: Sequence[Claim]) -> Table:
    """The claims on the terminal: a row each, what was measured in words."""
    table = Table(title="claims", box=box.SIMPLE_HEAD)
    for column in ("claim", "kind", "expected", "measured", "holds"):
        table.add_column(column, overflow="fold")
    for c in claims:
        kind = "empirical" if c.kind == EMPIRICAL else "by construction (not counted)"
        table.add_row(c.claim, kind, c.expected, c.measured.text, "yes" if c.holds else "NO")
    return table
