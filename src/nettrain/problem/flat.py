"""Flat parameter vectors: one agent's parameters are one vector ``x: (d,)``.

A stack of agents is ``x: (m, d)``. Mixing is then ``W @ x``, a compressor works on
one tensor, and the distributed engine sends one buffer. The model only ever sees
views of that vector, produced by :meth:`FlatSpec.unflatten` (``torch.split`` +
``view``, no copy), so ``torch.func.functional_call`` can run it under ``vmap``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from nettrain.errors import ConfigError


@dataclass(frozen=True)
class FlatSpec:
    """Names, shapes and sizes of a module's parameters, in ``named_parameters`` order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module) -> FlatSpec:
        named = list(module.named_parameters())
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(p.shape for _, p in named),
            numels=tuple(p.numel() for _, p in named),
        )

    @property
    def dim(self) -> int:
        """Length ``d`` of the flat vector."""
        return sum(self.numels)

    @functools.cached_property
    def slices(self) -> tuple[slice, ...]:
        """The columns of each parameter in the flat vector, in flat order (computed once)."""
        ends = list(itertools.accumulate(self.numels, initial=0))
        return tuple(slice(a, b) for a, b in itertools.pairwise(ends))

    @functools.cached_property
    def _columns(self) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...], int], ...]:
        """Each parameter's name, shape, strides within a row and first column."""
        out = []
        for name, shape, cols in zip(self.names, self.shapes, self.slices, strict=True):
            strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
            out.append((name, tuple(shape), strides, cols.start))
        return tuple(out)

    def stacked(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views ``{name: (k, *shape)}`` of the parameters' columns of a stack ``x: (k, d)``,
        each by one ``as_strided``: half the dispatch of ``split`` and ``view`` (4 against
        10 us for a 4-parameter MLP), which a small model's round notices. For arithmetic
        without autograd (the written-out backward pass): the backward of
        ``as_strided`` is slower than that of ``split``."""
        k, (row, col), base = x.shape[0], x.stride(), x.storage_offset()
        return {
            name: x.as_strided((k, *shape), (row, *(s * col for s in strides)), base + a * col)
            for name, shape, strides, a in self._columns
        }

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``x: (d,)`` shaped like the module's parameters."""
        parts = torch.split(x, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters concatenated into one detached vector ``(d,)``."""
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def load_into(self, module: nn.Module, x: torch.Tensor) -> None:
        """Copy ``x: (d,)`` into the module's parameters (for export to plain PyTorch)."""
        with torch.no_grad():
            for p, v in zip(module.parameters(), self.unflatten(x).values(), strict=True):
                p.copy_(v)

    def __repr__(self) -> str:
        layers = ", ".join(f"{n}{tuple(s)}" for n, s in zip(self.names, self.shapes, strict=True))
        return f"FlatSpec(d={self.dim}: {layers})"


def matmul_flops_per_sample(spec: FlatSpec) -> int:
    """Multiply-adds of the forward pass's weight matrices, counted as 2 FLOPs each.

    Exact for an MLP (each weight is used once per sample); a lower bound for a CNN.
    Forward plus backward costs about three times this.
    """
    return sum(2 * math.prod(s) for s in spec.shapes if len(s) == 2)


def block_slices(d: int, blocks: int) -> list[slice]:
    """``blocks`` contiguous slices that cover ``range(d)``, sizes differing by at most one.

    Block ``b`` is ``[floor(b d / blocks), floor((b + 1) d / blocks))``: exact integer
    arithmetic, so the ``d mod blocks`` blocks one longer than ``floor(d / blocks)`` are
    spread over the vector (the last block is always one of them when ``d mod blocks``
    is not 0). The one splitter of NEXT's block-parallel step, the blocks of
    block-asynchronous SGD and the parameter servers' slices of the centre.
    """
    if blocks < 1:
        raise ConfigError(f"blocks must be >= 1, got {blocks}")
    if blocks > d:
        raise ConfigError(f"blocks={blocks} is more than the {d} parameters; use blocks <= {d}")
    return [slice(b * d // blocks, (b + 1) * d // blocks) for b in range(blocks)]
