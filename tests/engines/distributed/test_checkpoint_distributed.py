"""Checkpoints of ``engine=distributed``: a resumed run equals the uninterrupted one.

One ``torchrun`` launch of 6 processes runs, for each case, three steps in a row: an
uninterrupted run of 30 rounds, a run cut after 20 or 25 rounds that writes a
checkpoint every 10, and ``resume`` of that run to 30 rounds. Each step is a run of its
own, as a separate launch would make it: its own process group (the engine's, on a
fresh port) of 3, 4 or 6 processes (the others sit it out; EASGD's workers, then 2
server ranks), one agent a process or several; the run folder and its
``checkpoint.pt`` are all that passes from the cut run to the resumed one. This file is
the launch's script too (:func:`main`); one launch, not one per step, because starting
processes is most of the cost here.
Meanwhile this process runs the same configurations in the simulator, whose last
checkpoints the distributed ones must match key for key.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import free_port, torchrun_command, wait_or_fail
from nettrain.algorithms.baselines import SGDRunState
from nettrain.algorithms.sgd import SGDState
from nettrain.checkpoint import Checkpoint
from nettrain.config import load_config
from nettrain.engines.states import own_rows
from nettrain.experiment import resume, run
from nettrain.recording import RunFolder

SMALL = {
    "dataset": "digits",
    "agents": 4,
    "hidden": [8],
    "batch_size": 8,
    "eval_every": 10,
    "checkpoint_every": 10,
    "progress": False,
}
# case: (config, rounds of the cut run, processes). The dpsgd run is cut at 25: its
# records of round 25, written after the last checkpoint (20), must go on resume.
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "dpsgd": ({"algorithm": "dpsgd", "eval_every": 5}, 25, 4),
    # top-k gradients under error feedback: the residual is the communicator's part
    "allreduce_momentum_topk": (
        {"algorithm": "allreduce", "momentum": 0.9, "quantizer": "topk", "dtype": "float64"},
        20,
        4,
    ),
    "easgd_servers": ({"algorithm": "easgd", "servers": 2, "tau": 3}, 20, 6),
    # several agents a process: 10 on 3 processes (4, 3, 3 rows), and 8 EASGD workers on
    # 2 processes beside the 2 servers
    "allreduce_momentum_topk_many": (
        {
            "algorithm": "allreduce",
            "momentum": 0.9,
            "quantizer": "topk",
            "dtype": "float64",
            "agents": 10,
        },
        20,
        3,
    ),
    "easgd_servers_many": ({"algorithm": "easgd", "servers": 2, "tau": 3, "agents": 8}, 20, 4),
}
SERVERS = {"easgd_servers", "easgd_servers_many"}  # the cases with a centre on servers
RESIDUAL = {"allreduce_momentum_topk", "allreduce_momentum_topk_many"}  # error feedback
NPROC = max(nproc for _, _, nproc in CASES.values())
ROUNDS = 30
EXACT = ("round", "samples", "messages_total", "bytes_total", "bytes_max_agent")


def steps() -> list[dict[str, Any]]:
    """Every case's steps: uninterrupted, cut, resumed; a port and a world size each."""
    ports: set[int] = set()
    while len(ports) < 3 * len(CASES):
        ports.add(free_port())
    free = sorted(ports)
    plan = []
    for case, (config, cut, nproc) in CASES.items():
        values = SMALL | config
        plan += [
            {"out": f"{case}/whole", "config": values | {"rounds": ROUNDS}},
            {"out": f"{case}/cut", "config": values | {"rounds": cut}},
            {"out": f"{case}/cut", "resume": {"rounds": ROUNDS}},
        ]
        for step in plan[-3:]:
            step |= {"port": free.pop(), "world": nproc}
    return plan


def main(root: str, *texts: str) -> None:
    """One process of the launch: every step in turn, each a run of its own.

    A step of ``world`` processes runs on ranks ``0..world-1``; the engine joins its
    group on the step's ``MASTER_PORT``, hosted by rank 0 (not by torchrun's agent), so
    each step's group starts from an empty store.
    """
    rank = int(os.environ["RANK"])
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    RunFolder.finish = without_plot(RunFolder.finish)  # type: ignore[method-assign]
    for text in texts:
        step = json.loads(text)
        if rank >= step["world"]:
            continue
        os.environ["WORLD_SIZE"] = str(step["world"])
        os.environ["MASTER_PORT"] = str(step["port"])
        out = Path(root) / step["out"]
        if "resume" in step:
            resume(out, step["resume"])
        else:
            run(load_config(step["config"] | {"engine": "distributed"}), out)
    # As in worker.py: leave without interpreter teardown, once everything is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def without_plot(finish: Any) -> Any:
    """``RunFolder.finish`` without ``plot.png``: plots are not what this file tests, and
    on 2 shared cores drawing one takes longer than a step's 30 rounds."""
    return functools.partialmethod(finish, plot=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Checkpoint]]:
    """The launch's root folder, and the simulator's last checkpoint of each case."""
    root = tmp_path_factory.mktemp("dist")
    texts = [json.dumps(step) for step in steps()]
    command = torchrun_command(NPROC, __file__, str(root), *texts)
    tests = str(Path(__file__).parents[2])  # for `import helpers` in the script
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # the nettrain here
    log = root / "torchrun.log"
    with open(log, "wb") as sink:  # a file, not a pipe: nobody reads while the sims run
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    sims = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunFolder, "finish", without_plot(RunFolder.finish))
        for case, (config, _, _) in CASES.items():
            run(load_config(SMALL | config | {"rounds": ROUNDS}), root / case / "sim")
            sims[case] = Checkpoint.load(root / case / "sim")
    wait_or_fail(proc, log, 240)
    return root, sims


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_the_uninterrupted_one(case: str, runs) -> None:
    """Same final parameters (and centre) as 30 rounds in one go; the same records,
    those written after the last checkpoint dropped."""
    root, _ = runs
    whole, cut = root / case / "whole", root / case / "cut"
    for name in ("final.pt", "centre.pt"):
        if (whole / name).exists():
            got = torch.load(cut / name, weights_only=True)
            want = torch.load(whole / name, weights_only=True)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (whole / "centre.pt").exists() == (case in SERVERS)
    assert Checkpoint.load(cut).round == ROUNDS
    mine, ref = records(cut), records(whole)
    every = (SMALL | CASES[case][0])["eval_every"]
    assert [r["round"] for r in mine] == list(range(0, ROUNDS + 1, every))
    assert [r["round"] for r in mine] == [r["round"] for r in ref]
    for got, want in zip(mine, ref, strict=True):
        assert {k: got[k] for k in EXACT} == {k: want[k] for k in EXACT}
        for k in ("virtual_time_s", "train_loss", "test_loss", "test_accuracy"):
            close = None if want[k] is None else pytest.approx(want[k], rel=1e-6, abs=1e-9)
            assert got[k] == close, k  # None: round 0's train_loss
    # the resumed run's wall clock goes on from the checkpoint's (round 20): restarted
    # at 0, its 10 rounds would take less than the cut run's first 20
    at = {r["round"]: r["wall_time_s"] for r in mine}
    assert at[30] >= at[20]


def layout(value: Any) -> Any:
    """Keys, lengths, and each tensor's shape and dtype, of nested containers."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return {k: layout(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [layout(v) for v in value]
    return type(value)


@pytest.mark.parametrize("case", list(CASES))
def test_the_checkpoint_is_the_simulators(case: str, runs) -> None:
    """The last checkpoint of the uninterrupted run, written by rank 0 from every rank's
    rows, has the simulator's keys and shapes, and its numbers up to summation order."""
    root, sims = runs
    sim, dist = sims[case], Checkpoint.load(root / case / "whole")
    assert dist.round == sim.round == ROUNDS and dist.records == sim.records
    assert layout(dist.state) == layout(sim.state)
    assert layout(dist.rng) == layout(sim.rng)
    assert len(dist.rng) == (SMALL | CASES[case][0])["agents"]
    assert layout(dist.totals) == layout(sim.totals)
    assert (dist.servers is not None) == (sim.servers is not None) == (case in SERVERS)
    if sim.servers is not None:  # the shards; the simulator's queue model has more keys
        assert dist.servers is not None and set(dist.servers) == {"shards"} < set(sim.servers)
        assert layout(dist.servers["shards"]) == layout(sim.servers["shards"])
    torch.testing.assert_close(dist.state, sim.state, rtol=0, atol=1e-5)
    assert layout(dist.comm) == layout(sim.comm)
    assert (sim.comm is not None) == (case in RESIDUAL)
    if sim.comm is not None and dist.comm is not None:
        assert sim.comm["residual"].abs().max() > 0
        torch.testing.assert_close(dist.comm, sim.comm, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(dist.rng, sim.rng, strict=True))
    assert all(torch.equal(dist.totals[k], sim.totals[k]) for k in sim.totals)
    assert dist.clock == pytest.approx(sim.clock, rel=1e-9)
    if sim.servers is not None and dist.servers is not None:
        for mine, ref in zip(dist.servers["shards"], sim.servers["shards"], strict=True):
            torch.testing.assert_close(mine["rows"], ref["rows"], rtol=0, atol=1e-5)
            # one synchronous exchange at t = 0, 3, ..., 27 (tau=3)
            assert mine["sync_round"] == ref["sync_round"] == len(range(0, ROUNDS, 3))
            assert mine["version"] == ref["version"] and mine["applied"] == ref["applied"]


def test_own_rows_take_each_ranks_rows_of_every_agents_state() -> None:
    """The inverse of ``gather_state``: rank ``r`` gets row ``r`` of every per-agent
    tensor, nested states too; the rows of all ranks stacked are the whole again."""
    n, d = 3, 4
    everyone = SGDRunState(
        x=torch.arange(n * d, dtype=torch.float32).view(n, d),
        sgd=SGDState(buf=-torch.arange(n * d, dtype=torch.float32).view(n, d)),
    )
    parts = [own_rows(everyone, r, n, torch.device("cpu")) for r in range(n)]
    for r, part in enumerate(parts):
        assert part.x.shape == part.sgd.buf.shape == (1, d)
        assert part.x[0, 0] == r * d and part.sgd.buf[0, 0] == -r * d
    assert torch.equal(torch.cat([p.x for p in parts]), everyone.x)
    parts[0].x.add_(1)  # a row of its own, not a view of the checkpoint's
    assert everyone.x[0, 0] == 0


if __name__ == "__main__":
    main(*sys.argv[1:])
