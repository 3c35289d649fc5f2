"""Data sets: shapes, dtypes, standardisation, stratified seeded splits, Fashion-MNIST files."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nettrain.data import DATASETS, FASHION_MNIST_DIR, Dataset, load_dataset
from nettrain.data.datasets import FASHION_MNIST_FILES
from nettrain.errors import ConfigError, DataError

# name -> (samples in total, feature shape, classes)
SMALL = {
    "digits": (1797, (1, 8, 8), 10),
    "breast_cancer": (569, (30,), 2),
    "wine": (178, (13,), 3),
    "iris": (150, (4,), 3),
    "diabetes": (442, (10,), 0),
    "synthetic": (1250, (10,), 3),
}
CLASSIFIERS = [name for name, spec in SMALL.items() if spec[2] > 0]


def test_every_listed_data_set_is_covered_here():
    assert set(DATASETS) == {*SMALL, "fashion_mnist"}


@pytest.mark.parametrize("name", SMALL)
def test_shapes_dtypes_and_properties(name: str):
    n, feature_shape, n_classes = SMALL[name]
    ds = load_dataset(name)
    n_test = math.ceil(0.2 * n)
    assert ds.name == name
    assert ds.x_train.shape == (n - n_test, *feature_shape)
    assert ds.x_test.shape == (n_test, *feature_shape)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.shape == (n - n_test,)
    assert ds.y_test.shape == (n_test,)
    label_dtype = torch.int64 if n_classes else torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == label_dtype
    assert ds.n_classes == n_classes
    assert ds.feature_shape == feature_shape
    assert ds.n_features == math.prod(feature_shape)
    assert ds.groups is None
    assert ds.n_outputs == (n_classes or 1)
    assert ds.task == ("classification" if n_classes else "regression")
    assert name in repr(ds)


def test_synthetic_has_the_documented_default_size():
    ds = load_dataset("synthetic")
    assert (len(ds.y_train), len(ds.y_test), ds.n_features, ds.n_classes) == (1000, 250, 10, 3)


@pytest.mark.parametrize("name", SMALL)
def test_features_are_standardised_with_train_statistics(name: str):
    ds = load_dataset(name, seed=4)
    x = ds.x_train.double().flatten(1)  # per-feature statistics, images too
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    assert mean.abs().max() < 1e-5
    constant = std < 1e-6  # digits has always-blank pixels; they stay 0, not NaN
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-4)
    assert torch.isfinite(ds.x_test).all()
    # the test set is transformed with the train statistics, not its own
    assert ds.x_test.double().flatten(1).mean(dim=0).abs().max() > 1e-3


def test_diabetes_targets_are_standardised():
    ds = load_dataset("diabetes")
    assert abs(ds.y_train.double().mean().item()) < 1e-6
    assert abs(ds.y_train.double().std(unbiased=False).item() - 1.0) < 1e-5


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_split_is_stratified(name: str):
    ds = load_dataset(name, seed=5)
    train = torch.bincount(ds.y_train, minlength=ds.n_classes).double()
    test = torch.bincount(ds.y_test, minlength=ds.n_classes).double()
    total = train + test
    expected_test = total * len(ds.y_test) / total.sum()
    assert (test - expected_test).abs().max() < 1.0
    assert (test > 0).all()
    assert ds.y_train.max() < ds.n_classes


@pytest.mark.parametrize("name", SMALL)
def test_same_seed_gives_identical_tensors_other_seed_differs(name: str):
    a, b, c = load_dataset(name, seed=7), load_dataset(name, seed=7), load_dataset(name, seed=8)
    fields = ("x_train", "y_train", "x_test", "y_test")
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.y_test, c.y_test)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_rows_are_not_sorted_by_class(name: str):
    ds = load_dataset(name)
    assert not torch.equal(ds.y_train, torch.sort(ds.y_train).values)


def test_test_fraction_sets_the_split_size():
    ds = load_dataset("iris", test_fraction=0.5)
    assert len(ds.y_train) == len(ds.y_test) == 75


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, 0.999])
def test_bad_test_fraction_raises(fraction: float):
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("iris", test_fraction=fraction)


def test_unknown_name_lists_the_data_sets():
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)
    assert ".npz" in str(info.value)


def test_train_samples_takes_a_stratified_seeded_subset():
    full = load_dataset("digits", seed=2)
    small = load_dataset("digits", seed=2, train_samples=100)
    assert small.x_train.shape == (100, 1, 8, 8)
    counts = torch.bincount(small.y_train, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    assert torch.equal(small.x_test, full.x_test)
    # every kept row is a row of the full training set, with its label
    full_rows, small_rows = full.x_train.flatten(1).tolist(), small.x_train.flatten(1).tolist()
    rows = {tuple(r): int(y) for r, y in zip(full_rows, full.y_train, strict=True)}
    assert all(rows[tuple(r)] == int(y) for r, y in zip(small_rows, small.y_train, strict=True))
    again = load_dataset("digits", seed=2, train_samples=100)
    assert torch.equal(small.x_train, again.x_train)


def test_train_samples_works_for_regression():
    ds = load_dataset("diabetes", train_samples=50)
    assert ds.y_train.shape == (50,) and ds.y_train.dtype == torch.float32


def test_train_samples_larger_than_the_training_set_raises():
    with pytest.raises(DataError, match="only 120 training samples"):
        load_dataset("iris", train_samples=121)


@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_bad_train_samples_raises(value: float):
    with pytest.raises(ConfigError, match="train_samples"):
        load_dataset("iris", train_samples=value)


def test_dataset_rejects_inconsistent_tensors():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DataError, match="y_train has 3 samples"):
        Dataset("bad", x, y[:3], x, y, n_classes=2)
    with pytest.raises(DataError, match="feature shape"):
        Dataset("bad", x, y, torch.zeros(4, 2), y, n_classes=2)
    with pytest.raises(DataError, match="y_test"):
        Dataset("bad", x, y, x, y.float(), n_classes=2)
    with pytest.raises(DataError, match="int64"):
        Dataset("bad", x, y.int(), x, y, n_classes=2)
    with pytest.raises(DataError, match="groups has 3 ids"):
        Dataset("bad", x, y, x, y, n_classes=2, groups=y[:3])


# ------------------------------------------------------------------------ Fashion-MNIST


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    """The real files: this machine and CI install Debian's dataset-fashion-mnist."""
    return load_dataset("fashion_mnist")


def test_fashion_mnist_has_the_official_split(fashion: Dataset):
    assert fashion.x_train.shape == (60000, 1, 28, 28)
    assert fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.x_train.dtype == torch.float32
    assert fashion.y_train.dtype == torch.int64
    assert fashion.n_classes == 10
    assert fashion.feature_shape == (1, 28, 28)
    assert fashion.n_features == 784
    assert torch.bincount(fashion.y_train).tolist() == [6000] * 10
    assert torch.bincount(fashion.y_test).tolist() == [1000] * 10


def test_fashion_mnist_is_standardised_by_one_train_scalar(fashion: Dataset):
    x = fashion.x_train.double()
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1.0) < 1e-4
    # one affine map for every pixel and both splits: blank pixels share one value
    assert fashion.x_train.min() == fashion.x_test.min()


def test_fashion_mnist_train_samples(fashion: Dataset):
    small = load_dataset("fashion_mnist", train_samples=1000, seed=1)
    assert small.x_train.shape == (1000, 1, 28, 28)
    assert torch.bincount(small.y_train).tolist() == [100] * 10
    assert torch.equal(small.x_test, fashion.x_test)


def idx_file(array: np.ndarray) -> bytes:
    """uint8 IDX bytes written by hand (magic 0x0000080N, big-endian dims)."""
    return (
        bytes([0, 0, 8, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + (array.astype(np.uint8).tobytes())
    )


def write_fashion_folder(folder: Path, n_train: int = 20, n_test: int = 10) -> tuple:
    """Tiny Fashion-MNIST-like folder: train files gzip-compressed, test files plain."""
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    folder.mkdir(exist_ok=True)
    for stem, array, compress in zip(FASHION_MNIST_FILES, arrays, (1, 1, 0, 0), strict=True):
        data = idx_file(array)
        path = folder / (f"{stem}.gz" if compress else stem)
        path.write_bytes(gzip.compress(data) if compress else data)
    return arrays


def test_fashion_mnist_reads_a_folder_of_plain_and_gz_files_exactly(tmp_path: Path):
    images, labels, test_images, test_labels = write_fashion_folder(tmp_path / "fm")
    ds = load_dataset("fashion_mnist", data_dir=tmp_path / "fm")
    assert ds.feature_shape == (1, 4, 3)
    assert torch.equal(ds.y_train, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(ds.y_test, torch.from_numpy(test_labels.astype(np.int64)))
    pixels = images.reshape(len(images), -1).astype(np.float64)
    mean, std = pixels.mean(), pixels.std()
    np.testing.assert_allclose(ds.x_train.flatten(1).numpy(), (pixels - mean) / std, atol=1e-5)
    test_pixels = test_images.reshape(len(test_images), -1).astype(np.float64)
    np.testing.assert_allclose(ds.x_test.flatten(1).numpy(), (test_pixels - mean) / std, atol=1e-5)


def test_fashion_mnist_missing_folder_explains_the_fix(tmp_path: Path):
    folder = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", data_dir=folder)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(folder) in message
    assert "data_dir" in message


def test_fashion_mnist_missing_files_are_named(tmp_path: Path):
    write_fashion_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte[" not in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_fashion_mnist_corrupt_file_raises(tmp_path: Path):
    write_fashion_folder(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_fashion_mnist_mismatched_labels_raise(tmp_path: Path):
    write_fashion_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_file(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="do not fit together"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_default_folder_is_debians():
    assert Path("/usr/share/datasets/fashion-mnist") == FASHION_MNIST_DIR
