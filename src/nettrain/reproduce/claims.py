"""A paper's claim, what it expects, what was measured, and whether it holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from nettrain.recording import write_json


@dataclass(frozen=True)
class Claim:
    claim: str  # the statement, in words
    expected: str  # the test it must pass, with its threshold
    measured: str  # the figures found
    holds: bool


def write_claims(claims: Sequence[Claim], path: str | Path) -> Path:
    """``claims.json``: a list of ``{"claim", "expected", "measured", "holds"}``."""
    write_json(Path(path), [asdict(c) for c in claims])
    return Path(path)


def claims_table(claims: Sequence[Claim]) -> Table:
    table = Table(title="claims", box=box.SIMPLE_HEAD)
    for column in ("claim", "expected", "measured", "holds"):
        table.add_column(column, overflow="fold")
    for c in claims:
        table.add_row(c.claim, c.expected, c.measured, "yes" if c.holds else "NO")
    return table
