"""Tables of run summaries: on the terminal (rich) and as CSV."""

from __future__ import annotations

import csv
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


def _fmt(value: Any) -> str:
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
        table.add_row(*(_fmt(s.get(k)) for k, _ in keys))
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
        table.add_row(*(_fmt(row.get(c)) for c in columns))
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
