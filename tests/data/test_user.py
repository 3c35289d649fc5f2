"""User data: from_tensors, from_dataset, .npz files, describe(), and the checks on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nettrain.data import from_dataset, from_tensors, load_dataset, load_npz
from nettrain.errors import DataError


def arrays(n: int = 30, m: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Images (n, 1, 4, 4) float64 with int32 labels in 0..4, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 1, 4, 4)),
        rng.integers(0, 5, n).astype(np.int32),
        rng.normal(size=(m, 1, 4, 4)),
        rng.integers(0, 5, m).astype(np.int32),
    )


class Pairs(torch.utils.data.Dataset):
    """A map-style data set over ``(x, y)`` arrays, as a user's own class would be."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]), int(self.y[i])


# ------------------------------------------------------------------------ from_tensors


def test_from_tensors_keeps_shapes_and_converts_dtypes():
    x, y, xt, yt = arrays()
    ds = from_tensors(x, y, xt, yt)
    assert ds.x_train.shape == (30, 1, 4, 4) and ds.x_test.shape == (10, 1, 4, 4)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32  # float64 in, float32 stored
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.feature_shape == (1, 4, 4) and ds.n_features == 16
    np.testing.assert_allclose(ds.x_train.numpy(), x.astype(np.float32))
    assert ds.y_train.tolist() == y.tolist()
    assert ds.name == "tensors" and ds.groups is None


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8, torch.int64])
def test_any_integer_labels_become_int64(dtype: torch.dtype):
    x = torch.randn(8, 3)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3], dtype=dtype)
    ds = from_tensors(x, y, x, y)
    assert ds.y_train.dtype == torch.int64 and ds.y_train.tolist() == y.tolist()


def test_torch_and_numpy_inputs_give_the_same_data():
    x, y, xt, yt = arrays()
    a = from_tensors(x, y, xt, yt)
    b = from_tensors(*(torch.from_numpy(v) for v in (x, y, xt, yt)))
    assert a.describe() == b.describe()


def test_n_classes_is_the_largest_label_of_both_splits_plus_one():
    x = torch.randn(6, 2)
    train, test = torch.tensor([0, 1, 1, 0, 2, 1]), torch.tensor([0, 6, 1, 0, 2, 1])
    assert from_tensors(x, train, x, test).n_classes == 7
    assert from_tensors(x, train, x, train).n_classes == 3
    assert from_tensors(x, train, x, train, n_classes=10).n_classes == 10


def test_regression_targets_of_shape_n_by_3():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=gen), torch.randn(20, 3, generator=gen, dtype=torch.float64)
    ds = from_tensors(x, y, x[:4], y[:4])
    assert ds.task == "regression" and ds.n_classes == 0
    assert ds.y_train.shape == (20, 3) and ds.y_train.dtype == torch.float32
    assert ds.n_outputs == 3


def test_string_groups_are_numbered_in_sorted_order():
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0])
    ds = from_tensors(x, y, x, y, groups=["bob", "amy", "bob", "cat", "amy"])
    assert ds.groups.tolist() == [1, 0, 1, 2, 0]
    assert ds.groups.dtype == torch.int64
    assert ds.describe()["groups"] == 3


def test_integer_groups_are_kept_as_given():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    ds = from_tensors(x, y, x, y, groups=np.array([7, 3, 7, 100], dtype=np.uint16))
    assert ds.groups.tolist() == [7, 3, 7, 100]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_train": np.zeros(29, np.int64)}, "x_train has 30 samples but y_train has 29"),
        ({"y_test": np.full(10, 9)}, "outside [0, 5)"),
        ({"x_test": np.full((10, 1, 4, 4), np.nan)}, "x_test has 160 non-finite"),
        ({"x_train": np.zeros((0, 1, 4, 4)), "y_train": np.zeros(0, np.int64)}, "train split is"),
        ({"y_train": np.array(["a"] * 30)}, "targets must be integer class labels"),
        ({"y_train": np.ones(30, bool)}, "map class names or booleans to integers"),
        ({"x_train": np.zeros((30, 1, 4, 5))}, "feature shape"),
        ({"y_test": np.zeros(10)}, "y_train holds integer labels but y_test floating-point"),
    ],
)
def test_bad_arrays_are_refused_with_the_reason(change: dict, message: str):
    given = dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays(), strict=True))
    given.update(change)
    with pytest.raises(DataError) as info:
        from_tensors(**given, n_classes=5)
    assert message in str(info.value)


def test_labels_beyond_a_given_n_classes_are_quoted():
    x = torch.randn(4, 2)
    with pytest.raises(DataError, match=r"2 label\(s\) outside \[0, 3\) \(n_classes=3\): 3, 4"):
        from_tensors(x, torch.tensor([0, 3, 4, 1]), x, torch.tensor([0, 1, 2, 1]), n_classes=3)


def test_wrong_number_of_groups_is_refused():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(DataError, match="groups has 3 ids but x_train has 4 samples"):
        from_tensors(x, y, x, y, groups=[0, 1, 2])


# ------------------------------------------------------------------------ from_dataset


def test_from_dataset_equals_from_tensors_on_the_same_data():
    x, y, xt, yt = arrays()
    direct = from_tensors(x, y, xt, yt, name="Pairs")
    stacked = from_dataset(Pairs(x, y), Pairs(xt, yt))
    assert stacked.name == "Pairs"
    assert stacked.describe() == direct.describe()


def test_from_dataset_refuses_more_than_max_bytes_before_stacking():
    x, y, xt, yt = arrays()

    class Counting(Pairs):
        fetched = 0

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            Counting.fetched += 1
            return super().__getitem__(i)

    with pytest.raises(DataError) as info:
        from_dataset(Counting(x, y), Counting(xt, yt), max_bytes=1000)
    message = str(info.value)
    assert "about 2.9 KB" in message  # 40 items x (16 x 4 + 8) bytes = 2880
    assert "limit is 1.0 KB" in message
    assert "Subset" in message and "from_tensors" in message
    assert Counting.fetched == 1  # only the first item was looked at


def test_from_dataset_refuses_items_that_are_not_pairs():
    class Singles(Pairs):
        def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
            return torch.zeros(3)

    x, y, _, _ = arrays()
    with pytest.raises(DataError, match=r"not an \(x, y\) pair"):
        from_dataset(Singles(x, y), Singles(x, y))


# -------------------------------------------------------------------------------- .npz


def test_npz_file_loads_like_from_tensors(tmp_path: Path):
    x, y, xt, yt = arrays()
    writers = np.array([f"w{i % 4}" for i in range(30)])
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt, groups_train=writers)
    loaded = load_dataset(path)
    direct = from_tensors(x, y, xt, yt, groups=writers, name="mine.npz")
    assert loaded.describe() == direct.describe()
    assert torch.equal(loaded.groups, direct.groups)
    small = load_dataset(str(path), train_samples=12, seed=3)
    assert small.x_train.shape == (12, 1, 4, 4) and small.groups.shape == (12,)


def test_npz_missing_arrays_are_named(tmp_path: Path):
    x, y, _, _ = arrays()
    np.savez(tmp_path / "half.npz", x_train=x, y_train=y)
    with pytest.raises(DataError, match=r"lacks the array\(s\) x_test, y_test"):
        load_npz(tmp_path / "half.npz")


def test_npz_that_is_not_one_is_refused(tmp_path: Path):
    (tmp_path / "text.npz").write_text("not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(tmp_path / "text.npz")


# ---------------------------------------------------------------------------- describe


def test_describe_hash_changes_when_one_value_changes():
    x, y, xt, yt = arrays()
    before = from_tensors(x, y, xt, yt).describe()
    xt = xt.copy()
    xt[3, 0, 2, 1] += 1e-3
    after = from_tensors(x, y, xt, yt).describe()
    assert len(before["sha256"]) == 16 and int(before["sha256"], 16) >= 0
    assert before["sha256"] != after["sha256"]
    assert {k: v for k, v in before.items() if k != "sha256"} == {
        k: v for k, v in after.items() if k != "sha256"
    }
    assert before["shapes"]["x_train"] == [30, 1, 4, 4]
    assert before["dtypes"]["y_test"] == "int64"
