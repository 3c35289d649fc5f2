"""scikit-learn's bundled sets read from its files equal its own loaders', bit for bit
(that a process loading one does not import scikit-learn: ``tests/test_start_up.py``)."""

from __future__ import annotations

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


def test_an_unknown_name_is_a_data_error() -> None:
    with pytest.raises(DataError, match="bundles no data set 'mnist'"):
        read_bundled("mnist")
