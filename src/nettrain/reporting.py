"""``nettrain report``'s page of run folders.

:func:`write_report` finds the run folders under the folders given (any folder with
``config.json`` and ``metrics.jsonl``: a run, a comparison, a reproduction), reads them
and writes the HTML page :mod:`nettrain.report.html` builds; the titles and legend labels
come from :func:`nettrain.description.describe_runs`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nettrain.description import describe_runs
from nettrain.errors import DataError
from nettrain.recording import read_records
from nettrain.report.html import Run, build_page, groups
from nettrain.report.plots import plot_run


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder: its ``config.json`` and ``metrics.jsonl``."""
    return (folder / "config.json").is_file() and (folder / "metrics.jsonl").is_file()


def run_folders(folder: Path) -> list[Path]:
    """``folder`` if it is a run folder, else the run folders under it, in path order."""
    if not folder.is_dir():
        raise DataError(
            f"{folder} is not a folder; give a run folder or a folder of runs (nettrain "
            "compare or reproduce --out)"
        )
    if is_run(folder):
        return [folder]
    found = sorted(p.parent for p in folder.rglob("metrics.jsonl") if is_run(p.parent))
    if not found:
        raise DataError(
            f"{folder} holds no run (a folder with config.json and metrics.jsonl); give a "
            "folder written by `nettrain run`, `nettrain compare` or `nettrain reproduce`"
        )
    return found


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if there is no such file."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); rewrite or remove it") from err


def load_runs(folders: Sequence[str | Path]) -> list[Run]:
    """The runs of ``folders``, named by their path under the folder given (prefixed with
    that folder's name when several are given), grouped by the folder that holds them."""
    runs = []
    for top in map(Path, folders):
        prefix = top.resolve().name if len(folders) > 1 else ""
        for folder in run_folders(top):
            rel = folder.relative_to(top).as_posix() if folder != top else ""
            name = "/".join(p for p in (prefix, rel) if p) or top.resolve().name
            group = name.rpartition("/")[0] if rel else ""
            config = read_json(folder / "config.json") or {}
            summary = read_json(folder / "summary.json") or {}
            runs.append(Run(name, group, folder, config, records(folder), summary))
    return runs


def records(folder: Path) -> list[dict[str, Any]]:
    """The records of a run folder, or a DataError that names a broken line."""
    try:
        return read_records(folder)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{folder / 'metrics.jsonl'} has a line that is not JSON ({err}); remove that "
            "line (a run killed while writing leaves one) and report again"
        ) from err


def group_titles(runs: Sequence[Run]) -> tuple[dict[str, str], dict[str, str]]:
    """Each group's title (what its runs share) and each run's legend label."""
    titles, labels = {}, {}
    for group, group_runs in groups(runs).items():
        about = describe_runs({run.label: run.config for run in group_runs})
        titles[group] = about.title()
        labels |= {run.name: about.label(run.label) for run in group_runs}
    return titles, labels


def write_report(
    folders: Sequence[str | Path], out: str | Path | None = None, title: str = ""
) -> Path:
    """Write the report of ``folders`` to ``out`` (default ``report.html`` in the one
    folder given); a single run folder is also plotted again (its ``plot.png``)."""
    if not folders:
        raise DataError("give at least one folder to report on")
    if out is None and len(folders) > 1:
        raise DataError("with several folders, say where the report goes: --out FILE.html")
    out = Path(out) if out is not None else Path(folders[0]) / "report.html"
    runs = load_runs(folders)
    titles, labels = group_titles(runs)
    about = describe_runs({run.name: run.config for run in runs}).title(width=10_000)
    claims = {Path(f).resolve().name: read_json(Path(f) / "claims.json") for f in folders}
    drawn = [
        path
        for f in map(Path, folders)
        if (f / "claims.json").is_file()
        for path in sorted(f.glob("*.png"))
    ]
    heading = title or f"nettrain report: {', '.join(map(str, folders))}"
    page = build_page(
        runs, heading, about, titles, labels, {k: v for k, v in claims.items() if v}, drawn
    )
    if len(folders) == 1 and is_run(Path(folders[0])):
        replot(Path(folders[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def replot(folder: Path) -> Path:
    """Draw a run folder's ``plot.png`` again from its records."""
    about = describe_runs({folder.name: read_json(folder / "config.json") or {}})
    return plot_run(records(folder), folder / "plot.png", title=about.title())
