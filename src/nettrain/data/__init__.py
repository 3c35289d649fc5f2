"""Data sets and their partition among agents.

A :class:`Dataset` holds float32 features in their natural shape ``(N, *feature_shape)``
(images ``(N, C, H, W)``, tabular rows ``(N, F)``), int64 class labels ``(N,)`` or
float regression targets ``(N, *)``, and optional per-sample group ids. It comes from

* ``load_dataset(name)``: a built-in set, standardised (scikit-learn's bundled sets,
  Fashion-MNIST from local IDX files, a synthetic Gaussian mixture), or a ``.npz`` file;
* ``from_tensors(x_train, y_train, x_test, y_test)``: the user's tensors or NumPy arrays;
* ``from_dataset(train, test)``: map-style ``torch.utils.data.Dataset`` s, stacked once.

``partition(labels, n_agents, scheme)`` splits its training indices among agents (IID,
by-label shards, Dirichlet label skew, or whole groups). Nothing is downloaded, and bad
data is refused with a :class:`~nettrain.errors.DataError` before any work.
"""

from __future__ import annotations

from nettrain.data.dataset import Dataset
from nettrain.data.datasets import DATASETS, FASHION_MNIST_DIR, load_dataset
from nettrain.data.idx import read_idx
from nettrain.data.partition import PARTITIONS, label_histogram, partition
from nettrain.data.user import NPZ_ARRAYS, from_dataset, from_tensors, is_npz_path, load_npz

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "NPZ_ARRAYS",
    "PARTITIONS",
    "Dataset",
    "from_dataset",
    "from_tensors",
    "is_npz_path",
    "label_histogram",
    "load_dataset",
    "load_npz",
    "partition",
    "read_idx",
]
