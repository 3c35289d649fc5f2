"""The user's own data: tensors or NumPy arrays, a map-style torch Dataset, a ``.npz`` file.

Three ways in, one :class:`~nettrain.data.Dataset` out::

    from_tensors(x_train, y_train, x_test, y_test)    torch tensors or NumPy arrays
    from_dataset(train, test)                         map-style torch.utils.data.Dataset,
                                                      stacked once into tensors
    load_npz("data.npz")                              arrays x_train, y_train, x_test,
                                                      y_test (optional groups_train)

The task follows the dtype of the targets: integer labels (any integer dtype, stored
as int64) make a classification set with ``n_classes = max label + 1`` unless given;
floating-point targets of any shape ``(N, *)`` make a regression set (stored float32).
Features of any shape ``(N, *feature_shape)`` are stored as float32, like the built-in
sets, and used as given: nettrain does not standardise user data. Optional per-sample
group ids (writer, user, client; integers or strings) enable ``partition=groups``.
Everything is checked before any training starts (see :class:`~nettrain.data.Dataset`).
"""

from __future__ import annotations

import numbers
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nettrain.data.dataset import Dataset
from nettrain.errors import DataError

__all__ = ["NPZ_ARRAYS", "from_dataset", "from_tensors", "is_npz_path", "load_npz"]

# Arrays a .npz data file must hold; "groups_train" and "n_classes" are optional.
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")

ArrayLike = Any  # torch.Tensor, np.ndarray, or anything np.asarray accepts


def from_tensors(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    n_classes: int | None = None,
    groups: ArrayLike | None = None,
    name: str = "tensors",
) -> Dataset:
    """A :class:`Dataset` from torch tensors or NumPy arrays, checked and converted.

    Args:
        x_train: ``(N, *feature_shape)`` features, any real dtype; stored as float32.
        y_train: ``(N,)`` integer class labels (int8..int64, uint8; stored as int64)
            or ``(N, *)`` floating-point regression targets (stored as float32).
        x_test: ``(M, *feature_shape)``.
        y_test: ``(M,)`` or ``(M, *)``, integer exactly when ``y_train`` is.
        n_classes: number of classes; default ``max label + 1`` over both splits.
            Only for integer labels.
        groups: optional ``(N,)`` group id per training sample, integers or strings
            (strings are numbered in sorted order); stored as int64.
        name: what run records call the data.

    Raises:
        DataError: mismatched lengths, labels outside ``[0, n_classes)``, NaN or
            infinite values, an empty split, labels that are neither integer nor
            floating point, a wrong number of group ids (the message says which).
    """
    xs = [_features(x, key) for x, key in ((x_train, "x_train"), (x_test, "x_test"))]
    ys = [_targets(y, key) for y, key in ((y_train, "y_train"), (y_test, "y_test"))]
    classes = _n_classes(ys, n_classes, name)
    return Dataset(
        name=name,
        x_train=xs[0],
        y_train=ys[0],
        x_test=xs[1],
        y_test=ys[1],
        n_classes=classes,
        groups=None if groups is None else _group_ids(groups),
    )


def from_dataset(
    train: Any,
    test: Any,
    *,
    n_classes: int | None = None,
    groups: ArrayLike | None = None,
    name: str | None = None,
    max_bytes: int | None = None,
) -> Dataset:
    """A :class:`Dataset` from two map-style ``torch.utils.data.Dataset`` s, stacked once.

    Each split's items ``ds[i] = (x, y)`` (tensors, arrays or numbers) are stacked
    into ``(N, *)`` tensors and passed to :func:`from_tensors`. Before stacking, the
    size is estimated as the first item's float32 features plus int64 / float32
    targets times the number of items, and refused above ``max_bytes``.

    Args:
        train, test: objects with ``__len__`` and ``__getitem__`` returning ``(x, y)``.
        n_classes, groups: as for :func:`from_tensors`.
        name: default ``type(train).__name__``.
        max_bytes: most bytes to materialise; default half of the memory available
            now (``MemAvailable`` in ``/proc/meminfo``), no limit if that is unknown.

    Raises:
        DataError: not map-style, items that are not ``(x, y)`` pairs or whose shapes
            differ, more than ``max_bytes``; and whatever :func:`from_tensors` refuses.
    """
    name = type(train).__name__ if name is None else name
    for split, ds in (("train", train), ("test", test)):
        _check_map_style(ds, split)
    limit = _default_max_bytes() if max_bytes is None else max_bytes
    _check_size(train, test, limit, name)
    x_train, y_train = _stack(train, "train", name)
    x_test, y_test = _stack(test, "test", name)
    return from_tensors(
        x_train, y_train, x_test, y_test, n_classes=n_classes, groups=groups, name=name
    )


def is_npz_path(name: str | Path) -> bool:
    """Whether a ``dataset`` value names a ``.npz`` file rather than a built-in set."""
    return str(name).lower().endswith(".npz")


def load_npz(path: str | Path) -> Dataset:
    """A :class:`Dataset` from a ``.npz`` file of arrays, read without pickle.

    The file holds ``x_train, y_train, x_test, y_test`` and optionally ``groups_train``
    (per-sample group ids) and ``n_classes`` (a scalar); write one with
    ``np.savez("data.npz", x_train=..., y_train=..., x_test=..., y_test=...)``. The
    arrays go through :func:`from_tensors` (float32 features, used as given); the data
    set is named after the file.

    Raises:
        DataError: the file does not exist, is not a readable ``.npz``, lacks arrays
            (named), or holds arrays :func:`from_tensors` refuses.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"dataset file {path} not found (looked in {path.resolve().parent}); give the "
            f"path of a .npz file with arrays {', '.join(NPZ_ARRAYS)}, or a built-in data set"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(
            f"cannot read {path} as a .npz file of arrays ({err}); write it with "
            f"np.savez(path, {', '.join(f'{k}=...' for k in NPZ_ARRAYS)}) and no object arrays"
        ) from err
    missing = [key for key in NPZ_ARRAYS if key not in arrays]
    if missing:
        raise DataError(
            f"{path} lacks the array(s) {', '.join(missing)} (it holds: "
            f"{', '.join(sorted(arrays)) or 'nothing'}); save them with "
            f"np.savez(path, {', '.join(f'{k}=...' for k in NPZ_ARRAYS)})"
        )
    n_classes = arrays.get("n_classes")
    return from_tensors(
        *(arrays[key] for key in NPZ_ARRAYS),
        n_classes=None if n_classes is None else int(n_classes),
        groups=arrays.get("groups_train"),
        name=path.name,
    )


# -------------------------------------------------------------------------- conversion


def _numpy(a: ArrayLike) -> np.ndarray:
    """A native-endian numpy array of ``a`` (a tensor goes through ``.cpu()``)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy() if a.dtype != torch.bfloat16 else a.float().numpy()
    arr = np.asarray(a)
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _features(x: ArrayLike, key: str) -> torch.Tensor:
    """``(N, *feature_shape)`` float32 tensor; DataError for non-numeric features."""
    if isinstance(x, torch.Tensor) and not (x.is_complex() or x.dtype == torch.bool):
        return x.detach().cpu().to(torch.float32)
    arr = _numpy(x)
    if arr.dtype.kind not in "biuf":
        raise DataError(
            f"{key} must hold real numbers, got dtype {arr.dtype}; encode categories "
            "as numbers (e.g. one-hot) first"
        )
    return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))


def _targets(y: ArrayLike, key: str) -> torch.Tensor:
    """int64 labels for integer ``y``, float32 targets for floating ``y``; else DataError."""
    arr = _numpy(y)
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        return torch.from_numpy(arr.astype(np.float32))
    raise DataError(
        f"{key} has dtype {arr.dtype}: targets must be integer class labels "
        "(classification) or floating-point values (regression); map class names "
        "or booleans to integers 0..n_classes-1 first"
    )


def _n_classes(ys: Sequence[torch.Tensor], n_classes: int | None, name: str) -> int:
    """Given or inferred (max label + 1) class count; 0 for regression."""
    integer = [not y.is_floating_point() for y in ys]
    if integer[0] != integer[1]:
        kinds = ["integer labels" if i else "floating-point targets" for i in integer]
        raise DataError(
            f"data set {name!r}: y_train holds {kinds[0]} but y_test {kinds[1]}; give "
            "integer labels in both splits (classification) or floats in both (regression)"
        )
    if not integer[0]:
        if n_classes is not None:
            raise DataError(
                f"data set {name!r}: n_classes={n_classes} but the targets are floating "
                "point (regression); give integer labels, or leave n_classes unset"
            )
        return 0
    if n_classes is not None:
        if not _is_count(n_classes, minimum=1):
            raise DataError(
                f"data set {name!r}: n_classes must be a positive integer for integer "
                f"labels, got {n_classes!r}; leave it unset to use max label + 1"
            )
        return int(n_classes)  # Dataset checks the label range
    tops = [int(y.max()) for y in ys if y.numel()]
    return max(max(tops) + 1 if tops else 1, 1)  # >= 1: negative labels fail the range check


def _is_count(value: object, *, minimum: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _group_ids(groups: ArrayLike) -> torch.Tensor:
    """``(N,)`` int64 group ids: integers as given, strings numbered in sorted order."""
    arr = _numpy(groups)
    if arr.ndim != 1:
        raise DataError(f"groups must be one id per training sample, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind in "US":
        _, ids = np.unique(arr, return_inverse=True)
        return torch.from_numpy(ids.astype(np.int64).reshape(-1))
    raise DataError(
        f"groups has dtype {arr.dtype}: give integer or string ids (writer, user, client)"
    )


# ------------------------------------------------------------------------ from_dataset


def _check_map_style(ds: Any, split: str) -> None:
    """DataError unless ``ds`` has ``__len__`` and ``__getitem__`` and is not empty."""
    if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise DataError(
            f"from_dataset needs map-style data sets (with __len__ and __getitem__), but "
            f"{split} is a {type(ds).__name__}; for an IterableDataset collect its items "
            "into tensors and call from_tensors"
        )
    if len(ds) == 0:
        raise DataError(
            f"from_dataset: the {split} split is empty ({type(ds).__name__} of length 0); "
            "every split needs at least one sample"
        )


def _pair(ds: Any, i: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Item ``i`` of ``ds`` as ``(x, y)`` numpy arrays; DataError if not a pair."""
    item = ds[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(
            f"from_dataset: {split}[{i}] is a {type(item).__name__}, not an (x, y) pair; "
            "make __getitem__ return (features, target)"
        )
    return _numpy(item[0]), _numpy(item[1])


def _check_size(train: Any, test: Any, limit: int | None, name: str) -> None:
    """DataError when stacking both splits would take more than ``limit`` bytes."""
    if limit is None:
        return
    x, y = _pair(train, 0, "train")
    per_item = 4 * x.size + 8 * y.size  # float32 features, int64 labels at most
    n = len(train) + len(test)
    need = per_item * n
    if need > limit:
        raise DataError(
            f"from_dataset: {name} would take about {_size(need)} in memory ({n} items of "
            f"{_size(per_item)}, features {x.shape}) but the limit is {_size(limit)} "
            "(max_bytes, default half the available memory); pass a subset "
            "(torch.utils.data.Subset), raise max_bytes, or call from_tensors on "
            "memory-mapped arrays (np.load(..., mmap_mode='r'))"
        )


def _stack(ds: Any, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """All items of ``ds`` stacked into ``(N, *)`` arrays; DataError on differing shapes."""
    pairs = [_pair(ds, i, split) for i in range(len(ds))]
    for part, what in ((0, "x"), (1, "y")):
        first = pairs[0][part].shape
        odd = next((i for i, p in enumerate(pairs) if p[part].shape != first), None)
        if odd is not None:
            raise DataError(
                f"from_dataset {name!r}: {what} of {split}[0] has shape {first} but of "
                f"{split}[{odd}] {pairs[odd][part].shape}; every item must have the same "
                "shape (resize or pad them in the data set's transform)"
            )
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _default_max_bytes() -> int | None:
    """Half of the memory available now, or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2  # the value is in kB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    """Bytes as a short human-readable size: ``1.5 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
