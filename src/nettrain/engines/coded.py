"""Mixing and averaging of encoded rows: the decoding both engines share.

A compressed exchange sends each agent's payload ``p_j = encode(x_j)`` and each
receiver ``i`` decodes it against its own ``x_i`` (the lattice quantiser's reference;
other compressors ignore it). The simulator holds every payload; a process of the
distributed engine holds its own agents' and those it received. Both call these
functions with the payloads it holds and the receivers' rows ``x: (m, d)``, so a
process computes exactly the rows of the simulator's result that it holds.
"""

from __future__ import annotations

from typing import Any

import torch

from nettrain.compression import Compressor
from nettrain.compression.payloads import reads_reference, take_rows

DECODE_CHUNK = 1 << 22  # decoded elements held at once by a compressed mix


def decode_mix(
    x: torch.Tensor,
    payload: Any,
    compressor: Compressor[Any],
    edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    diagonal: torch.Tensor,
) -> torch.Tensor:
    """``W_ii x_i + sum_{j != i} W_ij decode(p_j, x_i)`` for the receivers ``x: (m, d)``.

    ``edges = (recv, send, w)``: for each edge ``j -> i`` (``i != j``) the receiver's row
    of ``x``, the sender's row of ``payload`` and ``W_ij``; ``diagonal: (m,)`` is ``W_ii``.
    One row is decoded per edge against the receiver's ``x_i`` (once per sender when
    decoding ignores the reference), in chunks of at most ``DECODE_CHUNK`` elements.
    """
    recv, send, w = (e.to(x.device) for e in edges)
    w = w.to(x.dtype)
    out = x * diagonal.to(device=x.device, dtype=x.dtype)[:, None]  # (m, d)
    decoded = None if reads_reference(compressor) else compressor.decode(payload)
    step = max(1, DECODE_CHUNK // max(1, x.shape[1]))
    for a in range(0, len(recv), step):
        r, s = recv[a : a + step], send[a : a + step]
        # (e, d): each receiver decodes against its own x_i, or the shared decoding
        got = compressor.decode(take_rows(payload, s), x[r]) if decoded is None else decoded[s]
        out.index_add_(0, r, got * w[a : a + step, None])
    return out


def decode_mean(x: torch.Tensor, payload: Any, compressor: Compressor[Any], n: int) -> torch.Tensor:
    """``(1/n) sum_j decode(p_j, x_i)`` for the receivers ``x: (m, d)``, given every
    agent's payload (``n`` rows, in agent order), summed in ascending ``j``."""
    if not reads_reference(compressor):
        decoded = compressor.decode(payload)  # (n, d), the same for every receiver
        total = torch.zeros_like(x[:1])
        for j in range(n):
            total += decoded[j : j + 1]
        return (total / n).expand_as(x).clone()
    total = torch.zeros_like(x)  # (m, d)
    for j in range(n):  # every receiver decodes p_j against its own x_i
        senders = torch.full((len(x),), j, dtype=torch.int64, device=x.device)
        total += compressor.decode(take_rows(payload, senders), x)
    return total / n
