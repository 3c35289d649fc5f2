"""An algorithm's state between the rows one process holds and every agent's.

A process holds the state of its ``m`` agents, every tensor with a leading axis of
length ``m`` (1 in a rank of the distributed engine); records and checkpoints need
every agent's, with the axis of length ``n`` the simulator has. These functions gather
(:func:`gather_state`, :func:`gather_buffers`), stack states handed over otherwise
(:func:`stack_states`, :func:`stack_buffers`) and take a process's rows back
(:func:`own_rows`), nested dataclasses included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from nettrain.problem.buffers import Buffers, BufferSpec


def gather_buffers(
    spec: BufferSpec, buffers: Buffers, gather: Callable[[torch.Tensor], torch.Tensor]
) -> Buffers | None:
    """Every agent's buffers ``{name: (n, ...)}`` from each process's ``(m, ...)``, sent
    as one flat float64 row an agent (exact for counters); None for a model without
    buffers."""
    if not spec:
        return None
    device = next(iter(buffers.values())).device
    return spec.unflatten(gather(spec.flatten(buffers).to(device)))


def stack_buffers(parts: list[Buffers]) -> Buffers | None:
    """One ``{name: (k, ...)}`` from ranks' ``(m_r, ...)`` buffers handed over whole
    (``k = sum_r m_r``)."""
    if not parts or not parts[0]:
        return None
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _map_rows(
    fn: Callable[[list[torch.Tensor]], torch.Tensor], states: list[Any], n: int | None
) -> Any:
    """``states[0]`` with ``fn([s.f for s in states])`` in place of every tensor field
    ``f`` whose leading axis has length ``n`` (None: every tensor field), nested
    dataclasses too; the other fields kept."""
    changes = {}
    for f in dataclasses.fields(states[0]):
        values = [getattr(s, f.name) for s in states]
        first = values[0]
        if isinstance(first, torch.Tensor) and (n is None or first.shape[:1] == (n,)):
            changes[f.name] = fn(values)
        elif dataclasses.is_dataclass(first) and not isinstance(first, type):
            changes[f.name] = _map_rows(fn, values, n)
    return dataclasses.replace(states[0], **changes)


def stack_states(states: list[Any], m: int = 1) -> Any:
    """One state of every agent from ranks' states (nested dataclasses too), in the order
    given: :func:`gather_state` for states handed over by the store. The first rank's
    holds ``m`` agents (tensors with a leading axis of length ``m`` are joined), the
    others any number."""
    return _map_rows(torch.cat, states, m)


def gather_state(state: Any, gather: Callable[[torch.Tensor], torch.Tensor], m: int = 1) -> Any:
    """The state of every agent from each process's state of ``m`` agents (nested
    dataclasses too): tensors with a leading local-agent axis are gathered; other fields
    are kept."""
    return _map_rows(lambda values: gather(values[0]), [state], m)


def own_rows(state: Any, rows: int | list[int], n: int, device: torch.device) -> Any:
    """The inverse of :func:`gather_state`: the rows ``rows`` (a rank, or a process's
    agents) of a state that holds every agent's ``(n, ...)`` (a checkpoint's), on
    ``device`` (nested dataclasses too). Tensors with a leading agent axis of length ``n``
    are sliced; other fields are kept."""
    index = [rows] if isinstance(rows, int) else rows
    state = _map_rows(lambda values: values[0][index], [state], n)
    return _map_rows(lambda values: values[0].to(device, copy=True), [state], None)
