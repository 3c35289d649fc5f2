"""Figures of merit computed from all agents' parameters ``x: (n, d)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.func import grad_and_value

from nettrain.problem.buffers import Buffers, for_evaluation
from nettrain.problem.oracle import Problem


def consensus_distance(x: torch.Tensor) -> float:
    """``(1/n) sum_i ||x_i - mean x||^2`` for ``x: (n, d)``, computed about the first
    row (the same value), so that equal rows give exactly 0, not rounding error."""
    y = x - x[0]
    y -= y.mean(0)
    return float(y.square_().sum(1).mean())


def evaluated_agents(n: int, limit: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Agents evaluated individually: all, or ``limit`` evenly spaced ones (chosen on the
    CPU, the same on every device), on ``device``."""
    if limit == 0 or limit >= n:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, limit, device="cpu").round().long().to(device)


def model_metrics(
    problem: Problem,
    x: torch.Tensor,
    eval_agents: int = 0,
    shards: Sequence[torch.Tensor] | None = None,
    buffers: Buffers | None = None,
) -> dict[str, Any]:
    """Test loss/accuracy of the mean model, each evaluated agent's accuracy (the agents of
    :func:`evaluated_agents`, in order) with their mean and worst, consensus distance.

    A model with buffers is evaluated with every agent's ``buffers: {name: (n, ...)}``:
    the mean model with their mean, each agent as ``problem.buffer_policy`` says
    (:func:`~nettrain.problem.buffers.for_evaluation`). With the agents' ``shards``, also
    the training-set figures of :func:`social_metrics`. With a validation split
    (the ``validation`` key), the mean model's ``val_loss`` and ``val_accuracy``
    (:func:`validation_metrics`).
    """
    mean = x.mean(0, keepdim=True)  # (1, d)
    agents = evaluated_agents(x.shape[0], eval_agents, x.device)
    rows = for_evaluation(buffers, agents, problem.buffer_policy) if buffers else None
    ev = problem.evaluate(torch.cat([mean, x[agents]]), rows)
    out: dict[str, Any] = {"test_loss": float(ev.loss[0])}
    if ev.accuracy is not None:
        out["test_accuracy"] = float(ev.accuracy[0])
        out["agent_test_accuracy_mean"] = float(ev.accuracy[1:].mean())
        out["agent_test_accuracy_min"] = float(ev.accuracy[1:].min())
        out["agent_test_accuracy"] = ev.accuracy[1:].tolist()  # the evaluated agents'
    else:
        out["agent_test_loss_mean"] = float(ev.loss[1:].mean())
    if problem.data.x_val is not None:
        first = {n: b[:1] for n, b in rows.items()} if rows else None  # the mean model's
        out |= validation_metrics(problem, mean, first)
    out["consensus_distance"] = consensus_distance(x)
    if shards is not None:
        out |= social_metrics(problem, shards, x)
    return out


def validation_metrics(
    problem: Problem, mean: torch.Tensor, buffers: Buffers | None = None
) -> dict[str, Any]:
    """``val_loss`` (and ``val_accuracy`` for classification) of the mean model
    ``mean: (1, d)`` on the validation split, evaluated as the test figures are."""
    ev = problem.evaluate(mean, buffers, split="val")
    out: dict[str, Any] = {"val_loss": float(ev.loss[0])}
    if ev.accuracy is not None:
        out["val_accuracy"] = float(ev.accuracy[0])
    return out


def social_metrics(
    problem: Problem, shards: Sequence[torch.Tensor], x: torch.Tensor
) -> dict[str, Any]:
    """The social cost ``U = (1/n) sum_i f_i + r`` at the mean model ``w = mean x`` and more.

    ``f_i`` is agent ``i``'s mean loss on its whole shard (each sample weighted
    ``1/(n |shard_i|)``). ``stationarity = ||w - prox_r(w - grad F(w))||``, the norm of the
    prox-gradient mapping with unit step (zero exactly at stationary points of ``U``);
    ``disagreement = max_i ||x_i - w||``.
    """
    n = len(shards)
    idx = torch.cat(list(shards)).to(x.device)
    weights = torch.cat(  # in x's dtype: float32 weights would cap a float64 objective
        [torch.full((len(s),), 1.0 / (n * len(s)), device=x.device, dtype=x.dtype) for s in shards]
    )
    data = problem.data
    w = x.mean(0)
    g, loss = grad_and_value(problem.batch_loss)(w, data.x_train[idx], data.y_train[idx], weights)
    reg = problem.regularizer
    mapping = w - reg.prox(w - g, 1.0)
    return {
        "objective": float(loss + reg.value(w)),
        "stationarity": float(mapping.norm()),
        "disagreement": float((x - w).norm(dim=1).max()),
    }
