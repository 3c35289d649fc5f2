"""One agent's compute measured: seconds per training sample of the oracle's pass.

The oracle of one agent (the kernel a process of one agent runs: the layer-wise batched
model where there is one, else plain autograd; compiled if the config says so) computes
the loss and gradient of its next mini-batch at a fixed point ``x``: a forward and a
backward pass. ``warmup`` calls are not timed
(allocations, lazy initialisation, compilation), then ``repeats`` calls are, each from
``time.perf_counter`` to the gradient's availability (on CUDA after a synchronise). The
figure is the median call's seconds divided by the samples the call read (the batch,
or the agent's whole shard for a full batch), as the oracle's meter counts them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from nettrain.problem.oracle import Oracle


@dataclass(frozen=True)
class ComputeTimes:
    """The median call's seconds, the samples a call reads, and their ratio; the
    timings and torch's intra-op threads they ran with."""

    seconds_per_call: float
    samples_per_call: int
    repeats: int
    threads: int

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds_per_call / self.samples_per_call


def time_oracle(oracle: Oracle, x: torch.Tensor, repeats: int, warmup: int) -> ComputeTimes:
    """Time ``oracle.grad(x)`` for one agent (``x: (1, d)``; the module says how)."""
    if oracle.m != 1 or x.shape[0] != 1:
        raise ValueError(f"one agent is timed, got an oracle of {oracle.m} and x {tuple(x.shape)}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")

    def call() -> tuple[float, int]:
        start = time.perf_counter()
        _, g = oracle.grad(x)
        if g.is_cuda:
            torch.cuda.synchronize(g.device)
        return time.perf_counter() - start, int(oracle.meter.reset().sum())

    for _ in range(warmup):
        call()
    timed = [call() for _ in range(repeats)]
    samples = {n for _, n in timed}
    if len(samples) != 1:  # pragma: no cover - the oracle reads the same count each call
        raise RuntimeError(f"the oracle read {sorted(samples)} samples in different calls")
    median = statistics.median(t for t, _ in timed)
    return ComputeTimes(median, samples.pop(), repeats, torch.get_num_threads())
