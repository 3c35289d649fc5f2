"""The shared-memory engine runs what a method declares, not a list of classes: a method
written outside the package runs there through its own ``shared_step``, and a method
that does not name the engine is refused before any process starts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from helpers import least_squares_problem, regression_data, sim_job
from nettrain.algorithms import DPSGD, Algorithm
from nettrain.algorithms.base import BlockOracle
from nettrain.engines.shared_memory.engine import SharedMemoryEngine
from nettrain.errors import ConfigError
from nettrain.experiment import ENGINES
from nettrain.patterns import Communicator, SharedModel
from nettrain.problem.oracle import Oracle
from nettrain.recording import RunFolder
from nettrain.topology import build_topology

N = 40


@dataclass(frozen=True)
class GDState:
    x: torch.Tensor


@dataclass(frozen=True)
class HalvedGD(Algorithm[GDState]):
    """Gradient descent whose worker writes each block with half the step, then the
    other half: two writes per block and step, so the counters show them."""

    lr: float = 0.1
    name = "halved_gd"
    engines = frozenset({"sim", "shared_memory"})
    engines_note = "is an example"
    shared_writes = True

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> GDState:
        return GDState(x0)

    def step(self, state: GDState, t: int, oracle: Oracle, comm: Communicator):
        loss, g = oracle.grad(state.x)
        return GDState(state.x - self.lr * g), loss

    def shared_blocks(self, workers: int) -> int:
        return 2

    def shared_step(self, state: None, k: int, oracle: BlockOracle, shared: SharedModel):
        read = shared.read_shared()
        loss, g = oracle(read, (0, 1))
        for _ in range(2):
            shared.write_shared((0, 1), g, self.lr / 2)
        return state, loss


def job_of(algorithm, rounds: int):
    data = regression_data(n_samples=N, n_features=4)
    problem = least_squares_problem(data)
    shards = list(torch.arange(N).tensor_split(2))
    topology = build_topology("complete", 2)
    job = sim_job(problem, shards, topology, algorithm, rounds=rounds, batch_size=0)
    return job, problem


def test_a_method_written_outside_runs_its_own_shared_step() -> None:
    rounds = 12
    job, problem = job_of(HalvedGD(lr=0.05), rounds)
    result = SharedMemoryEngine(processes=1).run(job, RunFolder(None))
    oracle = problem.oracle([torch.arange(N)], [0], batch_size=0, seed=0)
    x = job.x0.clone()
    for _ in range(rounds):
        _, g = oracle.grad(x[None])
        x = x - 0.05 / 2 * g[0] - 0.05 / 2 * g[0]
    torch.testing.assert_close(result.x[0], x, rtol=0, atol=1e-12)
    last = result.records[-1]
    assert last["updates_per_block"] == [2 * rounds, 2 * rounds]
    assert last["staleness_max"] == 0 and last["steps_max"] == rounds


def test_a_method_without_the_engine_is_refused_with_its_reason() -> None:
    job, _ = job_of(DPSGD(lr=0.1), rounds=2)
    with pytest.raises(ConfigError, match="engine=shared_memory cannot run algorithm=dpsgd") as e:
        SharedMemoryEngine(processes=2).run(job, RunFolder(None))
    assert DPSGD.engines_note in str(e.value)


@dataclass(frozen=True)
class SharedOnly(HalvedGD):
    """A method that declares the shared-memory engine only."""

    name = "shared_only"
    engines = frozenset({"shared_memory"})
    engines_note = "runs on one shared model only"


@pytest.mark.parametrize("engine", ["sim", "distributed"])
def test_every_engine_refuses_a_method_that_does_not_name_it(engine: str) -> None:
    job, _ = job_of(SharedOnly(), rounds=2)
    with pytest.raises(ConfigError, match=f"engine={engine} cannot run algorithm=shared_only"):
        ENGINES[engine]().run(job, RunFolder(None))
