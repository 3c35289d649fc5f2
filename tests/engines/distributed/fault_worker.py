"""One process of the fault tests: several ``nettrain`` runs in a row, or one that dies.

``python fault_worker.py RUN_JSON...`` with the launcher's environment (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``); each ``RUN_JSON`` is ``{"port": P, "args": [...]}``:
the command line of ``nettrain`` (``run engine=distributed ...``), run with
``MASTER_PORT=P`` in this process (one torch import for several runs). The worker stops
at the first run that fails and exits with its code.

With ``KILL_AT=RANK:EVENT``, the process of rank ``RANK`` kills itself with SIGKILL (no
cleanup, no last word, as when a machine is lost) when it starts its ``EVENT``-th
event (1-based; counted where the distributed engine draws an event's partner): every
rank is past the start by then and the others are mid-run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys

from nettrain.cli import main
from nettrain.engines.draws import Draws


def kill_at(event: int) -> None:
    """SIGKILL this process when the engine draws its ``event``-th partner."""
    calls = itertools.count(1)
    partner = Draws.partner

    def dying(self: Draws) -> int:
        if next(calls) == event:
            os.kill(os.getpid(), signal.SIGKILL)
        return partner(self)

    Draws.partner = dying  # type: ignore[method-assign]


def run_all(runs: list[str]) -> int:
    for text in runs:
        spec = json.loads(text)
        os.environ["MASTER_PORT"] = str(spec["port"])
        code = main(spec["args"])
        print(f"fault_worker: exit {code}", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    if "KILL_AT" in os.environ:
        rank, event = map(int, os.environ["KILL_AT"].split(":"))
        if int(os.environ["RANK"]) == rank:
            kill_at(event)
    sys.exit(run_all(sys.argv[1:]))
