"""How the oracle runs, not what it computes: agents per pass, the memory budget that
sizes them, and compilation (:class:`Execution`, the run's ``chunk_agents``,
``memory_gb`` and ``compile``).

Agents are taken a chunk at a time; with ``chunk_agents=auto`` a chunk holds as many
agents as fit in the budget (:func:`free_memory`), each costing
:meth:`Oracle.pass_bytes <nettrain.problem.oracle.Oracle.pass_bytes>`, measured on one
real pass of one agent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from nettrain.errors import ConfigError


@dataclass(frozen=True)
class Execution:
    """How the oracle runs, not what it computes: agents per pass, memory budget and
    compilation.

    ``chunk_agents``: ``"auto"`` sizes the chunks from ``memory_gb`` (0 = a quarter of
    the memory free when the oracle is built: the device's on CUDA, the machine's
    available memory on the CPU), or a number of agents per pass. Chunks give the same
    numbers as one pass (each agent's arithmetic is its own); they bound the activation
    memory of a round by one chunk's.

    ``compile``: the gradient kernel of a stack of agents runs compiled by
    ``torch.compile`` (:mod:`~nettrain.problem.compiled`): the batched model's losses and
    gradients as one graph (``torch.func.grad_and_value``), or the vmapped
    ``grad_and_value`` of any other model (one agent's kernel stays eager). The first
    call of each shape compiles (on the 2-core CPU: about 18 s in a fresh process, 5 s
    when inductor's on-disk cache holds the graph); the numbers equal the eager
    kernel's to rounding (1e-6 in float32). Where compilation fails the oracle warns
    once and runs eagerly. Off by default: per round it was 1.1-1.5x faster on the CPU
    in most runs but not in every run at every n, and the compilation makes a run of
    the default 300 rounds slower at every n (``benchmarks/compile_oracle.py``).
    """

    chunk_agents: int | str = "auto"
    memory_gb: float = 0.0
    compile: bool = False

    @classmethod
    def parse(cls, chunk_agents: str, memory_gb: float, compile: bool = False) -> Execution:
        """From the config's text: ``chunk_agents`` is ``auto`` or a whole number."""
        text = chunk_agents.strip()
        return cls(int(text) if text.isdigit() else text, memory_gb, compile)

    def __post_init__(self) -> None:
        auto = self.chunk_agents == "auto"
        if not auto and not (isinstance(self.chunk_agents, int) and self.chunk_agents >= 1):
            raise ConfigError(
                f"chunk_agents must be auto or a number of agents >= 1, got {self.chunk_agents!r}"
            )
        if self.memory_gb < 0:
            raise ConfigError(
                f"memory_gb must be >= 0 (0 = a quarter of free memory), got {self.memory_gb}"
            )
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors: the CUDA device's free memory, or the machine's
    available memory (``MemAvailable``, else free pages)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
