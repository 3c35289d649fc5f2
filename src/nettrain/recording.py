"""Records and run folders.

A run folder holds::

    config.json     the full, validated configuration
    metrics.jsonl   one JSON record per evaluation, appended and flushed as the run goes
    summary.json    the last record's figures plus what identifies the run
    failed.json     instead of summary.json, the error a run stopped with where its command
                    went on without it (a reproduction's learning rate that diverged)
    final.pt        every agent's parameters, a tensor of shape (n, d)
    buffers.pt      every agent's buffers (BatchNorm statistics), {name: (n, ...)}, if any
    centre.pt       the centre variable (d,) of a centre-based method (EASGD family)
    plot.png        every recorded metric against rounds, samples, bytes, virtual time
    timeline.jsonl  what each agent did when in the first rounds (``timeline=true``;
                    :mod:`nettrain.report.timeline`), drawn in timeline.png
    events.out.tfevents.*   TensorBoard's: every record's figures, the hparams table
                    (``tensorboard=true`` and the tensorboard package installed;
                    :mod:`nettrain.report.board`)

``RunFolder(None)`` keeps the records in memory only (for the Python API and tests).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from nettrain.checkpoint import Checkpoint
from nettrain.errors import ConfigError
from nettrain.report import board, timeline

SUMMARY_FROM_RECORD = (
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "agent_test_accuracy_mean",
    "agent_test_accuracy_min",
    "consensus_distance",
    "train_loss",
    "bytes_total",
    "messages_total",
    "bytes_max_agent",
    "messages_max_agent",
    "samples",
    "epoch",
    "virtual_time_s",
    "wall_time_s",
    "centre_test_accuracy",
    "centre_test_loss",
    "centre_val_loss",
    "staleness_mean",
    "samples_per_s",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, tuple):
        return list(value)
    return value


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` atomically: a temporary file, then a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def config_json(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as ``config.json`` holds it (tuples as lists, no NaN)."""
    return json.loads(json.dumps({k: _jsonable(v) for k, v in config.items()}, default=str))


def read_records(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl``."""
    lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_config(folder: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a run folder, or None if it has none."""
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


FAILED = "failed.json"  # a run's error, where its command went on without it


class RunFolder:
    """Where a run writes what it produces; ``path=None`` keeps records in memory."""

    def __init__(
        self,
        path: str | Path | None,
        keep: int | None = None,
        tensorboard: bool = False,
        home: str | Path | None = None,
    ) -> None:
        """A fresh folder, or with ``keep``, an existing one whose first ``keep`` records stay
        (a resumed run drops the records written after its checkpoint). ``tensorboard``:
        also write TensorBoard event files, if the tensorboard package is installed.
        ``home``: the run folder on every process of a run, also those that do not write
        its records (``path`` None); each writes its own snapshots there (default: ``path``)."""
        self.path = Path(path) if path is not None else None
        self.home = Path(home) if home is not None else self.path
        self.adopted = False  # this process took the folder over (:meth:`adopt`)
        self.records: list[dict[str, Any]] = []
        self.board: board.Board | None = None
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.jsonl"
        if keep is not None and metrics.is_file():
            self.records = read_records(self.path)[:keep]
        if keep is None:  # a fresh run: what an earlier run here wrote is no longer true
            for name in ("summary.json", FAILED, timeline.FILE, timeline.PLOT):
                (self.path / name).unlink(missing_ok=True)
        lines = "".join(json.dumps(r) + "\n" for r in self.records)
        tmp = metrics.with_suffix(".jsonl.tmp")
        tmp.write_text(lines)
        os.replace(tmp, metrics)
        if keep is None:
            board.remove_events(self.path)
        if tensorboard and board.available():
            # a resumed run writes again from the round after the last record it keeps
            purge = self.records[-1]["round"] + 1 if self.records else 1
            self.board = board.Board(self.path, purge_step=purge if keep is not None else None)

    def adopt(self) -> None:
        """Write the folder ``home`` from now on, in place of the process that wrote it
        and died: the records written so far are kept, the next ones appended."""
        if self.path is not None or self.home is None:
            return
        self.path, self.adopted = self.home, True
        self.records = read_records(self.path) if (self.path / "metrics.jsonl").is_file() else []

    def checkpoint(self, ckpt: Checkpoint) -> None:
        if self.path is not None:
            ckpt.save(self.path)

    def checkpoint_hint(self, saved_round: int | None) -> str:
        """What to tell a user whose run stopped: where the last good checkpoint is."""
        if self.path is None or saved_round is None:
            return ""
        return (
            f". The last good checkpoint (round {saved_round}) is kept in {self.path}; "
            f"continue it with `nettrain run --resume {self.path} KEY=VALUE ...`"
        )

    def write_config(self, config: dict[str, Any]) -> None:
        if self.path is not None:
            write_json(self.path / "config.json", config_json(config))
        if self.board is not None:
            self.board.hparams(config_json(config), SUMMARY_FROM_RECORD)

    def write_timeline(self, events: list[dict[str, Any]], since: int = 0) -> None:
        """Write ``timeline.jsonl``: ``events``, after the intervals of the rounds before
        ``since`` that a resumed run's folder holds."""
        if self.path is not None:
            timeline.write_timeline(self.path, events, since)

    def append(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self.records.append(record)
        if self.path is not None:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.record(record)

    def finish(
        self,
        summary: dict[str, Any],
        x: torch.Tensor,
        plot: bool = True,
        centre: torch.Tensor | None = None,
        buffers: dict[str, torch.Tensor] | None = None,
        title: str | None = None,
    ) -> None:
        """Write ``final.pt`` (``x: (n, d)`` on CPU), ``centre.pt`` and ``buffers.pt``
        (``{name: (n, ...)}``) if given, the plot (titled ``title``, default the summary's
        label) and the timeline's, and last ``summary.json``, which marks the run
        finished; close the TensorBoard events."""
        if self.path is None:
            return
        if self.board is not None:
            self.board.close(finished=True)
        tensors: dict[str, Any] = {"final.pt": x.detach().cpu()}
        if centre is not None:
            tensors["centre.pt"] = centre.detach().cpu()
        if buffers:
            tensors["buffers.pt"] = {k: v.detach().cpu() for k, v in buffers.items()}
        for name, value in tensors.items():
            tmp = self.path / f"{name}.tmp"
            torch.save(value, tmp)
            os.replace(tmp, self.path / name)
        title = summary.get("label", "") if title is None else title
        if plot and self.records:
            from nettrain.report.plots import plot_run

            plot_run(self.records, self.path / "plot.png", title=title)
        if plot and (self.path / timeline.FILE).is_file():
            events = timeline.read_timeline(self.path)
            timeline.plot_timeline(events, self.path / timeline.PLOT, title)
        # last: summary.json marks the run finished (what a rerun keeps)
        write_json(self.path / "summary.json", {k: _jsonable(v) for k, v in summary.items()})

    def close(self) -> None:
        """Close what is open (the TensorBoard events) when a run stops before
        :meth:`finish`; what was recorded stays."""
        if self.board is not None:
            self.board.close()


def finished_runs(folders: Iterable[str | Path]) -> list[Path]:
    """The ``folders`` that hold a finished run (its ``summary.json``): what the command
    line never overwrites without ``--force``."""
    return [Path(f) for f in folders if (Path(f) / "summary.json").is_file()]


def refuse_finished(
    folders: Iterable[str | Path], force: bool, what: str = "", advice: str = ""
) -> None:
    """A ConfigError naming ``--force`` if one of ``folders`` holds a finished run and
    ``force`` is off: ``what`` those runs are (default: finished runs, whose
    ``summary.json`` marks them), ``advice`` another way out, for the message."""
    finished = [] if force else finished_runs(folders)
    if finished:
        one = len(finished) == 1
        held = "already holds a finished run" if one else "hold finished runs"
        what = what or f"{held} (summary.json)"
        raise ConfigError(
            f"{', '.join(map(str, finished))}: {what}, which nettrain does not overwrite; "
            f"pass --force to overwrite {'it' if one else 'them'}{advice}, or choose "
            "another --out"
        )


def summarize(records: list[dict[str, Any]], **identity: Any) -> dict[str, Any]:
    """``identity`` (algorithm, engine, agents, ...) plus the last record's figures."""
    last = records[-1] if records else {}
    return {**identity, **{k: last.get(k) for k in SUMMARY_FROM_RECORD if k in last}}
