"""Hosted objects and counters of the rpc pattern tests (``test_rpc.py`` and its workers).

:class:`Mailbox` is hosted on one rank and counts what it receives, per sender;
:class:`Counted` wraps a :class:`~nettrain.engines.distributed.rpc.Remote` and counts
what this rank's calls send, per rank called, so that the two counts can be compared.
The workers import this module from their own folder, ``test_rpc.py`` as
``engines.distributed.rpc_mailbox`` (``tests`` is on pytest's path).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.futures import Future

from nettrain.engines.distributed.rpc import Remote


def payload_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (nested tuples, lists, dict values): ``numel * size``."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(payload_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(payload_bytes(v) for v in value)
    return 0


@dataclass(frozen=True)
class Counts:
    """Messages and bytes, of one sender or in all."""

    messages: int = 0
    bytes: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.messages + other.messages, self.bytes + other.bytes)


class Tally:
    """Thread-safe message and byte counters keyed by a sender (``None`` for oneself)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Any, Counts] = {}

    def add(self, nbytes: int, key: Any = None) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, Counts()) + Counts(1, nbytes)

    def by_key(self) -> dict[Any, Counts]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> Counts:
        return sum(self.by_key().values(), Counts())


class Mailbox:
    """A hosted object that receives tensors and counts messages and bytes per sender.

    ``post`` runs on the host's RPC threads, several at once: the counters take a lock.
    With ``keep=True`` the received tensors are kept too, in arrival order.
    """

    def __init__(self, keep: bool = False) -> None:
        self.tally = Tally()
        self.keep = keep
        self._lock = threading.Lock()
        self._kept: list[tuple[int, tuple[torch.Tensor, ...]]] = []

    def post(self, sender: int, *tensors: torch.Tensor) -> int:
        """Count one message from ``sender`` with ``tensors``; return its bytes."""
        nbytes = payload_bytes(tensors)
        self.tally.add(nbytes, sender)
        if self.keep:
            with self._lock:
                self._kept.append((sender, tensors))
        return nbytes

    def received(self) -> dict[int, Counts]:
        """``{sender: Counts}`` of everything posted so far."""
        return self.tally.by_key()

    def kept(self) -> list[tuple[int, tuple[torch.Tensor, ...]]]:
        with self._lock:
            return list(self._kept)


class Counted:
    """``remote``, whose calls count one message each in ``sent``, under the rank called,
    with the bytes of the tensors in their arguments."""

    def __init__(self, remote: Remote, sent: Tally) -> None:
        self.remote = remote
        self.sent = sent

    def rpc_async(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """``remote.rpc_async``, counted once the call is on its way."""
        future = self.remote.rpc_async(method, *args, **kwargs)
        self.sent.add(payload_bytes((args, kwargs)), self.remote.owner)
        return future

    def rpc_sync(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``remote.rpc_sync``, counted."""
        future = self.rpc_async(method, *args, **kwargs)
        return self.remote.session.wait([future], self.remote.what)[0]
