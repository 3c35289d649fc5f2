"""Round-robin EASGD vs ADMM on the 1-D quadratic (Zhang, Choromanska & LeCun 2015, Sec. 3).

The maps are checked against closed forms and the paper's explicit matrices, against a
scalar simulation written independently below, and the stability claims on small grids.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from nettrain.analysis import (
    admm_round_robin_map,
    admm_worker_map,
    closeness_levels,
    easgd_predicted_stable,
    easgd_round_robin_map,
    easgd_worker_map,
    format_radius_table,
    largest_in_region,
    plot_stability_map,
    spectral_radius,
    stability_claim,
    stability_summary,
    stability_table,
    sweep,
)
from nettrain.analysis.stability import NEAR_ONE, _heatmap
from nettrain.errors import ConfigError

# Small grids: EASGD over and beyond its region, ADMM over the paper's Fig. 1 window.
ETAS = np.linspace(0.03, 2.4, 30)
ALPHAS = np.linspace(0.015, 1.2, 30)
ADMM_ETAS = np.linspace(2e-4, 1e-2, 25)
ADMM_RHOS = np.linspace(0.2, 10.0, 25)


def simulate_easgd(
    x: list[float], centre: float, eta: float, alpha: float, h: float, rounds: int
) -> np.ndarray:
    """Round robin, worker 1..p in turn; symmetric exchange d = alpha (x_i - x~)."""
    x = list(x)
    for _ in range(rounds):
        for i in range(len(x)):
            d = alpha * (x[i] - centre)
            x[i] = x[i] - eta * h * x[i] - d
            centre = centre + d
    return np.array([*x, centre])


def simulate_admm(
    x: list[float], mult: list[float], centre: float, eta: float, rho: float, h: float, rounds: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Paper Eqs. (7)-(9) with the unscaled multiplier mult (= rho * lam)."""
    x, mult, p = list(x), list(mult), len(x)
    for _ in range(rounds):
        for i in range(p):
            mult[i] = mult[i] - rho * (x[i] - centre)
            x[i] = (x[i] - eta * h * x[i] + eta * (mult[i] + rho * centre)) / (1 + eta * rho)
            centre = sum(x[j] - mult[j] / rho for j in range(p)) / p
    return np.array(x), np.array(mult), centre


def admm_state(x: np.ndarray, mult: np.ndarray, centre: float, rho: float) -> np.ndarray:
    """The map's state layout (lam_1, x_1, ..., lam_p, x_p, x~) with lam = mult / rho."""
    state = np.empty(2 * len(x) + 1)
    state[0:-1:2], state[1:-1:2], state[-1] = mult / rho, x, centre
    return state


# ----------------------------------------------------------------------------- the maps


def test_easgd_worker_maps_are_the_papers_p2_matrices() -> None:
    eta, a = 0.3, 0.2
    f1 = [[1 - eta - a, 0, a], [0, 1, 0], [a, 0, 1 - a]]
    f2 = [[1, 0, 0], [0, 1 - eta - a, a], [0, a, 1 - a]]
    np.testing.assert_allclose(easgd_worker_map(eta, a, 0, 2), f1)
    np.testing.assert_allclose(easgd_worker_map(eta, a, 1, 2), f2)
    np.testing.assert_allclose(easgd_round_robin_map(eta, a, 2), np.array(f2) @ np.array(f1))


@pytest.mark.parametrize(
    ("eta", "alpha", "h"), [(0.5, 0.3, 1.0), (1.9, 0.05, 1.0), (0.2, 0.9, 3.0)]
)
def test_p1_eigenvalues_match_the_closed_form(eta: float, alpha: float, h: float) -> None:
    disc = np.sqrt((eta * h) ** 2 + 4 * alpha**2)
    expected = np.sort([(2 - eta * h - 2 * alpha - disc) / 2, (2 - eta * h - 2 * alpha + disc) / 2])
    found = np.sort(np.linalg.eigvals(easgd_round_robin_map(eta, alpha, 1, h)).real)
    np.testing.assert_allclose(found, expected, atol=1e-12)


def test_admm_worker_map_is_dual_then_local_then_master() -> None:
    eta, rho, p = 0.1, 2.0, 2
    d = 1 + eta * rho
    dual = np.eye(5)
    dual[0, 1], dual[0, 4] = -1.0, 1.0
    local = np.eye(5)
    local[1, :] = [eta * rho / d, (1 - eta) / d, 0, 0, eta * rho / d]
    master = np.eye(5)
    master[4, :] = [-0.5, 0.5, -0.5, 0.5, 0.0]
    np.testing.assert_allclose(admm_worker_map(eta, rho, 0, p), master @ local @ dual)


@pytest.mark.parametrize(("p", "h"), [(1, 1.0), (3, 1.0), (5, 2.5)])
def test_easgd_map_reproduces_the_simulation(p: int, h: float) -> None:
    rng = np.random.default_rng(p)
    x0, c0 = rng.normal(size=p), float(rng.normal())
    m = easgd_round_robin_map(0.4, 0.3, p, h)
    for k in (1, 2, 7):
        expected = simulate_easgd(list(x0), c0, 0.4, 0.3, h, k)
        np.testing.assert_allclose(np.linalg.matrix_power(m, k) @ [*x0, c0], expected)


@pytest.mark.parametrize(("p", "h"), [(1, 1.0), (3, 1.0), (4, 0.5)])
def test_admm_map_reproduces_the_simulation(p: int, h: float) -> None:
    rng = np.random.default_rng(10 + p)
    eta, rho = 0.05, 2.5
    x0, mult0, c0 = rng.normal(size=p), rng.normal(size=p), float(rng.normal())
    m = admm_round_robin_map(eta, rho, p, h)
    for k in (1, 3, 6):
        x, mult, c = simulate_admm(list(x0), list(mult0), c0, eta, rho, h, k)
        got = np.linalg.matrix_power(m, k) @ admm_state(x0, mult0, c0, rho)
        np.testing.assert_allclose(got, admm_state(x, mult, c, rho), atol=1e-12)


def test_admm_exact_variant_is_the_argmin() -> None:
    rho, h, p = 1.5, 2.0, 2
    state = np.array([0.3, -1.0, 0.7, 2.0, 0.4])  # (lam1, x1, lam2, x2, x~)
    after = admm_worker_map(0.1, rho, 0, p, h, x_update="exact") @ state
    lam1 = 0.3 - (-1.0 - 0.4)
    # x1 minimises h x^2/2 - rho lam1 (x - x~) + rho/2 (x - x~)^2
    assert after[1] == pytest.approx(rho * (lam1 + 0.4) / (h + rho))
    assert after[4] == pytest.approx(((after[1] - lam1) + (2.0 - 0.7)) / 2)


# ----------------------------------------------------------------------------- radius


def test_radius_below_one_shrinks_and_above_one_grows() -> None:
    x0, c0 = [1.0, -2.0, 0.5], 3.0
    start = np.linalg.norm([*x0, c0])
    assert spectral_radius(easgd_round_robin_map(0.5, 0.3, 3)) < 0.9
    assert np.linalg.norm(simulate_easgd(x0, c0, 0.5, 0.3, 1.0, 100)) < 1e-6 * start
    assert spectral_radius(easgd_round_robin_map(2.2, 0.3, 3)) > 1.1
    assert np.linalg.norm(simulate_easgd(x0, c0, 2.2, 0.3, 1.0, 100)) > 1e3 * start

    # the paper's chaotic example: eta = 0.001, rho = 2.5, x_i = x~ = 1000, lam = 0; once
    # the transient has died out the norm grows by the radius per round
    eta, rho, p = 0.001, 2.5, 3
    radius = spectral_radius(admm_round_robin_map(eta, rho, p))
    assert radius > 1.0005
    x, mult, c = simulate_admm([1000.0] * p, [0.0] * p, 1000.0, eta, rho, 1.0, 6000)
    early = np.linalg.norm(admm_state(x, mult, c, rho))
    x, mult, c = simulate_admm(list(x), list(mult), c, eta, rho, 1.0, 6000)
    late = np.linalg.norm(admm_state(x, mult, c, rho))
    assert late / early == pytest.approx(radius**6000, rel=0.1)  # about 340
    eta = 0.01
    assert spectral_radius(admm_round_robin_map(eta, rho, p)) < 0.995
    x, mult, c = simulate_admm([1000.0] * p, [0.0] * p, 1000.0, eta, rho, 1.0, 6000)
    assert np.linalg.norm(admm_state(x, mult, c, rho)) < 1e-6


@pytest.mark.parametrize("p", [1, 2, 3, 8])
def test_predicted_region_is_inside_the_stable_region(p: int) -> None:
    result = sweep("easgd", ETAS, ALPHAS, p=p)
    predicted = result.in_easgd_region
    assert predicted.sum() > 200
    assert np.all(result.radius[predicted] < 1.0)
    if p == 1:  # exact for one worker
        np.testing.assert_array_equal(predicted, result.stable)


def test_condition_is_not_necessary_for_two_workers() -> None:
    eta, alpha = 0.07, 0.986
    assert not easgd_predicted_stable(eta, alpha)
    assert spectral_radius(easgd_round_robin_map(eta, alpha, 2)) < 1.0
    assert spectral_radius(easgd_round_robin_map(eta, alpha, 1)) > 1.0


def test_sweep_matches_the_single_maps() -> None:
    result = sweep("admm", ADMM_ETAS[:4], ADMM_RHOS[:3], p=3, h=1.5)
    assert result.radius.shape == (4, 3)
    for a, eta in enumerate(result.etas):
        for b, rho in enumerate(result.second):
            m = admm_round_robin_map(eta, rho, 3, 1.5)
            assert result.radius[a, b] == pytest.approx(spectral_radius(m), abs=1e-12)


# ----------------------------------------------------------------------------- the claim


@pytest.mark.parametrize("p", [3, 8])
def test_admm_is_unstable_inside_the_easgd_region(p: int) -> None:
    easgd = sweep("easgd", ETAS, ALPHAS, p=p)
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=p)
    assert admm.in_easgd_region.all()  # alpha = eta * rho <= 0.1 throughout
    holds, measured = stability_claim(easgd, admm)
    assert holds, measured
    assert "radius > 1" in measured


def test_claim_fails_for_the_exact_minimisation_admm() -> None:
    easgd = sweep("easgd", ETAS, ALPHAS, p=3)
    exact = sweep("admm-exact", ADMM_ETAS, ADMM_RHOS, p=3)
    assert exact.stable.all()
    holds, measured = stability_claim(easgd, exact)
    assert not holds
    assert " 0 of " in measured


def test_table_summary_and_text() -> None:
    result = sweep("easgd", ETAS[:5], ALPHAS[:4], p=2)
    rows = stability_table(result)
    assert len(rows) == 20
    assert rows[5] == {
        "method": "easgd",
        "p": 2,
        "h": 1.0,
        "eta": pytest.approx(ETAS[1]),
        "alpha": pytest.approx(ALPHAS[1]),
        "radius": pytest.approx(result.radius[1, 1]),
        "radius_minus_1": pytest.approx(result.radius[1, 1] - 1),
        "stable": bool(result.radius[1, 1] < 1),
        "easgd_predicted_stable": bool(easgd_predicted_stable(ETAS[1], ALPHAS[1])),
    }
    (summary,) = stability_summary([result])
    assert summary["stable"] + summary["unstable"] == summary["points"] == 20
    region = result.in_easgd_region
    assert summary["radius_max_in_region"] == pytest.approx(result.radius[region].max())
    assert summary["at_max_in_region"].startswith("eta=")
    assert summary["near_1"] == int((abs(result.radius - 1) < NEAR_ONE).sum())
    text = format_radius_table(sweep("easgd", [0.5, 2.2], [0.3], p=2))
    assert text.splitlines()[-1].rstrip().endswith("*")
    assert not text.splitlines()[-2].rstrip().endswith("*")


def test_plot_writes_a_png(tmp_path) -> None:
    easgd = sweep("easgd", ETAS, ALPHAS, p=3)
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    path = plot_stability_map(easgd, admm, tmp_path / "stability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    marked = plot_stability_map(
        easgd, admm, tmp_path / "marked.png", easgd_point=(0.5, 0.3), admm_point=(5e-4, 5.0)
    )
    assert marked.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_summary_names_the_largest_admm_radius_in_easgds_region() -> None:
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    largest = largest_in_region(admm)
    region = admm.in_easgd_region
    assert largest.radius == admm.radius[region].max() > 1
    a, b = np.argwhere(admm.radius == largest.radius)[0]
    assert (largest.eta, largest.second) == (admm.etas[a], admm.second[b])
    (summary,) = stability_summary([admm])
    assert summary["radius_max_in_region"] == largest.radius
    assert summary["at_max_in_region"] == f"eta={largest.eta:.4g}, rho={largest.second:.4g}"
    empty = sweep("easgd", [2.2], [0.3], p=2)  # beyond eta h = 2: no point in the region
    assert np.isnan(largest_in_region(empty).radius)
    assert stability_summary([empty])[0]["at_max_in_region"] == ""


def test_closeness_levels_are_the_decades_around_1_inside_the_range() -> None:
    assert closeness_levels(np.array([0.9902, 1.0014])) == pytest.approx(
        [0.999, 0.9999, 1.0001, 1.001]
    )
    assert closeness_levels(np.array([0.5, 0.95])) == pytest.approx([0.9])
    assert closeness_levels(np.array([0.2, 0.85])) == []
    assert closeness_levels(np.array([0.5, 2.0])) == pytest.approx(
        [0.9, 0.99, 0.999, 0.9999, 1.0001, 1.001, 1.01, 1.1]
    )


def test_heatmap_draws_the_closeness_contours_it_crosses() -> None:
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    fig = Figure()
    ax = fig.subplots()
    _heatmap(fig, ax, admm)
    drawn = [list(np.round(10 ** np.asarray(c.levels), 6)) for c in ax.collections[1:]]
    assert drawn == [closeness_levels(admm.radius), [1.0]]


def test_heatmap_without_a_radius_one_crossing_draws_no_contour() -> None:
    # matplotlib warns (an error here) when asked for a contour level the data never reach
    exact = sweep("admm-exact", ADMM_ETAS[:3], ADMM_RHOS[:3], p=3)
    fig = Figure()
    ax = fig.subplots()
    _heatmap(fig, ax, exact)
    assert not ax.collections[1:]  # the mesh only


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: easgd_round_robin_map(0.1, 0.1, 0), "p \\(number of workers\\)"),
        (lambda: easgd_round_robin_map(0.1, 0.1, 2, h=0.0), "h \\(curvature"),
        (lambda: easgd_worker_map(0.1, 0.1, 2, 2), "worker index"),
        (lambda: admm_round_robin_map(0.1, -1.0, 2), "rho"),
        (lambda: admm_round_robin_map(0.1, 1.0, 2, x_update="newton"), "x_update"),
        (lambda: sweep("sgd", [0.1], [0.1]), "unknown method"),  # type: ignore[arg-type]
        (lambda: sweep("easgd", [np.nan], [0.1]), "etas must be finite"),
        (lambda: spectral_radius(np.ones((2, 3))), "square"),
    ],
)
def test_bad_input_says_what_is_wrong(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
