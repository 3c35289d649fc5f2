"""``nettrain report``: one self-contained HTML page of run folders.

The page holds the configuration differences between the runs (the keys that differ in
a table, the common ones folded away), the summary of every run (``summary.json``), the
claims of a reproduction (``claims.json``), every recorded metric against rounds,
samples, bytes and virtual time (:func:`nettrain.report.plots.plot_runs`), the figures
a reproduction drew, and each run's extra figures (:data:`FIGURE_MAKERS`). Images are
inlined as base64 PNG data URIs and the style sheet is inline: the file needs nothing
else to be read, and links to nothing outside it.

A folder given is a run folder (``config.json`` and ``metrics.jsonl``), or a folder
holding run folders at any depth (``nettrain compare``, ``nettrain reproduce``). The
runs of one folder are drawn together, one figure per x axis.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nettrain.errors import DataError
from nettrain.recording import read_config, read_records
from nettrain.report.plots import X_AXES, plot_run, plot_runs, x_axes
from nettrain.report.tables import COLUMNS
from nettrain.report.tables import _fmt as fmt_value
from nettrain.report.titles import describe, fmt

PROVENANCE = "provenance"  # config.json's versions and command line, shown apart
# summary.json's keys that say what ran rather than what it gave (the config table has them)
IDENTITY = frozenset(
    {"label", "algorithm", "engine", "agents", "topology", "schedule", "dataset", "model"}
    | {"rounds", "seed", "allocator", "nettrain_version", "torch_version", "command"}
)


@dataclass(frozen=True)
class Run:
    """One run folder: its name in the report, the group it is drawn with, what it holds."""

    name: str
    group: str
    folder: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def label(self) -> str:
        """The run's name within its group."""
        return self.name[len(self.group) + 1 :] if self.group else self.name


# A figure maker draws an extra figure of one run into ``out`` (a folder of its own),
# returning the PNG's path, or None when the run holds nothing for it (e.g. no
# timeline.jsonl). Each is tried on every run; a figure it returns is shown under the run
# with its title. Add one with ``FIGURE_MAKERS.append(("timeline", make_timeline))``.
FigureMaker = Callable[[Run, Path], Path | None]
FIGURE_MAKERS: list[tuple[str, FigureMaker]] = []


def is_run(folder: Path) -> bool:
    """Whether ``folder`` is a run folder: its ``config.json`` and ``metrics.jsonl``."""
    return (folder / "config.json").is_file() and (folder / "metrics.jsonl").is_file()


def run_folders(folder: Path) -> list[Path]:
    """``folder`` if it is a run folder, else the run folders under it, in path order."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a run, compare or reproduce folder")
    if is_run(folder):
        return [folder]
    found = sorted(p.parent for p in folder.rglob("metrics.jsonl") if is_run(p.parent))
    if not found:
        raise DataError(
            f"{folder} holds no run (a folder with config.json and metrics.jsonl); give a "
            "folder written by `nettrain run`, `nettrain compare` or `nettrain reproduce`"
        )
    return found


def _read_json(path: Path) -> Any:
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
            runs.append(
                Run(
                    name=name,
                    group=group,
                    folder=folder,
                    config=read_config(folder) or {},
                    records=read_records(folder),
                    summary=_read_json(folder / "summary.json") or {},
                )
            )
    return runs


def groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """The runs by group, in order of appearance."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def config_differences(
    configs: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], dict[str, Any]]:
    """The keys whose values differ between ``configs`` (a key some lack counts as
    differing), and the common keys with their value; provenance is left out."""
    keys = list(dict.fromkeys(k for c in configs.values() for k in c if k != PROVENANCE))
    differ, common = [], {}
    for key in keys:
        values = {json.dumps(c.get(key), sort_keys=True) for c in configs.values()}
        if len(values) > 1 or any(key not in c for c in configs.values()):
            differ.append(key)
        else:
            common[key] = next(iter(configs.values()))[key]
    return differ, common


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, dict)):
        return html.escape(json.dumps(value) if isinstance(value, dict) else fmt(value))
    if isinstance(value, bool):
        return str(value).lower()
    return html.escape(fmt_value(value) if isinstance(value, (int, float)) else str(value))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """An HTML table: a header of ``columns``, every value escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def config_section(runs: Sequence[Run]) -> str:
    """The keys that differ between the runs, a row per run; the common keys folded."""
    configs = {run.name: run.config for run in runs}
    differ, common = config_differences(configs)
    parts = ["<h2>Configuration</h2>"]
    if len(runs) > 1:
        if differ:
            rows = [[run.name, *(run.config.get(k) for k in differ)] for run in runs]
            parts.append(table(["run", *differ], rows, "diff"))
        else:
            parts.append("<p>The runs share every key.</p>")
    summary = f"{len(common)} keys {'common to every run' if len(runs) > 1 else 'of the run'}"
    common_rows = [[k, v] for k, v in common.items()]
    parts.append(
        f"<details><summary>{summary}</summary>{table(['key', 'value'], common_rows, 'common')}"
        "</details>"
    )
    return "\n".join(parts)


def summary_columns(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The results of ``summaries`` (their figures, not what ran), in the order of the
    terminal's summary table, then by appearance."""
    present = dict.fromkeys(
        k
        for s in summaries
        for k, v in s.items()
        if k not in IDENTITY and not isinstance(v, (dict, list)) and v is not None
    )
    first = [k for k, _ in COLUMNS if k in present]
    return first + [k for k in present if k not in first]


def summary_section(runs: Sequence[Run]) -> str:
    """Every run's ``summary.json`` figures, a row each."""
    columns = summary_columns([run.summary for run in runs])
    rows = [[run.name, *(run.summary.get(k) for k in columns)] for run in runs]
    note = (
        ""
        if all(run.summary for run in runs)
        else "<p>A run without summary.json did not finish.</p>"
    )
    return f"<h2>Summary</h2>{note}{table(['run', *columns], rows, 'summary')}"


def claims_section(folders: Sequence[str | Path]) -> str:
    """The claims of every reproduction folder among ``folders`` (``claims.json``)."""
    parts = []
    for folder in map(Path, folders):
        claims = _read_json(folder / "claims.json")
        if not claims:
            continue
        rows = [
            [
                c.get("claim"),
                "yes" if c.get("holds") else "NO",
                c.get("expected"),
                c.get("measured"),
            ]
            for c in claims
        ]
        held = sum(bool(c.get("holds")) for c in claims)
        parts.append(
            f"<h3>{html.escape(folder.resolve().name)}: {held} of {len(claims)} claims hold</h3>"
            + table(["claim", "holds", "expected", "measured"], rows, "claims")
        )
    return "<h2>Claims</h2>" + "\n".join(parts) if parts else ""


def image(path: Path, alt: str) -> str:
    """``path`` (a PNG) as an ``<img>`` with a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{image(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def metrics_section(runs: Sequence[Run], scratch: Path) -> str:
    """Every recorded metric of each group of runs, a figure per x axis they have."""
    parts = ["<h2>Metrics</h2>"]
    for k, (group, members) in enumerate(groups(runs).items()):
        curves = {run.label: run.records for run in members}
        configs = {run.label: run.config for run in members if run.config}
        if group:
            parts.append(f"<h3>{html.escape(group)}</h3>")
        for key, label in x_axes(curves, X_AXES):
            path = plot_runs(
                curves, scratch / f"metrics{k}_{key}.png", configs=configs, x=[(key, label)]
            )
            parts.append(
                figure(path, f"{group + ': ' if group else ''}every metric against {label}")
            )
    return "\n".join(parts)


def drawn_figures_section(folders: Sequence[str | Path]) -> str:
    """The figures a reproduction drew at its top level (its ``*.png``)."""
    parts = []
    for folder in map(Path, folders):
        if not (folder / "claims.json").is_file():
            continue
        for path in sorted(folder.glob("*.png")):
            parts.append(figure(path, f"{folder.resolve().name}: {path.name}"))
    return "<h2>Figures of the reproduction</h2>" + "\n".join(parts) if parts else ""


def extra_figures_section(runs: Sequence[Run], scratch: Path) -> str:
    """What :data:`FIGURE_MAKERS` draw of each run."""
    parts = []
    for k, run in enumerate(runs):
        for j, (title, make) in enumerate(FIGURE_MAKERS):
            out = scratch / f"extra{k}_{j}"
            out.mkdir()
            path = make(run, out)
            if path is not None:
                parts.append(figure(Path(path), f"{run.name}: {title}"))
    return "<h2>Run figures</h2>" + "\n".join(parts) if parts else ""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
td:first-child, th:first-child, table.claims td, table.common td { text-align: left; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafafa; }
.overflow { overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""
# On load, the page writes how many of its images decoded (a check for headless browsers).
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded.length));
});
"""


def build_report(folders: Sequence[str | Path], title: str = "") -> str:
    """The HTML page of the runs in ``folders``."""
    runs = load_runs(folders)
    names = ", ".join(str(f) for f in folders)
    heading = title or f"nettrain report: {names}"
    about = describe({run.name: run.config for run in runs if run.config}).title()
    with tempfile.TemporaryDirectory(prefix="nettrain-report-") as tmp:
        scratch = Path(tmp)
        sections = [
            config_section(runs),
            summary_section(runs),
            claims_section(folders),
            metrics_section(runs, scratch),
            drawn_figures_section(folders),
            extra_figures_section(runs, scratch),
        ]
    body = "\n".join(f'<section class="overflow">{s}</section>' for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(heading)}</title>\n<style>{STYLE}</style>\n"
        f"<script>{SCRIPT}</script>\n</head>\n<body>\n<h1>{html.escape(heading)}</h1>\n"
        f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}: {html.escape(about)}</p>\n"
        f"{body}\n</body>\n</html>\n"
    )


def write_report(
    folders: Sequence[str | Path], out: str | Path | None = None, title: str = ""
) -> Path:
    """Write the report of ``folders`` to ``out`` (default ``report.html`` in the one
    folder given); a single run folder is also plotted again (its ``plot.png``)."""
    if not folders:
        raise DataError("give at least one folder to report on")
    if out is None:
        if len(folders) > 1:
            raise DataError("with several folders, say where the report goes: --out FILE.html")
        out = Path(folders[0]) / "report.html"
    page = build_report(folders, title)
    if len(folders) == 1 and is_run(Path(folders[0])):
        replot(Path(folders[0]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def replot(folder: Path) -> Path:
    """Draw a run folder's ``plot.png`` again from its records."""
    return plot_run(read_records(folder), folder / "plot.png", config=read_config(folder))
