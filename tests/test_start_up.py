"""What a process of a run imports before it draws anything: no matplotlib, no
scikit-learn, no SciPy. Each would add 0.3 to 2 s of CPU to the start of every process
of a distributed run (most of them never draw); a run's plots import matplotlib when
they are drawn, and the small data sets are read from scikit-learn's files
(:mod:`nettrain.data.bundled`)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("matplotlib", "sklearn", "scipy")

# what `python -m nettrain run engine=distributed ...` imports, then the digits loaded
PROGRAM = f"""
import sys
import nettrain.cli, nettrain.experiment, nettrain.engines.distributed.engine
from nettrain.data import load_dataset
data = load_dataset("digits", seed=0)
assert data.x_train.shape[1:] == (1, 8, 8), data.x_train.shape
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_a_run_process_starts_without_plotting_or_scikit_learn() -> None:
    shown = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"
