"""A validation split carved from the training samples (the ``validation`` key).

``hold_out(dataset, fraction, seed)`` moves ``ceil(N * fraction)`` training samples,
drawn by ``seed`` (class-stratified for classification, uniform otherwise), into
``x_val, y_val``; the rest stay the training set, in their order, and only they are
partitioned among the agents, so no agent's shard holds a validation sample. The test
set is untouched. ``fraction = 0`` returns the data set itself: nothing is drawn, and
a run is the same bit for bit as one without the key. Hyper-parameters are picked on
this split, never on the test set (:mod:`nettrain.reproduce.tuning`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from nettrain.data.dataset import Dataset
from nettrain.data.datasets import _choose, _rng
from nettrain.errors import ConfigError

__all__ = ["hold_out", "validation_indices"]

_STREAM_VALIDATION = 4  # a stream of its own: the split draws nothing from the others


def validation_indices(
    labels: torch.Tensor, fraction: float, seed: int, classification: bool
) -> np.ndarray:
    """Sorted indices of the ``ceil(N * fraction)`` training samples held out, drawn by
    ``seed`` (stratified by class when ``classification``); empty for ``fraction = 0``."""
    n = labels.shape[0]
    if not 0 <= fraction < 1:
        raise ConfigError(f"validation must be in [0, 1), got {fraction}")
    k = math.ceil(n * fraction - 1e-9)  # tolerance as for test_fraction
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return _choose(labels.cpu().numpy(), k, classification, _rng(seed, _STREAM_VALIDATION))


def hold_out(dataset: Dataset, fraction: float, seed: int, min_train: int = 1) -> Dataset:
    """``dataset`` with a validation split of ``fraction`` of its training samples
    (see the module docstring); ``dataset`` itself for ``fraction = 0``. A ConfigError
    when fewer than ``min_train`` training samples (the agents' count) would remain."""
    val = validation_indices(dataset.y_train, fraction, seed, dataset.n_classes > 0)
    if len(val) == 0:
        return dataset
    n = dataset.x_train.shape[0]
    if n - len(val) < max(min_train, 1):
        raise ConfigError(
            f"validation={fraction} holds out {len(val)} of {n} training samples, leaving "
            f"{n - len(val)} for {min_train} agent(s); lower validation or use more samples"
        )
    keep = torch.from_numpy(np.setdiff1d(np.arange(n), val, assume_unique=True))
    held = torch.from_numpy(val)
    groups = None if dataset.groups is None else dataset.groups[keep]
    return replace(
        dataset,
        x_train=dataset.x_train[keep],
        y_train=dataset.y_train[keep],
        groups=groups,
        x_val=dataset.x_train[held],
        y_val=dataset.y_train[held],
    )
