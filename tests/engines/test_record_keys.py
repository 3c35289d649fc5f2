"""Every engine writes the same record keys for the same method (engines/driver.py).

Tiny runs of every method that runs on several engines: the simulator against the
distributed engine (one 4-process ``torchrun`` launch of ``distributed/worker.py`` for
every case) and against the shared-memory engine. The centre methods (easgd,
easgd_async) need server ranks, which a group owned by the caller (worker.py) does not
host: not covered here. Same keys in every record, the same
number of records at the same rounds.
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
from nettrain.engines.driver import BASE_KEYS
from nettrain.experiment import run

SMALL = {"dataset": "digits", "hidden": [8], "batch_size": 8, "progress": False}
SYNC = SMALL | {"agents": 4, "rounds": 6, "eval_every": 2}
# The distributed asynchronous engine writes its record at the end only: one evaluation.
ASYNC = SMALL | {"agents": 4, "rounds": 6, "eval_every": 6}
DISTRIBUTED = {
    "allreduce": SYNC | {"algorithm": "allreduce"},
    "local_sgd": SYNC | {"algorithm": "local_sgd", "tau": 2},
    "dpsgd": SYNC | {"algorithm": "dpsgd"},
    "gradient_tracking": SYNC | {"algorithm": "gradient_tracking"},
    "next": SYNC | {"algorithm": "next"},
    "swarm": ASYNC | {"algorithm": "swarm"},
    "adpsgd": ASYNC | {"algorithm": "adpsgd"},
}
SHARED = {
    name: SMALL
    | {
        "algorithm": name,
        "agents": 2,
        "topology": "complete",
        "processes": 2,
        "blocks": 2,
        "rounds": 6,
        "eval_every": 2,
    }
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


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("keys")
    out, log = folder / "results.pt", folder / "torchrun.log"
    configs = [json.dumps(case | {"timeout_s": 30}) for case in DISTRIBUTED.values()]
    command = torchrun_command(4, str(Path(__file__).parent / "distributed" / "worker.py"))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [*command, str(out), *configs], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    wait_or_fail(proc, log, 240)
    results = torch.load(out, weights_only=False)
    return {name: results[text]["records"] for name, text in zip(DISTRIBUTED, configs, strict=True)}


@pytest.mark.parametrize("name", list(DISTRIBUTED))
def test_distributed_records_have_the_simulators_keys(name: str, distributed) -> None:
    sim = run(load_config(DISTRIBUTED[name])).records
    assert shape(distributed[name], AUDIT) == shape(sim)
    assert all(set(BASE_KEYS) <= set(r) for r in sim)


@pytest.mark.parametrize("name", list(SHARED))
def test_shared_memory_records_have_the_simulators_keys(name: str) -> None:
    cfg = SHARED[name]
    shared = run(load_config(cfg | {"engine": "shared_memory"})).records
    sim = run(load_config(cfg)).records
    assert shape(shared, WORKERS) == shape(sim, WORKERS)
    assert [r["round"] for r in sim] == [2, 4, 6]
