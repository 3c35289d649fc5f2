"""Reported metrics against numbers worked out by hand on tiny inputs.

Each figure in a record (consensus distance, disagreement, objective, stationarity, test
accuracy of the mean model and of the agents, staleness statistics, traffic totals,
NEXT's diagnostics) is compared with an exact value computed in the test, so that a
wrong formula (a sum for a mean, a norm for a squared norm, the wrong agents) fails.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch

from nettrain.algorithms import DGD, NEXT
from nettrain.algorithms.next_sca import NextState
from nettrain.data import Dataset
from nettrain.engines.base import staleness_fields, traffic_fields
from nettrain.evaluation import (
    consensus_distance,
    evaluated_agents,
    model_metrics,
    social_metrics,
)
from nettrain.patterns import shared_fields
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.oracle import Problem

F64 = torch.float64


def test_consensus_distance_is_the_mean_squared_distance_to_the_mean() -> None:
    """Rows (0, 0), (2, 0), (1, 3): mean (1, 1), squared distances 2, 2, 4, so
    ``(1/n) sum_i ||x_i - mean||^2 = 8/3`` (a sum would give 8, a mean of norms other
    values)."""
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]], dtype=F64)
    assert consensus_distance(x) == pytest.approx(8 / 3, rel=1e-14)
    assert consensus_distance(x[:1].expand(5, -1)) == 0.0  # equal rows: exactly zero


def test_consensus_distance_of_close_rows_far_from_the_origin_is_exact() -> None:
    """Rows 1e16 and 1e16 + 2 (both exact in float64, spacing 2): mean 1e16 + 1, each row
    1 away, so the distance is 1, computed exactly about the first row (about a shifted
    point such as ``x + x_0`` the rows 2e16 and 2e16 + 2 round together, spacing 4, to 0).
    A single agent is at distance 0 from itself."""
    x = torch.tensor([[1e16], [1e16 + 2]], dtype=F64)
    assert consensus_distance(x) == 1.0
    assert consensus_distance(torch.tensor([[3.0, -1.0]], dtype=F64)) == 0.0


def test_evaluated_agents_are_chosen_on_the_cpu_and_returned_on_the_device() -> None:
    """All agents when ``limit`` is 0 or at least ``n``; else ``limit`` evenly spaced ones,
    ``round(linspace(0, n - 1, limit))``: 0, 3, 6, 9 of 10 and 0, 2, 4 of 5 (by hand).
    Computed on the CPU whatever the default device (here ``meta``, which holds no values),
    then moved to ``device`` (default: the CPU)."""
    assert evaluated_agents(4, 0).tolist() == [0, 1, 2, 3]
    assert evaluated_agents(3, 3).tolist() == [0, 1, 2]
    assert evaluated_agents(3, 7).tolist() == [0, 1, 2]
    assert evaluated_agents(10, 4).tolist() == [0, 3, 6, 9]
    with torch.device("meta"):
        assert evaluated_agents(5, 3, "cpu").tolist() == [0, 2, 4]
    assert evaluated_agents(5, 3, "meta").device.type == "meta"
    assert evaluated_agents(5, 0, "meta").device.type == "meta"


def scalar_regression() -> Dataset:
    """Four samples ``(a, y)``: (1, 2), (2, 1), (-1, 0), (3, 3) (test set: the same)."""
    a = torch.tensor([[1.0], [2.0], [-1.0], [3.0]], dtype=F64)
    y = torch.tensor([2.0, 1.0, 0.0, 3.0], dtype=F64)
    return Dataset("scalar", a, y, a, y, n_classes=0)


def test_objective_stationarity_and_disagreement_by_hand() -> None:
    """``f(w) = mean_s (w a_s - y_s)^2 / 2`` (a linear model without bias), two agents
    with shards {0} and {1, 2, 3} of unequal size, ``x = (0, 2)``, so ``w = mean x = 1``.

    ``f_0(1) = (1 - 2)^2/2 = 1/2``; ``f_1(1) = ((2-1)^2 + (-1-0)^2 + (3-3)^2)/(2*3) = 1/3``;
    objective ``(f_0 + f_1)/2 = 5/12`` (each shard weighted by ``1/(n |shard|)``, not
    each sample alike: that would give 3/8). Gradients ``f_0' = -1``,
    ``f_1' = (2 + 1 + 0)/3 = 1``: stationarity ``|(-1 + 1)/2| = 0``.
    ``disagreement = max_i |x_i - w| = 1``."""
    problem = Problem(
        torch.nn.Linear(1, 1, bias=False).double(),
        get_loss("squared"),
        Regularizer(),
        scalar_regression(),
    )
    shards = [torch.tensor([0]), torch.tensor([1, 2, 3])]
    x = torch.tensor([[0.0], [2.0]], dtype=F64)
    out = social_metrics(problem, shards, x)
    assert out["objective"] == pytest.approx(5 / 12, rel=1e-14)
    assert out["stationarity"] == pytest.approx(0.0, abs=1e-14)
    assert out["disagreement"] == pytest.approx(1.0, rel=1e-14)
    # w = 1.5 (x = (1, 2)): f_0' = 1.5 - 2 = -0.5, f_1' = (2*(3-1) - (-1.5) + 3*(4.5-3))/3
    # = (4 + 1.5 + 4.5)/3 = 10/3; stationarity |(-0.5 + 10/3)/2| = 17/12
    x = torch.tensor([[1.0], [2.0]], dtype=F64)
    out = social_metrics(problem, shards, x)
    assert out["stationarity"] == pytest.approx(17 / 12, rel=1e-14)
    assert out["disagreement"] == pytest.approx(0.5, rel=1e-14)
    # f_0(1.5) = 0.125; f_1(1.5) = ((3-1)^2 + (-1.5)^2 + (4.5-3)^2)/6 = 8.5/6
    assert out["objective"] == pytest.approx((0.125 + 8.5 / 6) / 2, rel=1e-14)


def test_objective_and_stationarity_with_an_l2_regulariser_by_hand() -> None:
    """The problem above with ``r(w) = w^2 / 4`` (l2, ``lam = 1/4``), ``x = (1, 2)``:
    ``w = 3/2``, ``F'(w) = 17/12``, ``F(w) = (1/8 + 8.5/6)/2``. Objective
    ``F + r = F + 9/16``. ``prox_r(v, 1) = v / (1 + 2 lam) = 2v/3`` at ``v = w - F' = 1/12``:
    1/18, so stationarity ``3/2 - 1/18 = 13/9`` (with step 2, or at ``w + F'``, other
    values)."""
    problem = Problem(
        torch.nn.Linear(1, 1, bias=False).double(),
        get_loss("squared"),
        Regularizer("l2", 0.25),
        scalar_regression(),
    )
    shards = [torch.tensor([0]), torch.tensor([1, 2, 3])]
    out = social_metrics(problem, shards, torch.tensor([[1.0], [2.0]], dtype=F64))
    assert out["objective"] == pytest.approx((0.125 + 8.5 / 6) / 2 + 9 / 16, rel=1e-14)
    assert out["stationarity"] == pytest.approx(13 / 9, rel=1e-14)
    assert out["disagreement"] == pytest.approx(0.5, rel=1e-14)


def test_metrics_are_computed_on_the_device_of_the_parameters() -> None:
    """CPU parameters under ``with torch.device("meta")`` (a default device that holds no
    values, standing for an accelerator): every tensor the metrics make is made on the
    parameters' device, so the figures are those computed without it."""
    problem = counted_classification()
    shards = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3])]
    expected = model_metrics(problem, AGENTS, shards=shards)
    with torch.device("meta"):
        assert model_metrics(problem, AGENTS, shards=shards) == expected


def test_disagreement_is_the_largest_distance_not_the_mean() -> None:
    """Rows (0, 0), (2, 0), (1, 3) about the mean (1, 1): distances sqrt(2), sqrt(2), 2."""
    problem = Problem(
        torch.nn.Linear(2, 1, bias=False).double(),
        get_loss("squared"),
        Regularizer(),
        Dataset(
            "two",
            torch.eye(2, dtype=F64),
            torch.zeros(2, dtype=F64),
            torch.eye(2, dtype=F64),
            torch.zeros(2, dtype=F64),
            n_classes=0,
        ),
    )
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]], dtype=F64)
    shards = [torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 1])]
    assert social_metrics(problem, shards, x)["disagreement"] == pytest.approx(2.0, rel=1e-14)


def counted_classification() -> Problem:
    """Two classes, logits ``W v`` of a 2x2 matrix ``W`` (flat row-major), four test points:
    (2, 1) -> 0, (1, 2) -> 1, (3, 0) -> 0, (0, 1) -> 0."""
    v = torch.tensor([[2.0, 1.0], [1.0, 2.0], [3.0, 0.0], [0.0, 1.0]], dtype=F64)
    y = torch.tensor([0, 1, 0, 0])
    data = Dataset("counted", v, y, v, y, n_classes=2)
    return Problem(
        torch.nn.Linear(2, 2, bias=False).double(), get_loss("cross_entropy"), Regularizer(), data
    )


# Three agents' W, and their predictions on the four points (counted by hand):
# I          -> logits = v: 0, 1, 0, 1: 3 of 4 right
# swap       -> 1, 0, 1, 0: 1 of 4 right (the last)
# diag(1, 3) -> (2,3), (1,6), (3,0), (0,3): 1, 1, 0, 1: 2 of 4 right
# mean model [[2,1],[1,4]]/3 -> (5,6), (4,9), (6,3), (1,4) /3: 1, 1, 0, 1: 2 of 4 right
AGENTS = torch.stack(
    [
        torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=F64).flatten(),
        torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=F64).flatten(),
        torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=F64).flatten(),
    ]
)


def test_test_accuracy_of_the_mean_model_and_of_each_agent_counted_by_hand() -> None:
    """The mean model gets 2 of 4 right; the agents 3, 1 and 2 of 4: mean accuracy 1/2,
    worst 1/4. The test loss is the mean model's cross-entropy on the four points."""
    problem = counted_classification()
    out = model_metrics(problem, AGENTS)
    assert out["test_accuracy"] == 0.5
    assert out["agent_test_accuracy"] == [0.75, 0.25, 0.5]
    assert out["agent_test_accuracy_mean"] == 0.5
    assert out["agent_test_accuracy_min"] == 0.25
    logits = problem.data.x_test @ (AGENTS.mean(0).view(2, 2).T)
    expected = torch.nn.functional.cross_entropy(logits, problem.data.y_test)
    assert out["test_loss"] == pytest.approx(float(expected), rel=1e-12)
    # consensus distance of the three W: about the mean [[2,1],[1,4]]/3, by hand:
    # I - mean = [[1,-1],[-1,-1]]/3 -> 4/9; swap - mean = [[-2,2],[2,-4]]/3 -> 28/9;
    # diag(1,3) - mean = [[1,-1],[-1,5]]/3 -> 28/9; mean of the three: 60/27
    assert out["consensus_distance"] == pytest.approx(60 / 27, rel=1e-14)


def test_evaluated_agents_are_the_evenly_spaced_ones() -> None:
    """``eval_agents=2`` of 3 evaluates agents 0 and 2 (3/4 and 2/4 right): mean 5/8,
    worst 1/2; the mean model is still all three's."""
    out = model_metrics(counted_classification(), AGENTS, eval_agents=2)
    assert out["agent_test_accuracy"] == [0.75, 0.5]
    assert out["agent_test_accuracy_mean"] == 0.625
    assert out["agent_test_accuracy_min"] == 0.5
    assert out["test_accuracy"] == 0.5


def test_worst_agent_first_is_still_the_worst() -> None:
    """The agents of :data:`AGENTS` reordered (swap, I, diag(1, 3)): 1, 3 and 2 of 4 right,
    the worst one first: worst 1/4, mean 1/2. With the agents' shards the figures of
    :func:`social_metrics` (checked by hand above) are added to the test figures."""
    problem = counted_classification()
    x = AGENTS[[1, 0, 2]]
    out = model_metrics(problem, x)
    assert out["agent_test_accuracy"] == [0.25, 0.75, 0.5]
    assert out["agent_test_accuracy_min"] == 0.25
    assert out["agent_test_accuracy_mean"] == 0.5
    shards = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3])]
    both = model_metrics(problem, x, shards=shards)
    assert both == out | social_metrics(problem, shards, x)
    assert set(both) == set(out) | {"objective", "stationarity", "disagreement"}


def normalised_regression(policy: str, validation: float | None = None) -> Problem:
    """``out = (w a - mu) / sqrt(var)``: a scalar linear model then BatchNorm without
    affine part or epsilon, squared loss ``(out - y)^2 / 2``, one test point ``a = 1``,
    ``y = 0`` (and a validation point ``a = validation``, ``y = 0`` if given); every
    agent's buffers: running mean ``mu``, running variance 1."""
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1, eps=0.0, affine=False)
    ).double()
    one = torch.ones(1, 1, dtype=F64)
    zero = torch.zeros(1, dtype=F64)
    data = Dataset("normalised", one, zero, one, zero, n_classes=0)
    if validation is not None:
        data = dataclasses.replace(
            data, x_val=torch.full((1, 1), validation, dtype=F64), y_val=zero
        )
    return Problem(model, get_loss("squared"), Regularizer(), data, buffer_policy=policy)


def two_agents() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Agents ``w = 1, 3`` with running means ``mu = 0, 1`` and variances 1."""
    x = torch.tensor([[1.0], [3.0]], dtype=F64)
    buffers = {
        "1.running_mean": torch.tensor([[0.0], [1.0]], dtype=F64),
        "1.running_var": torch.ones(2, 1, dtype=F64),
        "1.num_batches_tracked": torch.zeros(2, dtype=torch.long),
    }
    return x, buffers


@pytest.mark.parametrize(
    ("policy", "agent_losses"), [("local", [0.5, 2.0]), ("mix", [0.125, 3.125])]
)
def test_models_with_buffers_are_evaluated_with_the_agents_buffers(
    policy: str, agent_losses: list[float]
) -> None:
    """Two agents ``w = 1, 3`` with running means ``mu = 0, 1`` (loss ``(w - mu)^2 / 2``).
    The mean model ``w = 2`` with the mean ``mu = 1/2``: 9/8 (with the template's ``mu = 0``
    it would be 2). Each agent with its own ``mu`` (local): 1/2 and 2; with the mean
    (mix): 1/8 and 25/8. A regression: the agents' mean test loss is reported."""
    problem = normalised_regression(policy)
    x, buffers = two_agents()
    assert set(buffers) == set(problem.buffer_spec.names)
    out = model_metrics(problem, x, buffers=buffers)
    assert out["test_loss"] == pytest.approx(9 / 8, rel=1e-14)
    assert out["agent_test_loss_mean"] == pytest.approx(sum(agent_losses) / 2, rel=1e-14)
    assert "test_accuracy" not in out
    assert out["consensus_distance"] == 1.0
    # one evaluated agent (the first): its loss alone
    first = model_metrics(problem, x, eval_agents=1, buffers=buffers)
    assert first["agent_test_loss_mean"] == pytest.approx(agent_losses[0], rel=1e-14)


def test_the_validation_figures_use_the_mean_models_buffers() -> None:
    """The problem above with a validation point ``a = 2, y = 0``: the mean model ``w = 2``
    with the agents' mean ``mu = 1/2`` has ``(2 * 2 - 1/2)^2 / 2 = 49/8`` (with the
    template's ``mu = 0``: 8; on the test point: 9/8)."""
    problem = normalised_regression("local", validation=2.0)
    x, buffers = two_agents()
    out = model_metrics(problem, x, buffers=buffers)
    assert out["val_loss"] == pytest.approx(49 / 8, rel=1e-14)
    assert out["test_loss"] == pytest.approx(9 / 8, rel=1e-14)
    assert "val_accuracy" not in out


def test_staleness_fields_of_a_hand_made_counter() -> None:
    """Staleness 0 twice, 1 three times, 3 once: 6 exchanges, mean (0 + 3 + 3)/6 = 1,
    max 3, histogram [2, 3, 0, 1] (the gap at 2 kept as a zero)."""
    out = staleness_fields(Counter({0: 2, 1: 3, 3: 1}))
    assert out == {
        "exchanges": 6,
        "staleness_mean": 1.0,
        "staleness_max": 3,
        "staleness_hist": [2, 3, 0, 1],
    }
    assert staleness_fields(Counter({2: 4}))["staleness_mean"] == 2.0
    assert staleness_fields(Counter()) == {"exchanges": 0}


def test_traffic_fields_of_hand_made_per_agent_totals() -> None:
    """Per agent samples (3, 4, 5), messages (2, 7, 1), bytes (100, 50, 300), resent
    (0, 1, 2): totals 12, 10, 450, 3; the busiest agent sent 7 messages and 300 bytes
    (not the same agent: each maximum taken on its own)."""
    totals = {
        "samples": torch.tensor([3, 4, 5]),
        "messages": torch.tensor([2, 7, 1]),
        "bytes": torch.tensor([100, 50, 300]),
        "resent": torch.tensor([0, 1, 2]),
    }
    assert traffic_fields(totals) == {
        "samples": 12,
        "messages_total": 10,
        "bytes_total": 450,
        "messages_max_agent": 7,
        "bytes_max_agent": 300,
        "messages_resent": 3,
    }
    del totals["resent"]
    assert "messages_resent" not in traffic_fields(totals)


def test_next_diagnostics_of_a_hand_made_state() -> None:
    """Trackers y summing to (3, 1), gradients summing to (0, 5): tracking error
    ``||(3, -4)|| = 5``; w~ with 3 exact zeros among 8 entries: sparsity 3/8; the step
    as held. DGD has no tracker, hence no tracking error."""
    y = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=F64)
    g = torch.tensor([[0.0, 2.0], [0.0, 3.0]], dtype=F64)
    w_tilde = torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]], dtype=F64)
    state = NextState(y.clone(), y, g, w_tilde, 0.25)
    out = NEXT().diagnostics(state)
    assert out["tracking_error"] == pytest.approx(5.0, rel=1e-14)
    assert out["sparsity"] == 3 / 8
    assert out["alpha"] == 0.25
    assert "tracking_error" not in DGD().diagnostics(state)


def test_shared_model_fields_of_hand_made_counters() -> None:
    """A shared model's counters: 4 block reads that missed 6 writes in all, at most 3
    at once; writes per block (2, 5, 1): staleness mean 6/4 = 1.5 over the reads (not
    per worker or per block), max 3, writes per block fewest 1, most 5. No read yet:
    mean 0, not a division by zero."""
    out = shared_fields(torch.tensor(6), torch.tensor(4), torch.tensor(3), torch.tensor([2, 5, 1]))
    assert out == {
        "staleness_mean": 1.5,
        "staleness_max": 3,
        "updates_per_block_min": 1,
        "updates_per_block_max": 5,
        "updates_per_block": [2, 5, 1],
    }
    assert (
        shared_fields(torch.tensor(0), torch.tensor(0), torch.tensor(0), torch.zeros(2))[
            "staleness_mean"
        ]
        == 0.0
    )
