"""Plots drawn from records (lists of ``metrics.jsonl`` dictionaries).

matplotlib's non-interactive Agg backend is used explicitly, so plotting works on
machines without a display and never changes the caller's global backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

X_AXES = (
    ("round", "round"),
    ("bytes_total", "bytes sent (all agents)"),
    ("virtual_time_s", "virtual time (s)"),
)


def _metric(records: Sequence[dict[str, Any]]) -> tuple[str, str]:
    if records and records[0].get("test_accuracy") is not None:
        return "test_accuracy", "test accuracy (mean model)"
    return "test_loss", "test loss (mean model)"


def plot_runs(
    runs: Mapping[str, Sequence[dict[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """Test metric (top) and consensus distance (bottom) against round, bytes and time."""
    fig = Figure(figsize=(13, 7), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(X_AXES), squeeze=False)
    first = next(iter(runs.values()), [])
    metric, metric_label = _metric(first)
    for label, records in runs.items():
        for col, (xkey, xlabel) in enumerate(X_AXES):
            xs = [r.get(xkey) for r in records]
            if None in xs:  # e.g. no virtual clock in a distributed asynchronous run
                continue
            axes[0, col].plot(xs, [r.get(metric) for r in records], label=label)
            axes[1, col].plot(
                xs, [max(r["consensus_distance"], 1e-30) for r in records], label=label
            )
            axes[1, col].set_xlabel(xlabel)
            if xkey == "bytes_total" and any(xs):
                axes[0, col].set_xscale("symlog")
                axes[1, col].set_xscale("symlog")
    axes[0, 0].set_ylabel(metric_label)
    axes[1, 0].set_ylabel("consensus distance")
    for ax in axes[1]:
        ax.set_yscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_run(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The plot of one run (see :func:`plot_runs`)."""
    return plot_runs({title or "run": records}, path, title)


def plot_metrics(
    runs: Mapping[str, Sequence[dict[str, Any]]],
    panels: Sequence[tuple[str, str, bool]],
    path: str | Path,
    title: str = "",
    x: tuple[str, str] = ("round", "iteration"),
) -> Path:
    """One panel per ``(key, label, log_scale)`` against ``x``, one line per run.

    Runs whose records lack a key are left out of that panel.
    """
    fig = Figure(figsize=(4.2 * len(panels), 3.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    xkey, xlabel = x
    palette = colormaps["tab20" if len(runs) > 10 else "tab10"].colors  # distinct lines
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for k, (name, records) in enumerate(runs.items()):
            points = [(r[xkey], r[key]) for r in records if r.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ys = [max(v, 1e-30) for v in ys] if log else ys
                ax.plot(xs, ys, label=name, color=palette[k % len(palette)])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_bands(
    groups: Mapping[str, Sequence[Sequence[dict[str, Any]]]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Runs over seeds: one line per group, the mean over its runs of the test metric
    (left) and the consensus distance (right) at each round, in a band of ± one sample
    standard deviation (none for one run). Only the rounds every run of a group
    recorded are drawn."""
    import numpy as np

    first = next((runs[0] for runs in groups.values() if runs and runs[0]), [])
    accuracy = bool(first) and first[0].get("test_accuracy") is not None
    panels = (
        (
            "test_accuracy" if accuracy else "test_loss",
            "test accuracy" if accuracy else "test loss",
            False,
        ),
        ("consensus_distance", "consensus distance", True),
    )
    fig = Figure(figsize=(11, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    palette = colormaps["tab20" if len(groups) > 10 else "tab10"].colors
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for k, (name, runs) in enumerate(groups.items()):
            series = [{r["round"]: r[key] for r in rs if r.get(key) is not None} for rs in runs]
            rounds = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if not rounds:
                continue
            values = np.array([[s[t] for t in rounds] for s in series], dtype=float)
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
            low, high = mean - std, mean + std
            if log:
                mean, low, high = (np.maximum(v, 1e-30) for v in (mean, low, high))
            color = palette[k % len(palette)]
            ax.plot(rounds, mean, label=f"{name} ({len(values)})", color=color)
            ax.fill_between(rounds, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", title="group (runs)")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)
