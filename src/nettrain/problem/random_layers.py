"""Dropout with a random stream per agent, under ``vmap`` and without it alike.

The oracle evaluates a stack of agents in one ``torch.func.vmap`` call; torch's own
dropout would then draw from one global generator (``randomness="different"``), so
an agent's masks would depend on how many agents share its process. nettrain swaps
every ``nn.Dropout``/``Dropout1d``/``Dropout2d``/``Dropout3d`` of its copy of the
model for a :class:`SeededDropout` whose mask is a pure function of a per-agent key
and the element's position: a counter-based generator (the SplitMix64 finaliser,
Steele et al. 2014) in int64 tensor arithmetic. The oracle draws each agent's key for
each forward pass from that agent's own generator, seeded by ``(seed, agent)``, so a
run is bit-for-bit deterministic and one agent gets the same masks in the simulator
and in a process of its own. The same generator (:func:`integers53`) draws the
oracle's mini-batch indices.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)

# SplitMix64's constants: the increment ("golden gamma") and the finaliser's multipliers.
_SPLITMIX64 = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
# As signed int64 (torch has no uint64 arithmetic), held as 0-d tensors: torch.compile's
# inductor folds a Python integer times an index (arange) in exact integer arithmetic
# and fails on the overflow; a tensor operand is multiplied at run time, wrapping
# modulo 2^64 like the eager product.
_GOLDEN, _MIX1, _MIX2 = (torch.tensor(c - (1 << 64)) for c in _SPLITMIX64)
# As numpy's uint64, for the CPU's form of integers53.
_U64 = tuple(np.uint64(c) for c in _SPLITMIX64)


def _shift(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 ``z`` by ``s`` bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _finalise(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser of int64 ``z``: ``z ^= z >> 30; z *= c1; z ^= z >> 27;
    z *= c2; z ^= z >> 31`` (logical shifts; products wrap modulo ``2^64``)."""
    z = (z ^ _shift(z, 30)) * _MIX1
    z = (z ^ _shift(z, 27)) * _MIX2
    return z ^ _shift(z, 31)


def uniform_at(key: torch.Tensor, salt: int, positions: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)``, float32, one for each element ``position`` (int64,
    broadcast with ``key``): a pure function of ``(key, salt, position)``.

    ``z = key + (salt * 2^32 + position + 1) * golden``, then SplitMix64's finaliser
    ``z ^= z >> 30; z *= c1; z ^= z >> 27; z *= c2; z ^= z >> 31``; the top 24 bits
    scaled to ``[0, 1)`` (exact, and fine enough for a dropout rate). Integer products
    wrap modulo ``2^64``.
    """
    z = _finalise(key + (positions + (1 + (salt << 32))) * _GOLDEN)
    return _shift(z, 40).to(torch.float32) * 2.0**-24


def uniform(key: torch.Tensor, salt: int, shape: torch.Size) -> torch.Tensor:
    """:func:`uniform_at` of one key at the row-major positions of ``shape``."""
    positions = torch.arange(math.prod(shape), device=key.device)
    return uniform_at(key, salt, positions).reshape(shape)


def integers53(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Uniform integers in ``[0, 2^53)``, ``(k, B)`` int64: a pure function of each row's
    key and each element's counter.

    ``keys: (k,)`` and ``counters: (k, B)`` int64 (counters ``>= 0``). Element ``(j, b)``
    is output number ``counters[j, b]`` of SplitMix64 seeded with ``keys[j]``:
    ``z = keys[j] + (counters[j, b] + 1) * golden``, SplitMix64's finaliser, then the top
    53 bits. Products wrap modulo ``2^64``; nothing depends on the other rows, so a row
    is the same whatever rows are drawn with it.
    """
    if keys.device.type == "cpu" and counters.device.type == "cpu":
        return _integers53_numpy(keys, counters)
    return _integers53_torch(keys, counters)


def _integers53_torch(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """:func:`integers53` in ``int64`` tensor arithmetic, on any device (products wrap
    modulo ``2^64``; the finaliser's right shifts are made logical by :func:`_shift`)."""
    return _shift(_finalise(keys[:, None] + (counters + 1) * _GOLDEN), 11)


def _integers53_numpy(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """:func:`integers53` of CPU tensors, the same arithmetic in numpy's ``uint64``,
    whose right shifts are logical and whose products wrap: a third of the operations'
    dispatch cost of the ``int64`` form for a batch's few hundred draws (10 against 24
    us for 64 agents of 16 samples here)."""
    golden, mix1, mix2 = _U64
    k = keys.numpy().view(np.uint64)[:, None]
    z = k + (counters.numpy().view(np.uint64) + np.uint64(1)) * golden
    z = (z ^ (z >> np.uint64(30))) * mix1
    z = (z ^ (z >> np.uint64(27))) * mix2
    z ^= z >> np.uint64(31)
    return torch.from_numpy((z >> np.uint64(11)).view(np.int64))


class SeededDropout(nn.Module):
    """Dropout whose mask comes from :attr:`key` (set by the oracle for each pass).

    ``y = x * mask / (1 - p)`` with ``mask = uniform(key, salt) >= p`` (``y = 0`` at
    ``p = 1``), drawn per element
    (``channels=False``, ``nn.Dropout``) or per channel (``Dropout1d/2d/3d``: one draw for
    each ``(sample, channel)``). With no key (a module used outside the oracle) it is
    torch's dropout on the global generator.
    """

    def __init__(self, original: nn.Module, salt: int) -> None:
        super().__init__()
        self.p, self.salt = float(original.p), salt
        self.channels = not isinstance(original, nn.Dropout)
        self.fallback = original  # torch's own layer, for passes without a key
        self.key: torch.Tensor | None = None  # () int64, the agent's key for this pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.key is None:
            return self.fallback(x)
        shape = x.shape[:2] + (1,) * (x.dim() - 2) if self.channels else x.shape
        return self.masked(x, uniform(self.key, self.salt, shape))

    def masked(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """``x * [u >= p] / (1 - p)`` for uniforms ``u`` broadcast to ``x``; zeros at
        ``p = 1``, as torch's dropout (not ``0 / 0``); ``x`` itself without uniforms (the
        layer off: :func:`~nettrain.problem.batched.dropout_uniforms` gave none)."""
        if u is None:
            return x
        if self.p == 1:
            return torch.zeros_like(x)
        return x * (u >= self.p).to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={self.salt}, channels={self.channels}"


def seeded(model: nn.Module) -> tuple[nn.Module, tuple[SeededDropout, ...]]:
    """A copy of ``model`` whose dropout layers are :class:`SeededDropout`s (and them).

    The copy has the same parameters and buffers under the same names; the model given
    is left as it is.
    """
    if not any(isinstance(m, DROPOUTS) for m in model.modules()):
        return model, ()
    out = copy.deepcopy(model)
    layers: list[SeededDropout] = []
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DROPOUTS):
                layer = SeededDropout(child, len(layers))
                layer.train(child.training)
                setattr(parent, name, layer)
                layers.append(layer)
    return out, tuple(layers)
