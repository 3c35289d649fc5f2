"""Start-up time of the command line: the wall time of ``nettrain --help``.

Each repetition starts a fresh interpreter (``python -m nettrain --help``), so the
figure is what a user waits for: interpreter start, nettrain's imports and the parser.
The command line imports torch, matplotlib and the experiment only when a command needs
them, so the help answers without loading them; ``nettrain --version`` and
``nettrain topology --help`` are timed beside it (they do import torch). Printed: each
command's median over ``--repeat`` runs (and the fastest and slowest). Target:
``nettrain --help`` under 1 s.

Command (a few seconds; more with torch's imports on a cold disk)::

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "nettrain --help": ["--help"],
    "nettrain --version": ["--version"],
    "nettrain topology --help": ["topology", "--help"],
}


def wall_time(arguments: list[str]) -> float:
    """Seconds one ``python -m nettrain ARGUMENTS`` takes, start to exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nettrain", *arguments], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command")
    args = parser.parse_args()
    for name, arguments in COMMANDS.items():
        times = sorted(wall_time(arguments) for _ in range(args.repeat))
        print(
            f"{name:<26} median {statistics.median(times):.3f} s "
            f"(min {times[0]:.3f}, max {times[-1]:.3f}, {args.repeat} runs)"
        )


if __name__ == "__main__":
    main()
