"""The end of an asynchronous run that outlives dead workers, agreed in the rendezvous store.

A synchronous run ends with collectives, which need every rank. An asynchronous run
(SwarmSGD, AD-PSGD, the asynchronous EASGD family, DOWNPOUR) must also end when a
worker process died mid-run (SIGKILL, a lost machine): the others lose their exchanges
with it and carry on. Its end therefore goes through the rendezvous store (a
``TCPStore`` hosted by nettrain's launcher, by torchrun's agent, or by rank 0), which
no worker's death takes down (but rank 0's where rank 0 hosts it).

The duties of a leader (gather the records, decide the end, collect the final
states) fall to the lowest rank not known dead (:meth:`Finish.leader`): rank 0 while
it lives. A rank that finds another dead (its heartbeat, ``alive/<rank>``, counted up
by :class:`~nettrain.engines.distributed.liveness.Heartbeat`, has not moved for
``dead_after_s``; or its rpc failed and its heartbeat stopped) marks it ``dead/<rank>``
in the store, so that every rank agrees on who leads next.

1. each worker posts ``finished/<rank>`` once its events are done (after
   ``failed/<rank>`` with the message, when it diverged) and keeps answering the
   others' exchanges on its rpc threads, since they may still be running;
2. the leader waits until every worker has finished or is dead, and posts the
   :class:`Verdict`: the dead ranks, the first failure and itself. Nobody initiates an
   exchange any more, so none is in flight. A worker waiting for the verdict watches
   the leader: if it falls silent, the next rank leads;
3. every survivor reads the verdict and posts its final state (``final/<rank>``,
   ``torch.save`` bytes); the leader reads them and writes the record.

Before the end, every worker posts its state at each evaluation point it passes
(``eval/<round>/<rank>``, :meth:`Finish.post`); the leader gathers them
(:meth:`Finish.gather`) as the workers reach that round, leaving out a worker whose
heartbeat stopped, and writes the record of that round.

The parameter-server ranks must not die (they hold the centre), nor, where it hosts
the store, rank 0. A worker that finds the store gone raises :class:`PeerError`.
Under torchrun the agent itself stops every worker as soon as one fails, so the
survivors carry on only where the processes are launched otherwise (by
``nettrain run ... nproc=P``, one per machine by a scheduler, or as the tests do:
plain processes with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
set).

Workers that rejoin (``rejoin=true``, :mod:`.events`): every process counts up
``incarnation/<rank>`` as it starts (:func:`incarnation_key`); one started again for a
dead rank posts ``joined/<rank>``, the round it goes on from. A ``dead/<rank>`` mark
names the incarnation found dead, so a later one is alive (:meth:`Finish.refresh`); the
leader does not wait for a rank's post of an evaluation round before the one it
rejoined at; and a rank that rejoined never leads (it holds no run folder).

Keys live under ``events/<restart>.<serial>/`` (:func:`events_prefix`): torchrun's
restart count and the rpc session's serial, so that a store which outlives a run
(torchrun's, or the rpc session's own store that a later session reuses) never shows
this run a key of an earlier one.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from nettrain.errors import PeerError

DEAD_AFTER_S = 5.0  # a heartbeat (every 0.25 s) silent this long: the process is dead
POLL_S = 0.05  # between two looks at the store
T = TypeVar("T")


def events_prefix(serial: int) -> str:
    """The keys of one asynchronous run: ``events/<torchrun restart>.<rpc session serial>/``."""
    return f"events/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}.{serial}/"


def incarnation_key(rank: int) -> str:
    """The store key counting the processes of ``rank`` started in a ``rejoin=true`` run
    (each counts it up as it starts: the one running now is incarnation ``value - 1``)."""
    return f"incarnation/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


@dataclass(frozen=True)
class Verdict:
    """The leader's word on how the run ended: the workers that died, the first failure,
    and who decided (it collects the final states)."""

    crashed: tuple[int, ...] = ()
    error: str | None = None  # a worker's DivergenceError message
    leader: int = 0

    @property
    def clean(self) -> bool:
        return not self.crashed and self.error is None

    def dumps(self) -> str:
        return json.dumps(
            {"crashed": list(self.crashed), "error": self.error, "leader": self.leader}
        )

    @classmethod
    def loads(cls, text: bytes | str) -> Verdict:
        saved = json.loads(text)
        return cls(tuple(saved["crashed"]), saved["error"], saved.get("leader", 0))


def read_verdict(store: dist.Store, prefix: str) -> Verdict | None:
    """The verdict, if the leader posted one (raises RuntimeError when the store is gone)."""
    key = prefix + "verdict"
    return Verdict.loads(store.get(key)) if store.check([key]) else None


@dataclass(frozen=True)
class Gathered:
    """The posts of the workers that reached an evaluation point, by rank, and the
    workers found dead on the way."""

    posts: dict[int, Any]
    dead: tuple[int, ...] = ()


class Silence:
    """How long each watched rank's heartbeat has not moved, seen from here."""

    def __init__(self, store: dist.Store) -> None:
        self._store = store
        self._seen: dict[int, tuple[int, float]] = {}

    def seconds(self, rank: int) -> float:
        beat, now = self._store.add(f"alive/{rank}", 0), time.monotonic()
        last = self._seen.get(rank)
        if last is None or last[0] != beat:
            self._seen[rank] = (beat, now)
            return 0.0
        return now - last[1]


class Finish:
    """One worker's part in the end of an asynchronous run of ``n`` workers (module docstring)."""

    def __init__(
        self,
        store: dist.Store,
        rank: int,
        n: int,
        prefix: str,
        dead_after_s: float = DEAD_AFTER_S,
        poll: Callable[[], None] = lambda: time.sleep(POLL_S),
    ) -> None:
        self.store = store
        self.rank = rank
        self.n = n
        self.prefix = prefix
        self.dead_after_s = dead_after_s
        self._poll = poll
        self._silence = Silence(store)
        self.dead: set[int] = set()  # the ranks known dead
        self._dead_as: dict[int, int] = {}  # the incarnation of each found dead

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except RuntimeError as err:  # the store's host (rank 0) is gone
            raise PeerError(
                f"rank {self.rank}: {what} failed: {str(err).strip()}. The rendezvous store "
                "is gone: its host died (rank 0, where the processes were not started by "
                "nettrain's launcher; it must then outlive the run)"
            ) from err

    def _set(self, key: str, value: str | bytes) -> None:
        self._call(f"posting {key!r}", lambda: self.store.set(self.prefix + key, value))

    def _has(self, key: str) -> bool:
        return self._call(f"reading {key!r}", lambda: self.store.check([self.prefix + key]))

    def _silent(self, rank: int) -> bool:
        seconds = self._call("reading the heartbeats", lambda: self._silence.seconds(rank))
        return seconds > self.dead_after_s

    def incarnation(self, rank: int) -> int:
        """How many times ``rank``'s process started again in this run (0: never)."""
        key = incarnation_key(rank)
        return self._call("reading an incarnation", lambda: self.store.add(key, 0))

    def mark_dead(self, ranks: Iterable[int]) -> None:
        """Tell every rank that ``ranks`` (their incarnations now) are dead (``dead/<rank>``)."""
        for r in sorted(set(ranks) - self.dead):
            self._dead_as[r] = self.incarnation(r)
            self._set(f"dead/{r}", str(self._dead_as[r]))
            self.dead.add(r)

    def _marked_dead(self, rank: int) -> bool:
        """Whether the store marks ``rank``'s current incarnation dead (and note it here)."""
        if not self._has(f"dead/{rank}"):
            return False
        marked = int(self._call("reading a death", self._get(f"dead/{rank}")))
        if marked < self.incarnation(rank):
            return False
        self.dead.add(rank)
        self._dead_as[rank] = marked
        return True

    def refresh(self) -> list[int]:
        """Forget the ranks known dead whose process rejoined since; those ranks."""
        back = [r for r in sorted(self.dead) if self.incarnation(r) > self._dead_as.get(r, 0)]
        self.dead.difference_update(back)
        return back

    def rejoined(self, round: int) -> None:
        """This rank's process started again and goes on from ``round``."""
        self._set(f"joined/{self.rank}", str(round))

    def joined(self, rank: int) -> int | None:
        """The round from which ``rank``'s current process goes on, if it rejoined."""
        if not self._has(f"joined/{rank}"):
            return None
        return int(self._call("reading a rejoin", self._get(f"joined/{rank}")))

    def leader(self) -> int:
        """The lowest rank not known dead (here, or in the store) that never rejoined (a
        process started again holds no run folder): the one that gathers the records and
        decides the end."""
        rejoined = None  # the lowest live rank that rejoined: leads only if all did
        for r in range(self.n):
            if r in self.dead or (r != self.rank and self._marked_dead(r)):
                continue
            if self.joined(r) is None:
                return r
            rejoined = r if rejoined is None else rejoined
        assert rejoined is not None, "unreachable: this rank is alive"
        return rejoined

    def leads(self) -> bool:
        """Whether this rank leads now; the leader found silent is marked dead first (its
        heartbeat watched from one call to the next: ``dead_after_s`` without a beat)."""
        leader = self.leader()
        while leader != self.rank and self._silent(leader):
            self.mark_dead([leader])
            leader = self.leader()
        return leader == self.rank

    def fail(self, message: str) -> None:
        """This worker failed (it diverged): the verdict carries ``message`` to everyone."""
        self._set(f"failed/{self.rank}", message)

    def done(self) -> None:
        """This worker's events are done: it initiates nothing any more."""
        self._set(f"finished/{self.rank}", "1")

    def verdict(self) -> Verdict:
        """The leader: wait until every worker has finished or died, then decide and post.
        The others: wait for the leader's verdict while its heartbeat goes on; if it stops,
        the next rank leads (perhaps this one)."""
        while not self._has("verdict"):  # one that a leader posted before it died stands
            if self.leads():
                return self._decide()
            self._poll()
        return Verdict.loads(self._call("reading the verdict", self._get("verdict")))

    def _decide(self) -> Verdict:
        """The leader's verdict, once every worker has finished or died."""
        self.refresh()
        waiting, crashed = set(range(self.n)) - self.dead, set(self.dead)
        while waiting:
            for r in sorted(waiting):
                if self._has(f"finished/{r}"):
                    waiting.discard(r)
                elif self._silent(r):
                    waiting.discard(r)
                    crashed.add(r)
            if waiting:
                self._poll()
        failed = [r for r in range(self.n) if r not in crashed and self._has(f"failed/{r}")]
        error = None
        if failed:
            error = self._call("reading a failure", self._get(f"failed/{failed[0]}")).decode()
        self.mark_dead(crashed)
        verdict = Verdict(tuple(sorted(crashed)), error, self.rank)
        self._set("verdict", verdict.dumps())
        return verdict

    def _get(self, key: str) -> Callable[[], bytes]:
        return lambda: self.store.get(self.prefix + key)

    def post(self, final: Any, key: str = "final") -> None:
        """A survivor's final state (or its state at an evaluation point: ``key``
        ``eval/<round>``), for the leader (any object ``torch.save`` takes)."""
        buffer = io.BytesIO()
        torch.save(final, buffer)
        self._set(f"{key}/{self.rank}", buffer.getvalue())

    def gather(
        self,
        key: str,
        ranks: Iterable[int],
        device: torch.device | None = None,
        at: int | None = None,
    ) -> Gathered | None:
        """The leader: what the workers ``ranks`` post under ``key`` (evaluation round
        ``at``), as they reach it. A worker whose heartbeat stops is left out (``dead``,
        and marked so), as is one whose process died and rejoined at round ``at`` or
        later (``dead`` too: its state at ``at`` died); None if one of them failed (it
        never posts: the run ends with its error). Each post is removed from the store
        once read."""
        posts, dead = {}, []
        for r in ranks:
            name = f"{key}/{r}"
            while not self._has(name):
                if self._has(f"failed/{r}"):
                    return None
                if self._silent(r):
                    dead.append(r)
                    self.mark_dead([r])
                    break
                joined = self.joined(r)
                if at is not None and joined is not None and joined >= at:
                    dead.append(r)
                    break
                self._poll()
            else:
                raw = self._call(f"reading rank {r}'s {key}", self._get(name))
                posts[r] = torch.load(io.BytesIO(raw), map_location=device, weights_only=False)
                gone = self.prefix + name
                self._call(f"removing {name!r}", lambda gone=gone: self.store.delete_key(gone))
        return Gathered(posts, tuple(dead))

    def collect(self, ranks: Iterable[int], device: torch.device | None = None) -> dict[int, Any]:
        """The leader: the final states of the survivors ``ranks``, as they post them."""
        got = self.gather("final", ranks, device)
        assert got is not None  # a failure was the verdict's: nobody collects after it
        if got.dead:
            raise PeerError(
                f"rank {self.rank}: rank {got.dead[0]} died after the end of the run, before "
                "it handed its final state over"
            )
        return got.posts
