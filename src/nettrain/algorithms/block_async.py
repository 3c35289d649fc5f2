"""Asynchronous block-partitioned SGD on a shared model, and Hogwild.

Source: Kungurtsev, Egan, Chatterjee, Alistarh, "Asynchronous Optimization Methods for
Efficient Training of Deep Neural Networks with Guarantees", AAAI 2021, arXiv
1905.11845. Baseline: Hogwild (Niu, Recht, Re, Wright, "Hogwild!: A Lock-Free Approach
to Parallelizing Stochastic Gradient Descent", 2011).

``P`` processes update one model ``x: (d,)`` without locks. The flat vector is cut
into ``blocks`` contiguous blocks of (nearly) equal size
(:func:`~nettrain.problem.flat.block_slices`); block ``b`` is owned by
process ``b mod P``, so process ``c`` owns ``I^c = {c, c + P, c + 2P, ...}``. Process
``c``'s ``k``-th step::

    x~  <- read x                     (inconsistent: others write while c reads)
    g   <- stochastic subgradient of f at x~ on c's next mini-batch
    for every block b that the step writes (I^c, or all blocks in a full step):
        u_b <- m * u_b + g_b          (c's own momentum; Nesterov and weight decay as
                                       in nettrain.algorithms.sgd)
        x_b <- x_b - gamma_c(k) u_b   (a lock-free in-place write of the shared x)
    gamma_c(k) = lr / (1 + step_decay * lr * k)

The step size is diminishing and indexed by the per-process counter ``k`` (the closed
form of NEXT's rule ``a[k+1] = a[k] (1 - eps a[k])`` with ``a[0] = lr``,
``eps = step_decay``; ``step_decay = 0`` keeps ``lr``). Full steps write every
block: the first ``warmup`` steps, and after them every ``full_every``-th step
(the public re-implementation's alternation of full and partitioned updates).
Hogwild is the same step with every step full and no partition.

Two engines run it. ``engine=shared_memory`` runs ``P`` real processes on one model
in shared memory: each runs :meth:`BlockAsyncSGD.shared_step`, the step above written
against the shared-model pattern (:class:`~nettrain.patterns.SharedModel`).
``engine=sim`` runs it as a synchronous :class:`Algorithm` whose
``agents`` are the ``P`` workers: every round each worker reads the shared model with
per-block random delays, takes one step, and all writes of the round land together
(see :meth:`BlockAsyncSGD.step`), to study staleness at larger ``P`` than a machine
has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from nettrain.algorithms.base import Algorithm, BlockOracle
from nettrain.algorithms.sgd import LocalStep, masked_direction
from nettrain.errors import ConfigError
from nettrain.patterns import Communicator, SharedModel, shared_fields
from nettrain.problem.flat import block_slices
from nettrain.problem.oracle import Oracle, Problem, agent_seed

DELAY_STREAM = 0xB10C  # random stream of the simulated read delays


def block_index(d: int, blocks: int, device: torch.device | None = None) -> torch.Tensor:
    """The block of every coordinate (blocks of :func:`block_slices`), ``(d,)`` int64."""
    sizes = torch.tensor([s.stop - s.start for s in block_slices(d, blocks)], device=device)
    return torch.repeat_interleave(torch.arange(blocks, device=device), sizes)


def owned_blocks(worker: int, workers: int, blocks: int) -> tuple[int, ...]:
    """``I^c``: the blocks of process ``worker``, round robin (block ``b`` -> ``b mod P``)."""
    return tuple(range(worker, blocks, workers))


@dataclass(frozen=True)
class BlockAsyncState:
    """The simulated shared model and what the simulation keeps about it.

    ``S = max_delay``; ``history[t mod (S+1)]`` is the model at the start of round
    ``t``, and ``versions`` the same rounds' per-block write counts.
    """

    x: torch.Tensor  # (n, d) every row is the shared model
    u: torch.Tensor  # (n, d) momentum of each worker (only the blocks it writes move)
    history: torch.Tensor  # (S+1, d) the last S+1 versions of the shared model
    versions: torch.Tensor  # (S+1, blocks) int64 writes each block had received then
    updates: torch.Tensor  # (n, blocks) int64 writes of each worker to each block
    stale_sum: torch.Tensor  # (n,) int64 sum over reads of the staleness of the read
    stale_max: torch.Tensor  # (n,) int64 largest staleness of a read
    reads: torch.Tensor  # (n,) int64 block reads counted


@dataclass(frozen=True)
class BlockAsyncSGD(LocalStep, Algorithm[BlockAsyncState]):
    """Block-partitioned asynchronous momentum SGD (Kungurtsev et al. 2021); see the module.

    ``workers`` is ``P``: the processes of ``engine=shared_memory``, the agents of
    ``engine=sim``. ``max_delay`` is the simulator's largest read delay in rounds.
    """

    workers: int = 0  # 0: one per agent (engine=sim) or process (shared_memory), for_network
    blocks: int = 1
    step_decay: float = 0.0
    warmup: int = 0
    full_every: int = 0
    max_delay: int = 1
    seed: int = 0
    name = "block_async"
    uses_graph = False  # one shared model
    partitioned: ClassVar[bool] = True
    engines = frozenset({"sim", "shared_memory"})
    engines_note = (
        "updates one shared model: run it with engine=shared_memory (real processes, "
        "averaged across machines under torchrun with average_every=K) or engine=sim "
        "(simulated workers)"
    )
    shared_writes = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step_decay < 0:
            raise ConfigError(f"step_decay must be >= 0 (0 = constant step), got {self.step_decay}")
        if self.workers < 0 or self.blocks < 1:
            raise ConfigError(
                f"{self.name} needs workers >= 0 (0 = one per agent or process) and blocks >= 1"
            )
        if self.max_delay < 0:
            raise ConfigError(f"max_delay must be >= 0, got {self.max_delay}")
        if self.warmup < 0 or self.full_every < 0:
            raise ConfigError(
                f"warmup and full_every must be >= 0, got {self.warmup} and {self.full_every}"
            )
        if self.partitioned and self.blocks < self.workers:  # blocks >= 1 > workers = 0
            raise ConfigError(
                f"algorithm={self.name} needs blocks >= workers so that every worker owns a "
                f"block (the workers are the processes of engine=shared_memory, the agents of "
                f"engine=sim): blocks={self.blocks}, workers={self.workers}; set "
                f"blocks={self.workers} (or a multiple of it)"
            )

    def for_network(self, n_agents: int) -> BlockAsyncSGD:
        """``workers = 0`` becomes the run's workers: its agents, or its processes."""
        return dataclasses.replace(self, workers=n_agents) if self.workers == 0 else self

    def check(self, problem: Problem) -> None:
        if self.blocks > problem.dim:
            raise ConfigError(
                f"blocks={self.blocks} is more than the model's {problem.dim} parameters; "
                f"use blocks <= {problem.dim}"
            )

    # --- the rule, shared by both engines ---

    def step_size(self, k: int) -> float:
        """``gamma(k) = lr / (1 + step_decay * lr * k)`` at a process's ``k``-th step."""
        lr = self.sgd.lr
        return lr / (1.0 + self.step_decay * lr * k)

    def full(self, k: int) -> bool:
        """Whether a process's ``k``-th step (from 0) writes every block."""
        if not self.partitioned or k < self.warmup:
            return True
        return self.full_every > 0 and (k - self.warmup + 1) % self.full_every == 0

    def written(self, worker: int, k: int) -> tuple[int, ...]:
        """The blocks that process ``worker`` writes at its ``k``-th step."""
        if self.full(k):
            return tuple(range(self.blocks))
        return owned_blocks(worker, self.workers, self.blocks)

    def update(
        self, read: torch.Tensor, g: torch.Tensor, u: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``u_b <- m u_b + g_b`` on the written coordinates (``mask``, of ``read``'s
        shape; Nesterov and weight decay as in :mod:`nettrain.algorithms.sgd`): the
        direction ``d`` a write subtracts times ``gamma(k)``, and the new momentum."""
        return masked_direction(read, g, u, mask, self.sgd)

    # --- engine=shared_memory: one real process per worker ---

    def shared_blocks(self, workers: int) -> int:
        """``blocks``; a ConfigError unless the method was built for ``workers``."""
        if self.workers != workers:
            raise ConfigError(
                f"{self.name} was built for {self.workers} workers but processes="
                f"{workers}; build both from one config"
            )
        return self.blocks

    def shared_init(self, x: torch.Tensor) -> torch.Tensor:
        """The worker's momentum ``u: (d,)``, zero."""
        return torch.zeros_like(x)

    def shared_step(
        self, state: torch.Tensor, k: int, oracle: BlockOracle, shared: SharedModel
    ) -> tuple[torch.Tensor, float]:
        """Worker ``c``'s ``k``-th step (the module's rule): read the whole model while
        others write, the gradient for the blocks it writes only, then the lock-free
        writes ``x_b <- x_b - gamma(k) d_b`` of :meth:`written`."""
        blocks = self.written(shared.worker, k)
        read = shared.read_shared()
        loss, g = oracle(read, blocks)
        direction, u = self.update(read, g, state, shared.mask(blocks))
        shared.write_shared(blocks, direction, self.step_size(k))
        return u, loss

    # --- the simulator: P workers in one process, reads with random delays ---

    def init(self, x0: torch.Tensor, oracle: Oracle, comm: Communicator) -> BlockAsyncState:
        n = x0.shape[0]
        if n != self.workers:
            raise ConfigError(f"{self.name} was configured for {self.workers} workers, got {n}")
        depth = self.max_delay + 1
        zeros = torch.zeros(n, dtype=torch.int64)
        return BlockAsyncState(
            x=x0,
            u=torch.zeros_like(x0),
            history=x0[:1].expand(depth, -1).clone(),
            versions=torch.zeros(depth, self.blocks, dtype=torch.int64),
            updates=torch.zeros(n, self.blocks, dtype=torch.int64),
            stale_sum=zeros,
            stale_max=zeros,
            reads=zeros,
        )

    def written_mask(self, t: int) -> torch.Tensor:
        """``(n, blocks)`` bool: which blocks each worker writes in round ``t``."""
        mask = torch.zeros(self.workers, self.blocks, dtype=torch.bool, device="cpu")
        for c in range(self.workers):
            mask[c, list(self.written(c, t))] = True
        return mask

    def owned_mask(self) -> torch.Tensor:
        """``(n, blocks)`` bool: block ``b`` owned by worker ``c`` (none for Hogwild)."""
        b = torch.arange(self.blocks, device="cpu")
        mask = (b[None, :] % self.workers) == torch.arange(self.workers, device="cpu")[:, None]
        return mask if self.partitioned else torch.zeros_like(mask)

    def step(
        self, state: BlockAsyncState, t: int, oracle: Oracle, comm: Communicator
    ) -> tuple[BlockAsyncState, torch.Tensor]:
        """Round ``t``: every worker reads, steps and writes once (the read-delay model).

        Worker ``c`` reads the blocks it owns at the current version (it is their only
        writer in partitioned steps) and every other block ``b`` at the version of round
        ``t - s``, ``s`` uniform in ``{0, ..., min(max_delay, t)}``, drawn independently
        per worker and block from a seeded stream: the inconsistent read. Its mini-batch
        comes from the shard of agent ``pi_t(c)``, ``pi_t`` a seeded random permutation:
        with equal shards (``partition=iid``) that is a uniform draw from the whole
        training set, as in the shared-memory engine, not from a private shard (a block's
        owner would otherwise only ever see its own data). The writes of all workers in a
        round land together, as concurrent lock-free adds:
        ``x_b <- x_b - gamma(t) sum_{c writes b} d_{c,b}``. The staleness of a read of
        block ``b`` is the number of writes ``b`` received after the version read and up
        to the end of the round, ``c``'s own write of this round excluded
        (what the shared-memory engine counts with its version counters).
        """
        (n, d), device = state.x.shape, state.x.device
        depth = self.max_delay + 1
        blk = block_index(d, self.blocks, device)  # (d,)
        # the draws and the version counters on the CPU, the same on every device
        gen = torch.Generator().manual_seed(agent_seed(self.seed, t, DELAY_STREAM))
        delay = torch.randint(
            0, min(self.max_delay, t) + 1, (n, self.blocks), generator=gen, device="cpu"
        )
        delay = torch.where(self.owned_mask(), 0, delay)  # (n, blocks)
        slot = (t - delay) % depth  # (n, blocks) ring position of the version read
        # (n, d) inconsistent reads
        read = state.history[slot.to(device)[:, blk], torch.arange(d, device=device)]
        # worker c draws from agent shard[c]'s data
        shard = torch.randperm(n, generator=gen, device="cpu").to(device)
        rows = torch.empty_like(read)
        rows[shard] = read
        loss, g = oracle.grad(rows)
        loss, g = loss[shard], g[shard]  # (n,), (n, d) back in worker order
        written = self.written_mask(t)  # (n, blocks)
        mask = written.to(device)[:, blk]  # (n, d)
        direction, u = self.update(read, g, state.u, mask)
        shared = state.x[0] - self.step_size(t) * (direction * mask).sum(0)  # (d,)
        now = state.versions[t % depth]  # (blocks,) writes before this round
        after = now + written.sum(0)  # (blocks,)
        seen = state.versions[slot, torch.arange(self.blocks, device="cpu")]  # (n, blocks)
        stale = after[None, :] - seen - written.long()  # (n, blocks)
        nxt = (t + 1) % depth
        history, versions = state.history.clone(), state.versions.clone()
        history[nxt], versions[nxt] = shared, after
        new = BlockAsyncState(
            x=shared.expand(n, -1).clone(),
            u=u,
            history=history,
            versions=versions,
            updates=state.updates + written.long(),
            stale_sum=state.stale_sum + stale.sum(1),
            stale_max=torch.maximum(state.stale_max, stale.max(1).values),
            reads=state.reads + self.blocks,
        )
        return new, loss

    def diagnostics(self, state: BlockAsyncState) -> dict[str, Any]:
        """Read staleness (mean and max over every block read) and writes per block."""
        return staleness_fields(
            state.stale_sum.sum(), state.reads.sum(), state.stale_max.max(), state.updates.sum(0)
        )


staleness_fields = shared_fields  # record fields of the counters (nettrain.patterns)


@dataclass(frozen=True)
class Hogwild(BlockAsyncSGD):
    """Hogwild (Niu et al. 2011): every process writes every block, lock-free.

    The step of :class:`BlockAsyncSGD` with every step full: ``u <- m u + g``,
    ``x <- x - gamma_c(k) u`` on the whole vector. With one process it is sequential
    momentum SGD with the diminishing step.
    """

    name = "hogwild"
    partitioned: ClassVar[bool] = False
