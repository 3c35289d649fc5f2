"""Every row of docs/bad-input.md raises its documented error (the doc is the test table).

The first table holds ``key=value`` inputs of the command line; the table under
``## From Python`` holds Python expressions, evaluated in :data:`PYTHON_NAMESPACE`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import nettrain
import nettrain.errors as errors
from nettrain.cli import main
from nettrain.config import load_config, parse_overrides
from nettrain.data import Dataset, from_dataset, from_tensors, load_npz, partition
from nettrain.experiment import build_job, run
from nettrain.problem.models import build_model

TABLE = Path(__file__).parents[1] / "docs" / "bad-input.md"
ROW = re.compile(r"^\| `(?P<input>[^`]+)` \| (?P<error>\w+) \| `(?P<message>[^`]+)` \|$")
PYTHON_HEADING = "## From Python"

_X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))  # (20, 4) float32
_Y = torch.arange(20) % 3  # (20,) int64 labels in 0..2


class Branch(nn.Module):
    """Branches in Python on a tensor's value: vmap cannot vectorise it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if x.sum() > 0 else -self.lin(x)


class Noise(nn.Module):
    """Draws its own random numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


class Memory(nn.Module):
    """Writes into a tensor it holds but did not register as a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen = torch.zeros(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.copy_(x.mean(0))
        return self.lin(x)


def run_model(model: nn.Module, **keys: object) -> object:
    """A one-round run of 4 agents on ``(X, Y)`` with ``model`` and config ``keys``."""
    config = {"agents": 4, "rounds": 1, "progress": False} | keys
    return nettrain.run(config, model=model, data=from_tensors(_X, _Y, _X, _Y))


# What the expressions of the "From Python" table may use; add names here for new rows.
PYTHON_NAMESPACE: dict[str, object] = {
    "nn": nn,
    "run_model": run_model,
    "Branch": Branch,
    "Noise": Noise,
    "Memory": Memory,
    "BN": nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)),
    "torch": torch,
    "np": np,
    "nettrain": nettrain,
    "Dataset": Dataset,
    "from_tensors": from_tensors,
    "from_dataset": from_dataset,
    "load_npz": load_npz,
    "partition": partition,
    "build_model": build_model,
    "X": _X,
    "Y": _Y,
    "PAIRS": TensorDataset(_X, _Y),  # map-style: PAIRS[i] = (X[i], Y[i])
}


def table_rows(python: bool) -> list[tuple[str, str, str]]:
    """Rows of the command-line table (before the Python heading) or of the Python one."""
    text = TABLE.read_text()
    cli, _, py = text.partition(PYTHON_HEADING)
    assert py, f"docs/bad-input.md lost its {PYTHON_HEADING!r} section"
    lines = (py if python else cli).splitlines()
    return [m.groups() for line in lines if (m := ROW.match(line))]


def rows() -> list[tuple[str, str, str]]:
    found = table_rows(python=False)
    assert len(found) >= 30, "the bad-input table lost its rows"
    return found


def python_rows() -> list[tuple[str, str, str]]:
    found = table_rows(python=True)
    assert len(found) >= 20, "the From Python table lost its rows"
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


@pytest.mark.parametrize(
    ("given", "error", "message"), python_rows(), ids=[r[0] for r in python_rows()]
)
def test_documented_bad_python_input(given: str, error: str, message: str) -> None:
    with pytest.raises(getattr(errors, error)) as caught:
        eval(given, dict(PYTHON_NAMESPACE))  # a copy: rows cannot leak names to each other
    assert message in str(caught.value)


@pytest.mark.parametrize(("given", "code"), [("agents=0", 2), ("lr=1e6 rounds=30", 1)])
def test_exit_codes(given: str, code: int, tmp_path: Path, capsys) -> None:
    assert main(["run", *given.split(), "progress=false", "--out", str(tmp_path)]) == code
    assert capsys.readouterr().err.startswith("nettrain:")
