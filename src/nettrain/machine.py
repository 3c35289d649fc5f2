"""What this process may run on: the cores it is allowed, which engines and commands
compare with the processes they start (several processes a core share it, and every
figure they time includes the wait for it)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform keeps one
    (Linux: a container's or ``taskset``'s limit), else the machine's count; at least 1."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
