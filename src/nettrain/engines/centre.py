"""A parameter server's slice of the centre: one implementation for both engines.

Server ``s`` owns the columns ``block_slices(d, S)[s]`` (:mod:`nettrain.problem.flat`)
of the centre's rows in a :class:`CentreShard`. The simulator keeps ``S`` of them in its
:class:`~nettrain.engines.sim.servers.SimServers`; under ``engine=distributed`` ranks
``n .. n+S-1`` each host one, named ``"centre"``. A worker's exchange sends its slice
to every server at once (``rpc_async``, then wait for all); each shard applies the
method's :meth:`~nettrain.patterns.ServerRule.serve` under its own lock, so the
servers work concurrently and no lock is global. A handler never calls another
rank: no deadlock.

Synchronous exchanges (synchronous EASGD) carry the worker's round number: the shard
answers every exchange of round ``r`` from the centre as round ``r`` found it and
adds up their changes; a worker already at round ``r + 1`` waits (on the shard's
condition variable, on an rpc thread) until all ``n`` exchanges of round ``r`` are in.
So the result is the simulator's whatever the arrival order, up to the order of a
floating-point sum.

Asynchronous exchanges of a resumed distributed run carry the worker's event number
``seq`` (:mod:`~nettrain.engines.distributed.snapshots`): a shard answers ``None`` to
one it applied already (before the crash the worker resumed from), so that no
exchange is applied twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import torch

from nettrain.patterns import ServerRule


class CentreShard:
    """One server's slice ``rows: (r, d_s)`` of the centre and what it counts."""

    def __init__(self, rule: ServerRule, rows: torch.Tensor, n_workers: int, timeout_s: float):
        self._rule = rule
        self._cond = threading.Condition()
        self._n = n_workers
        self._timeout_s = timeout_s
        self.rows = rows.clone()
        self.version = 0  # exchanges applied
        self.seen = [0] * n_workers  # version after each worker's last exchange
        self.applied: Counter[int] = Counter()  # exchanges applied, by worker
        self.last: dict[int, int] = {}  # the event number of each worker's last exchange
        self.sync_round, self._arrived, self._base = 0, 0, self.rows.clone()
        self.finished = threading.Event()

    def exchange(self, worker: int, sent: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Apply ``serve`` to this slice; reply, and the exchange's staleness here."""
        with self._cond:
            self.rows, reply = self._rule.serve(self.rows, sent)
            return reply, self._count(worker)

    def exchange_sync(
        self, worker: int, round: int, sent: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Round ``round``'s exchange of ``worker``: read the centre as the round found it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.sync_round == round, self._timeout_s):
                raise TimeoutError(
                    f"worker {worker} waited {self._timeout_s} s at round {round} for the "
                    f"other workers' exchanges of round {self.sync_round}"
                )
            new, reply = self._rule.serve(self._base, sent)
            self.rows += new - self._base
            self._arrived += 1
            if self._arrived == self._n:
                self.sync_round, self._arrived, self._base = round + 1, 0, self.rows.clone()
                self._cond.notify_all()
            return reply, self._count(worker)

    def exchange_once(
        self, worker: int, seq: int, sent: torch.Tensor
    ) -> tuple[torch.Tensor, int] | None:
        """:meth:`exchange` of ``worker``'s exchange number ``seq``; None (and no change)
        where it was applied already."""
        with self._cond:
            if seq <= self.last.get(worker, -1):
                return None
            self.last[worker] = seq
            return self.exchange(worker, sent)

    def exchange_rows(
        self, workers: list[int], round: int | None, sent: torch.Tensor, seq: int | None = None
    ) -> list[tuple[torch.Tensor, int] | None]:
        """The exchanges of several workers of one process, ``sent: (k, d_s)``, in order:
        :meth:`exchange` each (:meth:`exchange_once` with ``seq``), or
        :meth:`exchange_sync` of ``round`` when it is given."""
        if round is None:
            pairs = zip(workers, sent, strict=True)
            if seq is not None:
                return [self.exchange_once(w, seq, s) for w, s in pairs]
            return [self.exchange(w, s) for w, s in pairs]
        return [self.exchange_sync(w, round, s) for w, s in zip(workers, sent, strict=True)]

    def _count(self, worker: int) -> int:
        stale = self.version - self.seen[worker]
        self.version += 1
        self.seen[worker] = self.version
        self.applied[worker] += 1
        return stale

    def centre(self) -> torch.Tensor:
        """The centre ``(d_s,)``. Once synchronous rounds have begun: as the last complete
        round left it, without the exchanges of the next round that arrived already (a
        worker records between rounds while the others may be exchanging again)."""
        with self._cond:
            synchronous = self.sync_round > 0 or self._arrived > 0
            return (self._base if synchronous else self.rows)[0].clone()

    def counts(self) -> dict[int, int]:
        """Exchanges applied here, by worker."""
        with self._cond:
            return dict(self.applied)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (between synchronous rounds)."""
        with self._cond:
            return {
                "rows": self.rows.clone(),
                "version": self.version,
                "seen": list(self.seen),
                "applied": dict(self.applied),
                "last": dict(self.last),
                "sync_round": self.sync_round,
            }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        with self._cond:
            self.rows, self._base = saved["rows"].clone(), saved["rows"].clone()
            self.version, self.seen = saved["version"], list(saved["seen"])
            self.applied, self.last = Counter(saved["applied"]), dict(saved.get("last", {}))
            self.sync_round, self._arrived = saved["sync_round"], 0

    def finish(self) -> None:
        """Rank 0's word that the run is over: the server may leave."""
        self.finished.set()


def shard_rows(x0: torch.Tensor, rule: ServerRule, cols: slice) -> torch.Tensor:
    """The starting rows of one slice: ``x0`` in row 0, zeros below."""
    rows = x0.new_zeros(rule.centre_rows, cols.stop - cols.start)
    rows[0] = x0.reshape(-1)[cols]
    return rows
