"""TensorBoard event files of a run folder, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nettrain.experiment import resume, run
from nettrain.recording import read_records
from nettrain.report import board
from nettrain.report.board import scalars

SMALL = {
    "dataset": "digits",
    "agents": 4,
    "rounds": 10,
    "eval_every": 5,
    "hidden": "8",
    "progress": False,
}


def read_events(folder: Path) -> Any:
    """TensorBoard's own reader of the event files in ``folder``, loaded."""
    reader = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard extra is not installed (pip install 'nettrain[tensorboard]')",
    )
    events = reader.EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0})
    return events.Reload()


def float32(value: float) -> float:
    """``value`` as TensorBoard stores a scalar."""
    import numpy as np

    return float(np.float32(value))


def test_event_files_hold_every_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(SMALL, out)
    events = read_events(out)
    records = read_records(out)
    assert [r["round"] for r in records] == [0, 5, 10]
    assert list(out.glob("events.out.tfevents.*")), "no event file beside metrics.jsonl"
    tags = events.Tags()
    expected = set().union(*(scalars(r) for r in records))
    assert {"test_accuracy", "consensus_distance", "bytes_total", "train_loss"} <= expected
    assert expected <= set(tags["scalars"])
    for tag in expected:
        written = {e.step: e.value for e in events.Scalars(tag)}
        assert written == {r["round"]: float32(r[tag]) for r in records if tag in scalars(r)}
    # per-agent test accuracy: one histogram per record, over the 4 agents
    assert "agent_test_accuracy" in tags["histograms"]
    for event, record in zip(events.Histograms("agent_test_accuracy"), records, strict=True):
        accuracies = record["agent_test_accuracy"]
        assert len(accuracies) == 4 and event.step == record["round"]
        h = event.histogram_value
        assert (h.num, h.min, h.max) == (4, min(accuracies), max(accuracies))
        assert h.sum == pytest.approx(sum(accuracies))
    # the hparams plugin's table: the run's keys, the summary's figures as metrics
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert "_hparams_/session_end_info" in hparams  # the run finished
    start = hparams["_hparams_/session_start_info"]
    assert b"algorithm" in start and b"dpsgd" in start and b"agents" in start


def test_a_resumed_run_appends_and_replaces_what_followed_the_checkpoint(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    run(SMALL | {"rounds": 6, "eval_every": 2, "checkpoint_every": 4}, out)
    resume(out, {"rounds": 8})
    events = read_events(out)
    records = read_records(out)
    assert [r["round"] for r in records] == [0, 2, 4, 6, 8]
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    written = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    assert written == [(r["round"], float32(r["test_accuracy"])) for r in records]  # 6 once


def test_tensorboard_false_writes_no_event_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(SMALL | {"rounds": 5, "tensorboard": False}, out)
    assert json.loads((out / "config.json").read_text())["tensorboard"] is False
    assert not list(out.glob("events.out.tfevents.*"))


def test_without_the_tensorboard_package_runs_write_no_event_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(board, "available", lambda: False)
    out = tmp_path / "run"
    result = run(SMALL | {"rounds": 5}, out)  # tensorboard=true, the default: no error
    assert result.records[-1]["round"] == 5
    assert not list(out.glob("events.out.tfevents.*"))
