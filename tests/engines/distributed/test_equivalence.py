"""The distributed engine equals the simulator: 4 gloo processes on loopback.

One ``torchrun`` launch runs every configuration (``worker.py``) while this process
runs the same configurations in the simulator; then final parameters, counted
traffic, virtual time and evaluated metrics must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import torchrun_command, wait_or_fail
from nettrain.checkpoint import Checkpoint
from nettrain.config import load_config
from nettrain.engines.base import Job, RunResult
from nettrain.engines.distributed.engine import DistributedEngine
from nettrain.engines.states import gather_state
from nettrain.errors import ConfigError
from nettrain.experiment import build_job, run

SMALL = {
    "dataset": "digits",
    "agents": 4,
    "hidden": [8],
    "rounds": 10,
    "batch_size": 8,
    "eval_every": 5,
    "progress": False,
}
CASES = {
    "allreduce": {"algorithm": "allreduce"},
    "local_sgd": {"algorithm": "local_sgd", "tau": 4},
    "dpsgd_ring": {"algorithm": "dpsgd"},
    "dpsgd_edge_drop": {"algorithm": "dpsgd", "schedule": "edge_drop", "drop_prob": 0.3},
    # faults: a straggler 4x slower, dropped messages resent: the same clock as the simulator
    "dpsgd_faults": {"algorithm": "dpsgd", "stragglers": 0.25, "message_drop": 0.2},
    # heterogeneous agents: drawn speeds (slow ones sleep) and bandwidths, with a straggler
    "dpsgd_heterogeneous": {
        "algorithm": "dpsgd",
        "stragglers": 0.25,
        "speed": "lognormal:0.5",
        "bandwidth": "uniform:0.1:1",
    },
    # 100 rounds: the notes' gathers started after rounds 32 and 82 land at the records
    # of rounds 50 and 100 (Rounds.behind), the clock and the counts replayed in order
    "dpsgd_faults_100_rounds": {
        "algorithm": "dpsgd",
        "stragglers": 0.25,
        "message_drop": 0.2,
        "rounds": 100,
        "eval_every": 50,
    },
    "gradient_tracking": {"algorithm": "gradient_tracking"},
    "next_linear_l1": {"algorithm": "next", "regularizer": "l1", "reg_lambda": 1e-3},
    "next_cross_entropy": {
        "algorithm": "next",
        "surrogate": "cross_entropy",
        "step0": 0.5,
        "batch_size": 0,
    },
    # Compressed exchanges, in float64: a coordinate within one float32 rounding of a
    # quantisation boundary would round differently in the two engines (their sums
    # differ in the last bit) and decode eps apart.
    "dpsgd_lattice8": {"algorithm": "dpsgd", "quantizer": "lattice", "dtype": "float64"},
    "dpsgd_edge_drop_fp16": {
        "algorithm": "dpsgd",
        "schedule": "edge_drop",
        "drop_prob": 0.3,
        "quantizer": "fp16",
        "dtype": "float64",
    },
    "local_sgd_lattice16": {
        "algorithm": "local_sgd",
        "tau": 4,
        "quantizer": "lattice",
        "bits": 16,
        "dtype": "float64",
    },
    "allreduce_topk_ef": {"algorithm": "allreduce", "quantizer": "topk", "dtype": "float64"},
    "gradient_tracking_lattice16": {
        "algorithm": "gradient_tracking",
        "quantizer": "lattice",
        "bits": 16,
        "lattice_eps": 1e-4,
        "dtype": "float64",
    },
}
# 32 agents on the same 4 processes, 8 a process: each runs the vectorised oracle over its
# block and exchanges only the rows that cross processes.
MANY = {
    "many_allreduce": {"algorithm": "allreduce"},
    "many_dpsgd_ring": {"algorithm": "dpsgd"},
    "many_dpsgd_edge_drop": {"algorithm": "dpsgd", "schedule": "edge_drop", "drop_prob": 0.3},
    "many_gradient_tracking": {"algorithm": "gradient_tracking"},
    # stragglers (a process sleeps its slowest agent's slow-down) and resent messages
    "many_dpsgd_faults": {"algorithm": "dpsgd", "stragglers": 0.25, "message_drop": 0.2},
    "many_next": {"algorithm": "next", "regularizer": "l1", "reg_lambda": 1e-3},
    "many_dpsgd_torus_lattice": {
        "algorithm": "dpsgd",
        "topology": "torus",
        "quantizer": "lattice",
        "dtype": "float64",
    },
    # 30 agents in blocks of 8, 8, 7, 7; and a placement given by hand
    "many_local_sgd_uneven": {"algorithm": "local_sgd", "tau": 4, "agents": 30},
    "many_dpsgd_placed": {"algorithm": "dpsgd", "placement": "0-2;3-20;21-28;29-31"},
    # 3 worker processes (11, 11, 10 agents) and one parameter server
    "many_easgd": {"algorithm": "easgd"},
}
CASES |= {
    name: {"agents": 32, "checkpoint_every": SMALL["rounds"]} | case for name, case in MANY.items()
}
EXACT = (
    "round",
    "samples",
    "messages_total",
    "bytes_total",
    "messages_max_agent",
    "bytes_max_agent",
)
CLOSE = ("virtual_time_s", "train_loss", "test_loss", "test_accuracy", "consensus_distance")
SOCIAL = ("objective", "stationarity", "disagreement", "sparsity")  # NEXT's records


def torchrun(nproc: int, script: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    command = torchrun_command(nproc, str(script), *args)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:  # a file, not a pipe: nobody reads while the sims run
        return subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)


def _out(folder: Path, engine: str, name: str) -> dict[str, str]:
    """The run folder of a case that writes a checkpoint (whose totals are per agent)."""
    return {"_out": str(folder / engine / name)} if "checkpoint_every" in CASES[name] else {}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def runs(run_root: Path) -> dict[str, tuple[dict, RunResult]]:
    """``{case: (distributed {"x", "summary", "records"}, simulator RunResult)}``.

    One 4-process launch runs every case; the simulator runs them meanwhile.
    """
    folder = run_root
    out, log = folder / "results.pt", folder / "torchrun.log"
    configs = [
        json.dumps(SMALL | case | _out(folder, "dist", name)) for name, case in CASES.items()
    ]
    proc = torchrun(4, Path(__file__).with_name("worker.py"), str(out), *configs, log=log)
    sims = {
        name: run(load_config(SMALL | case), _out(folder, "sim", name).get("_out"))
        for name, case in CASES.items()
    }
    wait_or_fail(proc, log, 240)
    results = torch.load(out, weights_only=False)
    return {name: (results[text], sims[name]) for name, text in zip(CASES, configs, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_distributed_run_equals_the_simulator(name: str, runs) -> None:
    got, sim = runs[name]
    n = CASES[name].get("agents", SMALL["agents"])
    assert got["x"].shape == sim.x.shape == (n, sim.x.shape[1])
    torch.testing.assert_close(got["x"], sim.x, rtol=0, atol=1e-5)
    assert len(got["records"]) == len(sim.records) == 3  # rounds 0, 5 and 10 (or 50, 100)
    for mine, ref in zip(got["records"], sim.records, strict=True):
        assert {k: mine[k] for k in EXACT} == {k: ref[k] for k in EXACT}
        for k in CLOSE + tuple(k for k in SOCIAL if k in ref):
            want = None if ref[k] is None else pytest.approx(ref[k], rel=1e-4, abs=1e-6)
            assert mine[k] == want, k  # None: round 0's train_loss
        assert mine["round_wall_time_s"] > 0
        assert set(ref) <= set(mine)  # every field of the simulator's record, and more
    if name == "gradient_tracking":
        assert got["records"][-1]["tracking_error"] < 1e-4
    assert got["summary"]["engine"] == "distributed"


@pytest.mark.parametrize("name", list(MANY))
def test_many_agents_a_process_count_every_agents_work_as_the_simulator(
    name: str, runs, run_root: Path
) -> None:
    """The checkpoints after the last round hold each agent's samples, messages and
    bytes: equal to the simulator's, agent by agent."""
    assert name in runs
    dist_ck = Checkpoint.load(run_root / "dist" / name)
    sim_ck = Checkpoint.load(run_root / "sim" / name)
    assert dist_ck.round == sim_ck.round == SMALL["rounds"]
    for key, total in sim_ck.totals.items():
        assert torch.equal(dist_ck.totals[key], total), key
    assert dist_ck.clock == pytest.approx(sim_ck.clock, rel=1e-9)


def test_a_ring_sends_only_the_rows_that_cross_processes(runs) -> None:
    """A ring over 4 blocks of 8 agents: each process sends one row to each of its two
    neighbouring processes a round, 2 P rows in all, while the agents count 2 n."""
    got, _ = runs["many_dpsgd_ring"]
    d, rounds = got["x"].shape[1], SMALL["rounds"]
    assert got["summary"]["process_messages"] == rounds * 2 * 4
    assert got["summary"]["process_bytes"] == rounds * 2 * 4 * d * 4
    assert got["records"][-1]["messages_total"] == rounds * 2 * 32


def test_compressed_runs_count_the_encoded_bytes(runs) -> None:
    """The same messages as the float32 runs; bytes from the payloads: 1 byte a
    coordinate for the 8-bit lattice, 2 for fp16; a compressed mean is an all-gather."""

    def last(name: str) -> dict:
        return runs[name][0]["records"][-1]

    plain, lattice = last("dpsgd_ring"), last("dpsgd_lattice8")
    assert lattice["messages_total"] == plain["messages_total"]
    assert lattice["bytes_total"] * 4 == plain["bytes_total"]
    plain, half = last("dpsgd_edge_drop"), last("dpsgd_edge_drop_fp16")
    assert half["messages_total"] == plain["messages_total"]
    assert half["bytes_total"] * 2 == plain["bytes_total"]
    n, d = 4, runs["local_sgd"][1].x.shape[1]
    averagings = SMALL["rounds"] // 4
    assert last("local_sgd_lattice16")["bytes_total"] == averagings * n * (n - 1) * 2 * d


def test_outside_a_launcher_the_engine_says_how_to_launch(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    job = build_job(load_config(SMALL | {"rounds": 1}))
    with pytest.raises(ConfigError, match=r"needs a launcher .* nproc=N"):
        DistributedEngine().run(job, None)  # type: ignore[arg-type]


def test_more_processes_than_agents_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    job: Job = build_job(load_config(SMALL | {"rounds": 1}))
    with pytest.raises(ConfigError, match="WORLD_SIZE=5 for agents=4: launch between 1 and 4"):
        DistributedEngine().run(job, None)  # type: ignore[arg-type]


def test_nproc_holds_between_one_and_every_agent() -> None:
    load_config(SMALL | {"engine": "distributed", "nproc": 3})  # blocks of 2, 1, 1
    with pytest.raises(ConfigError, match="nproc=5 for agents=4: set nproc between 1 and 4"):
        load_config(SMALL | {"engine": "distributed", "nproc": 5})
    load_config(SMALL | {"engine": "distributed", "nproc": 2, "algorithm": "swarm"})
    with pytest.raises(ConfigError, match=r"exactly once .*missing \[3\]"):
        load_config(SMALL | {"engine": "distributed", "nproc": 2, "placement": "0,1;2"})


def test_gather_state_stacks_every_agent_axis_and_keeps_the_rest() -> None:
    from nettrain.algorithms.baselines import TrackingState
    from nettrain.algorithms.sgd import SGDState

    state = TrackingState(torch.ones(1, 3), torch.zeros(1, 3), torch.full((1, 3), 2.0), SGDState())
    got = gather_state(state, lambda t: torch.cat([t, t + 10]))  # two "ranks"
    assert got.x.tolist() == [[1.0] * 3, [11.0] * 3]
    assert got.g.shape == (2, 3)
    assert got.sgd.buf is None


def test_stragglers_and_resent_messages_cost_time_not_numbers(runs) -> None:
    """Four processes with a 4x straggler and 20% of messages lost and resent: the
    parameters of the fault-free run, a virtual clock more than 4x slower."""
    (faulty, sim), clean = runs["dpsgd_faults"], runs["dpsgd_ring"][0]
    torch.testing.assert_close(faulty["x"], clean["x"], rtol=0, atol=0)
    slow, fast = faulty["records"][-1], clean["records"][-1]
    assert slow["virtual_time_s"] > 4 * fast["virtual_time_s"]
    assert slow["messages_resent"] == sim.records[-1]["messages_resent"] > 0  # same draws
