"""Analyses that need no training run: closed-form and linear-algebra studies of the methods.

:mod:`~nettrain.analysis.stability`: spectral radius of the round-robin EASGD and ADMM maps
on the one-dimensional quadratic (Zhang, Choromanska & LeCun, NIPS 2015, Sec. 3)::

    easgd = sweep("easgd", EASGD_ETAS, EASGD_ALPHAS, p=3)
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    holds, measured = stability_claim(easgd, admm)
    plot_stability_map(easgd, admm, "stability.png")
"""

from __future__ import annotations

from nettrain.analysis.stability import (
    ADMM_ETAS,
    ADMM_RHOS,
    EASGD_ALPHAS,
    EASGD_ETAS,
    METHODS,
    NEAR_ONE,
    X_UPDATES,
    GridPoint,
    StabilitySweep,
    Verdict,
    admm_instability,
    admm_round_robin_map,
    admm_worker_map,
    closeness_levels,
    easgd_alpha_max,
    easgd_predicted_stable,
    easgd_round_robin_map,
    easgd_stability,
    easgd_worker_map,
    format_radius_table,
    largest_in_region,
    plot_stability_map,
    spectral_radii,
    spectral_radius,
    stability_claim,
    stability_summary,
    stability_table,
    sweep,
)

__all__ = [
    "ADMM_ETAS",
    "ADMM_RHOS",
    "EASGD_ALPHAS",
    "EASGD_ETAS",
    "METHODS",
    "NEAR_ONE",
    "X_UPDATES",
    "GridPoint",
    "StabilitySweep",
    "Verdict",
    "admm_instability",
    "admm_round_robin_map",
    "admm_worker_map",
    "closeness_levels",
    "easgd_alpha_max",
    "easgd_predicted_stable",
    "easgd_round_robin_map",
    "easgd_stability",
    "easgd_worker_map",
    "format_radius_table",
    "largest_in_region",
    "plot_stability_map",
    "spectral_radii",
    "spectral_radius",
    "stability_claim",
    "stability_summary",
    "stability_table",
    "sweep",
]
