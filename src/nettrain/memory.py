"""The process's memory: the allocator's policy, and the peak of a run.

Allocator (``summary.json``'s ``allocator``): a simulator round allocates a few tensors
of ``(n, d)`` (the gradients, the mixed parameters), megabytes to gigabytes each. By
default glibc serves each of them with a fresh ``mmap`` and unmaps it when it is freed,
so every round the kernel faults in and zeroes those pages again, which costs more than
the arithmetic on them (1.3x to 3x a round, benchmarks/README.md).
:func:`retain_freed_memory` (called by every ``nettrain.run``, so by the CLI too)
sets glibc's ``M_MMAP_MAX = 0`` and ``M_TRIM_THRESHOLD = 2 GiB``: big blocks come from
the heap and freed ones are reused, not returned to the kernel. The process's resident
memory then stays near the run's peak until the next run starts (which trims the
heap) or the process exits. Without glibc nothing changes and the record says
``system``.

Peak (``peak_memory_mb``): on Linux the peak resident set size of this process
(``VmHWM`` in ``/proc/self/status``) is reset when a run starts (writing ``5`` to
``/proc/self/clear_refs``), so the figure is the run's own even when one process runs
several (``compare``, ``reproduce``); where the reset is not allowed it is the
process's peak so far (``ru_maxrss``). With CUDA, the peak of the memory torch
allocated on the current device is given too (``peak_cuda_memory_mb``), reset at the
same point. It is the memory of the process that writes the summary: rank 0's under
``engine=distributed``, the main process's (not its workers') under
``engine=shared_memory``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from contextlib import suppress
from functools import cache
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "gnu_get_libc_version") else None


@cache
def retain_freed_memory() -> str:
    """Keep freed memory in the heap for reuse (see the module docstring); once per
    process. ``"retain"`` when glibc took the setting, else ``"system"``."""
    libc = _glibc()
    if libc is None:
        return "system"
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    return "retain" if ok else "system"


def reset_peak() -> None:
    """Start measuring the peak from now (best effort: see the module docstring), after
    handing the memory the heap retains back to the kernel (glibc's ``malloc_trim``), so
    that a previous run's freed memory does not count in this run's peak."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
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
