"""``nettrain reproduce easgd``: the claims of Zhang, Choromanska & LeCun (NIPS 2015).

"Deep learning with Elastic Averaging SGD" (arXiv 1412.6651), at small scale in the
simulator's event engine: ``p = 4`` workers with the centre on one parameter server,
``tau`` in {1, 4, 16, 64} local steps between exchanges, for asynchronous EASGD,
EAMSGD, DOWNPOUR and momentum DOWNPOUR, against all-reduce SGD; ``beta = p alpha =
0.9`` (the paper's), Nesterov ``delta = 0.9``. The scaling table repeats EASGD, EAMSGD
and DOWNPOUR at ``tau = 4`` with 8 and 16 workers. ``--quick``: Fashion-MNIST on
6,000 training samples, MLP 784-64-10, mini-batches of 32; the full run: all 60,000
samples, the small CNN, mini-batches of 128 (the paper's; hours on a 2-core CPU:
``--set device=cuda`` on a GPU, or ``--set model=mlp hidden=128`` for an MLP). Every
run has the same number of local steps per worker; the time budget is the shortest virtual time any
run took, and a method's test error at the budget is its centre's at its last record
within it. Checked:

1. EAMSGD reaches the lowest test error at the time budget (best ``tau`` of each
   method against best ``tau`` of each other, all-reduce SGD included).
2. EASGD degrades gracefully with ``tau``: its final error grows by less from
   ``tau = 1`` to ``tau = 64`` than DOWNPOUR's (or DOWNPOUR diverges).
3. Communication falls as ``1/tau``: the bytes each worker sends at ``tau`` are within
   10% of ``1/tau`` of those at ``tau = 1``, for every centre method.
4. The stability analysis on the 1-D quadratic (round robin, ``p = 3``): EASGD is
   stable wherever its condition predicts, and the linearised ADMM is unstable in part
   of that region (:mod:`nettrain.analysis.stability`; table and map in the folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from nettrain.analysis import (
    ADMM_ETAS,
    ADMM_RHOS,
    EASGD_ALPHAS,
    EASGD_ETAS,
    format_radius_table,
    plot_stability_map,
    stability_claim,
    stability_summary,
    stability_table,
    sweep,
)
from nettrain.config import load_config
from nettrain.errors import DivergenceError
from nettrain.report.plots import plot_metrics
from nettrain.report.tables import rows_table, write_csv
from nettrain.reproduce.claims import Claim
from nettrain.reproduce.runner import Request, run_all

Records = list[dict[str, Any]]

METHODS: dict[str, dict[str, Any]] = {
    "easgd": {"algorithm": "easgd_async", "lr": 0.05},
    "eamsgd": {"algorithm": "eamsgd", "lr": 0.01, "momentum": 0.9},
    "downpour": {"algorithm": "downpour", "lr": 0.02},
    "mdownpour": {"algorithm": "mdownpour", "lr": 0.005, "momentum": 0.9},
}
ALLREDUCE = {"algorithm": "allreduce", "lr": 0.05}
TAUS = (1, 4, 16, 64)
SCALING = {"workers": (8, 16), "tau": 4, "methods": ("easgd", "eamsgd", "downpour")}
EVALS = 16
PANELS = (("centre_test_error", "test error of the centre", True),)
COLUMNS = (
    "n",
    "method",
    "tau",
    "error_at_budget",
    "final_error",
    "bytes_per_worker",
    "exchanges_per_worker",
    "staleness_mean",
    "virtual_time_s",
    "wall_time_s",
)


def settings(quick: bool) -> tuple[dict[str, Any], int]:
    """The runs' common settings and their local steps per worker (a multiple of 64)."""
    if quick:
        base = {"train_samples": 6000, "model": "mlp", "hidden": (64,), "batch_size": 32}
        return base, 7 * 64
    return {"train_samples": 0, "model": "cnn", "batch_size": 128}, 16 * 64


def reproduce(ask: Request) -> list[Claim]:
    """Run the experiment as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`)."""
    out, quick, seed, console, overrides, jobs, force = ask  # every field of the request
    base, rounds = settings(quick)
    base = base | {"dataset": "fashion_mnist", "seed": seed, "progress": False, "servers": 1}
    base |= {"rounds": rounds, "eval_every": rounds // EVALS}
    plan: dict[tuple[int, str, int], dict[str, Any]] = {(4, "allreduce", 1): ALLREDUCE}
    for tau in TAUS:
        plan |= {(4, m, tau): METHODS[m] | {"tau": tau} for m in METHODS}
    for n in SCALING["workers"]:
        plan |= {
            (n, m, SCALING["tau"]): METHODS[m] | {"tau": SCALING["tau"]} for m in SCALING["methods"]
        }
    configs = {
        f"n{n}_{method}_tau{tau}": load_config(base | extra | {"agents": n} | dict(overrides))
        for (n, method, tau), extra in plan.items()
    }

    def done(name: str, records: Records | None, note: str) -> None:
        if records is None:
            console.print(f"{name}: diverged ({note})")
        else:
            error = 1 - records[-1].get("centre_test_accuracy", records[-1]["test_accuracy"])
            console.print(f"{name:26s} error {error:.4f} {note}")

    found = run_all(configs, out, jobs=jobs, done=done, tolerate=(DivergenceError,), force=force)
    results = {
        key: with_errors(records, key[0]) if records else None
        for key, records in zip(plan, found.values(), strict=True)
    }
    budget = min(r[-1]["virtual_time_s"] for r in results.values() if r)
    rows = [row(key, records, budget) for key, records in results.items()]
    write_csv(rows, out / "summary.csv")
    console.print(
        rows_table(rows, COLUMNS, title=f"EASGD family (time budget {budget:.4g} s)", left=3)
    )
    plots(results, out)
    return check(results, budget, stability(out, console))


def with_errors(records: Records, n: int) -> Records:
    """Add each record's centre test error and exchanges per worker (one all-reduce per
    round for all-reduce SGD)."""
    out = []
    for r in records:
        accuracy = r.get("centre_test_accuracy", r["test_accuracy"])
        exchanges = r["events"] / n if "events" in r else r["round"]
        out.append(r | {"centre_test_error": 1 - accuracy, "exchanges_per_worker": exchanges})
    return out


def error_at(records: Records | None, budget: float) -> float:
    """The centre's test error at the last record within ``budget``; 1 if diverged."""
    if not records:
        return 1.0
    within = [r for r in records if r["virtual_time_s"] <= budget * (1 + 1e-9)]
    return within[-1]["centre_test_error"] if within else 1.0


def row(key: tuple[int, str, int], records: Records | None, budget: float) -> dict[str, Any]:
    n, method, tau = key
    last = records[-1] if records else {}
    return {
        "n": n,
        "method": method,
        "tau": tau,
        "error_at_budget": error_at(records, budget),
        "final_error": last.get("centre_test_error", 1.0),
        "bytes_per_worker": last.get("bytes_max_agent"),
        "exchanges_per_worker": last.get("exchanges_per_worker"),
        "staleness_mean": last.get("staleness_mean"),
        "virtual_time_s": last.get("virtual_time_s"),
        "wall_time_s": last.get("wall_time_s"),
    }


def plots(results: Mapping[tuple[int, str, int], Records | None], out: Path) -> None:
    """Centre test error against virtual time and against exchanges, one figure per tau."""
    for tau in TAUS:
        runs = {m: results[(4, m, tau)] for m in METHODS} | {
            "allreduce": results[(4, "allreduce", 1)]
        }
        curves = {m: r for m, r in runs.items() if r}
        for x in (
            ("virtual_time_s", "virtual time (s)"),
            ("exchanges_per_worker", "exchanges per worker"),
        ):
            plot_metrics(
                curves, PANELS, out / f"tau{tau}_{x[0]}.png", title=f"4 workers, tau = {tau}", x=x
            )


def check(
    results: Mapping[tuple[int, str, int], Records | None],
    budget: float,
    stability: tuple[bool, str],
) -> list[Claim]:
    """The four claims (see the module docstring); ``stability`` is claim 4's verdict."""
    best = {m: min(error_at(results[(4, m, t)], budget) for t in TAUS) for m in METHODS}
    best["allreduce"] = error_at(results[(4, "allreduce", 1)], budget)
    others = {m: e for m, e in best.items() if m != "eamsgd"}

    def growth(method: str) -> float:
        first, last = results[(4, method, 1)], results[(4, method, TAUS[-1])]
        if not first or not last:
            return float("inf")
        return last[-1]["centre_test_error"] - first[-1]["centre_test_error"]

    easgd_growth, downpour_growth = growth("easgd"), growth("downpour")
    ratios = {}
    for m in METHODS:
        one = results[(4, m, 1)]
        for t in TAUS[1:]:
            other = results[(4, m, t)]
            if one and other:
                ratios[(m, t)] = one[-1]["bytes_max_agent"] / other[-1]["bytes_max_agent"]
    falls = len(ratios) == len(METHODS) * (len(TAUS) - 1) and all(
        abs(r / t - 1) <= 0.1 for (_, t), r in ratios.items()
    )
    stable, measured = stability
    return [
        Claim(
            "EAMSGD reaches the lowest test error at the time budget",
            f"min over tau of the centre's test error at {budget:.4g} virtual s: EAMSGD below "
            "every other method",
            ", ".join(f"{m} {e:.4f}" for m, e in best.items()),
            all(best["eamsgd"] < e for e in others.values()),
        ),
        Claim(
            "EASGD degrades more gracefully with tau than DOWNPOUR",
            f"final error(tau={TAUS[-1]}) - error(tau=1): EASGD's < DOWNPOUR's "
            "(or DOWNPOUR diverges)",
            f"EASGD {easgd_growth:+.4f}, DOWNPOUR {downpour_growth:+.4f}",
            easgd_growth < downpour_growth,
        ),
        Claim(
            "bytes per worker fall as 1/tau",
            "bytes(tau=1) / bytes(tau) within 10% of tau, every centre method",
            ", ".join(f"{m} tau={t}: {r:.3g}" for (m, t), r in ratios.items() if m == "easgd")
            + f" ({len(ratios)} ratios)",
            falls,
        ),
        Claim(
            "EASGD is stable where its condition predicts; ADMM is not, in part of it",
            "round robin on the 1-D quadratic, p = 3: spectral radius < 1 on EASGD's "
            "predicted region; > 1 for ADMM at some (eta, alpha = eta rho) inside it",
            measured,
            stable,
        ),
    ]


def stability(out: Path, console: Console) -> tuple[bool, str]:
    """Sweep EASGD over (eta, alpha) and ADMM over (eta, rho); table, map and the claim."""
    easgd = sweep("easgd", EASGD_ETAS, EASGD_ALPHAS, p=3)
    admm = sweep("admm", ADMM_ETAS, ADMM_RHOS, p=3)
    write_csv(stability_table(easgd) + stability_table(admm), out / "stability.csv")
    write_csv(stability_summary([easgd, admm]), out / "stability_summary.csv")
    plot_stability_map(easgd, admm, out / "stability.png")
    console.print(format_radius_table(easgd))
    console.print(format_radius_table(admm))
    return stability_claim(easgd, admm)
