"""Every row of docs/bad-input.md raises its documented error (the doc is the test table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import nettrain.errors as errors
from nettrain.cli import main
from nettrain.config import load_config, parse_overrides
from nettrain.experiment import build_job, run

TABLE = Path(__file__).parents[1] / "docs" / "bad-input.md"
ROW = re.compile(r"^\| `(?P<input>[^`]+)` \| (?P<error>\w+) \| `(?P<message>[^`]+)` \|$")


def rows() -> list[tuple[str, str, str]]:
    found = [m.groups() for line in TABLE.read_text().splitlines() if (m := ROW.match(line))]
    assert len(found) >= 30, "the bad-input table lost its rows"
    return found


@pytest.mark.parametrize(("given", "error", "message"), rows(), ids=[r[0] for r in rows()])
def test_documented_bad_input(given: str, error: str, message: str) -> None:
    overrides = parse_overrides(["progress=false", "eval_every=10", *given.split()])
    with pytest.raises(getattr(errors, error)) as caught:
        cfg = load_config(overrides=overrides)
        if error in ("DivergenceError", "FaultError"):  # found by running
            run(cfg)
        else:
            build_job(cfg)
    assert message in str(caught.value)


@pytest.mark.parametrize(("given", "code"), [("agents=0", 2), ("lr=1e6 rounds=30", 1)])
def test_exit_codes(given: str, code: int, tmp_path: Path, capsys) -> None:
    assert main(["run", *given.split(), "progress=false", "--out", str(tmp_path)]) == code
    assert capsys.readouterr().err.startswith("nettrain:")
