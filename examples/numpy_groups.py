"""Train on your own NumPy arrays, split among agents by writer (a natural, non-IID split).

The data here is made up so the example runs anywhere: 40 "writers" each draw samples of
a 4-class Gaussian mixture in 16 dimensions, shifted by their own style offset and with
their own favourite classes. With ``partition="groups"`` every agent holds all samples
of a few whole writers, as devices of real users would, so the agents' data differ.

Run it with ``python examples/numpy_groups.py --rounds 200 --out runs/numpy_groups``.
"""

from __future__ import annotations

import argparse

import numpy as np

import nettrain
import nettrain.data

WRITERS, CLASSES, FEATURES = 40, 4, 16


def make_data(seed: int = 0) -> nettrain.data.Dataset:
    """A writer-grouped classification problem as NumPy arrays, wrapped by from_tensors."""
    rng = np.random.default_rng(seed)
    class_means = rng.normal(0.0, 1.0, (CLASSES, FEATURES))  # what the classes share
    xs, ys, writer_ids = [], [], []
    for writer in range(WRITERS):
        style = rng.normal(0.0, 0.5, FEATURES)  # this writer's offset on every sample
        favourites = rng.dirichlet(np.full(CLASSES, 0.5))  # skewed class mix per writer
        n = rng.integers(20, 100)  # some writers write much more than others
        y = rng.choice(CLASSES, size=n, p=favourites)
        xs.append(class_means[y] + style + rng.normal(0.0, 1.0, (n, FEATURES)))
        ys.append(y)
        writer_ids.append(np.full(n, writer))
    x, y, writers = np.concatenate(xs), np.concatenate(ys), np.concatenate(writer_ids)

    # Hold out a random fifth of the samples for testing; group ids are for training only.
    test = rng.random(len(y)) < 0.2
    return nettrain.data.from_tensors(
        x[~test],  # (N, 16) float64, stored as float32
        y[~test],  # (N,) integer labels: a classification set with n_classes = 4
        x[test],
        y[test],
        groups=writers[~test],  # the writer of each training sample
        name="writers",
    )


def main(argv: list[str] | None = None) -> float:
    """Train D-PSGD on a ring of 8 agents, one group of writers each; return test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="training rounds")
    parser.add_argument("--out", default="runs/numpy_groups", help="run folder to write")
    args = parser.parse_args(argv)

    data = make_data()
    print(data)  # Dataset(name='writers', ..., groups=40)
    config = {
        "algorithm": "dpsgd",
        "agents": 8,
        "topology": "ring",
        "rounds": args.rounds,
        "partition": "groups",  # each agent holds every sample of its writers
        "progress": False,
    }
    result = nettrain.run(config, data=data, out=args.out)
    accuracy = result.records[-1]["test_accuracy"]
    print(f"test accuracy after {args.rounds} rounds: {accuracy:.3f} (chance: {1 / CLASSES})")
    return accuracy


if __name__ == "__main__":
    main()
