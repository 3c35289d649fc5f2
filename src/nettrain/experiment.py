"""From a configuration to results: build the pieces, run an engine, write the folder.

``config -> (problem, shards, topology, algorithm, cost model) -> engine.run -> records
-> run folder``. This is the Python API behind ``nettrain run`` and ``nettrain
compare``::

    from nettrain import load_config, run
    result = run(load_config(overrides={"algorithm": "dpsgd", "agents": 16}), out="runs/x")
    result.summary["test_accuracy"]
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nettrain.algorithms import build_algorithm
from nettrain.checkpoint import Checkpoint
from nettrain.config import FROZEN_ON_RESUME, RunConfig, load_config
from nettrain.data import load_dataset, partition
from nettrain.engines.base import Engine, Job, RunResult
from nettrain.engines.distributed.engine import DistributedEngine
from nettrain.engines.shared_memory.engine import SharedMemoryEngine
from nettrain.engines.sim.clock import CostModel
from nettrain.engines.sim.engine import SimEngine
from nettrain.errors import ConfigError, DataError
from nettrain.faults import Faults
from nettrain.problem.flat import matmul_flops_per_sample
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.oracle import Problem
from nettrain.recording import RunFolder, summarize
from nettrain.report.plots import plot_runs
from nettrain.report.tables import write_csv
from nettrain.topology import build_topology

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


def build_problem(cfg: RunConfig) -> Problem:
    """Data set on the configured device and dtype, model, loss and regulariser."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device; use device=cpu")
    data = load_dataset(
        cfg.dataset,
        data_dir=cfg.data_dir or None,
        seed=cfg.seed,
        test_fraction=cfg.test_fraction,
        train_samples=cfg.train_samples or None,
    )
    dtype = getattr(torch, cfg.dtype)

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(cfg.device, dtype) if t.is_floating_point() else t.to(cfg.device)

    splits = ("x_train", "y_train", "x_test", "y_test")
    moved = {name: move(getattr(data, name)) for name in splits}
    data = dataclasses.replace(data, **moved)
    if data.n_classes == 0 and cfg.loss != "squared":
        raise ConfigError(f"dataset={cfg.dataset} is a regression set; use loss=squared")
    model = build_model(cfg.model, data.feature_shape, data.n_outputs, hidden=cfg.hidden).to(
        cfg.device, dtype
    )
    return Problem(model, get_loss(cfg.loss), Regularizer(cfg.regularizer, cfg.reg_lambda), data)


def build_cost_model(cfg: RunConfig, problem: Problem) -> CostModel:
    per_sample = cfg.compute_s_per_sample or (
        3 * matmul_flops_per_sample(problem.spec) / (cfg.agent_gflops * 1e9)
    )
    return CostModel(
        seconds_per_sample=per_sample,
        latency_s=cfg.latency_s,
        bandwidth_bytes_per_s=cfg.bandwidth_gbps * 1e9 / 8,
        slowdown=CostModel.straggler_slowdown(
            cfg.agents, cfg.stragglers, cfg.straggler_slowdown, cfg.seed
        ),
    )


def build_job(cfg: RunConfig) -> Job:
    """Every piece of a run, validated, before any training starts."""
    topology = build_topology(
        cfg.topology,
        cfg.agents,
        seed=cfg.seed,
        weights=cfg.weights,
        schedule=cfg.schedule,
        drop_prob=cfg.drop_prob,
        degree=cfg.degree,
        edge_prob=cfg.edge_prob or None,
        branching=cfg.branching,
    )
    problem = build_problem(cfg)
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
    algorithm = build_algorithm(cfg)
    algorithm.check(problem)
    return Job(
        problem=problem,
        shards=shards,
        topology=topology,
        algorithm=algorithm,
        x0=problem.initial_params(cfg.seed),
        rounds=cfg.rounds,
        batch_size=cfg.batch_size if cfg.batch_size >= 0 else algorithm.default_batch_size,
        seed=cfg.seed,
        eval_every=cfg.eval_every,
        cost=build_cost_model(cfg, problem),
        eval_agents=cfg.eval_agents,
        train_objective=cfg.train_objective or algorithm.records_objective,
        checkpoint_every=cfg.checkpoint_every,
        phase=cfg.phase,
        progress=cfg.progress,
        faults=Faults.from_config(cfg),
    )


def run(
    cfg: RunConfig, out: str | Path | None = None, checkpoint: Checkpoint | None = None
) -> RunResult:
    """Run one configuration; with ``out``, write the run folder as the run goes.

    With ``checkpoint`` (see :func:`resume`), continue from it in the folder ``out``.
    """
    engine = build_engine(cfg)  # before the job: it may pick this process's device
    job = build_job(cfg)
    # Only the main process of a multi-process engine writes the run folder.
    keep = checkpoint.records if checkpoint is not None else None
    folder = RunFolder(out if getattr(engine, "is_main", True) else None, keep=keep)
    folder.write_config(cfg.to_dict())
    result = engine.run(job, folder, checkpoint) if checkpoint else engine.run(job, folder)
    summary = summarize(
        result.records,
        label=f"{cfg.algorithm} on {cfg.topology} ({cfg.agents} agents, {cfg.dataset})",
        algorithm=cfg.algorithm,
        engine=cfg.engine,
        agents=cfg.agents,
        topology=cfg.topology,
        schedule=cfg.schedule,
        dataset=cfg.dataset,
        model=cfg.model,
        params=job.problem.dim,
        rounds=cfg.rounds,
        seed=cfg.seed,
    )
    folder.finish(summary, result.x, centre=result.centre)
    return dataclasses.replace(result, summary=summary)


def resume(out: str | Path, overrides: Mapping[str, Any] = ()) -> RunResult:
    """Continue the run in folder ``out`` from its ``checkpoint.pt``.

    ``overrides`` may change anything but what defines the problem and the state
    (:data:`~nettrain.config.FROZEN_ON_RESUME`), e.g. a larger ``rounds``. With no change
    but ``rounds``, the final parameters equal those of an uninterrupted run.
    """
    folder = Path(out)
    cfg = resumed_config(folder, overrides)
    checkpoint = Checkpoint.load(folder)
    if checkpoint.round >= cfg.rounds:
        raise ConfigError(
            f"the checkpoint is at round {checkpoint.round} and rounds={cfg.rounds}: "
            f"nothing left to run; resume with rounds= larger than {checkpoint.round}"
        )
    return run(cfg, folder, checkpoint)


def resumed_config(folder: Path, overrides: Mapping[str, Any] = ()) -> RunConfig:
    """The config of the run in ``folder`` with ``overrides``, checked for a resume."""
    if not (folder / "config.json").is_file():
        raise DataError(f"{folder} is not a run folder (no config.json); nothing to resume")
    saved = load_config(json.loads((folder / "config.json").read_text()))
    cfg = saved.replace(**dict(overrides))  # validated and converted like any config
    changed = [k for k in FROZEN_ON_RESUME if getattr(cfg, k) != getattr(saved, k)]
    if changed:
        raise ConfigError(
            f"a resumed run cannot change {', '.join(changed)} (it defines the problem or "
            "the state); start a new run instead"
        )
    return cfg


def compare(
    cfg: RunConfig, algorithms: Sequence[str], out: str | Path | None = None
) -> list[dict[str, Any]]:
    """Run each algorithm on the same problem and seed; write ``summary.csv`` and a plot."""
    if not algorithms:
        raise ConfigError("compare needs at least one algorithm (algorithms=dpsgd,allreduce)")
    summaries, curves = [], {}
    for name in algorithms:
        sub = Path(out) / name if out is not None else None
        result = run(cfg.replace(algorithm=name), sub)
        summaries.append(result.summary)
        curves[name] = result.records
    if out is not None:
        write_comparison(cfg, summaries, curves, Path(out))
    return summaries


def write_comparison(
    cfg: RunConfig,
    summaries: Sequence[dict[str, Any]],
    curves: Mapping[str, Sequence[dict[str, Any]]],
    out: Path,
) -> None:
    """``summary.csv`` (one row per run) and ``compare.png`` in ``out``."""
    write_csv(summaries, out / "summary.csv")
    title = f"{cfg.dataset}, {cfg.agents} agents on {cfg.topology} ({cfg.partition})"
    plot_runs(curves, out / "compare.png", title=title)
