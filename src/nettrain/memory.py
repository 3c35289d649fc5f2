"""The peak memory of a run, for ``summary.json`` (``peak_memory_mb``).

On Linux the peak resident set size of this process (``VmHWM`` in ``/proc/self/status``)
is reset when a run starts (writing ``5`` to ``/proc/self/clear_refs``), so the figure
is the run's own even when one process runs several (``compare``, ``reproduce``);
where the reset is not allowed it is the process's peak so far (``ru_maxrss``). With
CUDA, the peak of the memory torch allocated on the current device is given too
(``peak_cuda_memory_mb``), reset at the same point. It is the memory of the process
that writes the summary: rank 0's under ``engine=distributed``, the main process's (not
its workers') under ``engine=shared_memory``.
"""

from __future__ import annotations

import resource
from contextlib import suppress
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak() -> None:
    """Start measuring the peak from now (best effort: see the module docstring)."""
    with suppress(OSError):
        CLEAR_REFS.write_text("5")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict[str, float]:
    """``peak_memory_mb`` (resident, MiB) and, with CUDA, ``peak_cuda_memory_mb``."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        lines = STATUS.read_text().splitlines()
        kib = next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    out = {"peak_memory_mb": round(kib / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
