"""Typed, validated run configuration: documented keys in sections.

A run is described by a TOML file and/or ``key=value`` overrides::

    nettrain run configs/default.toml algorithm=dpsgd agents=16 rounds=300

Every key has a default and a help text (``nettrain keys`` prints them all) and lives
in one section of :class:`RunConfig` (``run``, ``data``, ``problem``, ``method``,
``network``, ``launch``, ``faults``, ``clock``); key names are unique, so the command
line stays flat and a TOML file may use tables (``[method]``) or not. Each section
checks its own keys; :class:`RunConfig` checks what spans sections (the method against
the engine and the faults). The config is frozen and validated when built, so an
unknown key or a bad value fails before any work, with a message naming the key and
the allowed values. A key of the ``method`` section set for a method that does not use
it (its settings have no such field) is an error naming the methods that do.

The method's settings are its own frozen dataclass (``nettrain.algorithms.DPSGD(lr=0.1,
momentum=0.9)``): :func:`build_algorithm` maps the keys onto its fields by name. One
``seed`` drives every random choice of a run: data split and partition,
initialisation, mini-batches, sampled topologies and stragglers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nettrain.algorithms import (
    ALGORITHMS,
    SOLVERS,
    SURROGATES,
    Method,
    resolve,
)
from nettrain.algorithms.base import ENGINES
from nettrain.compression import COMPRESSORS, build_compressor
from nettrain.data import DATASETS, PARTITIONS, is_npz_path
from nettrain.engines.distributed.placement import Placement, check_grouped_events
from nettrain.errors import ConfigError
from nettrain.faults import Faults
from nettrain.heterogeneity import parse_distribution
from nettrain.problem.buffers import BUFFER_POLICIES
from nettrain.problem.execution import Execution
from nettrain.problem.losses import LOSSES, REGULARIZERS
from nettrain.problem.models import MODELS
from nettrain.topology import GRAPHS, SCHEDULES, WEIGHTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# what engine=shared_memory runs (the built-ins with it in their engines): the
# partitioned method, Hogwild, synchronous data-parallel SGD
SHARED_MEMORY_ALGORITHMS = tuple(
    k for k, cls in ALGORITHMS.items() if "shared_memory" in cls.engines
)
# what an engine is, for a method that cannot run there
ENGINE_NOTES = {
    "sim": "simulates every agent in one process",
    "distributed": "runs the agents in processes over torch.distributed",
    "shared_memory": "runs one model shared by processes=P workers",
}
PHASES = ("fixed", "poisson")
INITS = ("seed", "model")
PROVENANCE = "provenance"  # config.json's versions and command line, not a key
BACKENDS = ("auto", "gloo", "nccl")
RPC_TRANSPORTS = ("auto", "shm", "uv")  # nettrain.engines.distributed.rpc.TRANSPORTS
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64")
# the asynchronous methods that skip lost exchanges (faults.py)
FAULT_TOLERANT = tuple(k for k, cls in ALGORITHMS.items() if cls.tolerates_faults)
# the pairwise gossip methods: a process that rejoins, or an agent back from a crash,
# takes a neighbour's model
GOSSIP = ", ".join(k for k, cls in ALGORITHMS.items() if cls.partner == "neighbour")
# the model a crashed agent comes back with: its own, or its first live neighbour's
REJOIN_MODELS = ("own", "neighbour")


def key(
    default: Any, help: str, choices: Iterable[str] | None = None, at_least: float | None = None
) -> Any:
    """A config field with its documentation, allowed values (for strings) or lower bound."""
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "at_least": at_least,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Section:
    """A group of keys; each value is checked against its choices and bound when built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, choices, bound = (
                getattr(self, f.name),
                f.metadata["choices"],
                f.metadata["at_least"],
            )
            if choices is not None and value not in choices:
                raise ConfigError(
                    f"{f.name}={value!r} is not allowed; choose one of {', '.join(choices)}"
                )
            if bound is not None and value < bound:
                raise ConfigError(f"{f.name} must be >= {bound}, got {value}")
        self.check()

    def check(self) -> None:
        """Checks of this section's keys beyond choices and bounds."""


@dataclass(frozen=True)
class RunKeys(Section):
    """Keys of the run: size, length, seed, evaluation, checkpoints."""

    agents: int = key(16, "number of agents n", at_least=1)
    rounds: int = key(
        300, "synchronous rounds; one round = one local step of every agent", at_least=1
    )
    seed: int = key(
        0,
        "seed of every random choice (split, init, batches, topology, stragglers, speeds "
        "and bandwidths)",
    )
    device: str = key("cpu", "where the simulator keeps its tensors", DEVICES)
    dtype: str = key("float32", "floating-point type of parameters and data", DTYPES)
    chunk_agents: str = key(
        "auto",
        "agents per forward/backward pass of the oracle: auto = as many as fit in memory_gb "
        "(and, for a CNN on the CPU, in twice its last-level cache, at most 160 MiB), or a "
        "number (bounds the memory of a round; the same numbers in float64, float32 up to "
        "rounding)",
    )
    memory_gb: float = key(
        0.0, "chunk_agents=auto: memory for one pass, GiB; 0 = a quarter of free memory", at_least=0
    )
    compile: bool = key(
        False,
        "compile the oracle's gradient with torch.compile (tens of seconds once per run on a "
        "CPU; same numbers to rounding; warns and runs eagerly where compilation fails)",
    )
    native: bool = key(
        True,
        "run a CNN's convolutions that max-pooling follows through C kernels on the CPU (the "
        "first layer in one pass, the others' gradients from the pooled gradient; built on "
        "first use with the system C compiler; same numbers to rounding; warns and uses "
        "torch's kernels where it cannot be built)",
    )
    eval_every: int = key(
        0,
        "rounds between evaluations (one metrics.jsonl record each, and one at round 0); "
        "0 = rounds/20, so that a run has about 20 points",
        at_least=0,
    )
    eval_agents: int = key(
        0,
        "agents evaluated individually for mean/worst agent accuracy; 0 = all",
        at_least=0,
    )
    progress: bool = key(True, "show a progress bar on the terminal")
    tensorboard: bool = key(
        True,
        "write TensorBoard event files in the run folder (every record's figures, the "
        "hparams table); needs pip install 'nettrain[tensorboard]', without it none are written",
    )
    timeline: bool = key(
        False,
        "write timeline.jsonl and timeline.png in the run folder: each agent's computing, "
        "sending and waiting in the first timeline_rounds rounds (engine=sim: virtual time; "
        "engine=distributed: measured time)",
    )
    timeline_rounds: int = key(20, "timeline=true: rounds whose intervals are recorded", at_least=1)
    checkpoint_every: int = key(
        0,
        "rounds between checkpoints (checkpoint.pt in the run folder, for --resume); 0 = none",
        at_least=0,
    )
    train_objective: bool = key(
        False,
        "record the social objective on the training set at the mean model, its "
        "prox-gradient stationarity and the sparsity (always on for next and dgd)",
    )

    def check(self) -> None:
        Execution.parse(self.chunk_agents, self.memory_gb, self.compile, self.native)


@dataclass(frozen=True)
class DataKeys(Section):
    """Keys of the data set, its split over the agents and the mini-batches."""

    dataset: str = key(
        "digits",
        f"data set: {', '.join(DATASETS)} (fashion_mnist reads the IDX files), or the path "
        "of a .npz file with arrays x_train, y_train, x_test, y_test (optional groups_train)",
    )
    data_dir: str = key("", "folder of the Fashion-MNIST IDX files; empty = Debian's folder")
    train_samples: int = key(
        0, "use a seeded subset of this many training samples; 0 = all", at_least=0
    )
    test_fraction: float = key(0.2, "test share of the scikit-learn data sets (no official split)")
    validation: float = key(
        0.0,
        "share of the training samples held out of every agent's shard (drawn by seed, "
        "class-stratified) as a validation split: records then carry val_loss and "
        "val_accuracy of the mean model; 0 = none",
        at_least=0,
    )
    partition: str = key(
        "iid",
        "how training samples are split over agents (groups: whole groups of a data set "
        "with group ids, e.g. writers)",
        PARTITIONS,
    )
    classes_per_agent: int = key(2, "partition=shards: classes held by each agent")
    dirichlet_alpha: float = key(0.5, "partition=dirichlet: concentration, small = skewed")
    batch_size: int = key(
        -1,
        "mini-batch per agent per step; 0 = full local batch; -1 = the algorithm's default "
        "(16; the full local batch for next and dgd)",
    )

    def check(self) -> None:
        if self.dataset not in DATASETS and not is_npz_path(self.dataset):
            raise ConfigError(
                f"dataset={self.dataset!r} is not allowed; choose one of {', '.join(DATASETS)}, "
                "or a .npz file (path ending in .npz)"
            )
        if self.batch_size < -1:
            raise ConfigError(
                f"batch_size must be >= 0 (0 = full local batch) or -1 (the algorithm's "
                f"default), got {self.batch_size}"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0 <= self.validation < 1:
            raise ConfigError(
                f"validation must be in [0, 1) (a share of the training samples), "
                f"got {self.validation}"
            )


@dataclass(frozen=True)
class ProblemKeys(Section):
    """Keys of the model, its loss and regulariser."""

    model: str = key("mlp", "network: MLP, linear model, or small CNN (image data)", MODELS)
    hidden: tuple[int, ...] = key((32,), "MLP hidden widths, comma separated (e.g. 128 or 64,32)")
    loss: str = key(
        "auto", "training loss; auto = cross_entropy for classes, squared for regression", LOSSES
    )
    buffers: str = key(
        "mix",
        "model buffers (BatchNorm statistics), kept per agent: mix = agents are evaluated and "
        "exported with the network mean, local = each with its own",
        BUFFER_POLICIES,
    )
    init: str = key(
        "seed",
        "starting parameters: seed = PyTorch's default initialisation drawn under seed, "
        "model = the parameters of the model object given (Python API, e.g. pretrained)",
        INITS,
    )
    regularizer: str = key(
        "none", "convex regulariser r(x) added to every agent's loss", REGULARIZERS
    )
    reg_lambda: float = key(
        0.0, "weight lam of the regulariser: lam*||x||^2 or lam*||x||_1", at_least=0
    )

    def check(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden widths must be >= 1, got {self.hidden}")


@dataclass(frozen=True)
class AlgorithmKeys(Section):
    """Keys of the training method and its settings, each used by some methods
    ."""

    algorithm: str = key(
        "dpsgd",
        f"training method: {', '.join(ALGORITHMS)}, or your own as module:Class (or an "
        "entry point of the group nettrain.algorithms)",
    )
    lr: float = key(0.1, "learning rate of the local SGD step")
    momentum: float = key(0.0, "heavy-ball momentum of the local step, in [0, 1)")
    nesterov: bool = key(False, "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = key(0.0, "decoupled from reg: g <- g + weight_decay * x", at_least=0)
    lr_warmup: int = key(
        0,
        "allreduce, local_sgd, dpsgd: rounds of linear learning-rate warm-up, round t steps "
        "lr * min(1, (t+1) / lr_warmup) (Goyal et al. 2017); swarm, adpsgd: counted in "
        "each agent's exchanges (t = those it took part in); 0 = none",
        at_least=0,
    )
    tau: int = key(
        4,
        "local_sgd, EASGD family, admm: local steps between two averagings or exchanges",
        at_least=1,
    )
    surrogate: str = key(
        "linear",
        "next/dgd: convex model of the local loss (gauss_newton: squared loss, "
        "cross_entropy: cross-entropy loss, both linearise the network)",
        SURROGATES,
    )
    prox_tau: float = key(1.0, "next/dgd: proximal weight tau of the surrogate (> 0)")
    step0: float = key(0.1, "next/dgd: first step alpha[0] in (0, 1]")
    step_decay: float = key(
        0.01,
        "next/dgd: eps of the step rule alpha[k+1] = alpha[k] (1 - eps alpha[k]); block_async, "
        "hogwild: its closed form, step lr / (1 + eps lr k) at a process's k-th step",
    )
    blocks: int = key(
        1,
        "next/dgd: blocks of the block-parallel local step (threads); block_async: blocks "
        "the flat parameter vector is partitioned into, shared out over the processes "
        "(hogwild: writes and staleness are counted per block)",
        at_least=1,
    )
    inner_steps: int = key(
        10,
        "next/dgd: accelerated proximal-gradient steps on a non-quadratic surrogate",
        at_least=1,
    )
    solver: str = key(
        "auto", "next/dgd gauss_newton: linear solver, auto = direct for d <= 256 else cg", SOLVERS
    )
    local_steps: int = key(1, "swarm: local SGD steps H before each interaction; 0 = pure gossip")
    quantizer: str = key(
        "none",
        "compressor of what is sent: the models of swarm, dpsgd, local_sgd and "
        "gradient_tracking (also its trackers), the gradients of allreduce (lattice: decoded "
        "against the receiver's own; topk: allreduce only)",
        COMPRESSORS,
    )
    bits: int = key(
        8,
        "swarm, dpsgd, local_sgd, gradient_tracking, allreduce with quantizer=lattice|qsgd: "
        "bits per coordinate",
    )
    lattice_eps: float = key(
        1e-3,
        "swarm, dpsgd, local_sgd, gradient_tracking, allreduce with quantizer=lattice: "
        "lattice step eps (error <= eps/2 while sender and receiver differ by < (2^bits-1) eps/2)",
    )
    qsgd_bucket: int = key(
        0,
        "swarm, dpsgd, local_sgd, gradient_tracking, allreduce with quantizer=qsgd: "
        "coordinates sharing one scale (a float32 each, 32/qsgd_bucket bits a coordinate); "
        "0 = one scale for the whole vector sent, 512 in the QSGD paper (Alistarh et al. 2017)",
        at_least=0,
    )
    error_feedback: bool = key(
        True,
        "allreduce with a quantizer: carry what compression dropped into the next round's "
        "gradient (a residual per agent); for top-k, fp16, bf16, not for qsgd at few bits",
    )
    blocking: bool = key(
        False, "swarm: the partner stops and steps too (true), or answers as it is (false)"
    )
    geometric_steps: bool = key(
        False, "swarm: each local phase has a geometric number of steps with mean local_steps"
    )
    alpha: float = key(
        0.0,
        "EASGD family: moving rate alpha = lr * rho; 0 = 0.9 / agents (beta = 0.9)",
        at_least=0,
    )
    servers: int = key(
        1,
        "EASGD family, downpour: parameter servers S, each owning a slice of the centre",
        at_least=1,
    )
    tree_periods: tuple[int, ...] = key(
        (),
        "tree_easgd: exchange period of each level, leaves first (e.g. 4,16); empty = "
        "tau * branching^level",
    )
    warmup: int = key(
        0,
        "block_async: steps of full (unpartitioned) updates before the partitioned ones",
        at_least=0,
    )
    full_every: int = key(
        0,
        "block_async: after the warm-up, every full_every-th step updates all blocks; 0 = never",
        at_least=0,
    )
    max_delay: int = key(
        1,
        "block_async, hogwild in engine=sim: a block another worker writes is read up to "
        "max_delay rounds late (uniform, seeded); 0 = every read sees the last round",
        at_least=0,
    )

    def check(self) -> None:
        if any(p < 1 for p in self.tree_periods):
            raise ConfigError(f"tree_periods must be >= 1, got {self.tree_periods}")


@dataclass(frozen=True)
class TopologyKeys(Section):
    """Keys of the communication graph and its mixing weights."""

    topology: str = key(
        "ring",
        "communication graph of the agents (a method that never mixes along it, as "
        "all-reduce, runs on a ring where it cannot be built, or one or two agents)",
        GRAPHS,
    )
    weights: str = key("metropolis", "mixing weights derived from the graph", WEIGHTS)
    schedule: str = key("static", "how the graph changes from round to round", SCHEDULES)
    drop_prob: float = key(0.0, "schedule=edge_drop: probability an edge is down in a round")
    degree: int = key(4, "topology=random_regular: degree of every agent", at_least=1)
    edge_prob: float = key(0.0, "topology=erdos_renyi: edge probability; 0 = 2 ln(n)/n", at_least=0)
    branching: int = key(2, "topology=tree and tree_easgd: children per inner node", at_least=1)

    def check(self) -> None:
        if not 0 <= self.drop_prob < 1:
            raise ConfigError(f"drop_prob must be in [0, 1), got {self.drop_prob}")
        if self.schedule == "edge_drop" and self.drop_prob == 0:
            raise ConfigError("schedule=edge_drop needs drop_prob > 0 (e.g. drop_prob=0.3)")


@dataclass(frozen=True)
class EngineKeys(Section):
    """Keys of who runs the agents: simulator, processes, shared memory."""

    engine: str = key(
        "sim",
        "who runs the agents: the in-process simulator, processes of agents/nproc agents each "
        "(torchrun), or processes=P workers on one model in shared memory (block_async, hogwild, "
        "allreduce)",
        ENGINES,
    )
    processes: int = key(
        2,
        "engine=shared_memory: worker processes P sharing one model (one round = P steps)",
        at_least=1,
    )
    average_every: int = key(
        0,
        "engine=shared_memory under torchrun: rounds K between averagings of the machines' "
        "models (x += mean - snapshot); 0 = never",
        at_least=0,
    )
    nproc: int = key(
        0,
        "engine=distributed: processes to launch: P that hold the agents (agents/P each, "
        "see placement) plus one per parameter server; 0 = one per agent and server",
        at_least=0,
    )
    placement: str = key(
        "blocks",
        "engine=distributed: which agents each process holds: blocks (contiguous), strided "
        "(agent i on process i mod P), or each process's agents, e.g. 0-3;4-7",
    )
    backend: str = key(
        "auto", "engine=distributed: gloo (CPU), nccl (CUDA), auto = nccl on device=cuda", BACKENDS
    )
    timeout_s: float = key(
        60.0, "engine=distributed: seconds a collective may wait before the run fails"
    )
    rpc_transport: str = key(
        "auto",
        "engine=distributed, asynchronous methods and parameter servers: how rpc reaches a "
        "process of the same machine: shm (shared memory, polled busily), uv (TCP), auto = "
        "uv where the machine has fewer than two cores a process",
        RPC_TRANSPORTS,
    )
    master_addr: str = key("127.0.0.1", "engine=distributed: address of rank 0's rendezvous")
    master_port: int = key(29512, "engine=distributed: TCP port of rank 0's rendezvous")
    rejoin: bool = key(
        False,
        "engine=distributed, gossip methods: a worker process started again mid-run (the "
        "same command and RANK) rejoins it, from a live neighbour's model (docs/faults.md)",
    )
    restarts: int = key(
        0,
        "engine=distributed launched by nettrain: start a worker killed by a signal again, "
        "at most this many times in all; implies rejoin=true",
        at_least=0,
    )

    def check(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not 0 < self.master_port < 65536:
            raise ConfigError(f"master_port must be a TCP port in 1..65535, got {self.master_port}")


@dataclass(frozen=True)
class FaultKeys(Section):
    """Keys of injected faults, read alike by every engine (docs/faults.md)."""

    message_drop: float = key(
        0.0,
        "probability that a message is lost: asynchronous methods skip the exchange, "
        "synchronous ones resend it after resend_s",
    )
    resend_s: float = key(
        0.01, "virtual seconds before a synchronous method resends a lost message"
    )
    crash: str = key(
        "",
        "agents that crash: AGENT@ROUND, or AGENT@ROUND:REJOIN to come back with the state "
        "they had, comma-separated (e.g. 3@100:200,5@150)",
    )
    rejoin_model: str = key(
        "own",
        "the model an agent back from crash=A@R:J takes: own (the state it had when it "
        "stopped) or neighbour (engine=sim, swarm and adpsgd: its first live neighbour's, "
        "neighbours in sorted order)",
        REJOIN_MODELS,
    )
    split: str = key(
        "", "network split FROM:TO (rounds): agents [0, n/2) and [n/2, n) cannot reach each other"
    )

    def check(self) -> None:
        if not 0 <= self.message_drop < 1:
            raise ConfigError(f"message_drop must be in [0, 1), got {self.message_drop}")
        if self.resend_s <= 0:
            raise ConfigError(f"resend_s must be > 0, got {self.resend_s}")


@dataclass(frozen=True)
class ClockKeys(Section):
    """Keys of the cost model of the virtual clock."""

    phase: str = key(
        "fixed",
        "asynchronous methods: local phases last their modelled compute time (fixed) or an "
        "exponential time with that mean (poisson: per-agent Poisson clocks)",
        PHASES,
    )
    compute_s_per_sample: float = key(
        0.0,
        "virtual seconds of compute per training sample; 0 = model FLOPs / agent_gflops",
        at_least=0,
    )
    agent_gflops: float = key(10.0, "virtual compute speed of an agent, GFLOP/s")
    latency_s: float = key(5e-5, "virtual latency of one message, seconds", at_least=0)
    bandwidth_gbps: float = key(10.0, "virtual link bandwidth, Gbit/s")
    stragglers: float = key(0.0, "fraction of agents that are slow (chosen by seed)")
    straggler_slowdown: float = key(4.0, "compute slow-down factor of a straggler")
    speed: str = key(
        "constant",
        "per-agent compute speed factor (compute time / speed, times a straggler's slow-down), "
        "drawn by seed: constant (1), lognormal:SIGMA (exp(N(0, SIGMA^2))) or uniform:LO:HI",
    )
    bandwidth: str = key(
        "constant",
        "per-agent link bandwidth factor (times bandwidth_gbps), drawn by seed: constant (1), "
        "lognormal:SIGMA or uniform:LO:HI",
    )
    trace: str = key(
        "",
        "CSV file agent,speed,bandwidth_gbps,available_from,available_to: per-agent speed "
        "and bandwidth, and availability windows in virtual seconds (docs/faults.md); "
        "empty = none",
    )
    cost_model: str = key(
        "",
        "a calibration profile (TOML, written by `nettrain calibrate`) whose measured seconds "
        "per sample, latency and bandwidth replace compute_s_per_sample, agent_gflops, "
        "latency_s and bandwidth_gbps; empty = those keys",
    )

    def check(self) -> None:
        measured = ("compute_s_per_sample", "agent_gflops", "latency_s", "bandwidth_gbps")
        given = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if f.name in measured and getattr(self, f.name) != f.default
        ]
        if self.cost_model and given:
            raise ConfigError(
                f"cost_model={self.cost_model} gives the measured compute time, latency and "
                f"bandwidth, and {', '.join(given)} would be ignored: remove "
                f"{'it' if len(given) == 1 else 'them'}, or leave cost_model empty"
            )
        if not 0 <= self.stragglers <= 1:
            raise ConfigError(
                f"stragglers is a fraction of agents in [0, 1], got {self.stragglers}"
            )
        if self.straggler_slowdown < 1:
            raise ConfigError(f"straggler_slowdown must be >= 1, got {self.straggler_slowdown}")
        if self.agent_gflops <= 0 or self.bandwidth_gbps <= 0:
            raise ConfigError("agent_gflops and bandwidth_gbps must be > 0")
        parse_distribution("speed", self.speed)
        parse_distribution("bandwidth", self.bandwidth)


SECTIONS: dict[str, type[Section]] = {
    "run": RunKeys,
    "data": DataKeys,
    "problem": ProblemKeys,
    "method": AlgorithmKeys,
    "network": TopologyKeys,
    "launch": EngineKeys,
    "faults": FaultKeys,
    "clock": ClockKeys,
}
# every key, and the section that holds it (key names are unique across sections)
FIELDS = {f.name: f for section in SECTIONS.values() for f in dataclasses.fields(section)}
SECTION_OF = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
# what builds a method's compressor
COMPRESSOR_KEYS = ("quantizer", "bits", "lattice_eps", "qsgd_bucket")


def used_keys(method: type[Method]) -> frozenset[str]:
    """The keys of the ``method`` section that ``method`` uses: its settings fields named
    like keys (``lr``, ``tau``...), and the quantiser's keys if it has a ``compressor``."""
    if not dataclasses.is_dataclass(method):
        return frozenset()
    names = {f.name for f in dataclasses.fields(method) if f.init}
    if "compressor" in names and method.compresses:
        names |= set(COMPRESSOR_KEYS)
    return frozenset(n for n in names if SECTION_OF.get(n) == "method") - {"algorithm"}


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, in sections (``cfg.method.lr``); every key also reads
    flat (``cfg.lr``), as the command line and TOML files give it."""

    run: RunKeys = field(default_factory=RunKeys)
    data: DataKeys = field(default_factory=DataKeys)
    problem: ProblemKeys = field(default_factory=ProblemKeys)
    method: AlgorithmKeys = field(default_factory=AlgorithmKeys)
    network: TopologyKeys = field(default_factory=TopologyKeys)
    launch: EngineKeys = field(default_factory=EngineKeys)
    faults: FaultKeys = field(default_factory=FaultKeys)
    clock: ClockKeys = field(default_factory=ClockKeys)

    def __getattr__(self, name: str) -> Any:
        """A key by its flat name: ``cfg.lr`` is ``cfg.method.lr``."""
        section = SECTION_OF.get(name)
        if section is None:
            raise AttributeError(f"RunConfig has no key {name!r}")
        return getattr(getattr(self, section), name)

    @classmethod
    def from_keys(cls, values: Mapping[str, Any]) -> RunConfig:
        """The config of flat ``key: value`` pairs (typed already; see :func:`coerce`)."""
        grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for name, value in values.items():
            if name not in SECTION_OF:
                raise _unknown(name)
            grouped[SECTION_OF[name]][name] = value
        return cls(**{name: SECTIONS[name](**keys) for name, keys in grouped.items()})

    def __post_init__(self) -> None:
        """The checks that span sections: the method, the engine and the faults together."""
        method = resolve(self.algorithm)
        self._check_used(method)
        self._check_engine(method)
        asynchronous = method.schedule == "events"
        if self.engine == "distributed" and self.nproc:
            servers = self.world_size - self.agents
            if not servers < self.nproc <= self.world_size:
                also = f" plus {servers} servers" if servers else ""
                raise ConfigError(
                    f"nproc={self.nproc} for agents={self.agents}{also}: set nproc between "
                    f"{servers + 1} and {self.world_size} (0 = one process per agent)"
                )
            Placement.parse(self.placement, self.agents, self.nproc - servers)
            if asynchronous:
                check_grouped_events(
                    self.algorithm,
                    self.agents,
                    self.nproc - servers,
                    servers,
                    rejoin=self.rejoin or self.restarts > 0,
                    checkpoint_every=self.checkpoint_every,
                    faults=Faults.from_config(self).any,
                )
        if (self.rejoin or self.restarts) and (
            self.engine != "distributed" or method.partner != "neighbour"
        ):
            raise ConfigError(
                f"rejoin/restarts let a worker process of engine=distributed come back into an "
                f"asynchronous gossip run ({GOSSIP}); engine={self.engine} "
                f"algorithm={self.algorithm} cannot take one back. Remove rejoin and restarts"
            )
        if asynchronous and self.engine == "distributed" and self.blocking:
            raise ConfigError(
                "blocking=true runs in engine=sim only; the distributed SwarmSGD is "
                "non-blocking (the partner answers from its rpc thread)"
            )
        if self.quantizer != "none" and self.engine == "shared_memory":
            raise ConfigError(
                f"quantizer={self.quantizer} compresses what agents send; engine=shared_memory "
                "workers share one model and send nothing. Set quantizer=none"
            )
        if self.timeline and self.engine == "shared_memory":
            raise ConfigError(
                "timeline=true is recorded in engine=sim (virtual time) and engine=distributed "
                f"(measured); engine={self.engine} has none. Set timeline=false, or run it with "
                "engine=sim"
            )
        if self.checkpoint_every and self.engine == "shared_memory":
            raise ConfigError(
                "checkpoint_every is implemented for engine=sim and engine=distributed; "
                "engine=shared_memory cannot resume (set checkpoint_every=0)"
            )
        self._check_faults(method)
        if ALGORITHMS.get(self.algorithm) is method:
            build_algorithm(self)  # a built-in method checks its settings before any work

    def _check_engine(self, method: type[Method]) -> None:
        """The engine is one of the method's ``engines``; else say why (its
        ``engines_note``) and where it runs, and what runs on this engine."""
        if self.engine in method.engines:
            return
        where = " or ".join(f"engine={e}" for e in ENGINES if e in method.engines)
        here = [k for k, cls in ALGORITHMS.items() if self.engine in cls.engines]
        few = f", or on engine={self.engine} one of {', '.join(here)}"
        raise ConfigError(
            f"engine={self.engine} {ENGINE_NOTES[self.engine]}: algorithm={self.algorithm} "
            f"cannot run there; {method.name} {method.engines_note}. Use {where}"
            f"{few if 2 * len(here) < len(ALGORITHMS) else ''}"
        )

    def _check_used(self, method: type[Method]) -> None:
        """A method key set away from its default must be one ``method`` uses."""
        used = used_keys(method)
        for f in dataclasses.fields(self.method):
            value = getattr(self.method, f.name)
            if f.name == "algorithm" or f.name in used or value == f.default:
                continue
            users = [name for name, cls in ALGORITHMS.items() if f.name in used_keys(cls)]
            if f.name in COMPRESSOR_KEYS:
                raise ConfigError(
                    f"{f.name}={value!r} is used by {', '.join(users)}; algorithm="
                    f"{self.algorithm} sends its models uncompressed. Set {f.name}="
                    f"{f.default!r} (or remove it)"
                )
            raise ConfigError(
                f"{f.name}={value!r} is not used by algorithm={self.algorithm}; it is used by "
                f"{', '.join(users) or 'no built-in algorithm'}. Remove it (in `nettrain "
                f"compare`, give it to one algorithm: {users[0] if users else 'NAME'}.{f.name}=...)"
            )

    def _check_faults(self, method: type[Method]) -> None:
        """The fault spec and the trace parse, and the method and engine can run with them."""
        heterogeneous = self.speed != "constant" or self.bandwidth != "constant" or self.trace
        if heterogeneous and self.engine == "shared_memory":
            raise ConfigError(
                "speed, bandwidth and trace shape the virtual clock of engine=sim and "
                "engine=distributed; engine=shared_memory has none. Leave them out"
            )
        faults = Faults.from_config(self)  # reads the trace: a bad one fails before any work
        if faults.availability is not None and self.engine == "distributed":
            raise ConfigError(
                f"trace={self.trace} has availability windows; they are virtual seconds, "
                "enacted by engine=sim only (engine=distributed runs in real time). Use "
                "engine=sim, or keep the trace's speed and bandwidth_gbps and leave "
                "available_from and available_to empty"
            )
        self._check_rejoin(method, faults)
        if not faults.any:
            return
        if self.engine == "shared_memory":
            raise ConfigError(
                "message_drop, crash and split are injected in engine=sim and "
                "engine=distributed; engine=shared_memory workers send no messages"
            )
        if method.schedule == "events" and not method.tolerates_faults:
            raise ConfigError(
                f"algorithm={self.algorithm} does not take message_drop, crash or split (nor "
                "a trace's availability windows); the asynchronous methods that do: "
                f"{', '.join(FAULT_TOLERANT)}"
            )
        if self.blocking:
            raise ConfigError(
                "blocking=true would wait forever for a lost or crashed partner; faults "
                "(message_drop, crash, split, a trace's availability windows) need "
                "blocking=false"
            )

    def _check_rejoin(self, method: type[Method], faults: Faults) -> None:
        """``rejoin_model=neighbour`` needs a crash that ends (``crash=A@R:J``), an
        asynchronous gossip method (partner ``neighbour``) and ``engine=sim``."""
        if self.rejoin_model == "own":
            return
        if not any(c.rejoin is not None for c in faults.crashes):
            raise ConfigError(
                f"rejoin_model={self.rejoin_model} says what an agent back from a crash "
                "takes, and no crash here ends: give one as crash=AGENT@ROUND:REJOIN (e.g. "
                "crash=3@50:60), or drop rejoin_model"
            )
        if method.schedule != "events" or method.partner != "neighbour":
            raise ConfigError(
                f"rejoin_model={self.rejoin_model} takes a neighbour's model in the "
                f"asynchronous gossip methods ({GOSSIP}); algorithm="
                f"{self.algorithm} is not one. Use one of them, or rejoin_model=own"
            )
        if self.engine != "sim":
            raise ConfigError(
                f"rejoin_model={self.rejoin_model} is enacted by engine=sim; engine="
                f"{self.engine} does not take it. Use engine=sim, or rejoin_model=own"
            )

    @property
    def uses_servers(self) -> bool:
        """Whether the algorithm keeps its centre on parameter servers (EASGD family)."""
        return resolve(self.algorithm).uses_centre

    @property
    def world_size(self) -> int:
        """Processes of an engine=distributed run: one per agent, one per server."""
        return self.agents + (self.servers if self.uses_servers else 0)

    @property
    def workers(self) -> int:
        """What runs the method in parallel: its processes under engine=shared_memory,
        else its agents (the ``n`` of :meth:`~nettrain.algorithms.Method.for_network`)."""
        return self.processes if self.engine == "shared_memory" else self.agents

    def to_dict(self) -> dict[str, Any]:
        """Every key, flat, section after section (what ``config.json`` holds)."""
        return {name: getattr(getattr(self, SECTION_OF[name]), name) for name in FIELDS}

    def replace(self, **changes: Any) -> RunConfig:
        return load_config(self.to_dict() | changes)


def build_algorithm(cfg: RunConfig) -> Method:
    """The method ``cfg.algorithm`` with its settings from the config: every dataclass field
    named like a key gets the key's value (``lr``, ``tau``, ``seed``...), a ``compressor``
    is built from ``quantizer``, ``bits``, ``lattice_eps`` and ``qsgd_bucket``; then fixed
    for the run's workers (:meth:`~nettrain.algorithms.Method.for_network`)."""
    cls = resolve(cfg.algorithm)
    if not dataclasses.is_dataclass(cls):
        return cls().for_network(cfg.workers)
    values = cfg.to_dict()
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    settings = {name: values[name] for name in names if name in values}
    if "compressor" in names and cls.compresses and cfg.quantizer != "none":
        settings["compressor"] = build_compressor(
            cfg.quantizer, bits=cfg.bits, eps=cfg.lattice_eps, bucket=cfg.qsgd_bucket
        )
    return cls(**settings).for_network(cfg.workers)


# What a resumed run may not change: the problem, the agents and the state's shape.
FROZEN_ON_RESUME = (
    "algorithm",
    "engine",
    "agents",
    "seed",
    "device",
    "dtype",
    "dataset",
    "data_dir",
    "train_samples",
    "test_fraction",
    "validation",
    "partition",
    "classes_per_agent",
    "dirichlet_alpha",
    "model",
    "hidden",
    "loss",
    "servers",
)
_TYPES = {
    name: kind for cls in SECTIONS.values() for name, kind in typing.get_type_hints(cls).items()
}


def _unknown(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, FIELDS, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {name!r}{hint} (`nettrain keys` lists them all)")


def coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value) to key's type."""
    if name not in FIELDS:
        raise _unknown(name)
    kind = _TYPES[name]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is str:
            return str(value)
        if typing.get_origin(kind) is tuple:
            parts = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(int(p) for p in parts if str(p).strip() != "")
    except (TypeError, ValueError):
        pretty = kind.__name__ if isinstance(kind, type) else str(kind)
        raise ConfigError(f"{name}={value!r} is not a valid {pretty}") from None
    raise TypeError(f"unsupported type {kind!r} for {name}")  # pragma: no cover


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"] -> {"a": "1", "b": "x"}``; a malformed item is a ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected key=value, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def load_config(
    source: Mapping[str, Any] | str | Path | None = None, overrides: Mapping[str, Any] = ()
) -> RunConfig:
    """Build a validated config from a mapping or TOML/JSON file plus overrides."""
    values: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() in (".yaml", ".yml"):
            raise ConfigError(
                f"{path} is YAML; nettrain reads only TOML (.toml) and JSON (.json) config "
                "files: write the same keys as key = value lines in a .toml file"
            )
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot parse {path}: {err}") from None
        values.update(raw)
    elif source is not None:
        values.update(source)
    for name in SECTIONS:  # a TOML table [method] (or a nested mapping) holds its keys
        if isinstance(values.get(name), Mapping):
            values.update(values.pop(name))
    values.update(dict(overrides))
    values.pop(PROVENANCE, None)  # config.json's record of versions and command line
    return RunConfig.from_keys({k: coerce(k, v) for k, v in values.items()})


def describe_keys() -> list[dict[str, str]]:
    """One row per key: section, name, type, default, allowed values and help (for
    `nettrain keys`), section after section."""
    rows = []
    for name, f in FIELDS.items():
        kind = _TYPES[name]
        default = f.default
        rows.append(
            {
                "section": SECTION_OF[name],
                "key": name,
                "type": kind.__name__ if isinstance(kind, type) else "ints",
                "default": ",".join(map(str, default))
                if isinstance(default, tuple)
                else str(default),
                "choices": ", ".join(f.metadata["choices"] or ()),
                "help": f.metadata["help"],
            }
        )
    return rows


__all__ = [
    "FIELDS",
    "SECTIONS",
    "RunConfig",
    "build_algorithm",
    "coerce",
    "describe_keys",
    "load_config",
    "parse_overrides",
    "used_keys",
]
