"""Every engine writes the same record keys for the same method (engines/driver.py).

Tiny runs of every method that runs on several engines: the simulator against the
distributed engine (one 4-process ``torchrun`` launch of ``distributed/worker.py`` for
every case, and one of 5 processes for the centre methods: 4 workers and a
parameter-server rank) and against the shared-memory engine. Same keys in every record,
the same number of records at the same rounds, asynchronous runs included.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import torchrun_command, wait_or_fail
from nettrain.config import load_config
from nettrain.engines.driver import BASE_KEYS, WALL_KEYS
from nettrain.experiment import run

SMALL = {"dataset": "digits", "hidden": [8], "batch_size": 8, "progress": False}
SYNC = SMALL | {"agents": 4, "rounds": 6, "eval_every": 2}
# Asynchronous runs evaluate every two rounds too: intermediate records on processes.
ASYNC = SMALL | {"agents": 4, "rounds": 6, "eval_every": 2}
DISTRIBUTED = {
    "allreduce": SYNC | {"algorithm": "allreduce"},
    "local_sgd": SYNC | {"algorithm": "local_sgd", "tau": 2},
    "dpsgd": SYNC | {"algorithm": "dpsgd"},
    "gradient_tracking": SYNC | {"algorithm": "gradient_tracking"},
    "next": SYNC | {"algorithm": "next"},
    "dgd": SYNC | {"algorithm": "dgd"},
    "swarm": ASYNC | {"algorithm": "swarm"},
    "adpsgd": ASYNC | {"algorithm": "adpsgd"},
}
# Centre methods: 4 workers and a parameter-server rank (a second launch, of 5 processes).
CENTRE_SYNC = SYNC | {"servers": 1, "tau": 2}
CENTRE_ASYNC = ASYNC | {"servers": 1, "tau": 2}
CENTRE = {
    "easgd": CENTRE_SYNC | {"algorithm": "easgd"},
    "easgd_async": CENTRE_ASYNC | {"algorithm": "easgd_async"},
    "downpour": CENTRE_ASYNC | {"algorithm": "downpour"},
    "mdownpour": CENTRE_ASYNC | {"algorithm": "mdownpour", "momentum": 0.9},
    "eamsgd": CENTRE_ASYNC | {"algorithm": "eamsgd", "momentum": 0.9},
    "admm": CENTRE_ASYNC | {"algorithm": "admm"},
}
SHARED = {
    name: SMALL
    | {
        "algorithm": name,
        "agents": 2,
        "topology": "complete",
        "processes": 2,
        "rounds": 6,
        "eval_every": 2,
    }
    | ({"blocks": 2} if name != "allreduce" else {})  # a key allreduce does not take
    for name in ("block_async", "hogwild", "allreduce")
}
# The end-of-run audit of exchanges over a real network (distributed/events.py):
# nothing to audit in the simulator, where no message can go astray.
AUDIT = {"interactions_answered", "interactions_unmatched", "exchanges_unmatched"}


# Not yet written by the simulator (to be decided): the shared-memory workers' counters.
WORKERS = {"processes", "machines", "averagings", "steps_min", "steps_max", "staleness_mean"}
WORKERS |= {"staleness_max", "updates_per_block", "updates_per_block_min", "updates_per_block_max"}


def shape(records: list[dict[str, Any]], drop: set[str] = frozenset()) -> list[tuple]:
    return [(r["round"], sorted(set(r) - drop)) for r in records]


def launch(
    folder: Path, cases: dict[str, dict[str, Any]], world: int
) -> dict[str, list[dict[str, Any]]]:
    """One ``torchrun`` launch of ``world`` processes of ``distributed/worker.py`` running
    every case with ``engine=distributed``: each case's records."""
    out, log = folder / "results.pt", folder / "torchrun.log"
    configs = [json.dumps(case | {"timeout_s": 30}) for case in cases.values()]
    command = torchrun_command(world, str(Path(__file__).parent / "distributed" / "worker.py"))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [*command, str(out), *configs], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    wait_or_fail(proc, log, 240)
    results = torch.load(out, weights_only=False)
    return {name: results[text]["records"] for name, text in zip(cases, configs, strict=True)}


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return launch(tmp_path_factory.mktemp("keys"), DISTRIBUTED, 4)


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    return launch(tmp_path_factory.mktemp("centre"), CENTRE, 5)


def same_keys(records: list[dict[str, Any]], sim: list[dict[str, Any]]) -> None:
    """The distributed engine's records against the simulator's: the same keys at the
    same rounds, the throughput measured on processes only."""
    assert shape(records, AUDIT) == shape(sim)
    assert [r["round"] for r in sim] == [0, 2, 4, 6]
    assert all(set(BASE_KEYS) <= set(r) for r in sim)
    assert all(r[k] is None for r in sim for k in WALL_KEYS)
    assert all(r[k] is not None for r in records for k in WALL_KEYS)
    assert all(r["predicted_over_measured"] is None for r in sim)
    for r in records:  # the virtual clock's time over the training time measured
        if r["virtual_time_s"] is None or not r["train_time_s"] or r["round"] == 0:
            assert r["predicted_over_measured"] is None
        else:
            assert r["predicted_over_measured"] == r["virtual_time_s"] / r["train_time_s"] > 0


@pytest.mark.parametrize("name", list(DISTRIBUTED))
def test_distributed_records_have_the_simulators_keys(name: str, distributed) -> None:
    sim = run(load_config(DISTRIBUTED[name])).records
    same_keys(distributed[name], sim)
    assert all(AUDIT.isdisjoint(r) for r in distributed[name][:-1])  # audited at the end
    if "events" in sim[0]:  # every rank's events up to that round, as in the simulator
        assert [r["events"] for r in distributed[name]] == [r["events"] for r in sim]


@pytest.mark.parametrize("name", list(CENTRE))
def test_centre_records_have_the_simulators_keys(name: str, centre) -> None:
    """The parameter-server methods, synchronous and asynchronous: the asynchronous ones
    write intermediate records from every worker's state at that round, with the
    exchanges (and their staleness) of each interval."""
    records = centre[name]
    sim = run(load_config(CENTRE[name])).records
    same_keys(records, sim)
    if name != "easgd":
        assert [r["events"] for r in records] == [r["events"] for r in sim] == [0, 4, 8, 12]
        assert [r["exchanges"] for r in records] == [r["exchanges"] for r in sim] == [0, 4, 4, 4]
        assert all(r["virtual_time_s"] is None for r in records)


@pytest.mark.parametrize("name", list(SHARED))
def test_shared_memory_records_have_the_simulators_keys(name: str) -> None:
    cfg = SHARED[name]
    shared = run(load_config(cfg | {"engine": "shared_memory"})).records
    sim = run(load_config(cfg)).records
    assert shape(shared, WORKERS) == shape(sim, WORKERS)
    assert [r["round"] for r in sim] == [0, 2, 4, 6]
    assert all(r[k] is None for r in sim for k in WALL_KEYS)
    assert all(r[k] is not None for r in shared for k in WALL_KEYS)
