"""The :class:`Dataset` every model trains on: a checked train/test pair of tensors.

Features keep their natural shape, ``x: (N, *feature_shape)`` (images ``(N, C, H, W)``,
tabular rows ``(N, F)``); targets are ``(N,)`` int64 class labels or ``(N, *)``
floating-point regression targets. Construction checks everything a run would
otherwise trip over later (lengths, dtypes, label range, NaN or infinite values,
empty splits, group ids) and raises :class:`DataError` saying what is wrong and how
to fix it, before any work starts.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch

from nettrain.errors import DataError

__all__ = ["Dataset"]

# How many offending label values a message quotes before "...".
_QUOTED_VALUES = 5
_SPLITS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test pair of features and targets, ready for a model.

    Attributes:
        name: a built-in name (see :data:`~nettrain.data.DATASETS`), a file name, or
            what the user called the data.
        x_train: ``(N, *feature_shape)`` floating-point features (float32 from every
            loader); images are ``(N, C, H, W)``, tabular rows ``(N, F)``.
        y_train: ``(N,)`` int64 class labels in ``[0, n_classes)``, or ``(N, *)``
            floating-point regression targets.
        x_test: ``(M, *feature_shape)``, same feature shape as ``x_train``.
        y_test: ``(M,)`` or ``(M, *)``, same dtype and target shape as ``y_train``.
        n_classes: number of classes; 0 for regression.
        groups: optional ``(N,)`` int64 group id of each training sample (the writer,
            user or client it came from), for ``partition=groups``; ``None`` if unknown.
        x_val, y_val: optional validation split, held out of the training samples
            (:func:`~nettrain.data.validation.hold_out`, the ``validation`` key): no
            agent trains on it; ``None`` (the default) when there is none.

    Construction raises :class:`DataError` when the tensors do not fit together. Use
    :func:`~nettrain.data.from_tensors` to build one from arrays of other dtypes.
    """

    name: str
    x_train: torch.Tensor  # (N, *feature_shape)
    y_train: torch.Tensor  # (N,) int64 or (N, *target_shape) float
    x_test: torch.Tensor  # (M, *feature_shape)
    y_test: torch.Tensor  # (M,) int64 or (M, *target_shape) float
    n_classes: int
    groups: torch.Tensor | None = None  # (N,) int64
    x_val: torch.Tensor | None = None  # (V, *feature_shape)
    y_val: torch.Tensor | None = None  # (V,) or (V, *target_shape)

    def __post_init__(self) -> None:
        _check_n_classes(self)
        if (self.x_val is None) != (self.y_val is None):
            raise DataError(f"data set {self.name!r}: give both x_val and y_val, or neither")
        for split in self.splits:
            _check_split(self, split)
        _check_same_shapes(self)
        _check_groups(self)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits present: ``("train", "test")``, then ``"val"`` if there is one."""
        return ("train", "test") + (("val",) if self.x_val is not None else ())

    @property
    def task(self) -> Literal["classification", "regression"]:
        """``"classification"`` when ``n_classes > 0``, else ``"regression"``."""
        return "classification" if self.n_classes > 0 else "regression"

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample's features, ``x_train.shape[1:]``: ``(C, H, W)`` or ``(F,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        """Number of feature values per sample, ``prod(feature_shape)``."""
        return math.prod(self.feature_shape)

    @property
    def n_outputs(self) -> int:
        """Width of a model's output: ``n_classes`` logits, or the values of one target."""
        return self.n_classes if self.n_classes > 0 else math.prod(self.y_train.shape[1:])

    def describe(self) -> dict[str, Any]:
        """Identity of the data for run records: shapes, dtypes, classes and a content hash.

        ``sha256`` is the first 16 hex digits of SHA-256 over, for each of ``x_train,
        y_train, x_test, y_test`` (then ``groups`` if present) in that order, its name,
        dtype and shape followed by its bytes (a contiguous CPU copy), then ``x_val, y_val``
        if there is a validation split. Equal hashes mean
        equal tensors; changing one value changes it.
        """
        tensors = {name: getattr(self, name) for name in _SPLITS}
        if self.groups is not None:
            tensors["groups"] = self.groups
        if self.x_val is not None and self.y_val is not None:
            tensors |= {"x_val": self.x_val, "y_val": self.y_val}
        info: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "n_classes": self.n_classes,
            "shapes": {k: list(t.shape) for k, t in tensors.items()},
            "dtypes": {k: str(t.dtype).removeprefix("torch.") for k, t in tensors.items()},
        }
        if self.groups is not None:
            info["groups"] = int(torch.unique(self.groups).numel())
        info["sha256"] = _digest(tensors)
        return info

    def __repr__(self) -> str:
        groups = "" if self.groups is None else f", groups={int(self.groups.unique().numel())}"
        val = "" if self.x_val is None else f", val={tuple(self.x_val.shape)}"
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}{val}, n_classes={self.n_classes}{groups})"
        )


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of SHA-256 over each tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ checks


def _check_n_classes(ds: Dataset) -> None:
    """n_classes must be a non-negative int (0 = regression)."""
    n = ds.n_classes
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise DataError(
            f"data set {ds.name!r}: n_classes must be a non-negative integer "
            f"(0 for regression), got {n!r}"
        )


def _check_split(ds: Dataset, split: str) -> None:
    """Raise DataError unless one split's x and y are non-empty, agree and are finite."""
    x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
    for key, t in ((f"x_{split}", x), (f"y_{split}", y)):
        if not isinstance(t, torch.Tensor):
            raise DataError(
                f"data set {ds.name!r}: {key} must be a torch.Tensor, got {type(t).__name__}; "
                "build data sets from arrays with nettrain.data.from_tensors"
            )
    if x.ndim < 2 or not x.is_floating_point():
        raise DataError(
            f"data set {ds.name!r}: x_{split} must be a floating-point tensor of shape "
            f"(N, *feature_shape), got shape {tuple(x.shape)} {x.dtype}; a single feature "
            "per sample is x[:, None]"
        )
    if x.shape[0] == 0:
        raise DataError(
            f"data set {ds.name!r}: the {split} split is empty (x_{split} has shape "
            f"{tuple(x.shape)}); every split needs at least one sample"
        )
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} samples"
        raise DataError(
            f"data set {ds.name!r}: x_{split} has {x.shape[0]} samples but y_{split} has "
            f"{got}; give one target per sample in the {split} split"
        )
    _check_targets(ds, split, y)
    _check_finite(ds, f"x_{split}", x)


def _check_targets(ds: Dataset, split: str, y: torch.Tensor) -> None:
    """Classification: (N,) int64 labels in [0, n_classes). Regression: finite floats."""
    if ds.n_classes == 0:
        if not y.is_floating_point():
            raise DataError(
                f"data set {ds.name!r} is a regression set (n_classes=0) but y_{split} is "
                f"{y.dtype}; give floating-point targets, or n_classes > 0 for class labels"
            )
        _check_finite(ds, f"y_{split}", y)
        return
    if y.ndim != 1 or y.dtype != torch.int64:
        raise DataError(
            f"data set {ds.name!r}: y_{split} must be a ({y.shape[0]},) int64 tensor of class "
            f"labels, got shape {tuple(y.shape)} {y.dtype}; nettrain.data.from_tensors "
            "converts other integer dtypes"
        )
    bad = y[(y < 0) | (y >= ds.n_classes)]
    if bad.numel():
        values = torch.unique(bad).tolist()
        shown = ", ".join(map(str, values[:_QUOTED_VALUES])) + (
            ", ..." if len(values) > _QUOTED_VALUES else ""
        )
        raise DataError(
            f"data set {ds.name!r}: y_{split} has {bad.numel()} label(s) outside "
            f"[0, {ds.n_classes}) (n_classes={ds.n_classes}): {shown}; number the classes "
            "0..n_classes-1, or raise n_classes"
        )


def _check_finite(ds: Dataset, key: str, t: torch.Tensor) -> None:
    """DataError counting the NaN and infinite entries of ``t``, if any."""
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        nan = int(torch.isnan(t).sum())
        raise DataError(
            f"data set {ds.name!r}: {key} has {bad} non-finite value(s) ({nan} NaN, "
            f"{bad - nan} infinite) of {t.numel()}; drop or impute them before training"
        )


def _check_same_shapes(ds: Dataset) -> None:
    """Train, test and validation agree in feature shape, target shape and dtypes."""
    for split in ds.splits[1:]:
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if ds.x_train.shape[1:] != x.shape[1:]:
            raise DataError(
                f"data set {ds.name!r}: train samples have feature shape "
                f"{tuple(ds.x_train.shape[1:])} but {split} samples {tuple(x.shape[1:])}"
            )
        if ds.y_train.shape[1:] != y.shape[1:] or ds.y_train.dtype != y.dtype:
            raise DataError(
                f"data set {ds.name!r}: y_train (shape {tuple(ds.y_train.shape)} "
                f"{ds.y_train.dtype}) and y_{split} (shape {tuple(y.shape)} "
                f"{y.dtype}) must have the same dtype and target shape"
            )


def _check_groups(ds: Dataset) -> None:
    """groups is None or an (N,) int64 tensor, one id per training sample."""
    g = ds.groups
    if g is None:
        return
    n = ds.x_train.shape[0]
    if not isinstance(g, torch.Tensor) or g.dtype != torch.int64 or g.ndim != 1:
        what = f"{tuple(g.shape)} {g.dtype}" if isinstance(g, torch.Tensor) else type(g).__name__
        raise DataError(
            f"data set {ds.name!r}: groups must be a ({n},) int64 tensor, got {what}; "
            "nettrain.data.from_tensors converts integer or string ids"
        )
    if g.shape[0] != n:
        raise DataError(
            f"data set {ds.name!r}: groups has {g.shape[0]} ids but x_train has {n} samples; "
            "give one group id per training sample"
        )
