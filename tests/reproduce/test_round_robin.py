"""The runtime ADMM and EASGD in round robin on f(x) = x^2/2 (claim 5 of `reproduce easgd`).

The driver runs the classes' own ``interact`` and server: its first rounds are checked
against the update rules written out here; then the runtime measurement against the
analysis: on a small grid of ``(eta, rho)`` away from radius 1, the runtime ADMM fails to
converge exactly where the linearised map's radius exceeds 1, and at claim 5's setting
it diverges while EASGD converges. The unstable runs need the claim's 24,000 rounds
(the runtime ADMM's radius is 1.0006 there, and it first decays to 0.025): 12 to 30 s,
run once for the module; the stable points converge within 4,000 rounds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from nettrain.analysis import (
    ADMM_ETAS,
    ADMM_RHOS,
    admm_round_robin_map,
    easgd_predicted_stable,
    spectral_radius,
    sweep,
)
from nettrain.reproduce import easgd as reproduce_easgd
from nettrain.reproduce import round_robin
from nettrain.reproduce.easgd import (
    RUNTIME_ALPHA,
    RUNTIME_ETA,
    RUNTIME_P,
    RUNTIME_RHO,
    RUNTIME_ROUNDS,
    RUNTIME_WINDOW,
    converged,
    diverged_or_oscillating,
    runtime_claim,
    runtime_figures,
)
from nettrain.reproduce.round_robin import Trajectory

P = 3


def admm_written_out(eta: float, rho: float, rounds: int, h: float = 1.0) -> list[float]:
    """The runtime ADMM's centre after each round, from x_i = x~ = 1, l_i = 0."""
    x, dual, pulled, term = [1.0] * P, [0.0] * P, [1.0] * P, [1.0] * P
    centre, out = 1.0, [1.0]
    for _ in range(rounds):
        for i in range(P):
            x[i] -= eta * (h * x[i] - dual[i] + rho * (x[i] - pulled[i]))
            dual[i] -= rho * (x[i] - pulled[i])
            new = x[i] - dual[i] / rho
            centre += (new - term[i]) / P
            term[i], pulled[i] = new, centre
        out.append(centre)
    return out


def easgd_written_out(eta: float, alpha: float, rounds: int, h: float = 1.0) -> list[float]:
    """The runtime asynchronous EASGD's centre after each round, from x_i = x~ = 1."""
    x, centre, out = [1.0] * P, 1.0, [1.0]
    for _ in range(rounds):
        for i in range(P):
            x[i] -= eta * h * x[i]
            d = alpha * (x[i] - centre)
            x[i] -= d
            centre += d
        out.append(centre)
    return out


def test_the_driver_runs_the_update_rules_in_turn() -> None:
    got = round_robin.run(round_robin.admm(0.05, 2.0), 5, P)
    assert got.centre == pytest.approx(admm_written_out(0.05, 2.0, 5), rel=1e-12)
    got = round_robin.run(round_robin.easgd(0.05, 0.2), 5, P)
    assert got.centre == pytest.approx(easgd_written_out(0.05, 0.2, 5), rel=1e-12)
    assert got.rounds == 5 and got.distance[0] == 1.0
    assert got.distance[1] >= abs(got.centre[1])  # the workers count too


def test_a_trajectory_reads_its_final_distance_and_spread() -> None:
    t = Trajectory(np.array([1.0, 0.5, 2.0, -1.0]), np.array([1.0, 0.5, 2.0, -1.0]))
    assert t.rounds == 3 and t.final == -1.0
    assert t.spread(2) == 3.0 and t.spread(1) == 0.0
    grown = Trajectory(np.array([1.0, np.inf]), np.array([1.0, np.nan]))
    assert grown.spread(2) == np.inf


@pytest.fixture(scope="module")
def claim_runs() -> dict[str, Trajectory]:
    """Claim 5's two runtime runs, at its settings and rounds."""
    return {
        "admm": round_robin.run(round_robin.admm(RUNTIME_ETA, RUNTIME_RHO), RUNTIME_ROUNDS, P),
        "easgd": round_robin.run(round_robin.easgd(RUNTIME_ETA, RUNTIME_ALPHA), RUNTIME_ROUNDS, P),
    }


def test_the_claim_holds_on_the_runtime_runs(claim_runs: dict[str, Trajectory]) -> None:
    found = runtime_figures(
        claim_runs["admm"], claim_runs["easgd"], RUNTIME_ETA, RUNTIME_RHO, RUNTIME_ALPHA
    )
    assert found.admm_radius > 1.001 and found.easgd_radius < 1
    assert easgd_predicted_stable(RUNTIME_ETA, RUNTIME_ALPHA)
    assert found.admm_distance > 100  # 437 here; it passes 10 near round 18,000
    assert found.easgd_distance < 3e-4  # 1.4e-4 here
    assert runtime_claim(found).holds


# (eta, rho) of the paper's Fig. 1 window, far from radius 1 on either side: the
# linearised radius, and whether its runtime run is claim 5's (24,000 rounds) or a short one
GRID = [
    (RUNTIME_ETA, RUNTIME_RHO),  # linearised 1.00121, runtime 1.00064
    (1e-2, 5.0),  # 0.99029, runtime 0.99016
    (5e-3, 10.0),  # 0.99516, runtime 0.99508
]


@pytest.mark.parametrize(("eta", "rho"), GRID)
def test_runtime_admm_fails_to_converge_iff_the_linearised_radius_exceeds_1(
    eta: float, rho: float, claim_runs: dict[str, Trajectory]
) -> None:
    radius = spectral_radius(admm_round_robin_map(eta, rho, RUNTIME_P))
    assert abs(radius - 1) > 1e-3  # the margin: no point near the edge
    if (eta, rho) == (RUNTIME_ETA, RUNTIME_RHO):
        run = claim_runs["admm"]
    else:
        run = round_robin.run(round_robin.admm(eta, rho), 4000, P)
    failed = diverged_or_oscillating(run.final, run.spread(RUNTIME_WINDOW))
    assert failed == (radius > 1)
    assert converged(run.final) == (radius < 1)


def test_runtime_writes_its_table_and_plot(tmp_path: Path) -> None:
    found = reproduce_easgd.runtime(tmp_path, Console(quiet=True), rounds=250)
    assert found.rounds == 250 and found.admm_radius > 1
    with open(tmp_path / "round_robin.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [0, 100, 200, 250]
    assert float(rows[-1]["easgd_distance"]) == pytest.approx(found.easgd_distance)
    assert float(rows[0]["admm_centre"]) == 1.0
    assert (tmp_path / "round_robin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_of_runs_of_different_lengths_are_refused() -> None:
    short = Trajectory(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="different lengths"):
        round_robin.trajectory_rows({"a": short, "b": Trajectory(np.ones(4), np.ones(4))})


def test_the_claims_setting_is_a_point_of_the_sweep_where_admm_is_unstable() -> None:
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=RUNTIME_P)
    a, b = 4, 49
    assert admm.etas[a] == pytest.approx(RUNTIME_ETA) and admm.second[b] == pytest.approx(
        RUNTIME_RHO
    )
    assert admm.radius[a, b] > 1.001 and admm.in_easgd_region[a, b]
