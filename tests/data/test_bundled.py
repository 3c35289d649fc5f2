"""scikit-learn's bundled sets read from its files equal its own loaders', bit for bit,
and a process that loads one does not import scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn import datasets

from nettrain.data.bundled import NAMES, read_bundled
from nettrain.errors import DataError


@pytest.mark.parametrize("name", NAMES)
def test_a_bundled_set_is_scikit_learns_own(name: str) -> None:
    x, y = read_bundled(name)
    x_sk, y_sk = getattr(datasets, f"load_{name}")(return_X_y=True)
    assert x.dtype == x_sk.dtype == np.float64 and y.dtype == y_sk.dtype
    assert np.array_equal(x, x_sk) and np.array_equal(y, y_sk)


def test_loading_digits_imports_neither_scikit_learn_nor_scipy() -> None:
    code = (
        "import sys\n"
        "from nettrain.data import load_dataset\n"
        "d = load_dataset('digits', seed=0)\n"
        "assert d.x_train.shape[1:] == (1, 8, 8), d.x_train.shape\n"
        "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"


def test_an_unknown_name_is_a_data_error() -> None:
    with pytest.raises(DataError, match="bundles no data set 'mnist'"):
        read_bundled("mnist")
