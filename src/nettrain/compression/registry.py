"""Compressors by name, for configuration files and the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nettrain.compression.base import Compressor
from nettrain.compression.dense import HalfPrecision, Identity
from nettrain.compression.lattice import DEFAULT_EPS, Lattice
from nettrain.compression.qsgd import QSGD
from nettrain.compression.topk import TopK
from nettrain.errors import ConfigError

COMPRESSORS: dict[str, type[Compressor[Any]]] = {
    "none": Identity,
    "fp16": HalfPrecision,
    "bf16": HalfPrecision,
    "qsgd": QSGD,
    "topk": TopK,
    "lattice": Lattice,
}


@dataclass(frozen=True)
class _Options:
    bits: int
    eps: float
    k_ratio: float
    norm: str
    bucket: int


_BUILDERS: dict[str, Callable[[_Options], Compressor[Any]]] = {
    "none": lambda o: Identity(),
    "fp16": lambda o: HalfPrecision(torch.float16),
    "bf16": lambda o: HalfPrecision(torch.bfloat16),
    "qsgd": lambda o: QSGD(bits=o.bits, norm=o.norm, bucket=o.bucket),
    "topk": lambda o: TopK(ratio=o.k_ratio),
    "lattice": lambda o: Lattice.with_bits(o.bits, eps=o.eps),
}


def build_compressor(
    name: str,
    *,
    bits: int = 8,
    eps: float = DEFAULT_EPS,
    k_ratio: float = 0.01,
    norm: str = "l2",
    bucket: int = 0,
) -> Compressor[Any]:
    """The compressor called ``name``; options a compressor does not use are ignored.

    Args:
        name: one of :data:`COMPRESSORS`.
        bits: ``lattice``: bits a coordinate, ``q = 2^bits``, 1..16 (8 is SwarmSGD's
            aggressive setting, 16 its default); ``qsgd``: magnitude bits besides the sign,
            1..16. Default 8.
        eps: ``lattice`` step, > 0 (decoding error <= eps/2). Default 1e-3.
        k_ratio: ``topk`` fraction of coordinates kept, in (0, 1]. Default 0.01, the
            1% sparsity common in the top-k literature.
        norm: ``qsgd`` scaling, ``"l2"`` (the paper's) or ``"linf"``.
        bucket: ``qsgd`` coordinates that share one scale, >= 0; 0 (default) = one scale
            for the whole row, 512 in the QSGD paper's experiments.

    Raises:
        ConfigError: unknown ``name``, or an option out of range for that compressor.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"compressor={name!r} is unknown; choose one of {', '.join(COMPRESSORS)}")
    return _BUILDERS[name](_Options(bits=bits, eps=eps, k_ratio=k_ratio, norm=norm, bucket=bucket))
