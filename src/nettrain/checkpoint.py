"""Checkpoints: everything a run needs to continue exactly where it stopped.

What a checkpoint holds, how it is written and read back, and what resuming
guarantees: docs/faults.md, "Checkpoints" (and :class:`Checkpoint`'s fields). It is one
``torch.save`` of plain containers, tensors and numbers; topologies need nothing:
``W(t)`` is a function of ``(seed, t)``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from nettrain.errors import DataError

FILENAME = "checkpoint.pt"
S = TypeVar("S")


@dataclass(frozen=True)
class Checkpoint:
    round: int  # rounds completed
    state: dict[str, Any]  # the algorithm's state, see :func:`state_dict`
    rng: list[Any]  # every agent's Oracle.local_state(): batches drawn, buffers, dropout
    clock: float  # virtual seconds
    totals: dict[str, torch.Tensor]  # cumulative samples, messages, bytes per agent
    records: int  # records written so far
    wall_time_s: float
    servers: dict[str, Any] | None = None  # the parameter servers' centre, if any
    events: dict[str, Any] | None = None  # the event engine's clocks, draws and batch state
    comm: dict[str, Any] | None = None  # what the communicator carries: error feedback's residual

    def save(self, folder: Path) -> Path:
        """Write ``folder/checkpoint.pt`` atomically: a temporary file, then a rename."""
        path = folder / FILENAME
        tmp = path.with_suffix(".pt.tmp")
        torch.save(dataclasses.asdict(self), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> Checkpoint:
        path = Path(folder) / FILENAME
        if not path.is_file():
            raise DataError(
                f"no {FILENAME} in {folder}: only runs started with checkpoint_every=N "
                "(rounds between checkpoints) can be resumed"
            )
        return cls(**torch.load(path, weights_only=True))


def state_dict(state: Any) -> dict[str, Any]:
    """A (nested) dataclass state as nested dicts of its tensors and numbers."""
    out = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        is_state = dataclasses.is_dataclass(value) and not isinstance(value, type)
        out[f.name] = state_dict(value) if is_state else value
    return out


def load_state(template: S, saved: dict[str, Any]) -> S:
    """``template`` (a fresh state of the same algorithm) with every field from ``saved``."""
    changes = {}
    for f in dataclasses.fields(template):  # type: ignore[arg-type]
        value = getattr(template, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = load_state(value, saved[f.name])
        else:
            changes[f.name] = saved[f.name]
    return dataclasses.replace(template, **changes)  # type: ignore[type-var]
