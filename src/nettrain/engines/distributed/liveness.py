"""Liveness through the rendezvous store: every rank's heartbeat, and who fell silent.

Each rank counts up the store key ``alive/<rank>`` from a daemon thread
(:class:`Heartbeat`), which keeps beating while the main thread waits in a collective.
After a failed exchange :func:`silent_ranks` names the ranks whose counter stopped;
:class:`~nettrain.engines.distributed.finish.Silence` watches one rank's counter.
"""

from __future__ import annotations

import threading
import time

import torch.distributed as dist


class Heartbeat:
    """A daemon thread that increments the store key ``alive/<rank>`` every ``period_s``
    (and with ``stamped`` sets ``alive_at/<rank>`` to the wall time of that beat: where a
    process restarted in its place finds its predecessor's last sign of life).

    It keeps beating while the main thread is blocked in a collective (torch releases
    the GIL there), so after a failure a silent counter means a dead or frozen process.
    """

    def __init__(
        self, store: dist.Store, rank: int, period_s: float = 0.25, stamped: bool = False
    ) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(store, rank, period_s, stamped), daemon=True
        )
        self._thread.start()

    def _beat(self, store: dist.Store, rank: int, period_s: float, stamped: bool) -> None:
        while not self._stop.is_set():
            try:
                store.add(f"alive/{rank}", 1)
                if stamped:
                    store.set(f"alive_at/{rank}", repr(time.time()))
            except RuntimeError:  # the store's host is gone: nothing left to tell
                return
            self._stop.wait(period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def silent_ranks(store: dist.Store, rank: int, n: int, hosted: bool, window_s: float = 1.0) -> str:
    """After a failed exchange: the ranks whose heartbeat stopped (dead or frozen).

    Marks ``failed/<rank>`` (this rank saw the failure and leaves: not a suspect), then
    reads every rank's counter twice, ``window_s`` apart. The host of the store then
    stays ``window_s`` longer so that the others can finish reading. Best effort:
    ``""`` when the store is gone (its host died) or every rank still beats.
    """
    try:
        store.set(f"failed/{rank}", "1")
        stopped = silent(store, list(range(n)), window_s)
        left = [store.check([f"failed/{r}"]) for r in range(n)]
        if hosted:
            time.sleep(window_s)
    except RuntimeError:
        return ""
    stopped = [r for r in stopped if not left[r]]
    if not stopped:
        return ""
    return f" Rank(s) {', '.join(map(str, stopped))} stopped responding: they died or froze."


def last_beat(store: dist.Store, rank: int) -> float | None:
    """The wall time (``time.time()``) of ``rank``'s last heartbeat, None if it never beat."""
    key = f"alive_at/{rank}"
    return float(store.get(key)) if store.check([key]) else None


def beating(store: dist.Store, rank: int, window_s: float = 1.0) -> bool:
    """Whether ``rank``'s heartbeat moves within ``window_s`` (four beats): alive, if
    perhaps slow. ``False`` too when the store is gone."""
    try:
        return not silent(store, [rank], window_s)
    except RuntimeError:
        return False


def silent(store: dist.Store, ranks: list[int], window_s: float = 1.0) -> list[int]:
    """Those of ``ranks`` whose heartbeat does not move within ``window_s`` (four beats)."""
    before = [store.add(f"alive/{r}", 0) for r in ranks]
    time.sleep(window_s)
    return [r for r, b in zip(ranks, before, strict=True) if store.add(f"alive/{r}", 0) == b]
