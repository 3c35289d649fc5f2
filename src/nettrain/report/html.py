"""``nettrain report``: one self-contained HTML page of run folders.

The page holds the configuration differences between the runs (the keys that differ in
a table, the common ones folded away), the summary of every run (``summary.json``), the
claims of a reproduction (``claims.json``), every recorded metric against rounds,
samples, bytes and virtual time (:func:`nettrain.report.plots.plot_runs`), the figures
a reproduction drew, and each run's extra figures (:data:`FIGURE_MAKERS`). Images are
inlined as base64 PNG data URIs and the style sheet is inline: the file needs nothing
else to be read, and links to nothing outside it.

The page is built from data (:class:`Run`, claims, titles); finding and reading the
folders is :func:`nettrain.reporting.write_report`'s part. The runs of one group (the
folder that holds them) are drawn together, one figure per x axis.
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

from nettrain.report import timeline
from nettrain.report.plots import X_AXES, plot_runs, x_axes
from nettrain.report.tables import COLUMNS, fmt_value
from nettrain.report.titles import describe, fmt

PROVENANCE = "provenance"  # config.json's versions and command line: not a setting
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


def timeline_figure(run: Run, out: Path) -> Path | None:
    """The run's timeline of computing, sending and waiting: its ``timeline.png``, drawn
    again from ``timeline.jsonl`` where it is missing; None for a run without one."""
    if not (run.folder / timeline.FILE).is_file():
        return None
    if (run.folder / timeline.PLOT).is_file():
        return run.folder / timeline.PLOT
    events = timeline.read_timeline(run.folder)
    return timeline.plot_timeline(events, out / timeline.PLOT, title=run.name)


FIGURE_MAKERS: list[tuple[str, FigureMaker]] = [("timeline", timeline_figure)]


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
    about = describe(
        {name: {k: v for k, v in c.items() if k != PROVENANCE} for name, c in configs.items()}
    )
    differ = list(dict.fromkeys(k for own in about.own.values() for k in own))
    return differ, about.common


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


def claims_section(claims: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The claims of each reproduction (``claims.json``'s list, by the folder's name): a
    row each, what was measured in words; the count of those that hold is of the
    empirical claims (a ``by_construction`` one is shown, not counted)."""
    parts = []
    for folder, listed in claims.items():
        rows = [
            [
                c.get("claim"),
                c.get("kind", "empirical").replace("_", " "),
                "yes" if c.get("holds") else "NO",
                c.get("expected"),
                measured_text(c.get("measured")),
            ]
            for c in listed
        ]
        counted = [c for c in listed if c.get("kind", "empirical") == "empirical"]
        held = sum(bool(c.get("holds")) for c in counted)
        parts.append(
            f"<h3>{html.escape(folder)}: {held} of {len(counted)} empirical claims hold</h3>"
            + table(["claim", "kind", "holds", "expected", "measured"], rows, "claims")
        )
    return "<h2>Claims</h2>" + "\n".join(parts) if parts else ""


def measured_text(measured: Any) -> Any:
    """A claim's ``measured`` in words: its ``text`` (an object of figures per seed), or
    itself (a claim written as text)."""
    return measured.get("text") if isinstance(measured, Mapping) else measured


def image(path: Path, alt: str) -> str:
    """``path`` (a PNG) as an ``<img>`` with a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure(path: Path, caption: str) -> str:
    """``path`` (a PNG) inlined, with ``caption`` under it."""
    return f"<figure>{image(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def metrics_section(
    runs: Sequence[Run], titles: Mapping[str, str], labels: Mapping[str, str], scratch: Path
) -> str:
    """Every recorded metric of each group of runs, a figure per x axis they have, titled
    ``titles[group]``, a run's line labelled ``labels[name]``."""
    parts = ["<h2>Metrics</h2>"]
    for k, (group, members) in enumerate(groups(runs).items()):
        curves = {run.label: run.records for run in members}
        legend = {run.label: labels.get(run.name, run.label) for run in members}
        if group:
            parts.append(f"<h3>{html.escape(group)}</h3>")
        for key, label in x_axes(curves, X_AXES):
            path = scratch / f"metrics{k}_{key}.png"
            plot_runs(curves, path, titles.get(group, ""), labels=legend, x=[(key, label)])
            where = f"{group}: " if group else ""
            parts.append(figure(path, f"{where}every recorded metric against {label}"))
    return "\n".join(parts)


def drawn_figures_section(paths: Sequence[Path]) -> str:
    """Figures drawn before (a reproduction's own plots), inlined."""
    parts = [figure(path, f"{path.parent.name}/{path.name}") for path in paths]
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


def build_page(
    runs: Sequence[Run],
    heading: str,
    about: str = "",
    titles: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    claims: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    drawn: Sequence[Path] = (),
) -> str:
    """The HTML page of ``runs``: ``heading``, ``about`` (what the runs share), each
    group's figure title (``titles``) and each run's legend label (``labels``), the
    reproductions' ``claims`` (by folder name) and the figures they ``drawn``."""
    with tempfile.TemporaryDirectory(prefix="nettrain-report-") as tmp:
        scratch = Path(tmp)
        sections = [
            config_section(runs),
            summary_section(runs),
            claims_section(claims or {}),
            metrics_section(runs, titles or {}, labels or {}, scratch),
            drawn_figures_section(drawn),
            extra_figures_section(runs, scratch),
        ]
    body = "\n".join(f'<section class="overflow">{s}</section>' for s in sections if s)
    count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(heading)}</title>\n<style>{STYLE}</style>\n"
        f"<script>{SCRIPT}</script>\n</head>\n<body>\n<h1>{html.escape(heading)}</h1>\n"
        f"<p>{html.escape(count + (': ' + about if about else ''))}</p>\n"
        f"{body}\n</body>\n</html>\n"
    )
