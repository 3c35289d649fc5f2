"""``nettrain reproduce swarm``: SwarmSGD's claims (Nadiradze et al. 2021) at small scale.

Fashion-MNIST, MLP 784-128-10 (the small CNN in the full run), mini-batches of 32,
learning rate 0.1, in the simulator's event engine. D-PSGD and local SGD train for
``E`` epochs; the asynchronous methods (SwarmSGD, AD-PSGD) for ``2 E`` (the paper's
epoch multiplier: interactions per epoch scale with ``n``), and so does all-reduce SGD,
the claims' baseline: it processes as many samples as SwarmSGD. Its step averages
``n`` mini-batches of ``B = 32`` (a batch of ``n B``) where SwarmSGD's local step takes
one. The two methods of claims 1 and 2, all-reduce SGD and 8-bit SwarmSGD, are tuned
alike: each picks its learning rate from the same grid of four, ``lr = 0.1 x {1, 2,
sqrt(n), n}``, the points above 0.1 with a gradual warm-up over the first 5% of the run
(``lr_warmup``: all-reduce's rounds; for SwarmSGD each agent's exchanges, about two a
round). For all-reduce's batch of ``n B`` the last two points are the square-root rule
and Goyal et al. 2017's linear scaling rule ("Accurate, Large Minibatch SGD": ``lr x
(n B) / B``) with its warm-up. Every run holds out 10% of its training samples as a
validation split (``validation=0.1``); each method's point of the lowest final
validation loss (``val_loss`` of the last record, mean over the seeds; never the test
set, :func:`~nettrain.reproduce.tuning.over_seeds`) is the one claims 1 and 2 use
(``tuning.csv``). The other claims compare variants at the plain ``lr = 0.1`` (equal
settings, no tuning): ``H``, the graph, the quantiser, and the straggler runs.
SwarmSGD's default here: ``H = 2`` local steps, non-blocking, 8-bit lattice
quantisation against the receiver's model (``eps = 1e-3``). ``--quick``: 16 agents,
12,000 training samples, ``E = 4``; the full run: 8, 16 and 32 agents on all 60,000
samples, ``E = 10``, the small CNN (about 3 h on a 2-core CPU with ``--jobs 2``;
``--set device=cuda`` on a GPU, or ``--set model=mlp`` for the MLP). Every
configuration runs for each seed (``seed-<s>/n16_swarm_8-bit``, ...); the tables give
the mean ± std over the seeds, the plots the mean in a band of ± one std. Checked:

1. Tuned SwarmSGD's final accuracy is within 1 point of the tuned all-reduce SGD's (for
   every ``n``, mean over the seeds; empirical).
2. To reach the tuned all-reduce's final accuracy minus 1 point, tuned 8-bit SwarmSGD
   sends at least 4x fewer bytes than fp32 all-reduce, both measured to that target
   (mean of the seeds' ratios, 0 for a seed where SwarmSGD never gets there;
   empirical: a message's 8 bits against 32 are set up, but how many exchanges
   SwarmSGD needs to reach the target, and whether it does, is what the run decides).
3. The disagreement ``Gamma = (1/n) sum ||x_i - mu||^2`` grows with ``H`` (1, 2, 4 at
   equal samples) and shrinks with the degree (complete graph below ring), in every
   seed (empirical).
4. With 10% of agents 4x slower, SwarmSGD reaches all-reduce's final accuracy minus
   1 point at least 1.5x sooner in virtual time (mean of the seeds' ratios; by
   construction: the cost model makes all-reduce wait for the slowest agent every
   round).
5. Quantising without a reference does worse: 8-bit bucketed QSGD (sign + 7 bits, one
   float32 scale per bucket of 512 coordinates as in Alistarh et al. 2017: the same
   8 bits a coordinate plus 32/512 = 0.0625 for the scales; no reference) ends with a
   lower accuracy than the 8-bit lattice, by more than twice the standard error of the
   difference of the means (empirical). Without buckets one l2 norm scales the whole
   model and its step, ``||x|| / 127``, dwarfs most coordinates: a straw man.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from nettrain.config import RunConfig, load_config
from nettrain.errors import DivergenceError
from nettrain.report.plots import plot_seeds
from nettrain.report.tables import write_csv
from nettrain.reproduce.claims import (
    BY_CONSTRUCTION,
    EMPIRICAL,
    Claim,
    Measured,
    better,
    ordered,
    spread,
)
from nettrain.reproduce.runner import Request, rounds_given, run_seeds, seed_tables
from nettrain.reproduce.tuning import final, over_seeds, warmup_rounds

Records = list[dict[str, Any]]

BATCH = 32
BASE: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "model": "mlp",
    "hidden": (128,),
    "batch_size": BATCH,
    "lr": 0.1,
    "topology": "ring",
    "eval_agents": 2,
    "validation": 0.1,  # the baseline's grid is chosen on it
    "progress": False,
}
SWARM: dict[str, Any] = {
    "algorithm": "swarm",
    "local_steps": 2,
    "quantizer": "lattice",
    "bits": 8,
    "lattice_eps": 1e-3,
}
QSGD_BUCKET = 512  # coordinates per QSGD scale, the bucket of Alistarh et al. 2017
QSGD_RUN = f"swarm qsgd 8-bit bucket {QSGD_BUCKET}"  # claim 5's comparator
MULTIPLIER = 2  # epochs of the asynchronous methods (and all-reduce) per epoch of the others
BASELINE = "allreduce"  # claims 1 and 2's baseline and its plain point
TUNED = (BASELINE, "swarm 8-bit")  # the methods of claims 1 and 2, each with its grid
EXCHANGES_PER_ROUND = 2  # an agent's exchanges a round: it initiates one, is picked once
TARGET = 0.85  # the table's "virtual time to 85% accuracy" (None: not reached)
EVALS = 16  # records per run
PANELS = (
    ("test_accuracy", "test accuracy (mean model)", False),
    ("consensus_distance", "Gamma = (1/n) sum ||x_i - mu||^2", True),
)


def methods() -> dict[str, dict[str, Any]]:
    """Label -> overrides of the runs at one agent count."""
    return {
        "allreduce": {"algorithm": "allreduce"},
        "dpsgd": {"algorithm": "dpsgd"},
        "local_sgd": {"algorithm": "local_sgd", "tau": 4},
        "adpsgd": {"algorithm": "adpsgd"},
        "swarm 32-bit": SWARM | {"quantizer": "none"},
        "swarm 16-bit": SWARM | {"bits": 16},
        "swarm 8-bit": SWARM,
    }


def extra_methods() -> dict[str, dict[str, Any]]:
    """The runs of claims 3 to 5, at the middle agent count."""
    return {
        "swarm 8-bit H=1": SWARM | {"local_steps": 1},
        "swarm 8-bit H=4": SWARM | {"local_steps": 4},
        "swarm 8-bit complete": SWARM | {"topology": "complete"},
        QSGD_RUN: SWARM | {"quantizer": "qsgd", "bits": 7, "qsgd_bucket": QSGD_BUCKET},
        "allreduce stragglers": {"algorithm": "allreduce", "stragglers": 0.1},
        "swarm 8-bit stragglers": SWARM | {"stragglers": 0.1},
    }


def rounds_for(overrides: Mapping[str, Any], n: int, samples: int, epochs: int) -> int:
    """Rounds for ``epochs`` passes (``MULTIPLIER`` x for the asynchronous methods and
    all-reduce, so that the baseline processes as many samples as SwarmSGD).

    A synchronous round processes ``n B`` samples; an asynchronous one ``n`` interactions
    of ``H`` local steps of ``B`` samples each (non-blocking: the initiator's steps).
    """
    asynchronous = overrides["algorithm"] in ("swarm", "adpsgd")
    steps = overrides.get("local_steps", 1) if asynchronous else 1
    equal = asynchronous or overrides["algorithm"] == "allreduce"
    passes = epochs * (MULTIPLIER if equal else 1)
    return max(1, round(passes * samples / (n * BATCH * steps)))


def grid(
    label: str, n: int, rounds: int, lr: float = BASE["lr"], asynchronous: bool = False
) -> dict[str, dict[str, Any]]:
    """The learning-rate grid of a method of claims 1 and 2 at ``n`` agents, run label ->
    overrides: ``lr x {1, 2, sqrt(n), n}`` (``label`` itself is the plain point). The
    points above ``lr`` warm up (:class:`~nettrain.algorithms.sgd.WarmedStep`) over
    :func:`~nettrain.reproduce.tuning.warmup_rounds` of the ``rounds``, counted in each
    agent's exchanges for an ``asynchronous`` method (:data:`EXCHANGES_PER_ROUND` a
    round).

    For all-reduce, whose step averages ``n`` mini-batches of ``B`` (a batch of ``n B``
    where SwarmSGD's local step, whose ``lr`` is the base, takes ``B``), ``sqrt(n)`` is
    the square-root rule (Krizhevsky 2014, "One weird trick for parallelizing
    convolutional neural networks") and ``n = n B / B`` Goyal et al. 2017's linear
    scaling rule, each with its gradual warm-up.
    """
    warmup = warmup_rounds(rounds)
    if asynchronous:
        warmup *= EXCHANGES_PER_ROUND
    scaled = {"lr x 2": 2.0, "lr x sqrt(n)": math.sqrt(n), "lr x n": float(n)}
    points: dict[str, dict[str, Any]] = {label: {}}
    for name, factor in scaled.items():
        points[f"{label} {name}"] = {"lr": lr * factor, "lr_warmup": warmup}
    return points


def sizes_of(quick: bool) -> tuple[tuple[int, ...], int, int]:
    """The agent counts, training samples and epochs of the quick or the full run."""
    return ((16,), 12_000, 4) if quick else ((8, 16, 32), 60_000, 10)


def middle_size(sizes: Sequence[int]) -> int:
    """The agent count of claims 2 to 5's runs."""
    return sizes[len(sizes) // 2]


def plan(seed: int, quick: bool, overrides: Mapping[str, Any]) -> dict[str, RunConfig]:
    """One seed's runs, ``n{N} LABEL`` -> config; each method of :data:`TUNED` followed
    by the other points of its :func:`grid` (from its run's ``lr`` and rounds after
    ``overrides``). Each run's rounds give its epochs of the training samples, both
    after ``overrides``; ``rounds`` given there is every run's, and its records follow
    it."""
    sizes, samples, epochs = sizes_of(quick)
    model = {} if quick else {"model": "cnn"}  # the paper's small CNN in the full run
    configs: dict[str, RunConfig] = {}
    for n in sizes:
        extra_runs = extra_methods() if n == middle_size(sizes) else {}
        for label, extra in (methods() | extra_runs).items():
            values = BASE | model | extra | {"agents": n, "seed": seed, "train_samples": samples}
            given = load_config(values | dict(overrides))  # --set train_samples counts too
            epoch_rounds = rounds_for(given.to_dict(), n, given.train_samples, epochs)
            rounds = rounds_given(overrides, epoch_rounds)
            schedule = {"rounds": rounds, "eval_every": max(1, rounds // EVALS)}
            cfg = load_config(values | schedule | dict(overrides))
            configs[f"n{n} {label}"] = cfg
            if label in TUNED:
                asynchronous = cfg.algorithm == "swarm"
                points = grid(label, n, cfg.rounds, cfg.lr, asynchronous)
                for point, scaled in list(points.items())[1:]:
                    configs[f"n{n} {point}"] = load_config(cfg.to_dict() | scaled)
    return configs


def grid_runs(sizes: Sequence[int]) -> dict[str, list[str]]:
    """``n{N} METHOD`` -> its grid's run names in grid order, for each method of
    :data:`TUNED` at each ``n``."""
    return {
        f"n{n} {label}": [f"n{n} {point}" for point in grid(label, n, 1)]
        for n in sizes
        for label in TUNED
    }


def reproduce(ask: Request) -> list[Claim]:
    """Run the experiment as ``ask`` says (:class:`~nettrain.reproduce.runner.Request`)."""
    sizes = sizes_of(ask.quick)[0]

    def done(name: str, records: Records | None, note: str) -> None:
        if records is None:  # a diverged run: only a tuned method's scaled points may
            ask.console.print(f"{name:36s} diverged: {note}")
        else:
            ask.console.print(f"{name:36s} {describe(table_row(records))} {note}")

    found = run_seeds(ask, plan, done, tolerate=(DivergenceError,))
    scaled = {name for names in grid_runs(sizes).values() for name in names[1:]}
    for runs in found.values():
        failed = [name for name, records in runs.items() if records is None]
        if any(name not in scaled for name in failed):
            raise DivergenceError(f"{', '.join(failed)} diverged (see above)")
    results = {
        seed: {name: records for name, records in runs.items() if records is not None}
        for seed, runs in found.items()
    }
    chosen = tune(ask, found, sizes)
    rows = []
    for seed, runs in results.items():
        for name, records in runs.items():
            n, label = name.split(" ", 1)
            rows.append({"n": int(n[1:]), "method": label, "seed": seed} | table_row(records))
    seed_tables(
        ask, rows, ("n", "method"), (*COLUMNS, "virtual_time_to_85%"), "SwarmSGD: final values"
    )
    passed_over = scaled - set(chosen.values())
    for n in sizes:  # the plots leave out the scaled grid points not chosen
        labels = [
            name
            for name in next(iter(results.values()))
            if name.startswith(f"n{n} ") and name not in passed_over
        ]
        curves = {
            name.split(" ", 1)[1]: [runs[name] for runs in results.values()] for name in labels
        }
        title = f"Fashion-MNIST, {n} agents"
        plot_seeds(curves, PANELS, ask.out / f"n{n}.png", title=title, x=X)
    return check([figures(runs, sizes, middle_size(sizes), chosen) for runs in results.values()])


CRITERION = final("val_loss")  # the tuned methods' grids: the final validation loss


def tune(
    ask: Request, found: Mapping[int, Mapping[str, Records | None]], sizes: Sequence[int]
) -> dict[str, str]:
    """Each tuned method's grid point at each ``n`` (``n{N} METHOD`` -> the chosen run's
    name), chosen by the mean final validation loss over the seeds
    (:func:`~nettrain.reproduce.tuning.over_seeds`); printed, and written to
    ``tuning.csv`` with each point's ``lr``, ``lr_warmup`` and losses."""
    chosen, rows = over_seeds(found, grid_runs(sizes), CRITERION)
    configs = plan(next(iter(found)), ask.quick, ask.overrides)  # lr: alike every seed
    for row in rows:
        cfg = configs[row["run"]]
        row |= {"lr": cfg.lr, "lr_warmup": cfg.lr_warmup, "rounds": cfg.rounds}
    write_csv(rows, ask.out / "tuning.csv")
    for method, name in chosen.items():
        cfg = configs[name]
        mine = [r for r in rows if r["method"] == method]
        losses = ", ".join(f"{r['run']} {r['criterion_mean']:.4g}" for r in mine)
        ask.console.print(
            f"tuned {method}: lr={cfg.lr:g} lr_warmup={cfg.lr_warmup} ({name}; final "
            f"validation loss {losses})"
        )
    return chosen


COLUMNS = (
    "test_accuracy",
    "consensus_distance",
    "bytes_total",
    "bytes_max_agent",
    "virtual_time_s",
    "epoch",
    "interactions_min",
    "interactions_max",
    "wall_time_s",
)
X = ("epoch", "epochs (samples / training set)")


def table_row(records: Records) -> dict[str, Any]:
    """The summary table's columns for one run: its last record and the time to 85%."""
    last = records[-1]
    return {k: last.get(k) for k in COLUMNS} | {
        "virtual_time_to_85%": first(records, TARGET, "virtual_time_s")
    }


def describe(row: Mapping[str, Any]) -> str:
    return (
        f"acc={row['test_accuracy']:.4f} Gamma={row['consensus_distance']:.3g} "
        f"bytes={row['bytes_total']:.3g} vt={row['virtual_time_s']:.3g}s "
        f"({row['wall_time_s']:.1f} s)"
    )


def first(records: Records, target: float, key: str) -> float | None:
    """``key`` of the first record whose test accuracy reaches ``target``."""
    return next((r[key] for r in records if r["test_accuracy"] >= target), None)


def ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``; 0 where either is missing (a target never reached)."""
    if numerator is None or not denominator:
        return 0.0
    return numerator / denominator


def shown(value: float | None) -> str:
    """A figure to a target in words: "never" where the target was not reached."""
    return "never" if value is None else f"{value:.4g}"


GAMMA_RUNS = ("swarm 8-bit H=1", "swarm 8-bit", "swarm 8-bit H=4", "swarm 8-bit complete")


@dataclass(frozen=True)
class Figures:
    """The numbers one seed's runs give the claims.

    ``gaps``: n -> final accuracy of the tuned all-reduce minus that of the tuned 8-bit
    SwarmSGD; ``byte_ratio``: bytes of the one over those of the other to all-reduce's
    final accuracy - 1 point (0 if SwarmSGD never got there); ``gamma``: final ``Gamma``
    of the runs of :data:`GAMMA_RUNS`; ``speedup``: virtual time of all-reduce over
    that of SwarmSGD to the target, with stragglers (0 if SwarmSGD never got there);
    ``lattice``, ``qsgd``: final accuracy of 8-bit SwarmSGD with each quantiser (QSGD
    with buckets of :data:`QSGD_BUCKET`), at the plain ``lr``. The ``texts`` say what
    the ratios came from."""

    gaps: dict[int, float]
    byte_ratio: float
    gamma: dict[str, float]
    speedup: float
    lattice: float
    qsgd: float
    texts: dict[str, str]


def figures(
    results: Mapping[str, Records],
    sizes: Sequence[int],
    m: int,
    chosen: Mapping[str, str] | None = None,
) -> Figures:
    """One seed's :class:`Figures` from its records (``n{N} LABEL`` -> records); ``m``
    the agent count of claims 2 to 5; ``chosen``: ``n{N} METHOD`` -> the run of the
    method's grid point that claims 1 and 2 use (:func:`tune`; the plain one where
    missing)."""
    acc = {k: v[-1]["test_accuracy"] for k, v in results.items()}

    def tuned(n: int, label: str) -> str:
        return (chosen or {}).get(f"n{n} {label}", f"n{n} {label}")

    base = {n: tuned(n, BASELINE) for n in sizes}
    swarm = {n: tuned(n, "swarm 8-bit") for n in sizes}
    target = acc[base[m]] - 0.01
    bytes_ar = first(results[base[m]], target, "bytes_total")
    bytes_sw = first(results[swarm[m]], target, "bytes_total")
    slow_target = acc[f"n{m} allreduce stragglers"] - 0.01
    t_ar = first(results[f"n{m} allreduce stragglers"], slow_target, "virtual_time_s")
    t_sw = first(results[f"n{m} swarm 8-bit stragglers"], slow_target, "virtual_time_s")
    return Figures(
        gaps={n: acc[base[n]] - acc[swarm[n]] for n in sizes},
        byte_ratio=ratio(bytes_ar, bytes_sw),
        gamma={k: results[f"n{m} {k}"][-1]["consensus_distance"] for k in GAMMA_RUNS},
        speedup=ratio(t_ar, t_sw),
        lattice=acc[f"n{m} swarm 8-bit"],
        qsgd=acc[f"n{m} {QSGD_RUN}"],
        texts={
            "bytes": f"{shown(bytes_ar)} / {shown(bytes_sw)} to {target:.4f}",
            "time": f"{shown(t_ar)} / {shown(t_sw)} to {slow_target:.4f}",
        },
    )


def check(seeds: Sequence[Figures]) -> list[Claim]:
    """The five claims (see the module docstring) from every seed's :class:`Figures`."""
    return [
        parity_claim(seeds),
        bytes_claim(seeds),
        gamma_claim(seeds),
        straggler_claim(seeds),
        quantiser_claim(seeds),
    ]


def parity_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 1: SwarmSGD's mean accuracy within 1 point of all-reduce's, every n."""
    gaps = {n: [100 * f.gaps[n] for f in seeds] for n in seeds[0].gaps}
    worst = max(gaps, key=lambda n: fmean(gaps[n]))
    shown = "; ".join(f"n={n}: {spread(g, '+.2f')} points" for n, g in gaps.items())
    return Claim(
        "SwarmSGD matches all-reduce SGD's accuracy (with the epoch multiplier)",
        EMPIRICAL,
        "accuracy(all-reduce) - accuracy(SwarmSGD 8-bit) <= 1 point, mean over the seeds, "
        "every n (measured: the difference in points at the worst n)",
        Measured.of(gaps[worst], shown),
        all(fmean(g) <= 1.0 for g in gaps.values()),
    )


def bytes_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 2: the mean byte ratio to the target is at least 4."""
    ratios = [f.byte_ratio for f in seeds]
    per_seed = "; ".join(f.texts["bytes"] for f in seeds)
    return Claim(
        "8-bit SwarmSGD sends >= 4x fewer bytes than fp32 all-reduce to the same accuracy",
        EMPIRICAL,
        "bytes of all-reduce / bytes of SwarmSGD to reach all-reduce's final accuracy - 1 "
        "point >= 4, mean of the seeds' ratios (0 where SwarmSGD never got there)",
        Measured.of(ratios, f"ratio {spread(ratios, '.2f')} (all-reduce / SwarmSGD: {per_seed})"),
        fmean(ratios) >= 4,
    )


def gamma_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 3: Gamma(H=1) < Gamma(H=2) < Gamma(H=4) and complete < ring, every seed."""
    gamma = {k: [f.gamma[k] for f in seeds] for k in GAMMA_RUNS}
    h_grows = ordered([gamma["swarm 8-bit H=1"], gamma["swarm 8-bit"], gamma["swarm 8-bit H=4"]])
    degree = ordered([gamma["swarm 8-bit complete"], gamma["swarm 8-bit"]])
    shown = ", ".join(f"{k}: {spread(v, '.3g')}" for k, v in gamma.items())
    return Claim(
        "Gamma grows with H and shrinks with the degree",
        EMPIRICAL,
        "Gamma(H=1) < Gamma(H=2) < Gamma(H=4); Gamma(complete) < Gamma(ring), in every seed "
        "(measured: Gamma(H=4) / Gamma(H=1))",
        Measured.of(
            [f.gamma["swarm 8-bit H=4"] / f.gamma["swarm 8-bit H=1"] for f in seeds],
            f"{shown} (H ordered in every seed: {'yes' if h_grows else 'no'}; degree: "
            f"{'yes' if degree else 'no'})",
        ),
        h_grows and degree,
    )


def straggler_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 4 (by construction): with stragglers, the mean speed-up is at least 1.5."""
    speedups = [f.speedup for f in seeds]
    per_seed = "; ".join(f.texts["time"] for f in seeds)
    return Claim(
        "with 10% stragglers SwarmSGD reaches the target >= 1.5x sooner",
        BY_CONSTRUCTION,
        "virtual time of all-reduce / of SwarmSGD to all-reduce's final accuracy - 1 point, "
        "4x-slow stragglers: >= 1.5, mean of the seeds' ratios",
        Measured.of(
            speedups, f"speed-up {spread(speedups, '.2f')} (all-reduce / SwarmSGD: {per_seed})"
        ),
        fmean(speedups) >= 1.5,
    )


def quantiser_claim(seeds: Sequence[Figures]) -> Claim:
    """Claim 5: the lattice's mean accuracy above bucketed QSGD's by more than 2 standard
    errors (QSGD: sign + 7 bits and a float32 scale per :data:`QSGD_BUCKET` coordinates,
    0.0625 bits a coordinate more than the lattice's 8)."""
    lattice, qsgd = [f.lattice for f in seeds], [f.qsgd for f in seeds]
    compared = better(lattice, qsgd)
    return Claim(
        "quantising without a reference does worse than the lattice",
        EMPIRICAL,
        "final accuracy: mean(8-bit lattice) - mean(8-bit QSGD, no reference, bucket "
        f"{QSGD_BUCKET}: + 32/{QSGD_BUCKET} bits a coordinate for its scales) > 2 standard "
        "errors (measured: the difference, lattice minus QSGD)",
        Measured.of(
            [a - b for a, b in zip(lattice, qsgd, strict=True)],
            f"QSGD {spread(qsgd)}, lattice {spread(lattice)}; {compared.describe()}",
        ),
        compared.holds,
    )
