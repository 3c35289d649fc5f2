"""Gradient buckets: a gradient handed out in column slices as the backward pass
finishes them, so that their communication overlaps the rest of the pass (as
``DistributedDataParallel`` does).

The flat vector ``x: (m, d)`` holds the parameters in the model's order, so the
gradients of the last layers are final first. :func:`gradient_buckets` cuts the
columns ``0 .. d - 1`` into contiguous buckets of whole parameters, in reverse order,
each at most ``cap`` elements (a parameter larger than ``cap`` is a bucket of its own):
together they cover every column exactly once. :class:`BucketFeed` collects a pass's
per-parameter gradients into the output ``g: (m, d)`` from autograd hooks and hands each
bucket to a :class:`GradientSink` (a communicator's pattern in flight, e.g. the
all-reduce of :meth:`~nettrain.patterns.Communicator.start_mean_parts`) once all of
its parameters' gradients are in, buckets in order, so every process starts its
collectives in the same order.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch


class GradientSink(Protocol):
    """Who takes a gradient's buckets as they are final (the oracle's side of the seam)."""

    bucket_bytes: int  # the largest bucket it wants, in bytes; 0: the whole gradient

    def put(self, cols: slice, part: torch.Tensor) -> None:
        """Columns ``cols`` of the gradient are final: ``part = g[:, cols]``, ``(m, |cols|)``.
        Every column is put exactly once, buckets in the order of :func:`gradient_buckets`."""
        ...


def gradient_buckets(numels: Sequence[int], cap: int) -> tuple[slice, ...]:
    """Contiguous column slices of the flat vector of parameters of sizes ``numels`` (in
    flat order): parameters taken from the last to the first, a bucket closed before the
    parameter that would take it past ``cap`` elements (``cap <= 0``: one bucket). The
    buckets come in that reverse order and cover ``range(sum(numels))`` exactly once."""
    ends = [0, *itertools.accumulate(numels)]
    buckets: list[slice] = []
    stop = ends[-1]
    for j in reversed(range(len(numels)) if cap > 0 else ()):
        if stop - ends[j] > cap:  # parameter j opens the next bucket
            buckets.append(slice(ends[j + 1], stop))
            stop = ends[j + 1]
    buckets.append(slice(0, stop))
    return tuple(b for b in buckets if b.stop > b.start)  # empty before a parameter > cap


@functools.lru_cache(maxsize=64)
def bucket_layout(
    numels: tuple[int, ...], cap: int
) -> tuple[tuple[slice, ...], tuple[int, ...], tuple[int, ...]]:
    """The buckets of parameters of sizes ``numels`` (flat order) under ``cap`` elements
    (:func:`gradient_buckets`), the bucket of each parameter, and the number of
    parameters of each bucket."""
    buckets = gradient_buckets(numels, cap)
    starts = [b.start for b in buckets]  # descending
    firsts = [sum(numels[:j]) for j in range(len(numels))]
    of = tuple(next(i for i, s in enumerate(starts) if first >= s) for first in firsts)
    return buckets, of, tuple(of.count(b) for b in range(len(buckets)))


class BucketFeed:
    """Hands the gradient of one pass to ``sink`` bucket by bucket.

    ``out: (m, d)`` receives the gradient; parameter ``j`` occupies the columns
    ``params[j]``. :meth:`hook` gives parameter ``j``'s autograd hook, which copies its
    gradient ``(m, numel_j)`` into ``out`` and, once every parameter of a bucket is in,
    adds ``extra(cols)`` (a regulariser's gradient on those columns, if any) and puts the
    bucket; a bucket completed before an earlier one waits for it. :meth:`finish` puts
    whatever is left (every bucket, when no hook ran) and returns ``out``. With one
    bucket there is nothing to start early: :attr:`hooked` is false and the kernel
    registers no hooks (each costs a Python call in the backward pass).
    """

    def __init__(
        self,
        out: torch.Tensor,
        params: tuple[slice, ...],
        sink: GradientSink,
        extra: Callable[[slice], torch.Tensor] | None = None,
    ) -> None:
        self.out, self.params, self.sink, self.extra = out, params, sink, extra
        # at least one element a bucket when any size is asked for; <= 0: one bucket
        cap = max(sink.bucket_bytes // out.element_size(), 1) if sink.bucket_bytes > 0 else 0
        numels = tuple(p.stop - p.start for p in params)
        self.buckets, self.of, sizes = bucket_layout(numels, cap)
        self.missing = list(sizes)  # parameters still missing per bucket
        self.hooked = len(self.buckets) > 1
        self.m = out.shape[0]
        self.next = 0  # the next bucket to put

    def hook(self, j: int) -> Callable[[torch.Tensor], None]:
        """Autograd hook of parameter ``j``'s leaf, ``(m, numel_j)``; it changes no gradient."""
        cols, b = self.params[j], self.of[j]

        def ready(grad: torch.Tensor) -> None:
            self.out[:, cols].copy_(grad.view(self.m, -1))
            self.missing[b] -= 1
            while self.next < len(self.buckets) and self.missing[self.next] == 0:
                self._put(self.next)

        return ready

    @contextlib.contextmanager
    def hooks(self, leaves: Sequence[torch.Tensor]) -> Iterator[None]:
        """Parameter ``j``'s :meth:`hook` on ``leaves[j]`` while the block runs (none when
        :attr:`hooked` is false)."""
        on = leaves if self.hooked else ()  # one bucket: nothing to start early
        handles = [leaf.register_hook(self.hook(j)) for j, leaf in enumerate(on)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def gradient(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """The pass's gradient ``out``: each parameter's ``grads[j]`` (``(m, numel_j)``)
        written in, unless the hooks did it, then every bucket not put yet."""
        if not self.hooked:  # one bucket: the whole gradient, now
            torch.cat(grads, 1, out=self.out)
        return self.finish()

    def _put(self, b: int) -> None:
        cols = self.buckets[b]
        if self.extra is not None:
            self.out[:, cols] += self.extra(cols)
        self.next = b + 1
        self.sink.put(cols, self.out[:, cols])

    def finish(self) -> torch.Tensor:
        """Put the buckets not put yet (all of ``out`` must be written) and return ``out``."""
        while self.next < len(self.buckets):
            self._put(self.next)
        return self.out
