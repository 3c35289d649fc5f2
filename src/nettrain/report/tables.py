"""Tables of run summaries: on the terminal (rich) and as CSV, one row per run or, for
runs over several seeds, one per group with the mean ± std of each metric."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

COLUMNS = (
    ("algorithm", "algorithm"),
    ("test_accuracy", "acc"),
    ("centre_test_accuracy", "centre acc"),
    ("agent_test_accuracy_min", "worst agent"),
    ("test_loss", "test loss"),
    ("consensus_distance", "consensus"),
    ("bytes_total", "bytes"),
    ("virtual_time_s", "virtual s"),
    ("wall_time_s", "wall s"),
)
METRICS = tuple(key for key, _ in COLUMNS if key != "algorithm")  # what aggregate() averages
# what aggregate_table() shows (two numbers a cell): the results, not the costs
SPREAD = ("test_accuracy", "centre_test_accuracy", "agent_test_accuracy_min", "test_loss")


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    if isinstance(value, int) and value >= 100_000:
        return f"{value:.2e}"
    return str(value)


def summary_table(summaries: Sequence[dict[str, Any]], title: str = "") -> Table:
    table = Table(title=title or None, box=box.SIMPLE_HEAD)
    keys = [(k, h) for k, h in COLUMNS if any(s.get(k) is not None for s in summaries)]
    for i, (_, header) in enumerate(keys):
        table.add_column(header, justify="left" if i == 0 else "right")
    for s in summaries:
        table.add_row(*(fmt_value(s.get(k)) for k, _ in keys))
    return table


def rows_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "", left: int = 1
) -> Table:
    """Rows of dicts, one column per key of ``columns``; the first ``left`` columns are
    labels (left-aligned), the rest figures formatted like :func:`summary_table`'s."""
    table = Table(title=title or None, box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(fmt_value(row.get(c)) for c in columns))
    return table


def write_csv(summaries: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """All keys of all summaries as columns, one row per run."""
    fields: list[str] = []
    for s in summaries:
        fields += [k for k in s if k not in fields]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(summaries)
    return Path(path)


def aggregate(
    rows: Sequence[dict[str, Any]], by: Sequence[str], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """One row per group of ``rows`` with equal values of the keys ``by``, in the order
    the groups first appear: those values, ``runs`` and, for each metric every run of
    the group has, ``<metric>_mean`` and ``<metric>_std`` (the sample standard
    deviation, ``None`` for a group of one run: one seed says nothing of the spread)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k)) for k in by), []).append(row)
    out = []
    for members in groups.values():
        line = {k: members[0].get(k) for k in by} | {"runs": len(members)}
        for metric in metrics:
            values = [m.get(metric) for m in members]
            if any(v is None for v in values):
                continue
            line[f"{metric}_mean"] = statistics.fmean(values)
            line[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(line)
    return out


def aggregate_table(
    rows: Sequence[dict[str, Any]],
    by: Sequence[str],
    title: str = "",
    metrics: Sequence[str] = SPREAD,
) -> Table:
    """:func:`aggregate`'s rows on the terminal: the group's keys, its runs, and each of
    ``metrics`` the rows have as ``mean ± std`` (the mean alone for one run), headed as
    :data:`COLUMNS` names them (others by their key)."""
    table = Table(title=title or None, box=box.SIMPLE_HEAD)
    headers = dict(COLUMNS)
    metrics = [(k, headers.get(k, k)) for k in metrics if any(f"{k}_mean" in r for r in rows)]
    for i, header in enumerate([*by, "runs", *(h for _, h in metrics)]):
        table.add_column(header, justify="left" if i < len(by) else "right")
    for row in rows:
        cells = [fmt_value(row.get(k)) for k in [*by, "runs"]]
        for key, _ in metrics:
            mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
            spread = "" if std is None else f" ± {fmt_value(std)}"
            cells.append(fmt_value(mean) + spread)
        table.add_row(*cells)
    return table
