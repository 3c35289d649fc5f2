"""From a configuration to results: build the pieces, run an engine, write the folder.

``config -> (problem, shards, topology, algorithm, cost model) -> engine.run -> records
-> run folder``. This is the Python API behind ``nettrain run`` and ``nettrain
compare`` (whose sweeps over several keys are :mod:`nettrain.sweeps`'s)::

    from nettrain import load_config, run
    result = run(load_config(overrides={"algorithm": "dpsgd", "agents": 16}), out="runs/x")
    result.summary["test_accuracy"]
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nettrain.algorithms import Method, algorithm_name, resolve
from nettrain.checkpoint import Checkpoint
from nettrain.config import (
    FIELDS,
    FROZEN_ON_RESUME,
    PROVENANCE,
    RunConfig,
    build_algorithm,
    load_config,
    used_keys,
)
from nettrain.data import Dataset, load_dataset, partition
from nettrain.data.validation import hold_out
from nettrain.description import describe_runs
from nettrain.engines.base import Engine, Job
from nettrain.engines.distributed.engine import DistributedEngine
from nettrain.engines.distributed.snapshots import Snapshots
from nettrain.engines.shared_memory.engine import SharedMemoryEngine
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.engine import SimEngine
from nettrain.engines.sim.profile import load_profile
from nettrain.errors import ConfigError, DataError, TopologyError
from nettrain.faults import Faults
from nettrain.heterogeneity import agent_factors
from nettrain.memory import peak_memory, reset_peak, retain_freed_memory
from nettrain.problem.execution import Execution
from nettrain.problem.flat import matmul_flops_per_sample
from nettrain.problem.losses import LOSSES, Regularizer, get_loss, per_sample
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder, config_json, read_config, read_records, summarize
from nettrain.report.tables import write_csv
from nettrain.result import Result
from nettrain.topology import Topology, build_topology
from nettrain.version import __version__

EVALUATIONS = 20  # records of a run whose eval_every is not set (eval_every=0)

ENGINES: dict[str, type[Engine]] = {
    "sim": SimEngine,
    "distributed": DistributedEngine,
    "shared_memory": SharedMemoryEngine,
}


def build_engine(cfg: RunConfig) -> Engine:
    """The configured engine; one with a ``from_config`` reads its own keys."""
    kind = ENGINES[cfg.engine]
    from_config = getattr(kind, "from_config", None)
    return from_config(cfg) if from_config is not None else kind()


def build_problem(
    cfg: RunConfig,
    model: nn.Module | None = None,
    data: Dataset | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
) -> Problem:
    """Data set on the configured device and dtype, model, loss and regulariser: the
    configured built-ins, or the user's own ``model`` (a template, copied: the object
    given is never changed), ``data`` and ``loss``; with ``validation > 0`` that share
    of the training samples held out as a validation split
    (:func:`~nettrain.data.validation.hold_out`)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu")
    if data is None:
        data = load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir or None,
            seed=cfg.seed,
            test_fraction=cfg.test_fraction,
            train_samples=cfg.train_samples or None,
        )
    data = hold_out(data, cfg.validation, cfg.seed, min_train=cfg.agents)
    dtype = getattr(torch, cfg.dtype)

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(cfg.device, dtype) if t.is_floating_point() else t.to(cfg.device)

    splits = [f"{xy}_{split}" for split in data.splits for xy in "xy"]
    moved = {name: move(getattr(data, name)) for name in splits}
    data = dataclasses.replace(data, **moved)
    classification = data.n_classes > 0
    if loss is None:
        if not classification and cfg.loss == "cross_entropy":
            raise ConfigError(f"dataset={data.name} is a regression set; use loss=squared")
        loss_fn = get_loss(cfg.loss, classification)
    else:
        loss_fn = per_sample(loss)
    if model is None:
        model = build_model(cfg.model, data.feature_shape, data.n_outputs, hidden=cfg.hidden)
    else:
        model = copy.deepcopy(model)
    model = model.to(cfg.device, dtype)
    regularizer = Regularizer(cfg.regularizer, cfg.reg_lambda)
    execution = Execution.parse(cfg.chunk_agents, cfg.memory_gb, cfg.compile, cfg.native)
    return Problem(
        model, loss_fn, regularizer, data, buffer_policy=cfg.buffers, execution=execution
    )


def build_cost_model(cfg: RunConfig, problem: Problem, batch_size: int | None = None) -> CostModel:
    """The virtual clock's cost model (:mod:`nettrain.engines.sim.clock`): seconds per
    sample, latency and bandwidth from the ``[clock]`` keys, or with ``cost_model=PATH``
    the profile's measured ones in their place, once the profile is checked against the
    run's model, ``batch_size`` (default: the config's, resolved as a run resolves it)
    and parameter count; and per agent the slow-down ``straggler_i / speed_i`` and the
    bandwidth factor (:func:`nettrain.heterogeneity.agent_factors`, relative to that
    bandwidth)."""
    per_sample = cfg.compute_s_per_sample or (
        3 * matmul_flops_per_sample(problem.spec) / (cfg.agent_gflops * 1e9)
    )
    latency, bandwidth, profile = cfg.latency_s, cfg.bandwidth_gbps * 1e9 / 8, None
    rpc_latency = collective_latency = event_overhead = alone = None
    overhead = 0.0
    if cfg.cost_model:
        profile = load_profile(cfg.cost_model)
        if batch_size is None:
            batch_size = (
                cfg.batch_size if cfg.batch_size >= 0 else build_algorithm(cfg).default_batch_size
            )
        profile.check(cfg.model, batch_size, problem.dim, cfg.cost_model)
        per_sample = profile.seconds_per_sample
        # a neighbour message in the engine's round: the link's latency and its own work
        latency = profile.latency_s + profile.message_overhead_s
        bandwidth = profile.bandwidth_bytes_per_s
        itemsize = getattr(torch, cfg.dtype).itemsize
        rpc_latency = profile.rpc_latency_s(itemsize)
        collective_latency = profile.collective_latency_s(itemsize)
        overhead, event_overhead = profile.round_overhead_s, profile.event_overhead_s
        alone = profile.seconds_per_sample_alone
    slowdown = CostModel.straggler_slowdown(
        cfg.agents, cfg.stragglers, cfg.straggler_slowdown, cfg.seed
    )
    speed, link = agent_factors(
        cfg.speed, cfg.bandwidth, cfg.trace, cfg.agents, cfg.seed, bandwidth
    )
    return CostModel(
        seconds_per_sample=per_sample,
        latency_s=latency,
        bandwidth_bytes_per_s=bandwidth,
        slowdown=slowdown if speed is None else slowdown / speed,
        bandwidth_factor=link,
        profile=profile,
        rpc_latency_s=rpc_latency,
        collective_latency_s=collective_latency,
        step_overhead_s=overhead,
        event_overhead_s=event_overhead,
        alone_seconds_per_sample=alone,
    )


def build_network(cfg: RunConfig, uses_graph: bool = True) -> Topology:
    """The configured graph; for a method that never mixes along it (``uses_graph`` false:
    all-reduce, a shared model, a tree of its own), where that graph cannot be built on
    ``agents`` (too few, a size its family does not take, disconnected), a ring, or the
    complete graph below three agents: the graph is then only its communicator's frame."""

    def build(kind: str) -> Topology:
        return build_topology(
            kind,
            cfg.agents,
            seed=cfg.seed,
            weights=cfg.weights,
            schedule=cfg.schedule,
            drop_prob=cfg.drop_prob,
            degree=cfg.degree,
            edge_prob=cfg.edge_prob or None,
            branching=cfg.branching,
        )

    try:
        return build(cfg.topology)
    except TopologyError:
        if uses_graph:
            raise
        return build("ring" if cfg.agents >= 3 else "complete")


def build_job(
    cfg: RunConfig,
    *,
    model: nn.Module | None = None,
    data: Dataset | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    algorithm: Method | None = None,
) -> Job:
    """Every piece of a run, validated, before any training starts: the configured
    built-ins, or the user's own model, data, loss and algorithm object."""
    algorithm = build_algorithm(cfg) if algorithm is None else algorithm.for_network(cfg.workers)
    topology = build_network(cfg, algorithm.uses_graph)
    problem = build_problem(cfg, model, data, loss)
    problem.check()
    shards = partition(
        problem.data.y_train.cpu(),
        cfg.agents,
        cfg.partition,
        seed=cfg.seed,
        classes_per_agent=cfg.classes_per_agent,
        alpha=cfg.dirichlet_alpha,
        n_classes=problem.data.n_classes or None,
        groups=problem.data.groups,
    )
    algorithm.check(problem)
    batch_size = cfg.batch_size if cfg.batch_size >= 0 else algorithm.default_batch_size
    return Job(
        problem=problem,
        shards=shards,
        topology=topology,
        algorithm=algorithm,
        x0=problem.initial_params(cfg.seed, reinitialise=cfg.init == "seed"),
        rounds=cfg.rounds,
        batch_size=batch_size,
        seed=cfg.seed,
        eval_every=cfg.eval_every or max(1, cfg.rounds // EVALUATIONS),
        cost=build_cost_model(cfg, problem, batch_size),
        eval_agents=cfg.eval_agents,
        train_objective=cfg.train_objective or algorithm.records_objective,
        checkpoint_every=cfg.checkpoint_every,
        phase=cfg.phase,
        progress=cfg.progress,
        faults=Faults.from_config(cfg),
        timeline_rounds=cfg.timeline_rounds if cfg.timeline else 0,
    )


def as_config(
    config: RunConfig | Mapping[str, Any] | str | Path | None,
    algorithm: Method | None = None,
) -> RunConfig:
    """A validated config from a RunConfig, a mapping of keys, or a TOML/JSON file; with
    an ``algorithm`` object, named after it."""
    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = load_config(config)
    else:
        cfg = load_config(overrides=dict(config or {}))
    if algorithm is not None:
        if not isinstance(algorithm, Method):
            raise ConfigError(
                f"algorithm= takes a nettrain method object (e.g. nettrain.algorithms.DPSGD"
                f"(...)), got {type(algorithm).__name__}; name built-ins in the config instead"
            )
        cfg = cfg.replace(algorithm=algorithm_name(algorithm), **method_keys(cfg, algorithm))
    return cfg


def method_keys(cfg: RunConfig, algorithm: Method) -> dict[str, Any]:
    """The ``method`` keys an algorithm object sets (its fields named like keys), so that
    ``config.json`` says what ran; a key the config sets otherwise is a ConfigError."""
    out = {}
    for name in used_keys(type(algorithm)):
        if not hasattr(algorithm, name):
            continue  # the quantiser's keys: the compressor object is described instead
        value, given = getattr(algorithm, name), getattr(cfg, name)
        if given != FIELDS[name].default and given != value:
            raise ConfigError(
                f"{name}={given!r} in the config, but the algorithm object has {name}={value!r}; "
                "the object's settings are used: leave the key out of the config"
            )
        out[name] = value
    return out


def run(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    out: str | Path | None = None,
    checkpoint: Checkpoint | Snapshots | None = None,
    *,
    model: nn.Module | None = None,
    data: Dataset | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    algorithm: Method | None = None,
) -> Result:
    """Run one configuration; with ``out``, write the run folder as the run goes.

    ``config`` is a :class:`RunConfig`, a mapping of config keys or a TOML file. The
    user's own objects replace the configured built-ins: ``model`` (any ``nn.Module``, a
    template copied per agent), ``data`` (a :class:`~nettrain.data.Dataset`, e.g. from
    :func:`nettrain.data.from_tensors`), ``loss`` (any torch loss; default from the
    labels' kind) and ``algorithm`` (a method object). Under ``engine=distributed`` the
    script runs on every rank (``torchrun --nproc-per-node N script.py``), each rank
    builds its own objects, and every rank gets a result; rank 0's
    (``result.is_main``) holds the records and every agent (see :mod:`nettrain.result`).
    With ``checkpoint`` (see :func:`resume`), continue from it in the folder ``out``.
    """
    cfg = as_config(config, algorithm)
    engine = build_engine(cfg)  # before the job: it may pick this process's device
    job = build_job(cfg, model=model, data=data, loss=loss, algorithm=algorithm)
    # Only the main process of a multi-process engine writes the run folder.
    keep = checkpoint.records if checkpoint is not None else None
    main = getattr(engine, "is_main", True)
    folder = RunFolder(out if main else None, keep=keep, tensorboard=cfg.tensorboard, home=out)
    try:
        given = described(cfg, job, model, data, loss, algorithm)
        config = cfg.to_dict() | given
        folder.write_config(config | {PROVENANCE: provenance()})
        allocator = retain_freed_memory()
        reset_peak()
        result = engine.run(job, folder, checkpoint) if checkpoint else engine.run(job, folder)
        dataset = data.name if data is not None else cfg.dataset
        model_name = type(model).__name__ if model is not None else cfg.model
        graph = f" on {cfg.topology}" if job.algorithm.uses_graph else ""
        summary = (
            summarize(
                result.records,
                label=f"{job.algorithm.name}{graph} ({cfg.agents} agents, {dataset})",
                algorithm=cfg.algorithm,
                engine=cfg.engine,
                agents=cfg.agents,
                topology=cfg.topology,
                schedule=cfg.schedule,
                dataset=dataset,
                model=model_name,
                params=job.problem.dim,
                rounds=cfg.rounds,
                seed=cfg.seed,
            )
            | result.summary
            | peak_memory()
            | {"allocator": allocator}
            | provenance()
        )
        title = describe_runs({cfg.algorithm: config_json(config)}).title()
        folder.finish(summary, result.x, centre=result.centre, buffers=result.buffers, title=title)
    finally:
        folder.close()  # a failed run's TensorBoard events; finish() closes a finished run's
    return Result(
        x=result.x,
        records=result.records,
        summary=summary,
        centre=result.centre,
        buffers=result.buffers,
        model=job.problem.template,
        is_main=main or folder.adopted,
    )


def described(
    cfg: RunConfig,
    job: Job,
    model: nn.Module | None,
    data: Dataset | None,
    loss: Callable[..., torch.Tensor] | None,
    algorithm: Method | None,
) -> dict[str, Any]:
    """What ``config.json`` says of the user's own objects in place of built-in names:
    the model's class and sizes, the data's shapes and hash, the loss's and algorithm's
    names (and the algorithm's settings)."""
    out: dict[str, Any] = {}
    if model is not None:
        out["model"] = {
            "class": qualified_name(type(model)),
            "parameters": job.problem.dim,
            "buffers": job.problem.buffer_spec.numel,
        }
    if data is not None:
        out["dataset"] = {"class": qualified_name(type(data))} | data.describe()
    if loss is not None:
        out["loss"] = qualified_name(loss)
    if algorithm is not None:
        out["algorithm_settings"] = repr(algorithm)
    return out


def sha256(data: Dataset) -> str:
    """The hash of a data set's tensors that ``config.json`` records."""
    return str(data.describe()["sha256"])


def qualified_name(obj: Any) -> str:
    """``module.QualifiedName`` of a class or function (its type's, for other objects)."""
    if not hasattr(obj, "__qualname__"):
        obj = type(obj)
    return f"{obj.__module__}.{obj.__qualname__}"


def provenance() -> dict[str, Any]:
    """The nettrain and torch versions and the command line that made a run."""
    return {
        "nettrain_version": __version__,
        "torch_version": torch.__version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }


OBJECT_KEYS = {"model": "model", "dataset": "data", "loss": "loss"}  # config key -> run()'s
NOT_KEYS = ("algorithm_settings", PROVENANCE)


def resume(
    out: str | Path,
    overrides: Mapping[str, Any] = (),
    *,
    model: nn.Module | None = None,
    data: Dataset | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    algorithm: Method | None = None,
) -> Result:
    """Continue the run in folder ``out`` from its ``checkpoint.pt`` (an asynchronous
    method under ``engine=distributed``: from every rank's own snapshot, see
    :mod:`nettrain.engines.distributed.snapshots`).

    ``overrides`` may change anything but what defines the problem and the state
    (:data:`~nettrain.config.FROZEN_ON_RESUME`), e.g. a larger ``rounds``. With no change
    but ``rounds``, the final parameters equal those of an uninterrupted run (but for
    the asynchronous distributed runs, whose processes never repeat their timing). A run of
    the user's own objects is resumed with the same objects (the data's hash is checked).
    """
    folder = Path(out)
    objects = {"model": model, "data": data, "loss": loss}
    cfg = resumed_config(folder, overrides, given=[k for k, v in objects.items() if v is not None])
    saved = json.loads((folder / "config.json").read_text()).get("dataset")
    if data is not None and isinstance(saved, dict) and saved.get("sha256") != sha256(data):
        raise ConfigError(
            f"the data given differ from the run's in {folder} (another sha256); resume "
            "with the same data"
        )
    checkpoint = resume_point(folder, cfg)
    if checkpoint.round >= cfg.rounds:
        raise ConfigError(
            f"the checkpoint is at round {checkpoint.round} and rounds={cfg.rounds}: "
            f"nothing left to run; resume with rounds= larger than {checkpoint.round}"
        )
    return run(cfg, folder, checkpoint, algorithm=algorithm, **objects)


def resume_point(folder: Path, cfg: RunConfig) -> Checkpoint | Snapshots:
    """Where the run in ``folder`` goes on from: its ``checkpoint.pt``, or for an
    asynchronous method under ``engine=distributed``, every rank's own snapshot."""
    if cfg.engine == "distributed" and resolve(cfg.algorithm).schedule == "events":
        rounds = [r["round"] for r in read_records(folder)]
        return Snapshots.read(folder, cfg.agents, cfg.world_size - cfg.agents, rounds)
    return Checkpoint.load(folder)


def resumed_config(
    folder: Path, overrides: Mapping[str, Any] = (), given: Sequence[str] = ()
) -> RunConfig:
    """The config of the run in ``folder`` with ``overrides``, checked for a resume.

    ``given`` names the user's objects passed again (``model``, ``data``, ``loss``): a
    run that was given one must be resumed with it."""
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder} is not a run folder (no config.json); nothing to resume")
    values = json.loads((folder / "config.json").read_text())
    for key in NOT_KEYS:
        values.pop(key, None)
    for key, argument in OBJECT_KEYS.items():
        value = values.get(key)
        if isinstance(value, dict) or (key == "loss" and value not in LOSSES):
            if argument not in given:
                name = value.get("class") if isinstance(value, dict) else value
                raise ConfigError(
                    f"the run in {folder} was given its own {argument} ({name}): resume it "
                    f"from Python with nettrain.resume(folder, {argument}=...)"
                )
            del values[key]
    saved = load_config(values)
    cfg = saved.replace(**dict(overrides))  # validated and converted like any config
    changed = [k for k in FROZEN_ON_RESUME if getattr(cfg, k) != getattr(saved, k)]
    if changed:
        raise ConfigError(
            f"a resumed run cannot change {', '.join(changed)} (it defines the problem or "
            "the state); start a new run instead"
        )
    return cfg


def compare(
    config: RunConfig | Mapping[str, Any] | str | Path | None,
    algorithms: Sequence[str | Method],
    out: str | Path | None = None,
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    model: nn.Module | None = None,
    data: Dataset | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Run each algorithm on the same problem and seed (the configured one, or the user's
    own ``model``, ``data`` and ``loss``); write ``summary.csv`` and a plot.

    ``algorithms`` are names or method objects (``SwarmSGD(local_steps=2)``);
    ``settings[name]`` holds keys for that algorithm alone (``{"swarm": {"local_steps":
    2}}``). A key of the shared config that one of the algorithms does not use is a
    ConfigError naming those that do. To vary other keys too (every combination of
    ``lr`` and ``seed``, mean ± std over seeds, runs in parallel and kept when
    finished), see :func:`nettrain.sweeps.sweep`."""
    if not algorithms:
        raise ConfigError("compare needs at least one algorithm (algorithms=dpsgd,allreduce)")
    runs = comparison_configs(config, algorithms, settings)
    summaries, curves = [], {}
    for (label, cfg), method in zip(runs.items(), algorithms, strict=True):
        sub = Path(out) / label if out is not None else None
        result = run(
            cfg,
            sub,
            model=model,
            data=data,
            loss=loss,
            algorithm=method if isinstance(method, Method) else None,
        )
        summaries.append(result.summary)
        curves[label] = result.records
    if out is not None:
        write_comparison(next(iter(runs.values())), summaries, curves, Path(out))
    return summaries


def comparison_configs(
    config: RunConfig | Mapping[str, Any] | str | Path | None,
    algorithms: Sequence[str | Method],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, RunConfig]:
    """The validated config of each compared algorithm, by label (its name), before any
    run starts: the shared keys, ``algorithm=``, then the algorithm's own ``settings``."""
    if isinstance(config, (RunConfig, str, Path)):
        shared: dict[str, Any] = as_config(config).to_dict()
    else:  # a mapping stays raw: its keys are checked with each algorithm, not alone
        shared = dict(config or {})
    settings = settings or {}
    names = [m if isinstance(m, str) else algorithm_name(m) for m in algorithms]
    unknown = set(settings) - set(names)
    if unknown:
        raise ConfigError(
            f"settings for {', '.join(sorted(unknown))}, which is not compared; the "
            f"algorithms are {', '.join(names)}"
        )
    if len(set(names)) < len(names):
        raise ConfigError(f"each algorithm is compared once, got {', '.join(names)}")
    out = {}
    for name, method in zip(names, algorithms, strict=True):
        values = shared | {"algorithm": name} | dict(settings.get(name, {}))
        out[name] = as_config(values, method if isinstance(method, Method) else None)
    return out


def write_comparison(
    cfg: RunConfig,
    summaries: Sequence[dict[str, Any]],
    curves: Mapping[str, Sequence[dict[str, Any]]],
    out: Path,
) -> None:
    """``summary.csv`` (one row per run) and ``compare.png`` in ``out``; the plot's title
    and legend say what the runs share and where they differ (their ``config.json``)."""
    from nettrain.report.plots import HEADLINE, X_AXES, plot_runs  # matplotlib: compare only

    write_csv(summaries, out / "summary.csv")
    configs = {name: read_config(out / name) for name in curves}
    about = describe_runs({name: c for name, c in configs.items() if c is not None})
    title = about.title() or f"{cfg.dataset}, {cfg.agents} agents ({cfg.partition})"
    x = [axis for axis in X_AXES if axis[0] != "samples"]
    labels = about.labels(curves)
    plot_runs(curves, out / "compare.png", title, labels=labels, x=x, metrics=HEADLINE)
