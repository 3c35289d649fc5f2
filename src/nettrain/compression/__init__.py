"""Compression of the vectors agents send: models or gradients, a stack ``x: (m, d)`` at once.

A :class:`Compressor` has ``encode(x, ref) -> payload``, ``decode(payload, ref) -> x_hat``
and ``nbytes(payload) -> (m,)`` exact bytes a row; see :mod:`nettrain.compression.base`.
Build one by name with :func:`build_compressor`::

    comp = build_compressor("lattice", bits=8, eps=1e-3)
    x_hat, nbytes = comp.roundtrip(x, ref)   # |x_hat - x| <= eps/2 if |x - ref| < comp.radius

==========  ===================================  ============================  ===============
name        rule                                 bytes a row                   source
==========  ===================================  ============================  ===============
``none``    ``x_hat = x``                        ``element_size * d``
``fp16``    round to IEEE half                   ``2 d``
``bf16``    round to bfloat16                    ``2 d``
``qsgd``    unbiased stochastic ``b``-bit        ``ceil(d (b+1) / 8) + 4``     Alistarh+ 2017
            levels of ``||x||``
``topk``    keep the ``k`` largest ``|x_i|``     ``k (element_size + 4)``      Stich+ 2018
``lattice`` ``round(x/eps) mod q``, decoded      ``ceil(d ceil(log2 q) / 8)``  Nadiradze+ 2021
            nearest the reference
==========  ===================================  ============================  ===============

Error feedback (:func:`ef_init`, :func:`ef_step`, :class:`ErrorFeedback`) wraps any of
them for gradients with an explicit residual state; runs send through it with the
communicator :class:`nettrain.wrappers.ErrorFeedback`, which keeps that residual.

Modules: :mod:`~nettrain.compression.base` (interface, byte helpers),
:mod:`~nettrain.compression.dense` (none, fp16, bf16), :mod:`~nettrain.compression.qsgd`,
:mod:`~nettrain.compression.topk`, :mod:`~nettrain.compression.lattice`,
:mod:`~nettrain.compression.error_feedback`, :mod:`~nettrain.compression.registry`.
"""

from __future__ import annotations

from nettrain.compression.base import Compressor
from nettrain.compression.dense import DensePayload, HalfPrecision, Identity
from nettrain.compression.error_feedback import EFState, ErrorFeedback, ef_init, ef_step
from nettrain.compression.lattice import Lattice, LatticePayload
from nettrain.compression.qsgd import QSGD, QSGDPayload
from nettrain.compression.registry import COMPRESSORS, build_compressor
from nettrain.compression.topk import SparsePayload, TopK

__all__ = [
    "COMPRESSORS",
    "QSGD",
    "Compressor",
    "DensePayload",
    "EFState",
    "ErrorFeedback",
    "HalfPrecision",
    "Identity",
    "Lattice",
    "LatticePayload",
    "QSGDPayload",
    "SparsePayload",
    "TopK",
    "build_compressor",
    "ef_init",
    "ef_step",
]
