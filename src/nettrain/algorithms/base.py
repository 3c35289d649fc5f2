"""What an algorithm is: explicit state plus a step written against the patterns.

An algorithm never knows which engine runs it. ``init`` builds the state of the
local agents from their starting point ``x0: (m, d)``. A synchronous
:class:`Algorithm`'s ``step`` runs one round: local computation through the
:class:`~nettrain.problem.oracle.Oracle` and communication through a
:class:`~nettrain.patterns.Communicator`. An :class:`AsyncAlgorithm` is driven by
events instead: the engine decides when each agent's local phase ends and whom it
then talks to (``interact``). States are frozen dataclasses of tensors whose leading
axis is the local agent axis; every state has ``x``.

Engines never test an algorithm's class: they read its *capabilities*, class
attributes of :class:`Method` (``schedule``, ``partner``, ``engines``,
``shared_writes``, ``uses_rpc``, ``uses_centre``, ``tolerates_faults``, ...), and the
configuration refuses a method on an engine not in its ``engines``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import torch

from nettrain.compression import Compressor
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator, SharedModel
from nettrain.problem.oracle import Oracle, Problem


class HasParams(Protocol):
    x: torch.Tensor  # (m, d)


S = TypeVar("S", bound=HasParams)

ENGINES = ("sim", "distributed", "shared_memory")  # the engines, in the order shown
ENGINE_NAMES = frozenset(ENGINES)  # what a method's ``engines`` may hold


class BlockOracle(Protocol):
    """One worker's loss and gradient on the shared-memory engine: each call draws the
    worker's next mini-batch and returns ``(loss, g: (d,))`` at ``x: (d,)``, ``g`` exact
    on the parameter tensors that touch ``blocks`` and zero on the others (autograd
    skips those)."""

    def __call__(self, x: torch.Tensor, blocks: tuple[int, ...]) -> tuple[float, torch.Tensor]: ...


class Method(ABC, Generic[S]):
    """What every method declares, synchronous or not."""

    name: ClassVar[str]
    default_batch_size: ClassVar[int] = 16  # used when the config says batch_size=-1
    records_objective: ClassVar[bool] = False  # record the social objective by default
    stability_hint: ClassVar[str] = "Lower the learning rate (lr=) or the momentum"
    uses_rpc: ClassVar[bool] = False  # the distributed engine then opens an rpc session
    uses_centre: ClassVar[bool] = False  # a centre variable held by parameter servers
    # an asynchronous method that skips a lost exchange (message drops, crashes, splits:
    # nettrain.faults); for its lost reply the engines hand back what it sent
    tolerates_faults: ClassVar[bool] = False
    # sends its models or gradients through the config's quantizer= (the others send
    # them as they are, and refuse one)
    compresses: ClassVar[bool] = False
    # how the engines drive it: "rounds", ``step`` once per round by every agent
    # (:class:`Algorithm`), or "events", ``interact`` per event (:class:`AsyncAlgorithm`)
    schedule: ClassVar[Literal["rounds", "events"]] = "rounds"
    # whom an event-driven method talks to: "neighbour" (pairwise gossip through
    # ``comm.swap``, the partner running ``absorb``) or "centre" (the parameter
    # servers through ``comm.centre_exchange``); "none" for a round-based method
    partner: ClassVar[Literal["none", "neighbour", "centre"]] = "none"
    # the engines it runs on (of ``sim``, ``distributed``, ``shared_memory``); the
    # configuration refuses the others, saying ``engines_note`` (why not, what instead)
    engines: ClassVar[frozenset[str]] = frozenset({"sim", "distributed"})
    engines_note: ClassVar[str] = (
        "exchanges the models of its agents, and the shared-memory workers hold one model"
    )
    # its workers write blocks of one shared model without waiting for each other
    # (block_async, hogwild: ``shared_step`` uses ``write_shared`` only); a method on
    # engine=shared_memory without it synchronises its workers through ``mean_shared``
    shared_writes: ClassVar[bool] = False
    # exchanges along the communication graph (``topology``, ``weights``, ``schedule``);
    # all-reduce, centre and shared-model methods do not (reports leave those keys out)
    uses_graph: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a method written outside the package
            cls.name = cls.__name__

    def for_network(self, n_agents: int) -> Method:
        """These settings for a run of ``n_agents`` agents: a default that depends on the
        network (EASGD's ``alpha = 0``, i.e. ``0.9 / n``) made explicit and checked. The
        run is built with what this returns; most methods return themselves."""
        return self

    def check(self, problem: Problem) -> None:
        """Raise a ConfigError if this algorithm cannot train ``problem`` (before any work)."""

    @abstractmethod
    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> S:
        """State of the local agents, all starting at ``x0: (m, d)``."""

    def diagnostics(self, state: S) -> dict[str, Any]:
        """Method-specific figures computed from the state of *all* agents (for records)."""
        return {}

    def judged(self, state: S) -> dict[str, torch.Tensor]:
        """Models ``(d,)`` besides the agents' own that the records evaluate, by name
        (``<name>_test_loss``, ``<name>_test_accuracy``), from the state of *all* agents."""
        return {}

    def centre(self, state: S, comm: Communicator) -> torch.Tensor | None:
        """The model a centre-based method is judged by ``(d,)`` (EASGD's ``x~``), or None."""
        return comm.centre() if self.uses_centre else None

    @property
    def geometric_phases(self) -> bool:
        """Whether an event-driven method's local phases have a geometric number of steps
        with mean ``local_steps`` (SwarmSGD's ``geometric_steps``); else exactly that many."""
        return False

    # --- engine=shared_memory: P worker processes on one shared model (SharedModel) ---

    def shared_blocks(self, workers: int) -> int:
        """The blocks the shared model is cut into for ``workers`` processes; a ConfigError
        if the method was built for other workers. Only for ``shared_memory`` in
        ``engines``."""
        raise ConfigError(
            f"algorithm={self.name} does not run on engine=shared_memory: {self.engines_note}"
        )

    def shared_init(self, x: torch.Tensor) -> Any:
        """One worker's own state (its momentum, say) for the shared model ``x: (d,)``."""
        return None

    def shared_step(
        self, state: Any, k: int, oracle: BlockOracle, shared: SharedModel
    ) -> tuple[Any, float]:
        """A worker's ``k``-th step (from 0) on the shared model: read through ``shared``,
        a gradient from ``oracle``, write through ``shared``. Returns the worker's new
        state and its training loss."""
        raise ConfigError(
            f"algorithm={self.name} does not run on engine=shared_memory: {self.engines_note}"
        )


class Algorithm(Method[S]):
    """A synchronous round-based method: ``state_{t+1} = step(state_t, t)``."""

    @abstractmethod
    def step(self, state: S, t: int, oracle: Oracle, comm: Communicator) -> tuple[S, torch.Tensor]:
        """Round ``t``: the new state and the local agents' training losses ``(m,)``."""


class AsyncAlgorithm(Method[S]):
    """An asynchronous method: each agent alternates a local phase and one interaction.

    The engine keeps every agent's clock: agent ``i``'s local phase of ``steps`` local
    steps ends at its event time; then it interacts (with a neighbour, or with the
    centre held by the servers). It hands the algorithm batches of events on disjoint
    agents, in time order.
    """

    local_steps: int  # mean steps of one local phase (its duration on the virtual clock)
    blocking: bool  # the partner stops, makes its own phase and both update at once
    uses_rpc = True  # the distributed engine runs it on rpc
    schedule = "events"

    def events_per_round(self, n: int) -> float:
        """Events of ``n`` agents that make one round of the run (``rounds`` scales them)."""
        return float(n)

    @abstractmethod
    def interact(
        self,
        state: S,
        pairs: torch.Tensor,
        oracle: Oracle,
        comm: Communicator,
        steps: torch.Tensor,
    ) -> tuple[S, torch.Tensor]:
        """Events on the disjoint ``pairs: (k, 2)`` (initiator, partner; partner ``-1`` for
        the servers): the initiators' local phases of ``steps[:, 0]`` steps (and the
        partners' of ``steps[:, 1]`` if blocking), then the exchanges, applied in row
        order. Returns the new state and the initiators' last training losses ``(k,)``."""


class GossipAlgorithm(AsyncAlgorithm[S]):
    """Pairwise gossip (SwarmSGD, AD-PSGD): the partner is a neighbour in the graph."""

    compressor: Compressor  # what the exchanges send
    partner = "neighbour"

    @abstractmethod
    def absorb(self, own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """The partner's side of an exchange: its new published model ``(d,)`` from its own
        and the decoded one it received (run on the partner's rpc thread when distributed)."""

    def rejoin(self, state: S, agent: int, x: torch.Tensor) -> S:
        """``state`` with ``agent`` (a local row) back from a crash on the model ``x: (d,)``
        (``rejoin_model=neighbour``): its row of ``state.x`` is ``x``, and every other
        field is kept, which is right for a state of models plus counters (SwarmSGD's and
        AD-PSGD's exchange counts go on counting). A method whose state has other
        per-agent fields (a momentum, a correction) overrides this to reset its row as
        ``init`` would from ``x``."""
        rows = state.x.clone()
        rows[agent] = x
        return dataclasses.replace(state, x=rows)  # type: ignore[type-var]


class CentreRule(ABC):
    """What a parameter server does with a worker's message (EASGD family, DOWNPOUR).

    The base of the methods that implement :class:`~nettrain.patterns.ServerRule`, the
    centre pattern's protocol: the servers hold ``centre_rows`` rows of ``d`` values
    (row 0 is the centre variable ``x~``; DOWNPOUR with momentum keeps a velocity too),
    each server a contiguous slice of the columns. An exchange sends ``sent: (d_s,)`` to
    a server, which applies ``serve`` atomically to its slice and replies.
    """

    uses_centre: ClassVar[bool] = True
    uses_graph: ClassVar[bool] = False
    centre_rows: ClassVar[int] = 1
    servers: int  # S, the servers the centre is sharded over

    @abstractmethod
    def serve(self, rows: torch.Tensor, sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One exchange on a slice: ``(rows', reply)`` from ``rows: (r, d_s)`` and ``sent``."""


class CentreAlgorithm(CentreRule, AsyncAlgorithm[S]):
    """An asynchronous worker-server method: every ``tau`` local steps one exchange with
    the centre, on all servers at once (the simulator applies the exchanges of a batch
    one by one in time order, as the servers would receive them)."""

    tau: int
    blocking = False
    partner = "centre"

    @property
    def local_steps(self) -> int:  # type: ignore[override]
        return self.tau

    def events_per_round(self, n: int) -> float:
        """A round is one local step of every worker: ``n / tau`` exchanges."""
        return n / self.tau

    def diagnostics(self, state: S) -> dict[str, Any]:
        """Exchanges with the centre per worker (fewest, most) since the start."""
        counts = state.exchanges  # type: ignore[attr-defined]
        return {"exchanges_min": int(counts.min()), "exchanges_max": int(counts.max())}
