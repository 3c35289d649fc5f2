"""Figures of merit computed from all agents' parameters ``x: (n, d)``."""

from __future__ import annotations

from typing import Any

import torch

from nettrain.problem.oracle import Problem


def consensus_distance(x: torch.Tensor) -> float:
    """``(1/n) sum_i ||x_i - mean x||^2`` for ``x: (n, d)``."""
    return float((x - x.mean(0)).square().sum(1).mean())


def evaluated_agents(n: int, limit: int) -> torch.Tensor:
    """Agents evaluated individually: all, or ``limit`` evenly spaced ones."""
    if limit == 0 or limit >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, limit).round().long()


def model_metrics(problem: Problem, x: torch.Tensor, eval_agents: int = 0) -> dict[str, Any]:
    """Test loss/accuracy of the mean model, mean and worst agent accuracy, consensus distance."""
    mean = x.mean(0, keepdim=True)  # (1, d)
    agents = evaluated_agents(x.shape[0], eval_agents).to(x.device)
    ev = problem.evaluate(torch.cat([mean, x[agents]]))
    out: dict[str, Any] = {"test_loss": float(ev.loss[0])}
    if ev.accuracy is not None:
        out["test_accuracy"] = float(ev.accuracy[0])
        out["agent_test_accuracy_mean"] = float(ev.accuracy[1:].mean())
        out["agent_test_accuracy_min"] = float(ev.accuracy[1:].min())
    else:
        out["agent_test_loss_mean"] = float(ev.loss[1:].mean())
    out["consensus_distance"] = consensus_distance(x)
    return out
