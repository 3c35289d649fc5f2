"""The all-reduce of a gradient bucket by bucket, during the backward pass, equals the
all-reduce of the whole gradient after it: 2 gloo processes on loopback (``a + b`` is
``b + a`` in floating point, so the two are equal bit for bit), and all-reduce SGD
through the engine equals the simulator."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import torchrun_command, wait_or_fail
from nettrain.config import load_config
from nettrain.experiment import run

WORKER = Path(__file__).with_name("overlap_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("overlap")
    out, log = folder / "results.pt", folder / "torchrun.log"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            torchrun_command(2, str(WORKER), str(out)),
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    wait_or_fail(proc, log, 180)
    return torch.load(out, weights_only=False)


def test_bucketed_mean_equals_the_whole_mean_bit_for_bit(results) -> None:
    n_params = 2 * (len(results["config"]["hidden"]) + 1)  # each linear layer's weight, bias
    launched = {cap: works for cap, (_, _, works) in results["parts"].items()}
    assert launched == {0: 1, 4: n_params, 1 << 20: 1}
    for cap, (fed, whole, _) in results["parts"].items():
        assert fed.shape == whole.shape and torch.equal(fed, whole), cap


def test_a_compressed_mean_sent_bucket_by_bucket_is_the_whole_ones(results) -> None:
    """Half precision and the lattice encode each coordinate alone: the buckets' payloads,
    each all-gathered as the backward pass finished it, make the whole gradient's codes,
    so the same mean bit for bit, counted as one all-gather of the whole payload."""
    n_params = 2 * (len(results["config"]["hidden"]) + 1)
    assert {key: parts for key, (_, _, parts, _, _) in results["coded"].items()} == {
        ("fp16", 0): 1, ("fp16", 4): n_params, ("lattice", 0): 1, ("lattice", 4): n_params
    }  # fmt: skip
    for key, (fed, whole, _, counted, counted_whole) in results["coded"].items():
        assert fed.shape == whole.shape and torch.equal(fed, whole), key
        for a, b in zip(counted, counted_whole, strict=True):
            assert torch.equal(a, b), key
        assert int(counted[0][0]) == results["n"] - 1  # messages: one all-gather


def test_columns_never_put_are_sent_at_the_wait(results) -> None:
    """A handle given only the last parameter's columns sends the rest when waited for:
    the whole gradient's mean, plain and compressed, bit for bit."""
    assert set(results["partial"]) == {"none", "fp16"}
    for key, (fed, whole) in results["partial"].items():
        assert fed.shape == whole.shape and torch.equal(fed, whole), key


@pytest.mark.parametrize("quantizer", ["none", "lattice"])
def test_engine_with_buckets_equals_the_simulator(results, quantizer: str) -> None:
    """All-reduce SGD, plain and with the lattice quantiser and error feedback (residuals
    made bucket by bucket in the engine, whole in the simulator)."""
    default, small = (x for (q, _), x in results["runs"].items() if q == quantizer)
    assert torch.equal(default, small)  # one bucket, or one a parameter: the same bits
    config = results["config"] | {"agents": results["n"], "quantizer": quantizer}
    sim = run(load_config(config | results["lattice"]))
    torch.testing.assert_close(small, sim.x, rtol=0, atol=1e-5)
