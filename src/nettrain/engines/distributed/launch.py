"""Start the processes of a run on this machine: ``nettrain run ... nproc=P``.

Each process is ``python -m nettrain ARGUMENTS`` with the variables a launcher sets
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) and one thread (``OMP_NUM_THREADS=1``: the processes share this
machine's cores). Rank 0 hosts the rendezvous store, bound to ``master_addr`` only
(:func:`~nettrain.engines.distributed.store.open_store`); torchrun's agent would host
its own store on every interface, so a run on one machine does not go through it.

Every process runs to its end: a rank that dies does not take the others down, so an
asynchronous run carries on without a dead worker (the engine names it in
``crashed_ranks``) and a synchronous one stops with the engine's error naming it. The
exit status is the first non-zero status of a rank, else 0. Ctrl-C (SIGINT) reaches
every process; they get ``GRACE_S`` seconds to stop before they are killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

GRACE_S = 10.0


def rank_environment(rank: int, nproc: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The environment of rank ``rank`` of ``nproc`` processes on this machine."""
    return os.environ | {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "OMP_NUM_THREADS": "1",
    }


def launch_local(nproc: int, arguments: Sequence[str], master_addr: str, master_port: int) -> int:
    """Run ``python -m nettrain ARGUMENTS`` as ranks ``0 .. nproc - 1`` on this machine
    and wait for all of them; the first non-zero exit status of a rank, else 0."""
    command = [sys.executable, "-m", "nettrain", *arguments]
    processes = [
        subprocess.Popen(command, env=rank_environment(r, nproc, master_addr, master_port))
        for r in range(nproc)
    ]
    try:
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:  # the terminal sent SIGINT to every process already
        codes = [_stop(p) for p in processes]
    return next((c for c in codes if c != 0), 0)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Its exit status, once it has stopped: within ``GRACE_S``, or killed."""
    try:
        return process.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
