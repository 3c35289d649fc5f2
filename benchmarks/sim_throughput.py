"""Simulator throughput against a plain PyTorch loop, against a big matrix product, and
as the network grows.

What is measured, for two cases and ``n`` in {16, 64, 256} agents:

* ``sim``: agent-steps per second of the simulator's real code path, a
  :class:`~nettrain.algorithms.baselines.LocalSGD` round between averagings
  (``Oracle.descend`` over IID shards: one batched draw of the mini-batches, one batched
  forward/backward pass of all agents that adds ``-lr g`` into the stack ``x: (n, d)``
  as it goes), driven through a ``SimCommunicator``;
* ``loop``: the same work as ``n`` separate ``nn.Module`` + ``torch.optim.SGD`` (lr 0.1,
  no momentum), stepped one after the other in a Python loop: each agent samples a
  mini-batch from its own shard with its own generator, forward, cross-entropy,
  backward, step. It is timed in blocks of agent-steps taken round-robin (a round at
  n=256 can take seconds under load);
* ``matmul``: GFLOP/s of a 2048x2048 float32 ``torch.mm``; the simulator's GFLOP/s
  (``3 x matmul_flops_per_sample x batch`` per agent-step) is reported as a fraction
  of it.

Cases: ``small`` = MLP 64-32-10 on digits, batch 16; ``large`` = MLP 784-128-10 on
Fashion-MNIST, batch 32; ``cnn`` = the small CNN on Fashion-MNIST, batch 32, at n=64
only, measured twice: as a run does by default, its first convolution, pooling and
ReLU in the fused kernel (:mod:`nettrain.problem.native`), then with ``native=false``,
on torch's kernels (``cnn_speedup_n64_torch_kernels``). The three measurements of a
case alternate within every repetition, so load
from other processes hits them alike; the figures are the best repetition (the
median is printed too). Every ratio is taken within one run.

``w1``: workload W1, D-PSGD (mixing included) on a Metropolis ring of 256 agents in
the ``small`` case, the simulator's ``DPSGD.step`` against ``n`` modules that take their
gradients and then ``p_i <- sum_j W_ij p_j - lr g_i`` (``speedup_w1_n256``).

``scaling``: W1's round at n in {256, 4096, 16384, 65536} agents on synthetic data
(4 n samples): seconds per round and per agent-step, the process's peak resident
memory, the part of it the run added, and what the run has to hold (the state
``x: (n, d)`` and one chunk of the oracle, ``chunk_agents=auto``). Each row runs in a
fresh process (``--scaling-row N``) set up as ``nettrain.run`` sets itself up, so that
what earlier rows left in the allocator's free lists does not enter its memory; a row
of 16 agents runs first, uncounted, for the libraries' one-time set-up.

Targets (``targets`` in the summary): ``speedup_w1_n256`` >= 30,
``speedup_small_n64`` >= 20, ``matmul_fraction_large_n256`` >= 0.6,
``cnn_speedup_n64`` >= 3.

Allocator (``--allocator``): ``nettrain`` (the default) sets the process up as
``nettrain.run`` does (:func:`nettrain.memory.retain_freed_memory`: freed memory is
reused instead of being handed back to the kernel and faulted in again); ``system``
leaves glibc's malloc as the process starts; ``both`` measures ``system`` first, then
``nettrain`` (glibc cannot be put back). Keys of the ``system`` phase end in
``_system``. The scaling rows run last, in the last phase.

Command (a few minutes on an idle 2-core machine; ``--quick`` fewer repetitions,
``--scaling ""`` without the scaling rows)::

    .venv/bin/python benchmarks/sim_throughput.py [--quick] [--threads N]
        [--allocator nettrain|system|both] [--breakdown] [--scaling 256,4096]
        [--device cpu|cuda]

``--device cuda`` (``benchmarks/gpu.sh``) puts the data, the models, the simulator's
state and the matmul yardstick on the GPU; every timed block ends with
``torch.cuda.synchronize()``.

Output: one JSON line per case, ``n`` and allocator phase, one per scaling row; with
``--breakdown`` one JSON line per case with the time of each part of a simulator
round at n=256; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nettrain.algorithms.baselines import DPSGD, LocalSGD, SGDRunState
from nettrain.algorithms.sgd import SGDConfig, SGDState, sgd_step
from nettrain.data import Dataset, load_dataset, partition
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.memory import peak_memory, reset_peak, retain_freed_memory
from nettrain.problem.buffers import rows
from nettrain.problem.execution import Execution
from nettrain.problem.flat import matmul_flops_per_sample
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Oracle, Problem, agent_seed
from nettrain.topology import build_topology

LR = 0.1
SEED = 0
AGENTS = (16, 64, 256)
MATMUL_SIZE = 2048
# LocalSGD averages after rounds tau, 2 tau, ...; a tau beyond any timed round keeps
# every measured round a pure local step, which is what is compared with the loop.
NEVER = 2**62


@dataclass(frozen=True)
class Case:
    """One model and data set: ``model`` (``MLP(features, hidden, classes)`` or the small
    CNN), mini-batch ``batch``."""

    name: str
    dataset: str
    hidden: tuple[int, ...]
    batch: int
    model: str = "mlp"

    def build(self, data: Dataset) -> nn.Module:
        return build_model(self.model, data.feature_shape, data.n_outputs, hidden=self.hidden)


CASES = (
    Case("small", "digits", (32,), 16),  # MLP 64-32-10, d = 2,410
    Case("large", "fashion_mnist", (128,), 32),  # MLP 784-128-10, d = 101,770
)
CNN = Case("cnn", "fashion_mnist", (), 32, model="cnn")  # SmallCNN, d = 11,274
CNN_AGENTS = 64
SCALING_AGENTS = (256, 4096, 16384, 65536)
SCALING_SAMPLES_PER_AGENT = 4  # synthetic data: 4 n samples of 64 features, 10 classes


@dataclass(frozen=True)
class Settings:
    """How long to measure: repetitions, and seconds per timed block."""

    reps: int
    block_s: float


FULL = Settings(reps=5, block_s=0.2)
QUICK = Settings(reps=2, block_s=0.1)


# ------------------------------------------------------------------------------ runners


def on_device(data: Dataset, device: str) -> Dataset:
    """``data`` with its training and test tensors on ``device``."""
    splits = ("x_train", "y_train", "x_test", "y_test")
    return replace(data, **{k: getattr(data, k).to(device) for k in splits})


def make_problem(case: Case, data: Dataset, execution: Execution | None = None) -> Problem:
    """The case's model, on the device of ``data``; the oracle run as ``execution`` says
    (default: as a run's defaults)."""
    model = case.build(data).to(data.x_train.device)
    execution = execution or Execution()
    return Problem(model, get_loss("cross_entropy"), Regularizer(), data, execution=execution)


class SimRunner:
    """``LocalSGD`` rounds (no averaging) on the stack of all ``n`` agents; with
    ``mixing``, ``DPSGD`` rounds on a Metropolis ring (W1, the engine's code path)."""

    def __init__(
        self, problem: Problem, shards: Sequence[torch.Tensor], batch: int, mixing: bool = False
    ) -> None:
        n = len(shards)
        x0 = problem.initial_params(SEED).expand(n, -1).clone()  # (n, d)
        self.oracle = problem.oracle(shards, range(n), batch_size=batch, seed=SEED)
        self.comm = SimCommunicator(build_topology("ring", n, seed=SEED), x0.device, x0.dtype)
        self.algorithm = DPSGD(lr=LR) if mixing else LocalSGD(lr=LR, tau=NEVER)
        self.state: SGDRunState = self.algorithm.init(x0, self.oracle, self.comm)
        self.t = 0

    def round(self) -> None:
        self.state, _ = self.algorithm.step(self.state, self.t, self.oracle, self.comm)
        self.t += 1


class LoopRunner:
    """``n`` modules and ``torch.optim.SGD`` optimisers, stepped one after another."""

    def __init__(
        self, problem: Problem, case: Case, shards: Sequence[torch.Tensor], batch: int
    ) -> None:
        data = problem.data
        device = data.x_train.device  # the models, their samples and generators
        x0 = problem.initial_params(SEED)  # (d,)
        self.batch = batch
        self.models: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        for _ in shards:
            model = case.build(data).to(device)
            problem.spec.load_into(model, x0)
            self.models.append(model)
            self.optimizers.append(torch.optim.SGD(model.parameters(), lr=LR))
        self.xs = [data.x_train[s] for s in shards]  # each agent's own samples (|shard|, ...)
        self.ys = [data.y_train[s] for s in shards]
        self.generators = [
            torch.Generator(device=device).manual_seed(agent_seed(SEED, i))
            for i in range(len(shards))
        ]
        self.next = 0  # the agent whose turn it is

    def step(self, i: int) -> None:
        """One local SGD step of agent ``i`` on a mini-batch from its own shard."""
        x, y = self.xs[i], self.ys[i]
        gen = self.generators[i]
        idx = torch.randint(len(y), (self.batch,), generator=gen, device=gen.device)
        loss = F.cross_entropy(self.models[i](x[idx]), y[idx])
        opt = self.optimizers[i]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def round(self) -> None:
        """Every agent once, in order."""
        self.steps(len(self.models))

    def steps(self, k: int) -> None:
        """The next ``k`` agent-steps, round-robin.

        A timed block can then be shorter than a round while every agent (and its
        memory) still takes its turn, as in a full round.
        """
        n = len(self.models)
        for _ in range(k):
            self.step(self.next)
            self.next = (self.next + 1) % n


class DPSGDLoop(LoopRunner):
    """W1's plain side: every agent's module takes its gradient on its own mini-batch,
    then ``p_i <- sum_j W_ij p_j - lr g_i`` over its ring neighbours, parameter by
    parameter (D-PSGD written as ``n`` modules would be)."""

    def __init__(
        self, problem: Problem, case: Case, shards: Sequence[torch.Tensor], batch: int
    ) -> None:
        super().__init__(problem, case, shards, batch)
        W = build_topology("ring", len(shards), seed=SEED).weights(0)  # (n, n), Metropolis
        self.neighbours = [
            [(j, float(W[i, j])) for j in W[i].nonzero().flatten().tolist()]
            for i in range(len(shards))
        ]

    def round(self) -> None:
        for i, (model, (x, y)) in enumerate(
            zip(self.models, zip(self.xs, self.ys, strict=True), strict=True)
        ):
            gen = self.generators[i]
            idx = torch.randint(len(y), (self.batch,), generator=gen, device=gen.device)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
        params = [list(m.parameters()) for m in self.models]
        with torch.no_grad():
            new = [
                [
                    sum(w * params[j][k] for j, w in self.neighbours[i]) - LR * p.grad
                    for k, p in enumerate(params[i])
                ]
                for i in range(len(params))
            ]
            for mine, values in zip(params, new, strict=True):
                for p, v in zip(mine, values, strict=True):
                    p.copy_(v)


def measure_w1(data: Dataset, settings: Settings, n: int = 256) -> dict[str, Any]:
    """W1 (``small`` case, D-PSGD on a Metropolis ring): agent-steps/s of the simulator
    against the plain loop, rounds alternating in every repetition."""
    case = CASES[0]
    problem = make_problem(case, data)
    shards = partition(data.y_train, n, "iid", seed=SEED)
    sim = SimRunner(problem, shards, case.batch, mixing=True)
    loop = DPSGDLoop(problem, case, shards, case.batch)
    loop.round()  # warm-up
    k_sim = calls_per_block(sim.round, settings.block_s)
    runs = interleaved(
        {"sim": rates(sim.round, k_sim, n), "loop": rates(loop.round, 1, n)}, settings.reps
    )
    sim_rate, loop_rate = max(runs["sim"]), max(runs["loop"])
    return {
        "case": "w1",
        "n": n,
        "sim_s_per_round": round(n / sim_rate, 5),
        "loop_s_per_round": round(n / loop_rate, 5),
        "speedup": round(sim_rate / loop_rate, 2),
        "speedup_median": round(
            statistics.median(runs["sim"]) / statistics.median(runs["loop"]), 2
        ),
    }


def synthetic(samples: int, features: int = 64, classes: int = 10) -> Dataset:
    """Gaussian features, labels of a random linear teacher: enough samples for any ``n``
    (``samples``), no file to read."""
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(samples, features, generator=gen)
    y = (x @ torch.randn(features, classes, generator=gen)).argmax(1)
    return Dataset("synthetic", x, y, x[:1000], y[:1000], n_classes=classes)


def measure_scaling(n: int, settings: Settings, device: str = "cpu") -> dict[str, Any]:
    """W1's round (D-PSGD on a Metropolis ring, MLP 64-32-10, batch 16) at ``n`` agents on
    synthetic data: seconds per round, the process's peak resident memory over building
    and running, and what that memory has to hold (the state ``x: (n, d)``, and one
    chunk of the oracle: ``chunk x pass_bytes``). On CUDA the memory is the GPU's: the
    peak PyTorch allocated there, less what it held before building."""
    case = CASES[0]
    reset_peak()
    cpu = device == "cpu"
    base = peak_memory()["peak_memory_mb"] if cpu else torch.cuda.memory_allocated() / 2**20
    data = on_device(synthetic(SCALING_SAMPLES_PER_AGENT * n), device)
    problem = make_problem(case, data)
    shards = partition(data.y_train, n, "iid", seed=SEED)
    sim = SimRunner(problem, shards, case.batch, mixing=True)
    sim.round()  # warm-up
    runs = [seconds(sim.round, 1) for _ in range(settings.reps)]
    state_mb = sim.state.x.numel() * sim.state.x.element_size() / 2**20
    chunk = min(sim.oracle.chunk, n)
    chunk_mb = chunk * sim.oracle.pass_bytes() / 2**20
    peak = peak_memory()["peak_memory_mb" if cpu else "peak_cuda_memory_mb"]
    return {
        "n": n,
        "s_per_round": round(min(runs), 4),
        "us_per_agent_step": round(1e6 * min(runs) / n, 2),
        "peak_memory_mb": round(peak, 1),
        "run_memory_mb": round(peak - base, 1),  # the peak less the process before building
        "state_mb": round(state_mb, 1),
        "chunk_agents": chunk,
        "chunk_mb": round(chunk_mb, 1),
        "run_memory_over_state_plus_chunk": round((peak - base) / (state_mb + chunk_mb), 2),
    }


class Matmul:
    """A ``2048 x 2048`` float32 product: the machine's dense-arithmetic yardstick."""

    def __init__(self, size: int = MATMUL_SIZE, device: torch.device | str = "cpu") -> None:
        gen = torch.Generator().manual_seed(SEED)
        self.a = torch.randn(size, size, generator=gen).to(device)
        self.b = torch.randn(size, size, generator=gen).to(device)
        self.out = torch.empty(size, size, device=device)
        self.flops = 2 * size**3

    def round(self) -> None:
        torch.mm(self.a, self.b, out=self.out)


# ------------------------------------------------------------------------------ timing


def sync() -> None:
    """Wait for the GPU's queued work, once CUDA is in use (its kernels run
    asynchronously); nothing on the CPU."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], k: int) -> float:
    """Wall seconds of ``k`` calls of ``fn`` (their GPU work included)."""
    sync()
    start = time.perf_counter()
    for _ in range(k):
        fn()
    sync()
    return time.perf_counter() - start


def calls_per_block(fn: Callable[[], object], block_s: float) -> int:
    """Calls of ``fn`` that fill about ``block_s`` seconds (after one warm-up call)."""
    fn()
    once = seconds(fn, 1)
    return max(1, math.ceil(block_s / max(once, 1e-6)))


def rates(fn: Callable[[], object], k: int, per_call: float) -> Callable[[], float]:
    """A thunk timing one block of ``k`` calls, returning ``per_call`` units per second."""
    return lambda: per_call * k / seconds(fn, k)


def run_facts(quick: bool, started: float) -> dict[str, Any]:
    """What a benchmark's summary line says of the run: threads, torch, size, seconds."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
    }


def interleaved(thunks: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each thunk once per repetition, in turn: load hits all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in thunks}
    for _ in range(reps):
        for name, thunk in thunks.items():
            out[name].append(thunk())
    return out


def measure(
    case: Case,
    data: Dataset,
    n: int,
    settings: Settings,
    allocator: str,
    execution: Execution | None = None,
) -> dict[str, Any]:
    """Agent-steps/s of sim and loop and GFLOP/s of sim and matmul, side by side."""
    problem = make_problem(case, data, execution)
    shards = partition(data.y_train, n, "iid", seed=SEED)
    sim = SimRunner(problem, shards, case.batch)
    loop = LoopRunner(problem, case, shards, case.batch)
    mm = Matmul(device=data.x_train.device)
    loop.round()  # warm-up: every agent's module, optimiser and shard touched once
    k_sim = calls_per_block(sim.round, settings.block_s)
    k_loop = calls_per_block(lambda: loop.steps(1), settings.block_s)  # agent-steps
    k_mm = calls_per_block(mm.round, settings.block_s)
    runs = interleaved(
        {
            "sim": rates(sim.round, k_sim, n),
            "loop": rates(lambda: loop.steps(k_loop), 1, k_loop),
            "matmul": rates(mm.round, k_mm, mm.flops / 1e9),
        },
        settings.reps,
    )
    flops = 3 * matmul_flops_per_sample(problem.spec) * case.batch  # per agent-step
    sim_rate, loop_rate, mm_gflops = (max(runs[k]) for k in ("sim", "loop", "matmul"))
    sim_gflops = sim_rate * flops / 1e9
    return {
        "case": case.name,
        "n": n,
        "allocator": allocator,
        "d": problem.dim,
        "batch": case.batch,
        "sim_agent_steps_per_s": round(sim_rate, 1),
        "loop_agent_steps_per_s": round(loop_rate, 1),
        "speedup": round(sim_rate / loop_rate, 2),
        "sim_gflops": round(sim_gflops, 2),
        "matmul_gflops": round(mm_gflops, 2),
        "matmul_fraction": round(sim_gflops / mm_gflops, 3),
        "sim_agent_steps_per_s_median": round(statistics.median(runs["sim"]), 1),
        "loop_agent_steps_per_s_median": round(statistics.median(runs["loop"]), 1),
        "matmul_gflops_median": round(statistics.median(runs["matmul"]), 2),
        "per_block": {"sim_rounds": k_sim, "loop_agent_steps": k_loop, "matmuls": k_mm},
    }


def breakdown(
    case: Case, data: Dataset, n: int, settings: Settings, allocator: str
) -> dict[str, Any]:
    """Milliseconds of each part of a simulator round: where the time goes.

    Reaches into the oracle's parts (``_sample``, the local sample copy, the gradient
    kernel ``_batched_grad``) to time them one by one; the parts are timed in turn,
    best of the repetitions. ``forward_backward_autograd`` is the same kernel with the
    backward pass by autograd where the oracle writes it out (:mod:`nettrain.problem.backprop`);
    ``forward_backward`` and ``sgd_step`` are a round that writes the gradient (as one
    with momentum does), ``forward_backward_descend`` the pass of a plain round, which
    adds ``-lr g`` into the stack as it goes. ``read_stack`` and ``write_stack`` are one
    pass over a stack of ``x``'s size, read (a sum) or written (a fill), each call on the
    next of four such stacks, out of cache where the cache holds fewer than four: what the
    memory alone takes of a pass, which must read ``x`` and write the gradient.
    """
    problem = make_problem(case, data)
    shards = partition(data.y_train, n, "iid", seed=SEED)
    sim = SimRunner(problem, shards, case.batch)
    oracle: Oracle = sim.oracle
    x = sim.state.x  # (n, d)
    local = torch.arange(n)
    idx, w = oracle._sample(local)  # (n, B), (n, B)
    xb, yb = oracle.samples(idx)  # (n, B, F), (n, B)
    buffers, keys = rows(oracle.buffers, local), oracle._keys(local)  # none, zeros: stateless
    g, _, _ = oracle._batched_grad(x, buffers, keys, xb, yb, w)  # (n, d)
    autograd = problem.oracle(shards, range(n), batch_size=case.batch, seed=SEED)
    autograd.__dict__["_by_hand"] = False  # the cached property, set
    cfg, empty, moved = SGDConfig(lr=LR), SGDState(), x.clone()
    stacks = [torch.empty_like(x).fill_(1.0) for _ in range(4)]
    turn = itertools.count()
    parts: dict[str, Callable[[], object]] = {
        "round": sim.round,
        "sample": lambda: oracle._sample(local),
        "gather": lambda: oracle.samples(idx),
        "forward_backward": lambda: oracle._batched_grad(x, buffers, keys, xb, yb, w),
        "forward_backward_autograd": lambda: autograd._batched_grad(x, buffers, keys, xb, yb, w),
        "sgd_step": lambda: sgd_step(x, g, empty, cfg, owned=True),  # into g
        # the pass adding -lr g into a stack as it goes: LocalSGD's plain step (descend)
        "forward_backward_descend": lambda: oracle._batched_grad(
            moved, buffers, keys, xb, yb, w, out=moved, alpha=-LR
        ),
        "clone_x": x.clone,  # one fresh (n, d) tensor: allocation + a pass over memory
        "read_stack": lambda: stacks[next(turn) % 4].sum(),
        "write_stack": lambda: stacks[next(turn) % 4].fill_(0.5),
    }
    thunks = {  # calls per second of each part
        name: rates(fn, calls_per_block(fn, settings.block_s / 4), 1.0)
        for name, fn in parts.items()
    }
    runs = interleaved(thunks, settings.reps + 1)
    return {
        "breakdown": case.name,
        "n": n,
        "allocator": allocator,
        **{f"{name}_ms": round(1e3 / max(v), 3) for name, v in runs.items()},
    }


# -------------------------------------------------------------------------------- main


def scaling_row(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure_scaling` at ``n`` in a fresh process of this script."""
    command = [sys.executable, __file__, "--scaling-row", str(n), "--device", args.device]
    allocator = "system" if args.allocator == "system" else "nettrain"  # the last phase's
    command += ["--threads", str(args.threads), "--allocator", allocator]
    command += ["--quick"] if args.quick else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"scaling row n={n} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = as is")
    parser.add_argument(
        "--allocator", choices=("nettrain", "system", "both"), default="nettrain", help="see above"
    )
    parser.add_argument("--breakdown", action="store_true", help="time each part of a round")
    parser.add_argument(
        "--scaling", default=",".join(map(str, SCALING_AGENTS)),
        help="agent counts of the scaling rows, comma separated; empty = none",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where data, models, state live"
    )
    parser.add_argument("--scaling-row", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    if args.scaling_row:  # one scaling row, in this fresh process (see scaling_row)
        if args.allocator != "system":
            retain_freed_memory()
        measure_scaling(16, QUICK, args.device)  # the libraries' one-time set-up, not counted
        print(json.dumps(measure_scaling(args.scaling_row, settings, args.device)))
        return 0
    phases = ["system", "nettrain"] if args.allocator == "both" else [args.allocator]
    datasets = {
        case.name: on_device(load_dataset(case.dataset, seed=SEED), args.device)
        for case in (*CASES, CNN)
    }
    results: dict[tuple[str, int, str], dict[str, Any]] = {}
    started = time.perf_counter()
    summary: dict[str, Any] = {}
    for phase in phases:
        if phase == "nettrain" and retain_freed_memory() != "retain":
            print("no glibc mallopt here: nettrain leaves the allocator alone", file=sys.stderr)
        suffix = "" if phase == "nettrain" else f"_{phase}"
        w1 = measure_w1(datasets["small"], settings) | {"allocator": phase}
        print(json.dumps(w1), flush=True)
        summary[f"speedup_w1_n256{suffix}"] = w1["speedup"]
        for case in (*CASES, CNN):
            for n in AGENTS if case is not CNN else (CNN_AGENTS,):
                print(f"[{time.perf_counter() - started:6.1f}s] {phase} {case.name} n={n}",
                      file=sys.stderr, flush=True)  # fmt: skip
                row = measure(case, datasets[case.name], n, settings, phase)
                results[case.name, n, phase] = row
                print(json.dumps(row), flush=True)
            if args.breakdown and case is not CNN:
                row = breakdown(case, datasets[case.name], max(AGENTS), settings, phase)
                print(json.dumps(row), flush=True)
        small, large = results["small", 64, phase], results["large", 256, phase]
        summary[f"speedup_small_n64{suffix}"] = small["speedup"]
        summary[f"matmul_fraction_large_n256{suffix}"] = large["matmul_fraction"]
        summary[f"cnn_speedup_n{CNN_AGENTS}{suffix}"] = results["cnn", CNN_AGENTS, phase]["speedup"]
        # the CNN again with its first layer on torch's kernels (native=false)
        row = measure(CNN, datasets["cnn"], CNN_AGENTS, settings, phase, Execution(native=False))
        print(json.dumps(row | {"native": False}), flush=True)
        summary[f"cnn_speedup_n{CNN_AGENTS}_torch_kernels{suffix}"] = row["speedup"]
        summary[f"sim_gflops_large_n256{suffix}"] = large["sim_gflops"]
        summary[f"matmul_gflops{suffix}"] = large["matmul_gflops"]
    scaling = []
    for n in (int(k) for k in args.scaling.split(",") if k.strip()):
        print(f"[{time.perf_counter() - started:6.1f}s] scaling n={n}", file=sys.stderr, flush=True)
        scaling.append(scaling_row(n, args))
        print(json.dumps({"scaling": scaling[-1]}), flush=True)
    summary["scaling"] = scaling
    if len(scaling) > 1:  # the largest n against 4,096 (or the smallest measured)
        base = next((row for row in scaling if row["n"] == 4096), scaling[0])
        summary["scaling_agent_step_ratio"] = {
            "n": [base["n"], scaling[-1]["n"]],
            "ratio": round(scaling[-1]["us_per_agent_step"] / base["us_per_agent_step"], 2),
        }
    summary |= {
        "targets": {
            "speedup_w1_n256": 30,
            "speedup_small_n64": 20,
            "matmul_fraction_large_n256": 0.6,
            f"cnn_speedup_n{CNN_AGENTS}": 3,
        },
        "allocator": phases[-1],
    }
    summary |= run_facts(args.quick, started) | {"device": args.device}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
