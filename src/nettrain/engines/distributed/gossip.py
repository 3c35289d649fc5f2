"""Asynchronous pairwise gossip between processes: each agent's published model on rpc.

Every rank hosts a :class:`Peer` for each agent it holds, named :func:`peer_name`, with
that agent's published model. An initiator sends its encoded model with one ``rpc`` to
the partner's ``exchange`` (a partner held by the initiator's own process is exchanged in
place instead, :meth:`~.comm.DistCommunicator.swap`), which runs on the partner's rpc
thread while the partner's main thread keeps computing: under the
peer's lock it encodes its current published model as the reply, decodes the
initiator's against it (the lattice reference), applies the algorithm's
:meth:`~nettrain.algorithms.base.GossipAlgorithm.absorb` and remembers the change
(``shift``), which the main thread adds to its iterate at its next event. A handler
never calls another rank, so exchanges cannot wait on each other: no deadlock.

Faults (:mod:`nettrain.faults`): while its agent is down (:meth:`Peer.set_down`) or
after the run (:meth:`Peer.close`), a peer refuses every exchange: it answers ``None``,
which the initiator counts as a lost request, and changes nothing.

Workers that rejoin (``rejoin=true``): a rank's process started again is its next
incarnation. An exchange carries its initiator's incarnation and the reply its
partner's (:class:`Reply`); each side keeps its counts for the incarnation it met last
(``met``) and starts them afresh on meeting a later one, so the final audit compares
the counts of the incarnations alive at the end. A process that rejoins takes a live
neighbour's model (:meth:`Peer.model`), which the neighbour notes in ``donated``.

Resumed runs (:mod:`.snapshots`): an exchange carries its initiator's event number
``seq``; the peer refuses (answers :data:`REPLAYED`) one whose number it has answered
already, which happens only when an initiator resumed from a snapshot older than the
exchange, so that no exchange is applied twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from nettrain.algorithms.base import GossipAlgorithm

REPLAYED = "replayed"  # the answer to an exchange answered already, before a resume


def peer_name(agent: int) -> str:
    """The name under which the process holding ``agent`` hosts its :class:`Peer`."""
    return f"peer/{agent}"


@dataclass
class Reply:
    """A peer's answer to an exchange: its incarnation, and its encoded published model."""

    incarnation: int
    payload: Any


class Peer:
    """This agent's published model ``(d,)``, exchanged on the other ranks' calls."""

    def __init__(
        self,
        algorithm: GossipAlgorithm,
        x: torch.Tensor,
        generator: torch.Generator,
        incarnation: int = 0,
    ):
        self._lock = threading.Lock()
        self.incarnation = incarnation  # of this rank's process
        self.met: dict[int, int] = {}  # the incarnation of each initiator counted (default 0)
        self.donated: list[dict[str, Any]] = []  # models handed to ranks that rejoined
        self.events = 0  # the events this agent made (set by its main thread)
        self._algorithm = algorithm
        self._generator = generator  # for stochastic codes of the replies
        self.published = x.clone()
        self._shift = torch.zeros_like(x)
        self.answered: Counter[int] = Counter()  # exchanges answered, by initiator
        self.last: dict[int, int] = {}  # the event number of each initiator's last one
        self.reply_bytes = 0
        self.down = False  # refuse every exchange (the agent is down, or the run is over)

    def exchange(
        self, sender: int, payload: Any, seq: int | None = None, incarnation: int = 0
    ) -> Reply | str | None:
        """Answer exchange number ``seq`` of ``sender``'s ``incarnation``: reply with this
        published model, then absorb theirs; ``None`` (and no change) while this agent is
        down or from an incarnation older than one met already, :data:`REPLAYED` where
        ``seq`` was answered already."""
        codec = self._algorithm.compressor
        with self._lock:
            met = self.met.get(sender, 0)
            if self.down or incarnation < met:
                return None
            if incarnation > met:  # a process that rejoined: its counts start afresh
                self.met[sender] = incarnation
                self.answered[sender] = 0
                self.last.pop(sender, None)
            if seq is not None:
                if seq <= self.last.get(sender, -1):
                    return REPLAYED
                self.last[sender] = seq
            own = self.published
            reply = codec.encode(own[None], generator=self._generator)
            received = codec.decode(payload, own[None])[0]
            new = self._algorithm.absorb(own, received)
            self._shift += new - own
            self.published = new
            self.answered[sender] += 1
            self.reply_bytes += int(codec.nbytes(reply)[0])
        return Reply(self.incarnation, reply)

    def model(self, rank: int, incarnation: int) -> tuple[torch.Tensor, int]:
        """For ``rank``'s process ``incarnation``, which rejoins: this published model and
        the events this agent made (noted in :attr:`donated`)."""
        with self._lock:
            x = self.published.clone()
            gift = {"rank": rank, "incarnation": incarnation, "model_sum": float(x.sum())}
            self.donated.append(gift | {"events": self.events})
        return x, self.events

    def set_down(self, down: bool) -> None:
        """Whether this agent is down now: a down peer refuses every exchange."""
        with self._lock:
            self.down = down

    def close(self) -> None:
        """The run is over here: refuse every exchange from now on, so that the shift
        taken next is final."""
        self.set_down(True)

    def publish(self, x: torch.Tensor) -> None:
        """The main thread's new model; exchanges answered meanwhile stay added."""
        with self._lock:
            self.published = x + self._shift

    def take_shift(self) -> torch.Tensor:
        """What exchanges added since the last call, for the main thread's iterate."""
        with self._lock:
            return self._take()

    def _take(self) -> torch.Tensor:
        shift, self._shift = self._shift, torch.zeros_like(self._shift)
        return shift

    def take_state(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """:meth:`take_shift` and, taken with it under the lock, the counters that go
        with the iterate it completes (a snapshot's ``peer``)."""
        with self._lock:
            shift = self._take()
            saved = {
                "answered": dict(self.answered),
                "met": dict(self.met),
                "last": dict(self.last),
                "reply_bytes": self.reply_bytes,
                "generator": self._generator.get_state(),
            }
        return shift, saved

    def load_state(self, saved: dict[str, Any], x: torch.Tensor) -> None:
        """Resume from a snapshot's ``peer`` (:meth:`take_state`), publishing ``x``."""
        with self._lock:
            self.answered, self.last = Counter(saved["answered"]), dict(saved["last"])
            self.met = dict(saved.get("met", {}))
            self.reply_bytes = saved["reply_bytes"]
            self._generator.set_state(saved["generator"])
            self.published, self._shift = x.clone(), torch.zeros_like(x)
