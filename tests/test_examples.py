"""The scripts of examples/ run at small size, as a user runs them: with python, and
under torchrun for engine=distributed, whose results equal the simulator's."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import torchrun_command, wait_or_fail

EXAMPLES = Path(__file__).parents[1] / "examples"
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def command(args: list[str], cwd: Path) -> str:
    """Run ``args`` in ``cwd``; its standard output (a failure shows its standard error)."""
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def python(script: str, *args: str, cwd: Path) -> str:
    """Run ``examples/script`` with ``args`` in ``cwd``; its standard output."""
    return command([sys.executable, str(EXAMPLES / script), *args], cwd)


def torchrun(nproc: int, script: str, *args: str, cwd: Path) -> str:
    """The same under ``torchrun --nproc-per-node nproc``; rank 0's output."""
    log = cwd / "torchrun.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            torchrun_command(nproc, str(EXAMPLES / script), *args),
            cwd=cwd,
            env=ENV,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    wait_or_fail(proc, log, 300)
    return log.read_text()


def final(folder: Path, name: str = "final.pt"):
    return torch.load(folder / name, weights_only=True)


def test_own_cnn_on_both_engines(tmp_path: Path) -> None:
    """A CNN with BatchNorm and dropout, image inputs and int32 labels: the mean model
    evaluated with plain PyTorch has the recorded accuracy, and 4 processes end where
    the simulator does: parameters and BatchNorm statistics within 1e-9 in float64
    (measured 1e-14). In float32 the two start 1e-6 apart (summation order) and this
    momentum CNN amplifies that, about 20x every 10 rounds, so the test compares the
    code paths in float64."""
    args = ["--agents", "4", "--rounds", "30", "--train", "1200", "--test", "400"]
    args += ["--dtype", "float64"]
    sim = python("own_cnn.py", *args, "--out", "sim", cwd=tmp_path)
    dist = torchrun(
        4, "own_cnn.py", *args, "--engine", "distributed", "--out", "dist", cwd=tmp_path
    )
    for out in (sim, dist):
        plain, recorded = map(
            float, re.search(r"PyTorch: ([\d.]+); recorded: ([\d.]+)", out).groups()
        )
        assert plain == pytest.approx(recorded, abs=1e-6) and plain > 0.5  # chance: 0.1
    torch.testing.assert_close(final(tmp_path / "dist"), final(tmp_path / "sim"), atol=1e-9, rtol=0)
    sim_buffers, dist_buffers = (final(tmp_path / k, "buffers.pt") for k in ("sim", "dist"))
    for name, value in sim_buffers.items():
        torch.testing.assert_close(dist_buffers[name], value, atol=1e-9, rtol=0)


def test_own_cnn_with_an_asynchronous_method_on_processes(tmp_path: Path) -> None:
    """SwarmSGD on 4 processes (rpc, each rank at its own pace) with the BatchNorm and
    dropout CNN: rank 0 collects every agent's parameters and statistics, and the mean
    model it returns has the recorded accuracy."""
    args = ["--agents", "4", "--rounds", "20", "--train", "800", "--test", "300"]
    args += ["--algorithm", "swarm", "--momentum", "0", "--engine", "distributed"]
    args += ["--out", "swarm"]
    out = torchrun(4, "own_cnn.py", *args, cwd=tmp_path)
    plain, recorded = map(float, re.search(r"PyTorch: ([\d.]+); recorded: ([\d.]+)", out).groups())
    assert plain == pytest.approx(recorded, abs=1e-6) and plain > 0.3  # chance: 0.1
    buffers = final(tmp_path / "swarm", "buffers.pt")
    assert all(value.shape[0] == 4 for value in buffers.values())


def test_choco_sgd_written_outside_runs_on_both_engines(tmp_path: Path) -> None:
    """At most 60 lines of algorithm; the simulator and 4 processes agree within 1e-9 in
    float64 (float32 runs drift apart by rounding: 1.5e-5 after 60 rounds, as the own-CNN
    example's), and it learns (digits, 10 classes)."""
    source = (EXAMPLES / "choco_sgd.py").read_text()
    algorithm = source[
        source.index("@dataclass(frozen=True)\nclass ChocoState") : source.index("def main")
    ]
    assert len(algorithm.strip().splitlines()) <= 60
    args = ["--agents", "4", "--rounds", "60", "--dtype", "float64"]
    sim = python("choco_sgd.py", *args, "--out", "sim", cwd=tmp_path)
    dist = torchrun(
        4, "choco_sgd.py", *args, "--engine", "distributed", "--out", "dist", cwd=tmp_path
    )
    accuracy = float(re.search(r"test accuracy ([\d.]+)", sim).group(1))
    assert accuracy > 0.7 and f"test accuracy {accuracy:.4f}" in dist
    torch.testing.assert_close(final(tmp_path / "dist"), final(tmp_path / "sim"), atol=1e-9, rtol=0)


def test_choco_sgd_from_the_command_line(tmp_path: Path) -> None:
    """``nettrain run algorithm=choco_sgd:ChocoSGD`` in the examples' folder: the config's
    lr reaches the class's field."""
    nettrain = [sys.executable, "-m", "nettrain", "run", "algorithm=choco_sgd:ChocoSGD"]
    common = ["agents=4", "rounds=20", "eval_every=10", "progress=false"]
    for lr in ("0.05", "0.1"):
        command([*nettrain, *common, f"lr={lr}", "--out", str(tmp_path / lr)], EXAMPLES)
    assert not torch.equal(final(tmp_path / "0.05"), final(tmp_path / "0.1"))


def test_numpy_groups_example(tmp_path: Path, capsys) -> None:
    """20 rounds reach ~0.92 test accuracy (measured); chance is 0.25 with 4 classes."""
    example = runpy.run_path(str(EXAMPLES / "numpy_groups.py"))
    accuracy = example["main"](["--rounds", "20", "--out", str(tmp_path / "run")])
    assert accuracy > 0.25 + 0.4
    assert "test accuracy after 20 rounds" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.json").is_file()
