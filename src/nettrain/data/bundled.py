"""scikit-learn's small bundled data sets, read from its package files without importing it.

scikit-learn ships ``digits``, ``iris``, ``wine``, ``breast_cancer`` and ``diabetes`` as
CSV files under ``sklearn/datasets/data``; importing scikit-learn to read them costs
about 2 s of CPU a process (it imports most of SciPy), paid by every process of a
distributed run. This module finds the package's folder with
:func:`importlib.util.find_spec`, which does not run the package, and reads the files as
``sklearn.datasets.load_<name>(return_X_y=True)`` does, to the same arrays (checked
against scikit-learn in ``tests/data/test_bundled.py``):

* ``digits.csv.gz``: one row a sample, 64 pixels then the label, no header;
* ``iris.csv``, ``wine_data.csv``, ``breast_cancer.csv``: a header line
  (``n_samples,n_features,class names...``), then one row a sample, the label last;
* ``diabetes_data_raw.csv.gz`` and ``diabetes_target.csv.gz`` (spaces between values):
  the features centred and scaled to unit standard deviation, then divided by
  ``sqrt(n_samples)``, as scikit-learn's ``scaled=True`` default does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from nettrain.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # features (n, d) float64, targets (n,)

# the classification sets: their file and its header lines, the label in the last column
TABLES = {
    "digits": ("digits.csv.gz", 0),
    "iris": ("iris.csv", 1),
    "wine": ("wine_data.csv", 1),
    "breast_cancer": ("breast_cancer.csv", 1),
}
NAMES = (*TABLES, "diabetes")


def data_folder() -> Path:
    """``sklearn/datasets/data`` of the installed scikit-learn (not imported)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError(
            "the small data sets (digits, iris, wine, breast_cancer, diabetes) are read from "
            "scikit-learn's package files: install scikit-learn (pip install scikit-learn)"
        )
    folder = Path(spec.origin).parent / "datasets" / "data"
    if not folder.is_dir():
        raise DataError(f"scikit-learn has no bundled data sets at {folder}; reinstall it")
    return folder


def read_bundled(name: str) -> Arrays:
    """The features and targets of scikit-learn's bundled set ``name`` (:data:`NAMES`)."""
    folder = data_folder()
    if name in TABLES:
        file, header = TABLES[name]
        table = np.loadtxt(folder / file, delimiter=",", skiprows=header)
        return table[:, :-1], table[:, -1].astype(int)
    if name == "diabetes":
        x = np.loadtxt(folder / "diabetes_data_raw.csv.gz")
        y = np.loadtxt(folder / "diabetes_target.csv.gz")
        x = (x - np.nanmean(x, axis=0)) / np.nanstd(x, axis=0)
        return x / x.shape[0] ** 0.5, y
    raise DataError(f"scikit-learn bundles no data set {name!r}; choose one of {NAMES}")
