"""Data sets and their partition among agents.

``load_dataset(name)`` returns a :class:`Dataset` of standardised float32 feature rows
(scikit-learn's bundled sets, Fashion-MNIST from local IDX files, or a synthetic
Gaussian mixture); ``partition(labels, n_agents, scheme)`` splits its training indices
among agents (IID, by-label shards, Dirichlet label skew). Nothing is downloaded.
"""

from __future__ import annotations

from nettrain.data.datasets import DATASETS, FASHION_MNIST_DIR, Dataset, load_dataset
from nettrain.data.idx import read_idx
from nettrain.data.partition import PARTITIONS, label_histogram, partition

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "PARTITIONS",
    "Dataset",
    "label_histogram",
    "load_dataset",
    "partition",
    "read_idx",
]
