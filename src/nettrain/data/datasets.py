"""Built-in data sets (scikit-learn's bundled sets, Fashion-MNIST, synthetic) and ``.npz``.

Every built-in loader returns a :class:`Dataset` of float32 features in their natural
shape, standardised with statistics of the training split only, so nothing about the
test set leaks into training::

    name            source                       x per sample   task          split
    digits          sklearn load_digits          (1, 8, 8)      10 classes    seeded, stratified
    breast_cancer   sklearn load_breast_cancer   (30,)          2 classes     seeded, stratified
    wine            sklearn load_wine            (13,)          3 classes     seeded, stratified
    iris            sklearn load_iris            (4,)           3 classes     seeded, stratified
    diabetes        sklearn load_diabetes        (10,)          regression    seeded
    fashion_mnist   IDX files                    (1, 28, 28)    10 classes    official 60k / 10k
    synthetic       Gaussian mixture             (10,)          3 classes     seeded, stratified

A path ending in ``.npz`` instead of a name loads the user's own arrays as they are
(see :func:`nettrain.data.load_npz`).

Nothing is ever downloaded: scikit-learn ships its small sets inside the package (read
from its files, :mod:`nettrain.data.bundled`) and Fashion-MNIST is read from a folder of
the four standard IDX files (Debian's ``dataset-fashion-mnist`` installs them under
:data:`FASHION_MNIST_DIR`).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nettrain.data.bundled import read_bundled
from nettrain.data.dataset import Dataset
from nettrain.data.idx import read_idx
from nettrain.data.user import is_npz_path, load_npz
from nettrain.errors import ConfigError, DataError

__all__ = ["DATASETS", "FASHION_MNIST_DIR", "Dataset", "load_dataset"]

DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes", "fashion_mnist", "synthetic")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Synthetic Gaussian mixture: 1250 samples = 1000 train + 250 test at test_fraction=0.2;
# 10 features and 3 classes keep models tiny; class means ~ N(0, SEPARATION^2 I) with unit
# noise make the classes learnable (a linear model reaches ~95%) but not trivially so.
SYNTHETIC_SAMPLES = 1250
SYNTHETIC_FEATURES = 10
SYNTHETIC_CLASSES = 3
SYNTHETIC_SEPARATION = 1.0

# Independent random streams derived from one seed, so that e.g. the train subset does not
# depend on how many numbers the split consumed.
_STREAM_SPLIT, _STREAM_SUBSET, _STREAM_SYNTHETIC = 1, 2, 3

Array = np.ndarray


def load_dataset(
    name: str | Path,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_samples: int | None = None,
) -> Dataset:
    """Load a built-in data set by name (split, standardised) or a ``.npz`` file.

    Args:
        name: one of :data:`DATASETS`, or the path of a ``.npz`` file holding arrays
            ``x_train, y_train, x_test, y_test`` (optional ``groups_train``), loaded as
            they are, without standardisation, by :func:`~nettrain.data.load_npz`;
            ``seed`` and ``train_samples`` apply to it, ``test_fraction`` does not.
        data_dir: folder of the four Fashion-MNIST IDX files (plain or ``.gz``);
            default :data:`FASHION_MNIST_DIR`. Ignored by the other sets.
        seed: seeds the split, the synthetic data and the train subset. The same
            seed gives identical tensors.
        test_fraction: share of samples held out for testing, ``ceil(n * fraction)``;
            stratified by class for classification; rows of both parts come in
            seeded random order. Ignored by ``fashion_mnist``, which keeps its
            official 60000 / 10000 split and file order.
        train_samples: keep only a seeded subset of this many training samples,
            stratified by class (largest-remainder quotas) for classification; for
            quick runs on Fashion-MNIST. The test set is unchanged.

    Standardisation uses statistics of the full training split (before any
    ``train_samples`` subset): features of the tabular sets (and digits and synthetic)
    per feature, ``x <- (x - mean) / std`` with a zero std replaced by 1; Fashion-MNIST
    pixels are scaled to [0, 1] and standardised with one scalar mean and std over all
    training pixels, which keeps images images. The diabetes regression targets are
    standardised too, ``y <- (y - mean_train) / std_train``, so a squared loss starts
    near 1 and learning rates carry over from the classification sets; multiply
    predictions by the std and add the mean to get the original disease-progression
    units back.

    Raises:
        ConfigError: unknown ``name``, ``test_fraction`` outside (0, 1), bad ``seed``
            or ``train_samples``.
        DataError: Fashion-MNIST files missing or corrupt; a ``.npz`` file missing,
            unreadable or lacking arrays; ``train_samples`` larger than the training set.
    """
    if is_npz_path(name):
        _check_options(seed, test_fraction, train_samples)
        dataset = load_npz(name)
    elif name in _LOADERS:
        _check_options(seed, test_fraction, train_samples)
        dataset = _LOADERS[str(name)](data_dir, seed, test_fraction)
    else:
        raise ConfigError(
            f"unknown data set {str(name)!r}: choose one of {', '.join(DATASETS)}, "
            "or give the path of a .npz file"
        )
    if train_samples is not None:
        dataset = _subset_train(dataset, train_samples, seed)
    return dataset


def _check_options(seed: int, test_fraction: float, train_samples: int | None) -> None:
    """Raise ConfigError naming the first invalid option."""
    if not _is_count(seed, minimum=0):
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(test_fraction, numbers.Real) or not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}; "
            "0.2 holds out a fifth of the samples"
        )
    if train_samples is not None and not _is_count(train_samples, minimum=1):
        raise ConfigError(
            f"train_samples must be a positive integer or None (all), got {train_samples!r}"
        )


def _is_count(value: object, *, minimum: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _rng(seed: int, stream: int) -> np.random.Generator:
    """A generator for one named purpose, independent of the other streams of ``seed``."""
    return np.random.default_rng([stream, seed])


# ---------------------------------------------------------------------------- sampling


def _stratified_choice(labels: Array, k: int, rng: np.random.Generator) -> Array:
    """Sorted indices of k samples whose class counts are proportional to ``labels``'.

    Each class c of size n_c gets ``floor(k n_c / n)`` samples plus one more for the
    classes with the largest remainders (ties to the lower class), drawn uniformly.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * k / len(labels)
    take = np.floor(quotas).astype(np.int64)
    extra = np.argsort(-(quotas - take), kind="stable")[: k - int(take.sum())]
    take[extra] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(t), replace=False)
        for c, t in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _choose(labels: Array, k: int, classification: bool, rng: np.random.Generator) -> Array:
    """Sorted indices of k samples: stratified for classification, uniform otherwise."""
    if classification:
        return _stratified_choice(labels, k, rng)
    return np.sort(rng.choice(len(labels), size=k, replace=False))


def _split(
    x: Array, y: Array, test_fraction: float, classification: bool, seed: int
) -> tuple[Array, Array, Array, Array]:
    """Seeded train/test split holding out ``ceil(n * test_fraction)`` samples, rows shuffled."""
    n = len(y)
    n_test = math.ceil(n * test_fraction - 1e-9)  # tolerance: 0.2 * 1250 must give 250
    if not 1 <= n_test <= n - 1:
        raise ConfigError(
            f"test_fraction={test_fraction} leaves {n - n_test} of {n} samples for training"
        )
    rng = _rng(seed, _STREAM_SPLIT)
    test = _choose(y, n_test, classification, rng)
    train = np.setdiff1d(np.arange(n), test, assume_unique=True)
    # shuffled rows: scikit-learn's sets are stored sorted by class
    train, test = rng.permutation(train), rng.permutation(test)
    return x[train], y[train], x[test], y[test]


def _subset_train(dataset: Dataset, k: int, seed: int) -> Dataset:
    """The data set with a seeded (stratified for classification) subset of k train rows."""
    n = dataset.x_train.shape[0]
    if k > n:
        raise DataError(
            f"train_samples={k} but {dataset.name!r} has only {n} training samples; "
            f"use at most {n}, or leave train_samples unset to use them all"
        )
    labels = dataset.y_train.numpy()
    keep = _choose(labels, k, dataset.n_classes > 0, _rng(seed, _STREAM_SUBSET))
    keep_t = torch.from_numpy(keep)
    groups = None if dataset.groups is None else dataset.groups[keep_t]
    return replace(
        dataset, x_train=dataset.x_train[keep_t], y_train=dataset.y_train[keep_t], groups=groups
    )


# ----------------------------------------------------------------------- standardising


def _standardise_features(x_train: Array, x_test: Array) -> tuple[Array, Array]:
    """Per-feature ``(x - mean) / std`` with train statistics; a zero std becomes 1."""
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _standardise_targets(y_train: Array, y_test: Array) -> tuple[Array, Array]:
    """Regression targets ``(y - mean) / std`` with train statistics."""
    mean, std = y_train.mean(dtype=np.float64), y_train.std(dtype=np.float64)
    std = std if std > 0 else 1.0
    return ((y_train - mean) / std).astype(np.float32), ((y_test - mean) / std).astype(np.float32)


def _tabular(
    name: str,
    split: tuple[Array, Array, Array, Array],
    n_classes: int,
    feature_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Standardise a train/test split per feature and wrap it as a Dataset.

    Rows are standardised flat, then reshaped to ``(N, *feature_shape)`` when given.
    """
    x_train, y_train, x_test, y_test = split
    x_train, x_test = _standardise_features(x_train, x_test)
    if n_classes > 0:
        y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    else:
        y_train, y_test = _standardise_targets(y_train, y_test)
    if feature_shape is not None:
        x_train = x_train.reshape(len(x_train), *feature_shape)
        x_test = x_test.reshape(len(x_test), *feature_shape)
    return Dataset(
        name=name,
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        n_classes=n_classes,
    )


# ----------------------------------------------------------------------------- loaders

Loader = Callable[[str | Path | None, int, float], Dataset]


def _sklearn_loader(name: str, classification: bool) -> Loader:
    """A loader for scikit-learn's bundled set ``name``, read from its package files
    (:mod:`nettrain.data.bundled`; scikit-learn itself is not imported)."""
    feature_shape = (1, 8, 8) if name == "digits" else None  # digits are 8x8 images

    def loader(data_dir: str | Path | None, seed: int, test_fraction: float) -> Dataset:
        del data_dir  # bundled with scikit-learn
        x, y = read_bundled(name)
        n_classes = int(y.max()) + 1 if classification else 0
        split = _split(x.astype(np.float64), y, test_fraction, classification, seed)
        return _tabular(name, split, n_classes, feature_shape)

    return loader


def _load_synthetic(data_dir: str | Path | None, seed: int, test_fraction: float) -> Dataset:
    """Gaussian mixture: balanced labels, ``x = mu_y + eps``, ``eps ~ N(0, I)``."""
    del data_dir
    rng = _rng(seed, _STREAM_SYNTHETIC)
    means = rng.normal(0.0, SYNTHETIC_SEPARATION, (SYNTHETIC_CLASSES, SYNTHETIC_FEATURES))
    y = rng.permutation(np.arange(SYNTHETIC_SAMPLES) % SYNTHETIC_CLASSES)
    x = means[y] + rng.normal(0.0, 1.0, (SYNTHETIC_SAMPLES, SYNTHETIC_FEATURES))
    split = _split(x, y, test_fraction, True, seed)
    return _tabular("synthetic", split, SYNTHETIC_CLASSES)


def _load_fashion_mnist(data_dir: str | Path | None, seed: int, test_fraction: float) -> Dataset:
    """Fashion-MNIST's official split, pixels standardised by one train-set mean and std.

    Scaling pixels to [0, 1] and then standardising, ``(x/255 - m/255) / (s/255)``, equals
    ``(x - m) / s`` on the raw 0..255 values, which is what is computed, in place.
    """
    del seed, test_fraction  # official split, no randomness
    folder = Path(FASHION_MNIST_DIR if data_dir is None else data_dir).expanduser().resolve()
    images_train, labels_train, images_test, labels_test = _read_fashion_mnist(folder)
    x_train, x_test = _flat_float(images_train), _flat_float(images_test)  # (n, H*W)
    mean, std = _pixel_moments(x_train)
    for x in (x_train, x_test):
        x -= np.float32(mean)
        x /= np.float32(std)
    shape = (1, *images_train.shape[1:])  # (C, H, W) = (1, 28, 28)
    return Dataset(
        name="fashion_mnist",
        x_train=torch.from_numpy(x_train.reshape(-1, *shape)),
        y_train=torch.from_numpy(labels_train.astype(np.int64)),
        x_test=torch.from_numpy(x_test.reshape(-1, *shape)),
        y_test=torch.from_numpy(labels_test.astype(np.int64)),
        n_classes=10,
    )


def _flat_float(images: Array) -> Array:
    """``(n, H, W)`` uint8 -> new ``(n, H*W)`` float32 array of the same values."""
    return images.reshape(len(images), -1).astype(np.float32)


def _pixel_moments(x: Array) -> tuple[float, float]:
    """Mean and std over all entries of a 2-D float32 array, accumulated in float64.

    Row sums of squares are taken in float32 (exact or within 1e-7 for pixel values) and
    summed in float64; no copy of the array is made, so this stays fast on 60000 images.
    """
    n = x.size
    mean = float(x.sum(dtype=np.float64)) / n
    mean_sq = float(np.einsum("ij,ij->i", x, x).sum(dtype=np.float64)) / n
    std = math.sqrt(max(mean_sq - mean * mean, 0.0))
    return mean, std if std > 0 else 1.0


@functools.lru_cache(maxsize=2)
def _read_fashion_mnist(folder: Path) -> tuple[Array, Array, Array, Array]:
    """The four uint8 arrays of a Fashion-MNIST folder, checked; cached per folder.

    The arrays are returned read-only, since the cache shares them between calls.
    """
    arrays = tuple(read_idx(path) for path in _fashion_mnist_paths(folder))
    x_train, y_train, x_test, y_test = arrays
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        _check_fashion_split(folder, split, images, labels)
    for array in arrays:
        array.setflags(write=False)
    return x_train, y_train, x_test, y_test


def _fashion_mnist_paths(folder: Path) -> list[Path]:
    """Paths of the four IDX files in ``folder``, plain or ``.gz``; DataError if missing."""
    found: list[Path] = []
    missing: list[str] = []
    for stem in FASHION_MNIST_FILES:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{stem}[.gz]")
        else:
            found.append(path)
    if missing:
        where = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(
            f"Fashion-MNIST not found: folder {folder} {where}. Install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or pass data_dir=FOLDER holding "
            f"the four standard IDX files ({', '.join(FASHION_MNIST_FILES)}, plain or .gz)"
        )
    return found


def _check_fashion_split(folder: Path, split: str, images: Array, labels: Array) -> None:
    """Raise DataError unless images are (n, H, W) uint8 and labels (n,) in [0, 10)."""
    ok = (
        images.ndim == 3
        and labels.ndim == 1
        and len(images) == len(labels)
        and images.dtype == np.uint8
        and labels.dtype == np.uint8
        and (labels.size == 0 or int(labels.max()) < 10)
    )
    if not ok:
        raise DataError(
            f"Fashion-MNIST {split} files in {folder} do not fit together: images "
            f"{images.shape} {images.dtype}, labels {labels.shape} {labels.dtype}; expected "
            "(n, 28, 28) uint8 images and n uint8 labels in 0..9"
        )


_LOADERS: dict[str, Loader] = {
    "digits": _sklearn_loader("digits", True),
    "breast_cancer": _sklearn_loader("breast_cancer", True),
    "wine": _sklearn_loader("wine", True),
    "iris": _sklearn_loader("iris", True),
    "diabetes": _sklearn_loader("diabetes", False),
    "fashion_mnist": _load_fashion_mnist,
    "synthetic": _load_synthetic,
}
