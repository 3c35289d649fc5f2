"""Communicators that wrap communicators: compression, error feedback, lost messages.

An algorithm talks to a :class:`~nettrain.patterns.Communicator` and never learns how
its messages travel. What is sent is decided by wrapping the engine's communicator:

* :class:`Compressed` ``(comm, compressor, seed)`` encodes every exchange with the
  compressor: a mix, a mean or a swap of ``x`` becomes the same pattern on
  ``decode(encode(x), x_i)``, each receiver decoding against its own ``x_i``, and the
  traffic counts the payloads' exact bytes (``compressor.nbytes``). It owns the random
  codes: exchange ``k`` of round ``t`` draws them from a generator seeded by
  ``(seed, first local agent, 2^32 + 4 t + k)``, a pure function of those numbers (so a
  resumed run equals an uninterrupted one and nothing needs checkpointing); a swap
  draws them from ``stream``, a running generator its engine keeps.
* :class:`ErrorFeedback` ``(Compressed(...))`` carries what compression dropped into the
  next message (Seide et al. 2014; Karimireddy et al. 2019), with residual ``e_i``
  starting at 0::

      p_i = encode(x_i + e_i),   e_i <- x_i + e_i - decode(p_i),

  and sends ``p_i`` where the pattern would send ``x_i``: ``decode(p_i) + e_new ==
  x_i + e_old``, nothing dropped, only delayed. The residual is state: checkpoints
  hold it (:meth:`ErrorFeedback.state_dict`).

* :class:`Lossy` ``(comm, losses)`` makes the exchanges of one batch of asynchronous
  events lose what :class:`~nettrain.patterns.Losses` says (the engine's faults,
  :mod:`nettrain.faults`): a lost request reaches nobody and gets no reply, a lost
  reply leaves the initiator with its reference (a swap) or what it sent (a centre
  exchange).

The round's exchanges are numbered by the view :meth:`Communicator.at` returns: the
engine hands the algorithm ``comm.at(t)`` each round.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from nettrain.compression import Compressor, Identity
from nettrain.errors import ConfigError
from nettrain.patterns import (
    AtTheEnd,
    Codec,
    Communicator,
    Handle,
    Losses,
    PartsHandle,
    Traffic,
    never_put,
)
from nettrain.problem.oracle import agent_seed

CODE_STREAM = 1 << 32  # random streams of the codes, apart from the mini-batches' (stream 0)
EXCHANGES = 4  # code streams a round: one per exchange of that round (x, y, ...)


class Wrapper(Communicator):
    """A communicator that hands every pattern to ``inner``; subclasses change some. The
    patterns' keyword options (``codec``, ``losses``: :class:`~nettrain.patterns.
    Communicator`) pass through as given, but for the one a subclass sets."""

    def __init__(self, inner: Communicator) -> None:
        self.inner = inner

    @property
    def n_agents(self) -> int:  # type: ignore[override]
        return self.inner.n_agents

    @property
    def agents(self) -> torch.Tensor:  # type: ignore[override]
        return self.inner.agents

    @property
    def traffic(self) -> Traffic:  # type: ignore[override]
        return self.inner.traffic

    def at(self, t: int) -> Communicator:
        view = copy.copy(self)
        view.inner = self.inner.at(t)
        return view

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        return self.inner.start_mix(x, t, codec=codec)

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        return self.inner.start_mean(x, codec=codec)

    def start_mean_parts(self, like: torch.Tensor, *, codec: Codec | None = None) -> PartsHandle:
        return self.inner.start_mean_parts(like, codec=codec)

    def swap(self, x: Tensor, pairs: Tensor, ref: Tensor, **options: Any) -> Tensor:
        return self.inner.swap(x, pairs, ref, **options)

    def centre_exchange(self, sent: Tensor, *args: Any, **options: Any) -> Tensor:
        return self.inner.centre_exchange(sent, *args, **options)

    def centre(self) -> torch.Tensor:
        return self.inner.centre()

    def state_dict(self) -> dict[str, Any] | None:
        return self.inner.state_dict()

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        self.inner.load_state_dict(saved)


class Compressed(Wrapper):
    """Every exchange of ``inner`` through ``compressor`` (module docstring).

    ``seed`` seeds the codes of the synchronous exchanges, ``stream`` draws those of the
    swaps; only a stochastic compressor reads either. ``Identity`` sends as is.
    """

    def __init__(
        self,
        inner: Communicator,
        compressor: Compressor,
        seed: int = 0,
        stream: torch.Generator | None = None,
    ) -> None:
        super().__init__(inner)
        self.compressor, self.seed, self.stream = compressor, seed, stream
        self.round, self.exchanges = 0, 0  # of the view at(round): exchanges made so far

    def at(self, t: int) -> Communicator:
        view = super().at(t)
        assert isinstance(view, Compressed)
        view.round, view.exchanges = t, 0
        return view

    def codec(self, x: torch.Tensor) -> Codec | None:
        """The codec of this round's next exchange of ``x: (m, d)``; None sends as is."""
        if isinstance(self.compressor, Identity):
            return None
        if not self.compressor.stochastic:
            return Codec(self.compressor)
        if self.exchanges >= EXCHANGES:
            raise ConfigError(
                f"a round may make at most {EXCHANGES} compressed exchanges (code streams), "
                f"round {self.round} made more"
            )
        stream = CODE_STREAM + EXCHANGES * self.round + self.exchanges
        seed = agent_seed(self.seed, int(self.agents[0]), stream)
        return Codec(self.compressor, torch.Generator(device=x.device).manual_seed(seed))

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        codec = self.codec(x)
        self.exchanges += 1
        return self.inner.start_mix(x, t, codec=codec)

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        codec = self.codec(x)
        self.exchanges += 1
        return self.inner.start_mean(x, codec=codec)

    def start_mean_parts(self, like: torch.Tensor, *, codec: Codec | None = None) -> PartsHandle:
        """The inner pattern's, slices sent as they come, when they are sent as is
        (``Identity``) or by a columnwise compressor (half precision, the lattice: each
        slice encoded alone gives the whole vector's codes); else encoded whole at
        ``wait`` (a compressor such as top-k or QSGD sees the whole vector)."""
        if self.compressor.columnwise:  # Identity too: codec None, the plain all-reduce
            codec = self.codec(like)
            self.exchanges += 1
            return self.inner.start_mean_parts(like, codec=codec)
        return AtTheEnd(self.start_mean)

    def swap(self, x: Tensor, pairs: Tensor, ref: Tensor, **options: Any) -> Tensor:
        options["codec"] = Codec(self.compressor, self.stream)
        return self.inner.swap(x, pairs, ref, **options)


class ErrorFeedback(Wrapper):
    """Error feedback around a :class:`Compressed` communicator (module docstring).

    One residual ``e: (m, d)`` for the round's one compressed exchange (all-reduce SGD's
    gradients); a second compressed exchange in a round is an error.
    """

    def __init__(self, inner: Compressed) -> None:
        super().__init__(inner)
        self.compressed = inner
        self.memory: dict[str, torch.Tensor | None] = {"residual": None}  # shared by views

    def at(self, t: int) -> Communicator:
        view = super().at(t)
        assert isinstance(view, ErrorFeedback) and isinstance(view.inner, Compressed)
        view.compressed = view.inner
        return view

    @property
    def residual(self) -> torch.Tensor | None:
        """``e: (m, d)``, what the messages so far dropped (None before the first)."""
        return self.memory["residual"]

    def _corrected(self, x: torch.Tensor) -> torch.Tensor:
        """``x + e``, to be sent; the residual becomes what its payload drops."""
        self._one_exchange()
        sent = x + self._residual_or_zero(x)  # (m, d)
        self.memory["residual"] = self.dropped(sent)
        return sent

    def _residual_or_zero(self, like: torch.Tensor) -> torch.Tensor:
        e = self.residual
        return torch.zeros_like(like) if e is None else e

    def dropped(self, sent: torch.Tensor) -> torch.Tensor:
        """``sent - decode(encode(sent), sent)``, what the payload of ``sent`` drops, with
        the codes this round's next exchange will draw (zeros when it is sent as is)."""
        codec = self.compressed.codec(sent)
        if codec is None:
            return torch.zeros_like(sent)
        c = codec.compressor
        return sent - c.decode(c.encode(sent, sent, generator=codec.generator), sent)

    def start_mix(self, x: torch.Tensor, t: int, *, codec: Codec | None = None) -> Handle:
        return self.inner.start_mix(self._corrected(x), t)

    def start_mean(self, x: torch.Tensor, *, codec: Codec | None = None) -> Handle:
        return self.inner.start_mean(self._corrected(x))

    def start_mean_parts(self, like: torch.Tensor, *, codec: Codec | None = None) -> PartsHandle:
        """With a columnwise compressor, each slice corrected and sent as it is put
        (:class:`CorrectedParts`: the same residual and message as the whole's); else
        the residual is added to the whole message, sent at ``wait``."""
        if not self.compressed.compressor.columnwise:
            return AtTheEnd(self.start_mean)
        self._one_exchange()
        e = self._residual_or_zero(like)
        return CorrectedParts(self.inner.start_mean_parts(like), self, e)

    def _one_exchange(self) -> None:
        if self.compressed.exchanges:
            raise ConfigError("error feedback keeps one residual: one compressed exchange a round")

    def state_dict(self) -> dict[str, Any]:
        """The residual, for a checkpoint."""
        return {"residual": self.residual}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        self.memory["residual"] = None if saved is None else saved["residual"]


class CorrectedParts:
    """Error feedback slice by slice, for a columnwise compressor: each slice ``x[:, c]``
    put is sent as ``x[:, c] + e[:, c]``, whose dropped part becomes ``e_new[:, c]``; the
    same numbers as :meth:`ErrorFeedback.start_mean` on the whole, which encodes each
    coordinate alone too. ``wait(x)`` returns the mean of ``x + e`` and keeps ``e_new``,
    whose columns never put it makes then (the inner handle sends them then)."""

    def __init__(self, inner: PartsHandle, feedback: ErrorFeedback, e: torch.Tensor) -> None:
        self.inner, self.feedback, self.e = inner, feedback, e
        self.bucket_bytes = inner.bucket_bytes
        self.new = torch.empty_like(e)  # e_new, slice by slice
        self.puts: list[slice] = []

    def put(self, cols: slice, part: torch.Tensor) -> None:
        sent = part + self.e[:, cols]
        self.new[:, cols] = self.feedback.dropped(sent)  # columnwise: no random codes
        self.puts.append(cols)
        self.inner.put(cols, sent)

    def wait(self, whole: torch.Tensor) -> torch.Tensor:
        sent = whole + self.e
        for cols in never_put(self.puts, whole.shape[1]):  # the inner handle sends them
            self.new[:, cols] = self.feedback.dropped(sent[:, cols])
        self.feedback.memory["residual"] = self.new
        return self.inner.wait(sent)


class Lossy(Wrapper):
    """The swaps and centre exchanges of one batch lose what ``losses`` says (row ``r``:
    the batch's ``r``-th exchange); the synchronous patterns are ``inner``'s."""

    def __init__(self, inner: Communicator, losses: Losses) -> None:
        super().__init__(inner)
        self.losses = losses

    def swap(self, x: Tensor, pairs: Tensor, ref: Tensor, **options: Any) -> Tensor:
        return self.inner.swap(x, pairs, ref, **options | {"losses": self.losses})

    def centre_exchange(self, sent: Tensor, *args: Any, **options: Any) -> Tensor:
        return self.inner.centre_exchange(sent, *args, **options | {"losses": self.losses})


def losing(comm: Communicator, losses: Losses) -> Communicator:
    """``comm`` for a batch whose exchanges lose what ``losses`` says: ``Lossy`` when
    something is lost, ``comm`` itself otherwise."""
    return Lossy(comm, losses) if losses.any else comm
