"""``nettrain compare engine=distributed`` starts one torchrun per algorithm by itself."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from helpers import free_port
from nettrain.cli import main
from nettrain.config import load_config
from nettrain.experiment import run

SMALL = ["dataset=digits", "agents=4", "hidden=8", "rounds=6", "batch_size=8", "eval_every=3"]


def test_compare_launches_torchrun_per_algorithm(tmp_path: Path, monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items = [*SMALL, "engine=distributed", "progress=false", f"master_port={free_port()}"]
    code = main(["compare", *items, "--algorithms", "allreduce,dpsgd", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm"], r["engine"]) for r in rows] == [
        ("allreduce", "distributed"),
        ("dpsgd", "distributed"),
    ]
    assert (tmp_path / "compare.png").stat().st_size > 0
    sim = run(load_config(dict(i.split("=") for i in SMALL) | {"algorithm": "dpsgd"}))
    got = torch.load(tmp_path / "dpsgd" / "final.pt", weights_only=True)
    torch.testing.assert_close(got, sim.x, rtol=0, atol=1e-5)
    assert not os.environ.get("RANK")
