"""``nettrain reproduce next``: the claims of Scardapane and Di Lorenzo (2017) at small scale.

10 agents on an Erdős–Rényi graph train a one-hidden-layer MLP (16 units) with full
local batches on scikit-learn's diabetes (squared loss + l2), breast cancer
(cross-entropy + l2), digits (cross-entropy + l2, label-skewed shards: two classes
per agent) and digits with l1. Methods: NEXT
with each surrogate that fits the loss, DGD (no tracking, same step) and, for every
surrogate, its centralised counterpart: the same iteration on the complete graph with
uniform weights, where every agent holds the exact average after each round (for the
linear surrogate that is centralised full-batch proximal gradient with step
``alpha[k] / tau``). Checked:

1. NEXT's final social objective is within 1% of its centralised counterpart's.
2. DGD with the same step is slower or biased: a larger final stationarity measure.
3. l1 gives at least 50% exact zeros at a test error within 1 point of l2.
4. The block-parallel step (2 blocks, block-Jacobi Gauss-Newton) reaches the
   sequential run's objective (within 1%) in at most 10% more iterations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nettrain.config import load_config
from nettrain.report.plots import plot_metrics
from nettrain.report.tables import rows_table, write_csv
from nettrain.reproduce.claims import Claim
from nettrain.reproduce.runner import Request, run_all

Records = list[dict[str, Any]]

BASE: dict[str, Any] = {
    "agents": 10,
    "topology": "erdos_renyi",
    "model": "mlp",
    "hidden": (16,),
    "batch_size": 0,  # full local batch, as in the paper
    "step0": 0.5,
    "step_decay": 0.01,
    "progress": False,
}
CENTRAL: dict[str, Any] = {"topology": "complete", "weights": "uniform"}
OBJECTIVE_TOL = 0.01
ERROR_POINTS = 0.01
MIN_SPARSITY = 0.5
BLOCK_SLOWDOWN = 1.10


@dataclass(frozen=True)
class Setting:
    name: str
    title: str
    overrides: dict[str, Any]
    surrogates: tuple[str, ...]
    rounds: tuple[int, int]  # (quick, full)
    dgd: bool = True
    blocks: tuple[str, ...] = field(default=())  # surrogates also run with 2 blocks

    def methods(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in self.surrogates:
            out[f"NEXT {s}"] = {"algorithm": "next", "surrogate": s}
        for s in self.blocks:
            out[f"NEXT {s} B=2"] = {"algorithm": "next", "surrogate": s, "blocks": 2}
        if self.dgd:
            out["DGD"] = {"algorithm": "dgd", "surrogate": "linear"}
        for s in self.surrogates:
            out[f"central {s}"] = {"algorithm": "next", "surrogate": s} | CENTRAL
        return out


CLASSIFICATION = {"loss": "cross_entropy", "prox_tau": 0.3}
DIGITS = CLASSIFICATION | {"dataset": "digits", "partition": "shards", "classes_per_agent": 2}
SETTINGS = (
    Setting(
        "diabetes",
        "diabetes: squared loss + l2",
        {"dataset": "diabetes", "loss": "squared", "regularizer": "l2", "reg_lambda": 1e-3}
        | {"prox_tau": 1.5},
        ("linear", "gauss_newton"),
        rounds=(600, 2000),
        blocks=("gauss_newton",),
    ),
    Setting(
        "breast_cancer",
        "breast cancer: cross-entropy + l2",
        CLASSIFICATION | {"dataset": "breast_cancer", "partition": "iid"}
        | {"regularizer": "l2", "reg_lambda": 1e-2},
        ("linear", "cross_entropy"),
        rounds=(600, 2000),
    ),
    Setting(
        "digits",
        "digits: cross-entropy + l2",
        DIGITS | {"regularizer": "l2", "reg_lambda": 1e-3},
        ("linear", "cross_entropy"),
        rounds=(300, 1500),
    ),
    Setting(
        "digits_l1",
        "digits: cross-entropy + l1",
        DIGITS | {"regularizer": "l1", "reg_lambda": 1.5e-3},
        ("linear",),
        rounds=(300, 1500),
        dgd=False,
    ),
)  # fmt: skip
PANELS = (
    ("objective", "social objective U(mean w)", True),
    ("stationarity", "stationarity ||prox-grad map||", True),
    ("test_error", "test error (mean model)", False),
    ("disagreement", "disagreement max_i ||w_i - mean w||", True),
    ("sparsity", "share of exact zeros in w~", False),
)


def reproduce(ask: Request) -> list[Claim]:
    """Run every setting as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`):
    run folders ``SETTING/METHOD``, plots and ``summary.csv`` in ``ask.out``."""
    out, quick, seed, console, overrides, jobs, force = ask  # every field of the request
    eval_every = 10 if quick else 25
    plan = {}
    for setting in SETTINGS:
        for label, extra in setting.methods().items():
            values = BASE | setting.overrides | extra
            rounds = setting.rounds[0 if quick else 1]
            schedule = {"rounds": rounds, "eval_every": eval_every, "seed": seed}
            plan[f"{setting.name}/{label}"] = load_config(values | schedule | dict(overrides))

    def done(name: str, records: Records | None, note: str) -> None:
        if records is not None:  # always: no error is tolerated here
            setting, label = name.split("/")
            shown = describe(final([with_test_error(r) for r in records]))
            console.print(f"{setting:14s} {label:26s} {shown} {note}")

    found = run_all(plan, out, jobs=jobs, done=done, force=force)
    results: dict[str, dict[str, Records]] = {s.name: {} for s in SETTINGS}
    rows = []
    for name, records in ((k, v) for k, v in found.items() if v is not None):
        setting, label = name.split("/")
        results[setting][label] = [with_test_error(r) for r in records]
        rows.append({"setting": setting, "method": label, **final(results[setting][label])})
    for setting in SETTINGS:
        plot_metrics(
            results[setting.name], PANELS, out / f"{setting.name}.png", title=setting.title
        )
    write_csv(rows, out / "summary.csv")
    columns = ("setting", "method", *FINAL, "wall_time_s")
    console.print(rows_table(rows, columns, title="NEXT: final values", left=2))
    return check(results)


def with_test_error(record: dict[str, Any]) -> dict[str, Any]:
    if "test_accuracy" in record:
        return record | {"test_error": 1 - record["test_accuracy"]}
    return record | {"test_error": None}


FINAL = ("objective", "stationarity", "disagreement", "test_error", "test_loss", "sparsity")


def final(records: Records) -> dict[str, Any]:
    last = records[-1]
    return {k: last.get(k) for k in FINAL} | {"wall_time_s": last["wall_time_s"]}


def describe(row: Mapping[str, Any]) -> str:
    shown = [
        f"{k}={row[k]:.4g}"
        for k in ("objective", "stationarity", "test_error", "sparsity")
        if row.get(k) is not None
    ]
    return " ".join(shown) + f" ({row['wall_time_s']:.1f} s)"


def first_round_below(records: Records, target: float) -> int | None:
    return next((r["round"] for r in records if r["objective"] <= target), None)


def check(results: Mapping[str, Mapping[str, Records]]) -> list[Claim]:
    """The four claims from the final records (see the module docstring)."""
    last = {s: {m: recs[-1] for m, recs in runs.items()} for s, runs in results.items()}
    gaps = {
        f"{s} {m}": (r["objective"] - last[s][m.replace("NEXT", "central")]["objective"])
        / abs(last[s][m.replace("NEXT", "central")]["objective"])
        for s, runs in last.items()
        for m, r in runs.items()
        if m.startswith("NEXT") and "B=" not in m
    }
    worst = max(gaps, key=lambda k: gaps[k])
    ratios = {
        s: runs["DGD"]["stationarity"] / runs["NEXT linear"]["stationarity"]
        for s, runs in last.items()
        if "DGD" in runs
    }
    l1, l2 = last["digits_l1"]["NEXT linear"], last["digits"]["NEXT linear"]
    error_gap = l1["test_error"] - l2["test_error"]
    seq = results["diabetes"]["NEXT gauss_newton"]
    par = results["diabetes"]["NEXT gauss_newton B=2"]
    target = seq[-1]["objective"] * (1 + OBJECTIVE_TOL)
    k_seq, k_par = first_round_below(seq, target), first_round_below(par, target)
    slowdown = k_par / k_seq if k_par is not None and k_seq else float("inf")
    return [
        Claim(
            "NEXT reaches the centralised objective",
            f"(U_NEXT - U_central) / U_central <= {OBJECTIVE_TOL:.0%} for every data set and "
            "surrogate (central: the same iteration with exact averaging)",
            "; ".join(f"{k}: {v:+.2%}" for k, v in gaps.items()) + f" (worst {worst})",
            gaps[worst] <= OBJECTIVE_TOL,
        ),
        Claim(
            "DGD with the same step is slower or biased",
            "final stationarity of DGD / of NEXT (linear surrogate) > 1 on every data set",
            "; ".join(f"{s}: {v:.2f}x" for s, v in ratios.items()),
            all(v > 1 for v in ratios.values()),
        ),
        Claim(
            "l1 gives exact zeros at the accuracy of l2",
            f"digits: share of zeros in w~ >= {MIN_SPARSITY:.0%} and test error(l1) - "
            f"test error(l2) <= {ERROR_POINTS * 100:.0f} point",
            f"zeros {l1['sparsity']:.1%}; test error l1 {l1['test_error']:.2%}, "
            f"l2 {l2['test_error']:.2%} (difference {error_gap * 100:+.2f} points)",
            l1["sparsity"] >= MIN_SPARSITY and error_gap <= ERROR_POINTS,
        ),
        Claim(
            "the block-parallel step converges like the sequential one",
            f"iterations of B=2 to reach the B=1 run's final objective + 1% <= "
            f"{BLOCK_SLOWDOWN:.2f} x those of B=1 (diabetes, Gauss-Newton)",
            f"B=1: {k_seq}, B=2: {k_par} iterations (ratio {slowdown:.2f})",
            slowdown <= BLOCK_SLOWDOWN,
        ),
    ]
