"""Parameter servers in the simulator: the centre sharded over ``S`` servers.

Server ``s`` owns a contiguous slice of the ``d`` columns of the centre's rows
(balanced: sizes differ by at most one) and applies the method's
:meth:`~nettrain.algorithms.base.CentreRule.serve` to it. Exchanges are applied in
the order the engine gives them (time order); a synchronous round's exchanges all
read the centre as the round found it.

Staleness of an exchange: the updates other workers made to the server since this
worker's previous exchange with it (the largest over the servers); with ``n`` workers
of equal speed it is ``n - 1``. Timing (used by the event engine, which sets
``event_times``): each server is a FIFO queue whose link takes ``bytes_s /
bandwidth`` per message; ``resume[w]`` is when worker ``w``'s last reply arrives.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from nettrain.algorithms.base import CentreRule
from nettrain.algorithms.surrogates import block_slices
from nettrain.engines.base import staleness_fields
from nettrain.engines.sim.clock import CostModel


class SimServers:
    """The centre's rows ``(r, d)``, starting at ``x0`` (row 0; other rows zero)."""

    def __init__(self, x0: torch.Tensor, rule: CentreRule, n_workers: int, cost: CostModel):
        d = x0.shape[-1]
        self.rows = x0.new_zeros(rule.centre_rows, d)
        self.rows[0] = x0.reshape(-1)
        self.slices = block_slices(d, rule.servers)
        self.cost = cost
        self.version = [0] * rule.servers  # updates each server has applied
        self.seen = torch.zeros(
            n_workers, rule.servers, dtype=torch.int64
        )  # version after w's last
        self.applied = torch.zeros(n_workers, rule.servers, dtype=torch.int64)
        self.free = [0.0] * rule.servers  # when each server's link is next free
        self.event_times: torch.Tensor | None = None  # (n,) set by the event engine
        self.resume = torch.zeros(n_workers, dtype=torch.float64)
        self._staleness: Counter[int] = Counter()

    def centre(self) -> torch.Tensor:
        return self.rows[0].clone()

    def exchange(
        self, sent: torch.Tensor, workers: torch.Tensor, rule: CentreRule, synchronous: bool
    ) -> torch.Tensor:
        """Apply the exchanges of ``workers`` with messages ``sent: (k, d)``; the replies."""
        replies = torch.empty_like(sent)
        base = self.rows.clone() if synchronous else self.rows  # what each exchange reads
        for row, w in enumerate(workers.tolist()):
            stale = 0
            done = 0.0
            for s, cols in enumerate(self.slices):
                new, replies[row, cols] = rule.serve(base[:, cols], sent[row, cols])
                if synchronous:
                    self.rows[:, cols] += new - base[:, cols]
                else:
                    self.rows[:, cols] = new
                stale = max(stale, self.version[s] - int(self.seen[w, s]))
                self.version[s] += 1
                self.seen[w, s] = self.version[s]
                self.applied[w, s] += 1
                done = max(
                    done, self._serve_time(s, w, (cols.stop - cols.start) * sent.element_size())
                )
            self._staleness[stale] += 1
            self.resume[w] = done
        return replies

    def _serve_time(self, s: int, w: int, nbytes: int) -> float:
        """Queue the message of worker ``w`` at server ``s``; when its reply is back."""
        if self.event_times is None:
            return 0.0
        link = nbytes / self.cost.bandwidth_bytes_per_s
        begin = max(float(self.event_times[w]) + self.cost.latency_s, self.free[s])
        self.free[s] = begin + link
        return self.free[s] + self.cost.latency_s + link

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the rows and the counters behind staleness."""
        return {
            "rows": self.rows,
            "version": self.version,
            "seen": self.seen,
            "applied": self.applied,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.rows = saved["rows"].clone()
        self.version = list(saved["version"])
        self.seen, self.applied = saved["seen"].clone(), saved["applied"].clone()

    def take_staleness(self) -> dict[str, Any]:
        """Staleness of the exchanges since the last call (:func:`staleness_fields`)."""
        counts, self._staleness = self._staleness, Counter()
        return staleness_fields(counts)
