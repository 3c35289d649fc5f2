"""The all-reduce of a gradient bucket by bucket, overlapping the backward pass.

:class:`BucketedMean` is the distributed communicator's
:meth:`~nettrain.patterns.Communicator.start_mean_parts`: each column slice put (a
gradient bucket, handed over by the oracle from autograd hooks as soon as the backward
pass has finished it, :mod:`nettrain.problem.buckets`) is written into the result
buffer times ``1 / n`` (a product: a division takes twice its time), and its
``all_reduce(SUM, async_op=True)`` starts at once, as ``DistributedDataParallel``'s
reducer scales and launches its buckets; ``wait`` waits
for them all. Every rank puts the same buckets in the same order (the same model, the
same cut), so their collectives pair up.

The mean is the one :meth:`~nettrain.engines.distributed.comm.DistCommunicator.start_mean`
computes, column by column, up to float rounding: the order in which gloo adds the
``n`` contributions of a column (which can depend on a buffer's length), and the
scaling by ``1 / n`` before the sum rather than a division after it (one pass over the
gradient fewer; the same numbers where ``n`` is a power of two). It is
counted as that one ring all-reduce of ``d`` values, as the simulator counts it.

:class:`BucketedGather` is the same with a codec (a compressed all-reduce SGD): each
slice is encoded as it is put and its payload's all-gather starts at once; ``wait``
joins the slices' payloads in column order into every agent's whole payload and decodes
it as the unbucketed compressed mean does. For a compressor that encodes each
coordinate alone (:attr:`~nettrain.compression.Compressor.columnwise`) the codes, the
mean and the count (one all-gather of the whole payload) are the unbucketed ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.distributed as dist

from nettrain.compression import Compressor
from nettrain.compression.payloads import cat_columns
from nettrain.engines.coded import decode_mean
from nettrain.patterns import never_put

# DistributedDataParallel's default cap of its first bucket (torch.distributed's
# _DEFAULT_FIRST_BUCKET_BYTES): smaller buckets start earlier but each costs a
# collective's latency, which on a loaded machine is milliseconds.
BUCKET_BYTES = 1 << 20


class BucketedMean:
    """``(1/n) sum_j v_j`` over every agent of the rows ``v: (m, d)`` this process holds,
    reduced slice by slice as put: each slice's local sum times ``1 / n``, then its all-reduce.

    ``start(buffer)`` launches the asynchronous all-reduce (SUM) of a contiguous
    ``buffer`` and returns its request; ``guard(what, call)`` runs ``call`` turning a
    failed collective into a :class:`~nettrain.errors.PeerError`; ``bucket_bytes`` caps
    the buckets the oracle cuts (default :data:`BUCKET_BYTES`, read when built);
    ``waited(begin)`` is told when :meth:`wait` began waiting for the other processes
    (a ``time.perf_counter()`` reading; it ends as ``waited`` is called).
    """

    def __init__(
        self,
        like: torch.Tensor,
        n: int,
        start: Callable[[torch.Tensor], dist.Work],
        guard: Callable[[str, Callable[[], object]], object],
        bucket_bytes: int | None = None,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        self.start, self.guard, self.waited = start, guard, waited
        self.scale = 1.0 / n  # each bucket's factor: the mean's 1/n, as DDP's reducer scales
        self.m = like.shape[0]
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.total = like.new_empty(1, like.shape[1])  # (1, d): the sum over every agent
        self.works: list[tuple[str, dist.Work]] = []
        self.puts: list[slice] = []

    def put(self, cols: slice, part: torch.Tensor) -> None:
        """Sum ``part: (m, |cols|)`` over the local agents, times ``1 / n``, into the
        buffer and start its all-reduce."""
        bucket = self.total[0, cols]  # a contiguous view of the buffer
        if self.m == 1:
            torch.mul(part[0], self.scale, out=bucket)
        else:
            torch.sum(part, 0, out=bucket).mul_(self.scale)
        what = f"the all-reduce of columns {cols.start}..{cols.stop - 1}"
        self.works.append((what, self.guard(what, lambda: self.start(bucket))))  # type: ignore[arg-type]
        self.puts.append(cols)

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        """Wait for every bucket's all-reduce and return the mean, a row for each local
        agent ``(m, d)``; the columns never put (all of them for a kernel without hooks)
        are all-reduced from ``whole`` now."""
        for cols in never_put(self.puts, whole.shape[1]):
            self.put(cols, whole[:, cols])
        begin = time.perf_counter()
        for what, work in self.works:
            self.guard(what, work.wait)
        if self.waited is not None:
            self.waited(begin)
        return self.total if self.m == 1 else self.total.expand(self.m, -1).clone()


class Gatherer(Protocol):
    """What :class:`BucketedGather` needs of the distributed communicator."""

    n_agents: int

    def start_gather(self, payload: Any, what: str) -> tuple[dist.Work, Callable[[], Any]]: ...

    def count_gathered_mean(self, payload: Any, compressor: Compressor) -> None: ...

    def count_wait(self, begin: float) -> None: ...


class BucketedGather:
    """``(1/n) sum_j decode(encode(v_j), v_i)`` over every agent for the rows ``v: (m, d)``
    this process holds, handed over slice by slice (module docstring): each slice's
    all-gather started as it is put; ``guard(what, call)`` as :class:`BucketedMean`'s."""

    def __init__(
        self,
        like: torch.Tensor,
        comm: Gatherer,
        compressor: Compressor,
        guard: Callable[[str, Callable[[], object]], object],
        bucket_bytes: int | None = None,
    ) -> None:
        if not compressor.columnwise:
            raise ValueError(f"{compressor.name} cannot encode a vector slice by slice")
        self.comm, self.compressor, self.guard = comm, compressor, guard
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.d = like.shape[1]
        self.parts: list[tuple[slice, Any, str, dist.Work, Callable[[], Any]]] = []

    def put(self, cols: slice, part: torch.Tensor) -> None:
        """Encode ``part: (m, |cols|)`` and start the all-gather of its payload."""
        payload = self.compressor.encode(part)
        what = f"the all-gather of columns {cols.start}..{cols.stop - 1} of a compressed mean"
        work, every = self.comm.start_gather(payload, what)
        self.parts.append((cols, payload, what, work, every))

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        """Wait for every slice's all-gather and return the mean, a row for each local
        agent ``(m, d)``, decoded against ``whole``; the columns never put (all of them for
        a kernel without hooks) are gathered from ``whole`` now."""
        for cols in never_put([part[0] for part in self.parts], self.d):
            self.put(cols, whole[:, cols].contiguous())
        begin = time.perf_counter()
        for _, _, what, work, _ in self.parts:
            self.guard(what, work.wait)
        self.comm.count_wait(begin)
        ordered = sorted(self.parts, key=lambda part: part[0].start)
        self.comm.count_gathered_mean(cat_columns([p[1] for p in ordered]), self.compressor)
        every = cat_columns([p[4]() for p in ordered])  # every agent's whole payload
        return decode_mean(whole, every, self.compressor, self.comm.n_agents)
