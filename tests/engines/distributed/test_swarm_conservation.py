"""Asynchronous gossip over rpc conserves the sum of the models, up to local steps.

Without compression an exchange replaces ``x_i_pub, x_j_pub`` by their mean on both
sides, so it preserves ``x_i_pub + x_j_pub`` (swarm.py's docstring), and only local
steps move the sum of the models. In the distributed engine the partner absorbs on
its rpc thread while its main thread computes, and the change reaches its iterate
through the :class:`~nettrain.engines.distributed.gossip.Peer`'s shift, so whatever
the interleaving of the concurrent exchanges, at the end::

    sum_i x_i_final == n x0 + sum_i D_i,    D_i = sum over i's local phases of (moved - x)

An exchange lost or counted twice by that bookkeeping moves the sum by half the
difference of two models (1e-2 and more here), far above the tolerance. What the law
cannot see: a stale published model (``publish`` without the shift). The partner's
change is ``new - own`` whatever ``own`` it replied with, so the sum is kept anyway.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import torchrun_command

N, ROUNDS = 4, 20  # as in conservation_worker.py
# float32 rounding of ~ROUNDS averages and steps on entries of |x| < 1: the measured
# error is 4e-7 to 6e-7 (both methods, six runs); 1e-5 leaves ~20x headroom
ATOL = 1e-5


@pytest.mark.parametrize("processes", [N, 2])
def test_exchanges_conserve_the_sum_of_the_models(tmp_path: Path, processes: int) -> None:
    """SwarmSGD's non-blocking exchange (AD-PSGD is the same exchange with one local step,
    ``conservation_worker.py adpsgd``; left out of the suite for its 30 s), one agent a
    process, and two a process (exchanges in place with the partner held alongside,
    over rpc with the others)."""
    log = tmp_path / "log.txt"
    worker = str(Path(__file__).with_name("conservation_worker.py"))
    command = torchrun_command(processes, worker, str(tmp_path), "swarm")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=180)
    assert proc.returncode == 0, log.read_text()[-6000:]
    run = torch.load(tmp_path / "run.pt", weights_only=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(processes)]
    x0, x = run["x0"].double(), run["x"].double()  # (d,), (n, d)
    assert x.shape == (N, x0.numel())
    displacement = torch.stack([r["d"] for r in ranks]).sum(0)  # (d,) sum_i D_i

    error = (x.sum(0) - (N * x0 + displacement)).abs().max()
    assert error <= ATOL, f"sum of the models off by {float(error):.3g} (tolerance {ATOL})"

    # not trivially true: the local steps moved the sum far more than the tolerance ...
    assert displacement.abs().max() > 1e4 * ATOL
    # ... the agents differ (the exchanges had something to average) ...
    assert (x - x.mean(0)).abs().max() > 1e2 * ATOL
    # ... every event made a local phase and an exchange, all answered ...
    record = run["record"]
    assert [r["phases"] for r in ranks] == [ROUNDS * N // processes] * processes
    assert record["interactions_answered"] == N * ROUNDS
    assert record["interactions_unmatched"] == 0
    # ... and some were answered while the partner was in the middle of its own event
    assert sum(r["overlapped"] for r in ranks) > 0
