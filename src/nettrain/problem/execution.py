"""How the oracle runs, not what it computes: agents per pass, the memory budget that
sizes them, and compilation (:class:`Execution`, the run's ``chunk_agents``,
``memory_gb`` and ``compile``).

Agents are taken a chunk at a time; with ``chunk_agents=auto`` a chunk holds as many
agents as fit in the budget (:func:`free_memory`), each costing
:meth:`Oracle.pass_bytes <nettrain.problem.oracle.Oracle.pass_bytes>`, measured on one
real pass of one agent; for a model with convolutions on the CPU, at most as many as
fit in twice its last-level cache (:func:`last_level_cache`) and in
:data:`CONVOLUTION_CHUNK_BYTES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from nettrain.errors import ConfigError


@dataclass(frozen=True)
class Execution:
    """How the oracle runs, not what it computes: agents per pass, memory budget and
    compilation.

    ``chunk_agents``: ``"auto"`` sizes the chunks from ``memory_gb`` (0 = a quarter of
    the memory free when the oracle is built: the device's on CUDA, the machine's
    available memory on the CPU), or a number of agents per pass. Chunks give the same
    numbers as one pass in float64 (each agent's arithmetic is its own; in float32 a
    convolution's CPU kernel, picked by the channels of the pass, can change the last
    bits); they bound the activation memory of a round by one chunk's. For a model with
    convolutions on the CPU ``auto`` also keeps a chunk within twice the last-level
    cache and within :data:`CONVOLUTION_CHUNK_BYTES`: a convolution's activations are
    many times its parameters, and the small CNN's round of 64 agents ran 1.4x as fast
    in chunks of 4 to 8 agents (40 to 80 MB by ``pass_bytes``) as in one pass on a CPU
    with a 32 MB cache, and 1.3x as fast in chunks of 13 to 17 (130 to 170 MB) on one
    that lists a 300 MB cache shared with the server's other cores. MLPs ran alike in
    chunks or not, so they keep the memory budget alone (``benchmarks/sim_throughput.py``).

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

    ``native``: on the CPU a CNN's convolutions that a max-pooling follows run through C
    kernels (:mod:`~nettrain.problem.native`, compiled on first use; same numbers to
    rounding): a first convolution, its 2x2 pooling and ReLU in one pass, any other's
    backward pass from the pooled gradient alone. Off: torch's kernels.
    """

    chunk_agents: int | str = "auto"
    memory_gb: float = 0.0
    compile: bool = False
    native: bool = True

    @classmethod
    def parse(
        cls, chunk_agents: str, memory_gb: float, compile: bool = False, native: bool = True
    ) -> Execution:
        """From the config's text: ``chunk_agents`` is ``auto`` or a whole number."""
        text = chunk_agents.strip()
        return cls(int(text) if text.isdigit() else text, memory_gb, compile, native)

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
        for name in ("compile", "native"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")


# The most activations (by Oracle.pass_bytes) a chunk of a model with convolutions
# holds on the CPU, whatever cache the CPU lists: the small CNN ran fastest at 80 to 170
# MB a chunk on a CPU listing 300 MB (batches of 16, 32 and 64), slower above.
CONVOLUTION_CHUNK_BYTES = 160 * 2**20

UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}  # of the sizes Linux lists for caches


def last_level_cache(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Bytes of the CPU's last-level cache: the highest level listed under ``root``
    (Linux's ``index*/level`` and ``index*/size``, sizes like ``32768K``), or 0 where it
    lists none."""
    sizes = {}
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "")
        if number.isdigit():
            sizes[level] = int(number) * UNITS.get(unit, 1)
    return sizes[max(sizes)] if sizes else 0


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
