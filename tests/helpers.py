"""Small problems with known answers, shared by the tests."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from nettrain.data import Dataset
from nettrain.engines.base import Job
from nettrain.engines.sim.clock import CostModel
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment


def splitmix64(state: int) -> int:
    """SplitMix64's finaliser (Steele, Lea and Flood 2014) of ``state`` modulo ``2^64``, in
    Python integers: the reference for nettrain's int64 tensor version."""
    z = state & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def regression_data(n_samples: int = 120, n_features: int = 5, seed: int = 0) -> Dataset:
    """Noisy linear data ``y = a^T w + b + noise`` in float64."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64)
    w = torch.randn(n_features, generator=gen, dtype=torch.float64)
    y = a @ w + 0.5 + 0.3 * torch.randn(n_samples, generator=gen, dtype=torch.float64)
    return Dataset("linreg", a, y, a[:20], y[:20], n_classes=0)


def identity_quadratics(
    targets: torch.Tensor, reg: Regularizer | None = None
) -> tuple[Problem, list[torch.Tensor]]:
    """A problem whose agent ``i`` has ``f_i(x) = ||x - a_i||^2 / 2`` exactly, for the rows
    ``a_i`` of ``targets: (n, d)`` (plus the regulariser ``reg``), and its shards.

    A linear model without bias ``x -> <p, x>`` and the squared loss; agent ``i`` holds the
    ``d`` samples ``(sqrt(d) e_k, sqrt(d) a_ik)``, so its mean loss is
    ``(1/d) sum_k (sqrt(d) p_k - sqrt(d) a_ik)^2 / 2 = ||p - a_i||^2 / 2`` and its
    gradient ``p - a_i``: known by hand, whatever nettrain computes."""
    n, d = targets.shape
    scale = d**0.5
    features = (scale * torch.eye(d, dtype=torch.float64)).repeat(n, 1)  # (n d, d)
    data = Dataset(
        "quadratics",
        features,
        scale * targets.reshape(-1),
        features,
        scale * targets.reshape(-1),
        n_classes=0,
    )
    model = torch.nn.Linear(d, 1, bias=False).double()
    problem = Problem(model, get_loss("squared"), reg or Regularizer(), data)
    return problem, [torch.arange(i * d, (i + 1) * d) for i in range(n)]


def least_squares_problem(data: Dataset, reg: Regularizer | None = None) -> Problem:
    model = build_model("linear", data.n_features, 1).double()
    return Problem(model, get_loss("squared"), reg or Regularizer(), data)


def least_squares_optimum(
    data: Dataset, shards: list[torch.Tensor], l2: float = 0.0
) -> torch.Tensor:
    """Minimiser of ``sum_i mean_{s in S_i} (a_s^T w + b - y_s)^2 / 2 + n l2 ||(w, b)||^2``.

    The flat layout of a linear model is ``(w_1..w_F, b)``; solved by weighted normal
    equations, independently of nettrain's code.
    """
    rows, targets, weights = [], [], []
    for s in shards:
        rows.append(data.x_train[s])
        targets.append(data.y_train[s])
        weights.append(torch.full((len(s),), 1.0 / len(s), dtype=torch.float64))
    a = torch.cat(rows)
    a = torch.cat([a, torch.ones(len(a), 1, dtype=torch.float64)], 1)
    y, w = torch.cat(targets), torch.cat(weights)
    h = a.T @ (w[:, None] * a) + 2 * l2 * len(shards) * torch.eye(a.shape[1], dtype=torch.float64)
    return torch.linalg.solve(h, a.T @ (w * y))


def iid_shards(n_samples: int, n_agents: int) -> list[torch.Tensor]:
    return list(torch.arange(n_samples).tensor_split(n_agents))


_PORTS = random.Random()  # its own stream: a test that seeds ``random`` does not fix ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now, and the next one too (the
    distributed engine's rpc store may listen on ``MASTER_PORT + 1``), both below the
    kernel's ephemeral range, so that no outgoing connection takes either meanwhile (a
    port the kernel hands out, as ``bind(0)`` does, can be the next one's neighbour)."""
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first = min(20000, low // 2)
    for _ in range(1000):
        port = _PORTS.randrange(first, low - 1)
        if _bindable(port) and _bindable(port + 1):
            return port
    raise RuntimeError(f"no two free ports in a row in {first}..{low}")


def torchrun_command(nproc: int, *args: str, port: int | None = None) -> list[str]:
    """``python -m torch.distributed.run`` of ``nproc`` local processes on loopback, then
    ``args`` (a script and its arguments, or ``-m module ...``)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port if port is not None else free_port()),
        *args,
    ]


def wait_or_fail(
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float,
    kill: Callable[[], None] | None = None,
) -> None:
    """Wait for a launch; past ``timeout_s`` kill it (``kill``, default ``proc.kill``) and
    fail with the end of its ``log``; a non-zero exit fails with the log too."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        (kill or proc.kill)()
        proc.wait()
        pytest.fail(f"torchrun did not finish in {timeout_s} s:\n{log.read_text()[-6000:]}")
    assert proc.returncode == 0, log.read_text()[-6000:]


def sim_job(
    problem: Problem,
    shards: list[torch.Tensor],
    topology: Any,
    algorithm: Any,
    *,
    rounds: int,
    x0: torch.Tensor | None = None,
    slowdown: torch.Tensor | None = None,
    **fields: Any,
) -> Job:
    """A job for the tests: full local batches, seed 0, one record at the end, a cheap
    cost model; ``x0`` defaults to zeros, ``fields`` override any other field of the Job."""
    if slowdown is None:
        slowdown = torch.ones(len(shards), dtype=torch.float64)
    values: dict[str, Any] = {
        "batch_size": 0,
        "seed": 0,
        "eval_every": rounds,
        "x0": x0 if x0 is not None else torch.zeros(problem.dim, dtype=torch.float64),
        "cost": CostModel(1e-6, 1e-5, 1e9, slowdown),
    }
    values |= fields
    return Job(
        problem=problem,
        shards=shards,
        topology=topology,
        algorithm=algorithm,
        rounds=rounds,
        **values,
    )


class DropoutNet(torch.nn.Module):
    """A user's own image model with dropout and no buffers (importable by the
    shared-memory engine's spawned workers)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, 32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
