"""An algorithm's state between one rank's rows and every agent's.

Each rank of the distributed engine holds its agent's state, every tensor with a
leading axis of length 1; records and checkpoints need every agent's, with the axis
of length ``n`` the simulator has. These functions gather (:func:`gather_state`),
stack states handed over otherwise (:func:`stack_states`) and take a rank's rows back
(:func:`own_rows`), nested dataclasses included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from nettrain.engines.distributed.comm import guarded
from nettrain.problem.buffers import Buffers, BufferSpec


def all_gather_rows(t: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """``(1, ...)`` on every rank of ``group`` -> ``(n, ...)``, rows in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    guarded(
        "an all-gather of the engine", lambda: dist.all_gather(parts, t.contiguous(), group=group)
    )
    return torch.cat(parts)


def gather_buffers(
    spec: BufferSpec, buffers: Buffers, gather: Callable[[torch.Tensor], torch.Tensor]
) -> Buffers | None:
    """Every agent's buffers ``{name: (n, ...)}`` from each rank's ``(1, ...)``, sent as
    one flat float64 row each (exact for counters); None for a model without buffers."""
    if not spec:
        return None
    device = next(iter(buffers.values())).device
    return spec.unflatten(gather(spec.flatten(buffers).to(device)))


def stack_buffers(parts: list[Buffers]) -> Buffers | None:
    """One ``{name: (k, ...)}`` from ``k`` ranks' ``(1, ...)`` buffers handed over whole."""
    if not parts or not parts[0]:
        return None
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def stack_states(states: list[Any]) -> Any:
    """One state of ``k`` agents from ``k`` ranks' ``(1, ...)`` states (nested dataclasses
    too), in the order given: :func:`gather_state` for states handed over by the store."""
    first = states[0]
    changes = {}
    for f in dataclasses.fields(first):
        value = getattr(first, f.name)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == 1:
            changes[f.name] = torch.cat([getattr(s, f.name) for s in states])
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = stack_states([getattr(s, f.name) for s in states])
    return dataclasses.replace(first, **changes)


def gather_state(state: Any, gather: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The state of every agent from each rank's ``(1, ...)`` state (nested dataclasses too).

    Tensors with a leading local-agent axis are gathered; other fields are kept.
    """
    changes = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == 1:
            changes[f.name] = gather(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = gather_state(value, gather)
    return dataclasses.replace(state, **changes)


def own_rows(state: Any, rank: int, n: int, device: torch.device) -> Any:
    """The inverse of :func:`gather_state`: this rank's ``(1, ...)`` rows of a state that
    holds every agent's ``(n, ...)`` (a checkpoint's), on ``device`` (nested dataclasses
    too). Tensors with a leading agent axis of length ``n`` are sliced; other tensors are
    kept whole."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            agents = value.dim() >= 1 and value.shape[0] == n
            changes[f.name] = (value[rank : rank + 1] if agents else value).to(device, copy=True)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = own_rows(value, rank, n, device)
    return dataclasses.replace(state, **changes)
