"""Start the processes of a run on this machine: ``nettrain run ... nproc=P``.

Each process is ``python -m nettrain ARGUMENTS`` with the variables a launcher sets
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) and one thread (``OMP_NUM_THREADS=1``: the processes share this
machine's cores). The launcher itself hosts the rendezvous store, bound to
``master_addr`` only (:func:`~nettrain.engines.distributed.store.open_store`), and
tells the ranks so (``NETTRAIN_STORE_HOSTED=1``): the store outlives any rank, rank 0
included. torchrun's agent would host its own store on every interface, so a run on
one machine does not go through it.

Every process runs to its end: a rank that dies does not take the others down, so an
asynchronous run carries on without a dead worker, rank 0 included (the engine names
it in ``crashed_ranks``), and a synchronous one stops with the engine's error naming it.
With ``restarts=N`` (a gossip run: the configuration implies ``rejoin=true``) a process
killed by a signal while others still run is started again, with the same command and
rank, at most ``N`` times in all; it rejoins the run (:mod:`.events`). The exit status is
the first non-zero status of a rank's last process, else 0. SIGINT and SIGTERM sent to
the launcher are passed on to every process still running, and end the restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from nettrain.engines.distributed.store import HOSTED, open_store

FORWARDED = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.2  # between two looks at the processes, while restarts are left


def rank_variables(rank: int, nproc: int) -> dict[str, str]:
    """Who rank ``rank`` of ``nproc`` processes on this machine is, as torchrun says it
    (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``)."""
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": nproc, "LOCAL_WORLD_SIZE": nproc}
    return {name: str(value) for name, value in ranks.items()}


def rank_environment(rank: int, nproc: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The environment of rank ``rank`` of ``nproc`` processes on this machine."""
    return (
        os.environ
        | rank_variables(rank, nproc)
        | {
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "OMP_NUM_THREADS": "1",
            HOSTED: "1",
        }
    )


def launch_local(
    nproc: int,
    arguments: Sequence[str],
    master_addr: str,
    master_port: int,
    timeout_s: float,
    restarts: int = 0,
    command: Sequence[str] = (sys.executable, "-m", "nettrain"),
) -> int:
    """Run ``COMMAND ARGUMENTS`` (``python -m nettrain ...``) as ranks ``0 .. nproc - 1``
    on this machine, hosting their rendezvous store, and wait for all of them, starting
    a rank killed by a signal again at most ``restarts`` times in all (module docstring);
    the first non-zero exit status of a rank's last process, else 0."""
    store = open_store(master_addr, master_port, nproc, True, timeout_s)  # noqa: F841 (held open)
    line = [*command, *arguments]

    def start(rank: int) -> subprocess.Popen:
        return subprocess.Popen(line, env=rank_environment(rank, nproc, master_addr, master_port))

    processes = [start(r) for r in range(nproc)]
    stopping = threading.Event()

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        for p in processes:
            if p.poll() is None:
                p.send_signal(signum)

    main = threading.current_thread() is threading.main_thread()  # where handlers may be set
    before = {s: signal.signal(s, forward) for s in FORWARDED} if main else {}
    try:
        while restarts and not stopping.is_set():
            codes = [p.poll() for p in processes]
            if all(c is not None for c in codes):
                break
            for rank, code in enumerate(codes):
                if restarts and code is not None and code < 0 and not stopping.is_set():
                    print(
                        f"nettrain: rank {rank} was killed (signal {-code}); starting it again",
                        file=sys.stderr,
                        flush=True,
                    )
                    processes[rank], restarts = start(rank), restarts - 1
            stopping.wait(POLL_S)
        codes = [p.wait() for p in processes]
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    return next((c for c in codes if c != 0), 0)
