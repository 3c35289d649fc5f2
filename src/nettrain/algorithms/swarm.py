"""SwarmSGD (asynchronous pairwise gossip with local steps and quantisation), and AD-PSGD.

Nadiradze, Sabour, Davies, Li, Alistarh, "Asynchronous Decentralized SGD with
Quantized and Local Updates" (NeurIPS 2021, arXiv 1910.12308). An interaction picks
an agent ``i`` at the end of its local phase of ``H`` SGD steps (or a geometric number
with mean ``H``: ``geometric_steps=true``, the paper's model) and a neighbour ``j``
uniformly at random; ``Q`` is a compressor (``Q(v)`` is decoded against the
receiver's own model, the lattice quantiser's reference).

* Blocking: ``j`` also makes its ``H`` steps, then both average::

      x_i <- (x_i' + Q(x_j')) / 2,    x_j <- (x_j' + Q(x_i')) / 2

* Non-blocking (the default): ``j`` answers with the model it last published and keeps
  computing; with ``h_i`` the sum of ``i``'s local gradients since it published::

      x_i <- (x_i_pub + Q(x_j_pub)) / 2 - lr h_i,    x_j <- (x_j_pub + Q(x_i_pub)) / 2

  and ``j``'s own local progress is added at its next event. In the simulator a local
  phase is computed when its event fires, so ``j``'s steps after the exchange start
  from the averaged model (the steps it took before are a second-order difference).

In the distributed engine each agent is a process: the partner applies
:meth:`SwarmSGD.absorb` to its own published model on its rpc thread while it keeps
computing, and adds the change to its iterate at its next event.

Without compression, every exchange preserves ``x_i_pub + x_j_pub``: the mean of the
published models moves only by local steps. AD-PSGD (Lian et al. 2018, "Asynchronous
Decentralized Parallel SGD") is the non-blocking form with one local step and no
compression: ``x_i, x_j <- (x_i + x_j) / 2``, then ``x_i <- x_i - lr g_i``.

``lr_warmup = K`` ramps an agent's step up over its first ``K`` interactions (Goyal et
al. 2017's gradual warm-up, counted per agent as an asynchronous method has no common
round): a local phase that starts when the agent has taken part in ``c`` exchanges
steps ``lr * min(1, (c + 1) / K)``. An agent takes part in about two exchanges a round
(it initiates one and is picked as a partner about once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nettrain.algorithms.base import GossipAlgorithm
from nettrain.algorithms.local import local_phase
from nettrain.algorithms.sgd import SGDState, WarmedStep, sgd_direction
from nettrain.compression import Compressor, Identity
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator
from nettrain.problem.oracle import Oracle


@dataclass(frozen=True)
class SwarmState:
    x: torch.Tensor  # (m, d) every agent's published model
    interactions: torch.Tensor  # (m,) int64, exchanges each agent took part in


@dataclass(frozen=True)
class SwarmSGD(WarmedStep, GossipAlgorithm[SwarmState]):
    """SwarmSGD; see the module docstring for the update rules."""

    local_steps: int = 1
    compressor: Compressor = field(default_factory=Identity)  # Q, applied by the engine
    blocking: bool = False
    geometric_steps: bool = False  # phases of a geometric number of steps, mean local_steps
    name = "swarm"
    tolerates_faults = True
    compresses = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local_steps < 0:
            raise ConfigError(f"local_steps must be >= 0 (0 = pure gossip), got {self.local_steps}")
        self.refuse_momentum("(momentum buffers across asynchronous averaging are not implemented)")

    @property
    def geometric_phases(self) -> bool:
        """``geometric_steps``: phases of a geometric number of steps, mean ``local_steps``."""
        return self.geometric_steps

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> SwarmState:
        return SwarmState(x0, torch.zeros(x0.shape[0], dtype=torch.int64))

    def local_phase(
        self,
        x: torch.Tensor,
        agents: torch.Tensor,
        steps: torch.Tensor,
        oracle: Oracle,
        lr: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps[r]`` SGD steps of ``agents[r]`` from ``x: (k, d)``, at ``lr`` (each
        row's step, ``(k, 1)``; ``self.lr`` where ``None``); the last losses ``(k,)``."""

        def update(rows, grad):
            x, *rate = rows
            _, g = grad(x)
            direction, _ = sgd_direction(x, g, SGDState(), self.sgd)
            if not rate:
                return (torch.add(x, direction, alpha=-self.sgd.lr),)
            return (torch.addcmul(x, direction, rate[0], value=-1), rate[0])

        rows = (x,) if lr is None else (x, lr)
        (x, *_), loss = local_phase(rows, agents, steps, oracle, update)
        return x, loss

    def phase(
        self,
        state: SwarmState,
        x: torch.Tensor,
        rows: torch.Tensor,
        steps: torch.Tensor,
        oracle: Oracle,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`local_phase` of the local ``rows``, at the warm-up's :meth:`rates` while
        one of them is in it (``lr`` is passed only then: a subclass's ``local_phase``
        without it keeps working where no warm-up is asked for)."""
        lr = self.rates(state, rows)
        if lr is None:
            return self.local_phase(x, rows, steps, oracle)
        return self.local_phase(x, rows, steps, oracle, lr)

    def rates(self, state: SwarmState, rows: torch.Tensor) -> torch.Tensor | None:
        """The warm-up's step of each of ``rows`` (local rows), ``(k, 1)``:
        ``lr * min(1, (c + 1) / lr_warmup)`` for an agent with ``c`` exchanges so far;
        ``None`` without a warm-up or once every one of them is past it."""
        if not self.lr_warmup:
            return None
        counts = state.interactions[rows]
        if bool((counts >= self.lr_warmup).all()):
            return None
        ramp = (counts + 1).clamp(max=self.lr_warmup).to(state.x.dtype) / self.lr_warmup
        return (self.lr * ramp)[:, None]

    def absorb(self, own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """The exchange's rule on a published model: ``(own + Q(other)) / 2``."""
        return (own + received) / 2

    def interact(self, state, pairs, oracle, comm, steps):
        i = comm.local_rows(pairs[:, 0])  # the initiators' rows
        j = comm.local_rows(pairs[:, 1], held_only=True)  # partners held here (the simulator)
        x = state.x  # (m, d) published models
        if self.blocking:
            movers = torch.cat([i, j])
            moved, losses = self.phase(state, x[movers], movers, steps.T.flatten(), oracle)
            sent = x.clone()
            sent[movers] = moved
            received = comm.swap(sent, pairs, ref=sent)
            new = x.clone()
            new[movers] = self.absorb(sent[movers], received[movers])
            loss = losses[: len(i)]
        else:
            moved, loss = self.phase(state, x[i], i, steps[:, 0], oracle)
            received = comm.swap(x, pairs, ref=x)
            new = x.clone()
            new[i] = self.absorb(x[i], received[i]) + (moved - x[i])
            new[j] = self.absorb(x[j], received[j])  # partners held here (the simulator)
        counts = state.interactions.clone()
        counts[torch.cat([i, j])] += 1
        return SwarmState(new, counts), loss

    def diagnostics(self, state: SwarmState) -> dict[str, Any]:
        """Interactions per agent (fewest, most) since the start."""
        return {
            "interactions_min": int(state.interactions.min()),
            "interactions_max": int(state.interactions.max()),
        }


@dataclass(frozen=True)
class ADPSGD(SwarmSGD):
    """AD-PSGD: SwarmSGD's non-blocking exchange with one local step and no compression."""

    name = "adpsgd"
    compresses = False  # D-PSGD's exchange as the paper has it: uncompressed

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local_steps != 1 or self.blocking or self.geometric_steps:
            raise ConfigError(
                "adpsgd makes one local step and a non-blocking exchange (local_steps=1, "
                "blocking=false, geometric_steps=false); algorithm=swarm varies them"
            )
