"""The examples in examples/ run and learn (at a small size)."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_numpy_groups_example(tmp_path: Path, capsys) -> None:
    """20 rounds reach ~0.92 test accuracy (measured); chance is 0.25 with 4 classes."""
    example = runpy.run_path(str(EXAMPLES / "numpy_groups.py"))
    accuracy = example["main"](["--rounds", "20", "--out", str(tmp_path / "run")])
    assert accuracy > 0.25 + 0.4
    assert "test accuracy after 20 rounds" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.json").is_file()
