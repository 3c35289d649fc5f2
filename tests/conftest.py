"""Suite-wide pytest hooks.

Only one, for `make mutants` (docs/testing.md): mutmut runs each mutant's tests with
`-x`, so a killed mutant costs the tests run before the first that fails. Its fork-server
workers pass them in no particular order; here they run fastest first, by the durations
mutmut measured. Without a mutant under test (`make test`) the order is pytest's own.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    from mutmut.state import state  # present only in the mutation venv

    durations = state().duration_by_test
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
