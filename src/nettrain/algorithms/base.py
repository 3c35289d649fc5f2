"""What an algorithm is: explicit state plus a step written against the patterns.

An algorithm never knows which engine runs it. ``init`` builds the state of the
local agents from their starting point ``x0: (m, d)``. A synchronous
:class:`Algorithm`'s ``step`` runs one round: local computation through the
:class:`~nettrain.problem.oracle.Oracle` and communication through a
:class:`~nettrain.patterns.Communicator`. An :class:`AsyncAlgorithm` is driven by
events instead: the engine decides when each agent's local phase ends and whom it
then talks to (``interact``). States are frozen dataclasses of tensors whose leading
axis is the local agent axis; every state has ``x``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch

from nettrain.compression import Compressor
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle, Problem


class HasParams(Protocol):
    x: torch.Tensor  # (m, d)


S = TypeVar("S", bound=HasParams)


class Method(ABC, Generic[S]):
    """What every method declares, synchronous or not."""

    name: ClassVar[str]
    default_batch_size: ClassVar[int] = 16  # used when the config says batch_size=-1
    records_objective: ClassVar[bool] = False  # record the social objective by default
    stability_hint: ClassVar[str] = "Lower the learning rate (lr=) or the momentum"
    uses_rpc: ClassVar[bool] = False  # the distributed engine then opens an rpc session

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any) -> Method:
        """The algorithm with the settings of a :class:`~nettrain.config.RunConfig`."""

    def check(self, problem: Problem) -> None:
        """Raise a ConfigError if this algorithm cannot train ``problem`` (before any work)."""

    @abstractmethod
    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> S:
        """State of the local agents, all starting at ``x0: (m, d)``."""

    def diagnostics(self, state: S) -> dict[str, Any]:
        """Method-specific figures computed from the state of *all* agents (for records)."""
        return {}


class Algorithm(Method[S]):
    """A synchronous round-based method: ``state_{t+1} = step(state_t, t)``."""

    @abstractmethod
    def step(self, state: S, t: int, oracle: Oracle, comm: Communicator) -> tuple[S, torch.Tensor]:
        """Round ``t``: the new state and the local agents' training losses ``(m,)``."""


class AsyncAlgorithm(Method[S]):
    """An asynchronous method: each agent alternates a local phase and one interaction.

    The engine keeps every agent's clock: agent ``i``'s local phase of
    ``local_steps`` steps ends at its event time; then it interacts with a partner. It
    hands the algorithm batches of events on disjoint agents, in time order.
    """

    local_steps: int  # steps of one local phase (its duration on the virtual clock)
    blocking: bool  # the partner stops, makes its own phase and both update at once
    compressor: Compressor  # what the exchanges send
    uses_rpc = True  # the distributed engine runs it on rpc

    @abstractmethod
    def absorb(self, own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """The partner's side of an exchange: its new published model ``(d,)`` from its own
        and the decoded one it received (run on the partner's rpc thread when distributed)."""

    @abstractmethod
    def interact(
        self,
        state: S,
        pairs: torch.Tensor,
        oracle: Oracle,
        comm: Communicator,
        generator: torch.Generator,
    ) -> tuple[S, torch.Tensor]:
        """Events on the disjoint ``pairs: (k, 2)`` (initiator, partner): the initiators'
        local phases (and the partners' if blocking), then the exchanges. Returns the new
        state and the initiators' last training losses ``(k,)``."""
