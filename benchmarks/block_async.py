"""Samples/s of the shared-memory engine's methods, measured side by side.

    .venv/bin/python benchmarks/block_async.py                  # Fashion-MNIST CNN, 3 reps
    .venv/bin/python benchmarks/block_async.py --dataset digits --reps 5

Each repetition runs sequential SGD (``hogwild``, P=1), the block-partitioned method,
Hogwild and synchronous data-parallel SGD (P=2) one after another for the same number
of samples (one record at the end, so no evaluation pauses), in a rotated order. Per
method: the best and the median samples/s over the repetitions (training time only,
start-up of the processes excluded), and the ratio of the bests to sequential SGD.
"""

from __future__ import annotations

import argparse
import statistics

from nettrain.config import load_config
from nettrain.experiment import run
from nettrain.reproduce.block_async import BASE, FULL_EVERY, SEQUENTIAL, methods, rounds_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist", "digits"))
    parser.add_argument("--samples", type=int, default=6000, help="training samples used")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    samples = min(args.samples, 1437) if args.dataset == "digits" else args.samples
    labels = list(methods())
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(args.reps):
        for label in labels[rep % len(labels) :] + labels[: rep % len(labels)]:
            extra = methods()[label]
            rounds = rounds_for(extra["processes"], samples, args.epochs)
            values = BASE | extra | {"dataset": args.dataset}  # warm-up: 20 full steps
            if args.dataset == "fashion_mnist":
                values["train_samples"] = samples
            cfg = load_config(values | {"rounds": rounds, "eval_every": rounds})
            rates[label].append(run(cfg).records[-1]["samples_per_s"])
            print(f"rep {rep + 1} {label:20s} {rates[label][-1]:8.0f} samples/s", flush=True)
    base = max(rates[SEQUENTIAL])
    print(f"\n{args.dataset}, {samples} samples, {args.epochs} epochs, full_every={FULL_EVERY}")
    print(f"{'method':20s} {'best':>8s} {'median':>8s} {'best/sequential':>16s}")
    for label in labels:
        best, median = max(rates[label]), statistics.median(rates[label])
        print(f"{label:20s} {best:8.0f} {median:8.0f} {best / base:16.2f}")


if __name__ == "__main__":
    main()
