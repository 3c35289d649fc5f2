"""Plain processes of a distributed run for the tests that kill some of them.

No torchrun: its agent would stop every process as soon as one dies. Each process runs
``fault_worker.py`` (several ``nettrain`` runs in a row) with the environment a
launcher sets, and writes its own log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port

WORKER = Path(__file__).with_name("fault_worker.py")


@dataclass
class Launch:
    """``world`` worker processes, one log each."""

    procs: list[subprocess.Popen]
    logs: list[Path]

    def text(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def spec(*args: str) -> str:
    """One run of the worker: the ``nettrain`` command line ``args``, on a free port."""
    return json.dumps({"port": free_port(), "args": list(args)})


def launch(
    folder: Path,
    runs: list[str],
    world: int,
    kill: str | None = None,
    tag: str = "rank",
    extra: dict[str, str] | None = None,
) -> Launch:
    """Start ``world`` processes of the worker with ``runs`` (logs ``<tag><rank>.log`` in
    ``folder``), with ``extra`` added to their environment; ``kill``: ``RANK:EVENT``, that
    rank kills itself at that event."""
    procs, logs = [], []
    for rank in range(world):
        env = (
            os.environ
            | (extra or {})
            | {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "OMP_NUM_THREADS": "1",
            }
        )
        if kill is not None:
            env["KILL_AT"] = kill
        logs.append(folder / f"{tag}{rank}.log")
        with open(logs[-1], "wb") as sink:
            command = [sys.executable, str(WORKER), *runs]
            procs.append(subprocess.Popen(command, env=env, stdout=sink, stderr=sink))
    return Launch(procs, logs)
