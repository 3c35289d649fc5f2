"""Plots drawn from records (lists of ``metrics.jsonl`` dictionaries).

:func:`plot_runs` draws every numeric metric the records hold, one panel per metric
(:func:`choose_panels`), against each x axis the runs have (round, samples, bytes,
virtual time). A metric whose runs lie orders of magnitude apart (all-reduce's consensus
distance of 1e-13 next to gossip's 1e-2) gets one panel per scale; a metric that spans
decades gets a log axis with labelled ticks. The legend stands below the panels; titles
and legend labels saying what the runs share and where they differ come from
:func:`nettrain.description.describe_runs`.

matplotlib's non-interactive Agg backend is used explicitly, so plotting works on
machines without a display and never changes the caller's global backend.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    EngFormatter,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

Record = Mapping[str, Any]
Runs = Mapping[str, Sequence[Record]]
# a run's band about its line, by key: (round, low, high) at each round
Bands = Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]]
Groups = Mapping[str, Sequence[Sequence[Record]]]  # a group's runs, one per seed

X_AXES = (
    ("round", "round"),
    ("samples", "samples (all agents)"),
    ("bytes_total", "bytes sent (all agents)"),
    ("virtual_time_s", "virtual time (s)"),
)
# what a comparison's figure draws against rounds, bytes and virtual time
HEADLINE = (
    "test_accuracy",
    "centre_test_accuracy",
    "agent_test_accuracy_min",
    "test_loss",
    "train_loss",
    "consensus_distance",
)
# x axes drawn on a log scale where their values span a decade or more
LOG_X = frozenset({"bytes_total"})
# counters of a run's progress: x axes, not metrics drawn against them
PROGRESS = frozenset({key for key, _ in X_AXES} | {"epoch"})
# the metrics' labels, in the order of their panels; others follow by name
LABELS = {
    "test_accuracy": "test accuracy (mean model)",
    "agent_test_accuracy_mean": "test accuracy (mean of agents)",
    "agent_test_accuracy_min": "test accuracy (worst agent)",
    "centre_test_accuracy": "test accuracy (centre)",
    "test_loss": "test loss (mean model)",
    "centre_test_loss": "test loss (centre)",
    "train_loss": "training loss",
    "objective": "objective at the mean model",
    "stationarity": "stationarity (prox-gradient map)",
    "disagreement": "disagreement max ||x_i - mean||",
    "sparsity": "share of exact zeros",
    "consensus_distance": "consensus distance",
    "staleness_mean": "staleness (mean)",
    "messages_total": "messages (all agents)",
    "bytes_max_agent": "bytes sent (busiest agent)",
    "messages_max_agent": "messages (busiest agent)",
    "wall_time_s": "wall-clock time (s)",
    "train_time_s": "training time (s)",
    "round_wall_time_s": "wall-clock time of a round (s)",
    "samples_per_s": "samples per second",
}
# shares in [0, 1], read on a linear axis whatever their span
LINEAR = frozenset({key for key in LABELS if "accuracy" in key} | {"sparsity"})
BYTES = frozenset({"bytes_total", "bytes_max_agent"})
COUNTS = frozenset({"samples", "messages_total", "messages_max_agent"})  # 7 k, 1.2 M
LOG_DECADES = 1.0  # a panel whose positive values span this many decades is drawn on log
SPLIT_DECADES = 4.0  # runs this many decades apart get a panel each
PANEL_SIZE = (3.7, 2.7)  # inches per panel


@dataclass(frozen=True)
class Panel:
    """One metric (``key``) drawn for ``runs``, on a log y axis or not."""

    key: str
    label: str
    log: bool
    runs: tuple[str, ...]
    part: str = ""  # which runs, when the metric's runs are split over panels by scale


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(records: Iterable[Record], key: str) -> list[float]:
    return [float(r[key]) for r in records if _number(r.get(key))]


def metric_keys(runs: Runs) -> list[str]:
    """Every key that holds a number in some record, progress counters left out, in the
    order of :data:`LABELS` then by name."""
    found = {k for records in runs.values() for r in records for k, v in r.items() if _number(v)}
    found -= PROGRESS
    return [k for k in LABELS if k in found] + sorted(found - set(LABELS))


def x_axes(runs: Runs, axes: Sequence[tuple[str, str]] = X_AXES) -> list[tuple[str, str]]:
    """The ``axes`` some run has values of (no virtual time where no clock ran)."""
    return [(k, label) for k, label in axes if any(_values(rs, k) for rs in runs.values())]


def spans_decades(values: Sequence[float], decades: float = LOG_DECADES) -> bool:
    """Whether ``values`` (none negative) span ``decades`` or more: a log axis for them."""
    positive = [v for v in values if v > 0]
    if len(positive) < 2 or any(v < 0 for v in values):
        return False
    return math.log10(max(positive) / min(positive)) >= decades


def _magnitude(values: Sequence[float]) -> float | None:
    nonzero = [math.log10(abs(v)) for v in values if v != 0]
    return statistics.median(nonzero) if nonzero else None


def scale_groups(series: Mapping[str, Sequence[float]]) -> list[tuple[str, ...]]:
    """The runs of ``series`` (their values of one metric) in groups of one scale: runs
    whose typical values lie more than :data:`SPLIT_DECADES` apart go to separate groups;
    runs of zeros only join the smallest."""
    sized = sorted((m, name) for name, vs in series.items() if (m := _magnitude(vs)) is not None)
    zeros = tuple(name for name, vs in series.items() if vs and _magnitude(vs) is None)
    groups: list[list[str]] = []
    last = -math.inf
    for magnitude, name in sized:
        if not groups or magnitude - last > SPLIT_DECADES:
            groups.append([])
        groups[-1].append(name)
        last = magnitude
    if not groups:
        return [zeros] if zeros else []
    groups[0][:0] = zeros
    order = list(series)
    return [tuple(sorted(g, key=order.index)) for g in groups]


def choose_panels(
    runs: Runs,
    keys: Sequence[str] | None = None,
    log: bool | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[Panel]:
    """The panels of ``keys`` (default :func:`metric_keys`): one per metric and scale
    (see :func:`scale_groups`), on a log axis where its values span decades (or as
    ``log`` says), labelled from ``labels`` (default :data:`LABELS`)."""
    panels = []
    for key in metric_keys(runs) if keys is None else keys:
        series = {name: _values(records, key) for name, records in runs.items()}
        series = {name: vs for name, vs in series.items() if vs}
        groups = scale_groups(series)
        for group in groups:
            values = [v for name in group for v in series[name]]
            label = (labels or LABELS).get(key, key.replace("_", " "))
            part = ", ".join(group) if len(groups) > 1 else ""
            scale = spans_decades(values) and key not in LINEAR if log is None else log
            panels.append(Panel(key, label, scale, group, part))
    return panels


def _short(value: float, _: Any = None) -> str:
    return f"{value:.3g}"


def _log_ticks(axis: Axis, values: Sequence[float], unit: str | None) -> None:
    """Labelled ticks on a log ``axis``: 1, 2, 5 per decade over a narrow range, 1, 3
    over a wider one, every decade over a wide one; ``unit``: engineering notation
    (``2 MB``)."""
    positive = [v for v in values if v > 0]
    decades = math.log10(max(positive) / min(positive)) if len(positive) > 1 else 0.0
    subs = (1.0, 2.0, 5.0) if decades < 1.3 else (1.0, 3.0) if decades < 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=10))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=10))
    axis.set_major_formatter(EngFormatter(unit=unit) if unit is not None else FuncFormatter(_short))
    axis.set_minor_formatter(NullFormatter())


def _unit(key: str) -> str | None:
    """The unit of engineering notation for ``key``'s ticks (None: plain numbers)."""
    return "B" if key in BYTES else "" if key in COUNTS else None


def _linear_ticks(axis: Axis, key: str) -> None:
    """At most six ticks on a linear ``axis`` of ``key``, bytes and counts in engineering
    notation (``2 MB``, ``7 k``), other numbers as matplotlib writes them."""
    axis.set_major_locator(MaxNLocator(nbins=5))
    unit = _unit(key)
    if unit is not None:
        axis.set_major_formatter(EngFormatter(unit=unit))


def _points(records: Sequence[Record], xkey: str, ykey: str) -> list[tuple[float, float]]:
    return [
        (float(r[xkey]), float(r[ykey]))
        for r in records
        if _number(r.get(xkey)) and _number(r.get(ykey))
    ]


def _band_at(
    records: Sequence[Record], band: Sequence[tuple[float, float, float]], xkey: str
) -> list[tuple[float, float, float]]:
    """``band`` (``(round, low, high)`` points) at the records' values of ``xkey`` in
    place of the rounds; rounds without a value are left out."""
    at = {r["round"]: r.get(xkey) for r in records if "round" in r}
    return [(float(at[t]), low, high) for t, low, high in band if _number(at.get(t))]


def _draw_cell(
    ax: Axes,
    panel: Panel,
    x: tuple[str, str],
    runs: Runs,
    colors: Mapping[str, Any],
    bands: Bands | None = None,
) -> None:
    """``panel``'s metric against ``x``: one line per run (in its band, where ``bands``
    has one: drawn at the run's value of ``x`` at each round), the axes scaled and
    labelled."""
    xkey, xlabel = x
    curves = {name: _points(runs[name], xkey, panel.key) for name in panel.runs}
    xs_all = [px for points in curves.values() for px, _ in points]
    log_x = xkey in LOG_X and spans_decades(xs_all)
    for name, points in curves.items():
        kept = [
            (px, py) for px, py in points if (px > 0 or not log_x) and (py > 0 or not panel.log)
        ]
        if kept:
            xs, ys = zip(*kept, strict=True)
            marker = "o" if len(kept) < 12 else None
            ax.plot(xs, ys, color=colors[name], marker=marker, markersize=3, linewidth=1.4)
        band = _band_at(runs[name], (bands or {}).get(name, {}).get(panel.key, ()), xkey)
        if band:
            xs, lows, highs = zip(*band, strict=True)
            ax.fill_between(xs, lows, highs, color=colors[name], alpha=0.2, linewidth=0)
    if log_x:
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, xs_all, _unit(xkey))
    else:
        _linear_ticks(ax.xaxis, xkey)
    if panel.log:
        ax.set_yscale("log")
        _log_ticks(
            ax.yaxis, [py for points in curves.values() for _, py in points], _unit(panel.key)
        )
    else:
        _linear_ticks(ax.yaxis, panel.key)
    ax.set_xlabel(xlabel, fontsize="small")
    ax.set_ylabel(panel.label, fontsize="small")
    if panel.part:
        ax.set_title(panel.part, fontsize="small")
    ax.tick_params(labelsize="small")
    ax.grid(alpha=0.3, which="major")


def _colors(names: Sequence[str]) -> dict[str, Any]:
    palette = colormaps["tab20" if len(names) > 10 else "tab10"].colors  # distinct lines
    return {name: palette[k % len(palette)] for k, name in enumerate(names)}


@dataclass(frozen=True)
class Layout:
    """Where the panels stand in a figure, in inches: a fixed grid (no layout engine to
    run, which a figure of dozens of panels would wait seconds for)."""

    rows: int
    columns: int
    title_lines: int
    legend_rows: int

    LEFT: ClassVar[float] = 0.8  # y tick labels and label of the first column
    GAP_W: ClassVar[float] = 0.85  # between columns: the next one's y labels
    GAP_H: ClassVar[float] = 0.75  # between rows: x tick labels, x label, a panel title
    RIGHT: ClassVar[float] = 0.2

    @property
    def top(self) -> float:
        return 0.3 + 0.22 * self.title_lines

    @property
    def bottom(self) -> float:
        return 0.6 + 0.28 * self.legend_rows

    @property
    def size(self) -> tuple[float, float]:
        width, height = PANEL_SIZE
        return width * self.columns, height * self.rows + self.top + self.bottom

    def grid(self) -> dict[str, float]:
        """``gridspec_kw`` of ``Figure.subplots`` for this layout."""
        fig_w, fig_h = self.size
        top, bottom = self.top, self.bottom
        inner_w = fig_w - self.LEFT - self.RIGHT - (self.columns - 1) * self.GAP_W
        inner_h = fig_h - top - bottom - (self.rows - 1) * self.GAP_H
        return {
            "left": self.LEFT / fig_w,
            "right": 1 - self.RIGHT / fig_w,
            "top": 1 - top / fig_h,
            "bottom": bottom / fig_h,
            "wspace": self.GAP_W / (inner_w / self.columns),
            "hspace": self.GAP_H / (inner_h / self.rows),
        }


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """How many legend entries fit side by side in ``width`` inches."""
    longest = max((len(label) for label in labels), default=1)
    return max(1, min(len(labels), int(width / (0.075 * longest + 0.7))))


def draw_panels(
    runs: Runs,
    cells: Sequence[tuple[Panel, tuple[str, str]]],
    path: str | Path,
    title: str = "",
    columns: int = 3,
    labels: Mapping[str, str] | None = None,
    bands: Bands | None = None,
) -> Path:
    """Save a figure of ``cells`` (a panel against an x axis each), ``columns`` to a row,
    the runs' legend (``labels[name]``, default the name) below them; a run's line
    against rounds stands in its band where ``bands`` has one."""
    columns = max(1, min(columns, len(cells)))
    rows = max(1, math.ceil(len(cells) / columns))
    names = [(labels or {}).get(n, n) for n in runs]
    legend_columns = _legend_columns(names, PANEL_SIZE[0] * columns)
    legend_rows = -(-len(names) // legend_columns) if len(names) > 1 else 0
    layout = Layout(rows, columns, title.count("\n") + 1 if title else 0, legend_rows)
    fig = Figure(figsize=layout.size)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, columns, squeeze=False, gridspec_kw=layout.grid()).flat)
    colors = _colors(list(runs))
    for ax, (panel, x) in zip(axes, cells, strict=False):
        _draw_cell(ax, panel, x, runs, colors, bands)
    for ax in axes[len(cells) :]:
        ax.set_visible(False)
    if not cells:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "nothing recorded to plot", ha="center", va="center")
    if len(names) > 1:  # one run's line needs no key
        handles = [
            Line2D([], [], color=colors[n], label=label)
            for n, label in zip(runs, names, strict=True)
        ]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncols=legend_columns,
            frameon=False,
            bbox_to_anchor=(0.5, 0.08 / layout.size[1]),  # inches above the bottom
        )
    if title:
        fig.suptitle(title, fontsize="medium", y=1 - 0.12 / layout.size[1], va="top")
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_runs(
    runs: Runs,
    path: str | Path,
    title: str = "",
    *,
    labels: Mapping[str, str] | None = None,
    x: Sequence[tuple[str, str]] = X_AXES,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Every numeric metric of ``runs`` (or those of ``metrics``), a row of panels each,
    against each x axis of ``x`` the runs have (a column each; with one x axis the
    panels wrap three to a row); the legend below says ``labels[name]`` (default the
    run's name). :func:`nettrain.description.describe_runs` gives a title and labels."""
    axes = x_axes(runs, x)
    cells = [(panel, ax) for panel in choose_panels(runs, metrics) for ax in axes]
    columns = len(axes) if len(axes) > 1 else 3
    return draw_panels(runs, cells, path, title, columns, labels)


def plot_run(records: Sequence[Record], path: str | Path, title: str = "") -> Path:
    """The plot of one run: every metric against rounds (see :func:`plot_runs`; the
    report draws them against samples, bytes and virtual time too)."""
    return plot_runs({"run": records}, path, title, x=X_AXES[:1])


def plot_metrics(
    runs: Runs,
    panels: Sequence[tuple[str, str, bool]],
    path: str | Path,
    title: str = "",
    x: tuple[str, str] = ("round", "iteration"),
) -> Path:
    """One panel per ``(key, label, log_scale)`` against ``x``, one line per run (a
    metric whose runs lie orders of magnitude apart gets a panel per scale).

    Runs whose records lack a key are left out of that panel.
    """
    return draw_panels(runs, _metric_cells(runs, panels, x), path, title, columns=3)


def _metric_cells(
    runs: Runs, panels: Sequence[tuple[str, str, bool]], x: tuple[str, str]
) -> list[tuple[Panel, tuple[str, str]]]:
    """The cells of :func:`plot_metrics`: each ``(key, label, log_scale)`` against ``x``."""
    labels = {key: label for key, label, _ in panels}
    return [
        (panel, x)
        for key, _, log in panels
        for panel in choose_panels(runs, [key], log=log, labels=labels)
    ]


def seed_mean(
    runs: Sequence[Sequence[Record]], log: Mapping[str, bool]
) -> tuple[list[Record], dict[str, list[tuple[float, float, float]]]]:
    """The mean of ``runs`` (one per seed) at every round they all recorded, for each
    key of ``log``, and its band of ± one sample standard deviation over the runs (none
    for one run): arithmetic, or for a key drawn on a log axis (``log[key]``) geometric,
    the mean and spread of ``log10`` of its positive values."""
    if not runs:
        return [], {}
    at = [{r["round"]: r for r in records} for records in runs]
    rounds = sorted(set.intersection(*(set(a) for a in at)))
    means: list[Record] = []
    band: dict[str, list[tuple[float, float, float]]] = {}
    for t in rounds:
        mean: dict[str, Any] = {"round": t}
        for key, on_log in log.items():
            values = [float(a[t][key]) for a in at if _number(a[t].get(key))]
            values = [v for v in values if v > 0] if on_log else values
            if not values:
                continue
            ys = [math.log10(v) for v in values] if on_log else values
            centre = statistics.fmean(ys)
            spread = statistics.stdev(ys) if len(ys) > 1 else 0.0
            low, mid, high = (centre - spread, centre, centre + spread)
            if on_log:
                low, mid, high = 10**low, 10**mid, 10**high
            mean[key] = mid
            band.setdefault(key, []).append((t, low, high))
        means.append(mean)
    return means, band


def plot_bands(
    groups: Groups,
    path: str | Path,
    title: str = "",
    metrics: Sequence[str] = HEADLINE,
) -> Path:
    """Runs over seeds: one line per group, the mean over its runs (:func:`seed_mean`)
    of each of ``metrics`` at each round, in a band of ± one standard deviation; the
    legend says each group's number of runs."""
    every = {f"{name} {k}": runs[k] for name, runs in groups.items() for k in range(len(runs))}
    log = {panel.key: panel.log for panel in choose_panels(every, metrics)}
    means, bands = _group_means(groups, log)
    cells = [
        (panel, X_AXES[0])
        for key in metrics
        for panel in choose_panels(means, [key], log=log.get(key))
    ]
    return draw_panels(means, cells, path, title, 3, _run_counts(groups), bands)


def _group_means(groups: Groups, log: Mapping[str, bool]) -> tuple[Runs, Bands]:
    """:func:`seed_mean` of every group: its mean records and its bands, by name."""
    means: dict[str, Sequence[Record]] = {}
    bands: dict[str, Mapping[str, Sequence[tuple[float, float, float]]]] = {}
    for name, runs in groups.items():
        means[name], bands[name] = seed_mean(runs, log)
    return means, bands


def _run_counts(groups: Groups) -> dict[str, str]:
    """Legend labels: each group's name and number of runs."""
    return {name: f"{name} ({len(runs)} runs)" for name, runs in groups.items()}


def plot_seeds(
    groups: Groups,
    panels: Sequence[tuple[str, str, bool]],
    path: str | Path,
    title: str = "",
    x: tuple[str, str] = ("round", "iteration"),
) -> Path:
    """:func:`plot_metrics` over seeds: one line per group (its runs, one per seed), the
    mean over its runs at each round they all recorded (:func:`seed_mean`; ``x`` is
    averaged too) in a band of ± one standard deviation. Groups without runs are left
    out; the legend says each group's number of runs."""
    groups = {name: runs for name, runs in groups.items() if runs}
    log = {key: on_log for key, _, on_log in panels} | {x[0]: False}
    means, bands = _group_means(groups, log)
    cells = _metric_cells(means, panels, x)
    return draw_panels(means, cells, path, title, 3, _run_counts(groups), bands)
