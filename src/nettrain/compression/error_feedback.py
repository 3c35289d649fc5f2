"""Error feedback: carry what compression dropped into the next message.

Rule (Seide et al., "1-Bit Stochastic Gradient Descent ...", Interspeech 2014; analysed by
Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", ICML 2019), with residual ``e`` starting at 0::

    p      = encode(x + e)          # what is sent
    x_hat  = decode(p)              # what the receiver adds up
    e_new  = (x + e) - x_hat        # what was dropped, sent later

so ``x + e == x_hat + e_new`` at every step and, summed over steps, nothing is lost but
the last residual. Meant for gradient compressors (top-k, QSGD, half precision).

The state is explicit, in the optax style: :func:`ef_init` builds it and :func:`ef_step`
returns the new one; :class:`ErrorFeedback` pairs a compressor with those two functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from nettrain.compression.base import Compressor, check_stack
from nettrain.errors import ConfigError

P = TypeVar("P")


@dataclass(frozen=True, eq=False)
class EFState:
    """The residual of every local agent."""

    residual: torch.Tensor  # (m, d), same dtype and device as x


def ef_init(x: torch.Tensor) -> EFState:
    """Zero residual shaped like the stack ``x: (m, d)`` (same dtype and device)."""
    check_stack(x)
    return EFState(torch.zeros_like(x))


def ef_step(
    compressor: Compressor[P],
    x: torch.Tensor,
    state: EFState,
    ref: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[P, torch.Tensor, EFState]:
    """One error-feedback step: ``(payload, x_hat, new_state)`` for ``x: (m, d)``.

    ``payload = encode(x + e, ref)``, ``x_hat = decode(payload, ref)`` and the new
    residual is ``(x + e) - x_hat``; ``ref`` and ``generator`` go to the compressor.
    """
    if state.residual.shape != x.shape:
        raise ConfigError(
            f"error-feedback residual has shape {tuple(state.residual.shape)} but x has "
            f"{tuple(x.shape)}; build the state with ef_init(x) for this stack"
        )
    corrected = x + state.residual  # (m, d)
    payload = compressor.encode(corrected, ref, generator=generator)
    x_hat = compressor.decode(payload, ref)
    return payload, x_hat, EFState(corrected - x_hat)


@dataclass(frozen=True)
class ErrorFeedback(Generic[P]):
    """A compressor wrapped with error feedback; state passed in and out explicitly.

    ``state = ef.init(x)``, then each round
    ``payload, x_hat, state = ef.step(x, state, generator=gen)``; the receiver decodes
    with ``ef.decode`` and the engine counts ``ef.nbytes(payload)`` (the residual is never
    sent, so the bytes are the inner compressor's).
    """

    compressor: Compressor[P]

    @property
    def name(self) -> str:
        return f"ef_{self.compressor.name}"

    def init(self, x: torch.Tensor) -> EFState:
        return ef_init(x)

    def step(
        self,
        x: torch.Tensor,
        state: EFState,
        ref: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[P, torch.Tensor, EFState]:
        return ef_step(self.compressor, x, state, ref, generator=generator)

    def decode(self, payload: P, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.compressor.decode(payload, ref)

    def nbytes(self, payload: P) -> torch.Tensor:
        return self.compressor.nbytes(payload)
