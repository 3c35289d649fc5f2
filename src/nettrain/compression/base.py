"""What a compressor is: ``encode``, ``decode`` and an exact byte count, over a stack of agents.

Every compressor maps a stack ``x: (m, d)`` (row ``i`` is agent ``i``'s flat vector) to a
*payload*, a small frozen dataclass of tensors laid out as they would go on the wire, and
back. It is vectorised over rows: one call encodes all ``m`` agents, with no Python loop.

* ``encode(x, ref=None, *, generator=None) -> payload``
* ``decode(payload, ref=None) -> x_hat: (m, d)`` in the sender's working dtype
* ``nbytes(payload) -> (m,) int64`` on the CPU: the exact bytes of each row's payload, the
  figure engines add to :class:`nettrain.patterns.Traffic`
* ``roundtrip(x, ref=None, *, generator=None) -> (x_hat, nbytes)``

``ref: (m, d)`` is a reference the *receiver* holds (its own model, in SwarmSGD); only
the lattice quantiser uses it, the others accept and ignore it so that an algorithm can
pass one whatever compressor it was given. Compressors that draw random numbers
(:attr:`Compressor.stochastic`) take them from the ``torch.Generator`` passed in, never
from the global generator, so the same seed gives the same bits.

Compressors are frozen dataclasses of configuration; they hold no state. A stateful
scheme such as error feedback keeps its state explicit
(:mod:`nettrain.compression.error_feedback`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import torch

from nettrain.errors import ConfigError

P = TypeVar("P")

FLOAT32_BYTES = 4  # one float32 header value (a row's norm or scale)
INDEX_BYTES = 4  # one int32 coordinate index


class Compressor(ABC, Generic[P]):
    """``encode`` a stack ``x: (m, d)`` into a payload ``P``, ``decode`` it, count its bytes."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The registry name (see :data:`nettrain.compression.COMPRESSORS`)."""

    @property
    def stochastic(self) -> bool:
        """True when :meth:`encode` draws random numbers and so needs a ``generator``."""
        return False

    @property
    def columnwise(self) -> bool:
        """True when each coordinate is encoded alone and without random numbers: the
        payload of columns ``cols`` of ``x`` is columns ``cols`` of ``x``'s payload
        (:func:`~nettrain.compression.payloads.cat_columns` joins such parts), so an
        engine may encode and send a vector slice by slice as the slices become final."""
        return False

    @abstractmethod
    def encode(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> P:
        """The payload of each row of ``x: (m, d)``; ``ref: (m, d)`` is the receivers' reference."""

    @abstractmethod
    def decode(self, payload: P, ref: torch.Tensor | None = None) -> torch.Tensor:
        """The receiver's estimate ``x_hat: (m, d)`` of what was encoded."""

    @abstractmethod
    def nbytes(self, payload: P) -> torch.Tensor:
        """Exact bytes of each row's payload, ``(m,)`` int64 on the CPU."""

    def roundtrip(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(decode(encode(x, ref), ref), nbytes)``: what the receiver sees and what it cost."""
        payload = self.encode(x, ref, generator=generator)
        return self.decode(payload, ref), self.nbytes(payload)


def check_stack(x: torch.Tensor, ref: torch.Tensor | None = None) -> None:
    """Raise :class:`ConfigError` unless ``x`` is a float ``(m, d)`` stack and ``ref`` matches."""
    if x.ndim != 2:
        raise ConfigError(
            f"compressors take a stack x: (m, d) with one agent per row, got shape "
            f"{tuple(x.shape)}; for a single vector pass x.reshape(1, -1)"
        )
    if not x.is_floating_point():
        raise ConfigError(f"compressors take floating-point vectors, got dtype {x.dtype}")
    check_ref(ref, tuple(x.shape))


def check_ref(ref: torch.Tensor | None, shape: tuple[int, int]) -> None:
    """Raise :class:`ConfigError` unless ``ref`` is None or a floating tensor of ``shape``."""
    if ref is None:
        return
    if tuple(ref.shape) != shape:
        raise ConfigError(
            f"ref must have the shape of the encoded stack {shape}, got {tuple(ref.shape)}; "
            "pass the receivers' own vectors, one row per encoded row"
        )
    if not ref.is_floating_point():
        raise ConfigError(f"ref must be floating point, got dtype {ref.dtype}")


def require_generator(name: str, generator: torch.Generator | None) -> torch.Generator:
    """Return ``generator``, or raise :class:`ConfigError` when a stochastic compressor got none."""
    if generator is None:
        raise ConfigError(
            f"the {name} compressor rounds at random and never uses the global generator; "
            "pass generator=torch.Generator(device=x.device).manual_seed(seed)"
        )
    return generator


def packed_bytes(d: int, bits: int) -> int:
    """Bytes of ``d`` codes of ``bits`` bits each, packed back to back: ``ceil(d * bits / 8)``."""
    return (d * bits + 7) // 8


def per_row(m: int, nbytes: int) -> torch.Tensor:
    """The same byte count for each of ``m`` rows, as ``(m,)`` int64 on the CPU."""
    return torch.full((m,), nbytes, dtype=torch.int64, device="cpu")


def check_int(name: str, value: object, low: int, high: int, why: str) -> int:
    """Return ``value`` as an int in ``[low, high]``, or raise :class:`ConfigError` naming it
    and saying why (``why``: what the setting means, appended to the message)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}{why}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value}{why}")
    return value
