"""TensorBoard event files of a run folder, written beside ``metrics.jsonl``.

One run per folder, so ``tensorboard --logdir runs/`` shows every run under ``runs/``
side by side. What a :class:`Board` writes:

* a scalar for every numeric field of every record, tagged with the field's name at
  step = the record's ``round`` (a field that is None, e.g. ``virtual_time_s`` of a run
  without a virtual clock, is left out; lists are not scalars);
* the histogram ``agent_test_accuracy`` of the evaluated agents' test accuracies, where
  the record holds them;
* the run's configuration in the hparams plugin's table (numbers, text and booleans as
  they are; lists and objects as text), with the summary's figures as its metrics, so
  the table compares the runs of a folder of runs.

Every record is flushed to disk as it is written, so a run that dies keeps what it
recorded. A resumed run appends a new event file to the folder with a purge step: the
events its first life wrote after the checkpoint are dropped by TensorBoard and written
again. The writer is ``torch.utils.tensorboard.SummaryWriter``; it needs the
``tensorboard`` package (``pip install 'nettrain[tensorboard]'``), imported only when a
board is opened.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HISTOGRAMS = ("agent_test_accuracy",)  # record fields of one value per agent
EVENT_FILES = "events.out.tfevents.*"


def available() -> bool:
    """Whether the ``tensorboard`` package is installed (without importing it)."""
    return importlib.util.find_spec("tensorboard") is not None


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The fields of ``record`` written as scalars: the numbers (not booleans), but
    ``round``, the step."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "round" and isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def hparam_values(config: Mapping[str, Any]) -> dict[str, float | str | bool]:
    """``config`` as the hparams plugin takes it: numbers, text and booleans as they are,
    lists as comma-separated text, mappings (the user's own objects, provenance) as JSON;
    None is left out."""
    out: dict[str, float | str | bool] = {}
    for k, v in config.items():
        if v is None:
            continue
        if isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = ",".join(map(str, v))
        else:
            out[k] = json.dumps(v, sort_keys=True, default=str)
    return out


class Board:
    """The TensorBoard writer of one run folder (the main process's only).

    ``purge_step``: the first round a resumed run writes again; TensorBoard drops the
    events at that step and after written before (None: a fresh run)."""

    def __init__(self, path: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(log_dir=str(path), purge_step=purge_step)
        self.closed = False

    def hparams(self, config: Mapping[str, Any], metrics: Iterable[str]) -> None:
        """The run's keys and the metric tags the hparams table shows beside them."""
        from torch.utils.tensorboard.summary import hparams

        experiment, start, _ = hparams(hparam_values(config), dict.fromkeys(metrics, 0.0))
        writer = self.writer.file_writer
        writer.add_summary(experiment)
        writer.add_summary(start)
        self.writer.flush()

    def record(self, record: Mapping[str, Any]) -> None:
        """One record's scalars and histograms at step ``record["round"]``, flushed."""
        step = int(record["round"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        for tag in HISTOGRAMS:
            values = record.get(tag)
            if isinstance(values, list) and values:
                import numpy as np

                self.writer.add_histogram(tag, np.asarray(values, dtype=np.float64), step)
        self.writer.flush()

    def close(self, finished: bool = False) -> None:
        """Close the event file; ``finished``: the run completed (the hparams table says
        so). A second call does nothing."""
        if self.closed:
            return
        if finished:
            from torch.utils.tensorboard.summary import hparams

            _, _, end = hparams({}, {})
            self.writer.file_writer.add_summary(end)
        self.writer.close()
        self.closed = True


def remove_events(folder: Path) -> None:
    """Delete the event files of an earlier run in ``folder`` (a fresh run's are its own)."""
    for path in folder.glob(EVENT_FILES):
        path.unlink()
