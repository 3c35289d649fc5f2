"""Parameter servers in the simulator: the centre sharded over ``S`` servers.

Server ``s`` owns a contiguous slice of the ``d`` columns of the centre's rows
(balanced: sizes differ by at most one) in a :class:`~nettrain.engines.centre.
CentreShard`, the very object a server rank of the distributed engine hosts.
Exchanges are applied in the order the engine gives them (time order); a synchronous
round's exchanges all read the centre as the round found it.

Staleness and timing are docs/async-simulation.md's ("Servers in virtual time"); an
exchange's staleness is the largest over the servers (``n - 1`` with ``n`` workers of
equal speed), and ``resume[w]`` is when worker ``w``'s last reply arrives.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from nettrain.engines.base import staleness_fields
from nettrain.engines.centre import CentreShard, shard_rows
from nettrain.engines.sim.clock import CostModel
from nettrain.patterns import ServerRule
from nettrain.problem.flat import block_slices


class SimServers:
    """``S`` :class:`~nettrain.engines.centre.CentreShard` s (the distributed engine's
    servers), starting at ``x0`` (row 0; other rows zero), plus their queues.

    ``event_times: (n,)`` is the event engine's tensor of every worker's event time, which
    it updates in place: a worker's message reaches the queues at its event time (None:
    synchronous rounds, no queueing).
    """

    def __init__(
        self,
        x0: torch.Tensor,
        rule: ServerRule,
        n_workers: int,
        cost: CostModel,
        event_times: torch.Tensor | None = None,
    ) -> None:
        self.slices = block_slices(x0.shape[-1], rule.servers)
        self.shards = [
            CentreShard(rule, shard_rows(x0, rule, c), n_workers, 0.0) for c in self.slices
        ]
        self.cost = cost
        self.free = [0.0] * rule.servers  # when each server's link is next free
        self.event_times = event_times
        self.resume = torch.zeros(n_workers, dtype=torch.float64)
        self._staleness: Counter[int] = Counter()
        # with a timeline: (server, worker, begin, end, reply) of each message served
        self.served: list[tuple[int, int, float, float, float]] | None = None

    def centre(self) -> torch.Tensor:
        return torch.cat([shard.centre() for shard in self.shards])

    def exchange(
        self, sent: torch.Tensor, workers: torch.Tensor, synchronous: bool
    ) -> torch.Tensor:
        """Apply the exchanges of ``workers`` with messages ``sent: (k, d)``, in row order;
        the replies. Synchronous: one call holds a whole round, every worker once."""
        replies = torch.empty_like(sent)
        for row, w in enumerate(workers.tolist()):
            stale, done = 0, 0.0
            for s, (shard, cols) in enumerate(zip(self.shards, self.slices, strict=True)):
                if synchronous:
                    reply, late = shard.exchange_sync(w, shard.sync_round, sent[row, cols])
                else:
                    reply, late = shard.exchange(w, sent[row, cols])
                replies[row, cols] = reply
                stale = max(stale, late)
                nbytes = (cols.stop - cols.start) * sent.element_size()
                done = max(done, self._serve_time(s, w, nbytes))
            self._staleness[stale] += 1
            self.resume[w] = done
        return replies

    def _serve_time(self, s: int, w: int, nbytes: int) -> float:
        """Queue the message of worker ``w`` at server ``s``; when its reply is back."""
        if self.event_times is None:
            return 0.0
        link = nbytes / self.cost.link_bytes_per_s(w)
        begin = max(float(self.event_times[w]) + self.cost.latency_s, self.free[s])
        self.free[s] = begin + link
        reply = self.free[s] + self.cost.latency_s + link
        if self.served is not None:
            self.served.append((s, w, begin, self.free[s], reply))
        return reply

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: every shard's rows and counters, the queues."""
        return {
            "shards": [shard.state_dict() for shard in self.shards],
            "free": list(self.free),
            "resume": self.resume.clone(),
            "staleness": dict(self._staleness),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for shard, state in zip(self.shards, saved["shards"], strict=True):
            shard.load_state_dict(state)
        if "free" in saved:  # the distributed engine saves the shards only
            self.free, self.resume = list(saved["free"]), saved["resume"].clone()
            self._staleness = Counter(saved["staleness"])

    def take_staleness(self) -> dict[str, Any]:
        """Staleness of the exchanges since the last call (:func:`staleness_fields`)."""
        counts, self._staleness = self._staleness, Counter()
        return staleness_fields(counts)
