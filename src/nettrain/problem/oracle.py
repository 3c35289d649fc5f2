"""The problem and its oracle: losses and gradients for a stack of agents at once.

``Oracle.grad(x: (m, d)) -> (loss: (m,), g: (m, d))`` evaluates every local agent's
loss on that agent's next mini-batch (or its full local data set) and the gradient,
in one call: ``torch.func.vmap`` over ``grad_and_value`` of a ``functional_call`` of
the model on views of the flat vector. A round of 256 agents is then a handful of
batched matrix products instead of 256 Python-level forward/backward passes. For a
single agent (the distributed engine's ``m = 1``) plain ``torch.autograd.grad`` is
about twice as fast as ``vmap`` and gives the same gradient up to rounding.

Sampling: agent ``i`` draws its mini-batches uniformly with replacement from its own
shard, by a counter-based generator (:func:`~nettrain.problem.random_layers.integers53`,
SplitMix64). Position ``b`` of its ``k``-th batch (``k = 0, 1, ...``; batch size ``B``)
is sample ``u mod |shard_i|`` of its shard, with ``u`` SplitMix64's output number
``k * B + b`` from the key ``agent_seed(seed, i)``: a 53-bit integer, so each sample's
probability is within a factor ``1 +- |shard_i| / 2^53`` of ``1 / |shard_i|`` (a modulo
bias below ``2^-20`` for any shard of fewer than ``2^33`` samples). An agent's batches
are thus a pure function of ``(seed, i, k, b)``, never of how agents are grouped into
processes or which of them are sampled together: the simulator and the distributed
engine see the same data. All the requested agents' batches are one vectorised draw
on the data's device; the oracle keeps only each agent's count ``k`` of batches drawn.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from nettrain.data import Dataset
from nettrain.errors import ConfigError
from nettrain.problem.backprop import losses_and_grads, runs_by_hand
from nettrain.problem.batched import BatchedModel, batched_loss
from nettrain.problem.buckets import BucketFeed, GradientSink
from nettrain.problem.buffers import BUFFER_POLICIES, Buffers, BufferSpec, rows
from nettrain.problem.compiled import Compiled
from nettrain.problem.execution import (
    CONVOLUTION_CHUNK_BYTES,
    Execution,
    free_memory,
    last_level_cache,
)
from nettrain.problem.flat import FlatSpec
from nettrain.problem.linearization import Linearization
from nettrain.problem.losses import Regularizer
from nettrain.problem.random_layers import SeededDropout, integers53, seeded
from nettrain.problem.vectorise import check_vectorisable, evaluation, training

DROPOUT_STREAM = 0xD0  # the agents' dropout keys, apart from their mini-batches (stream 0)


def agent_seed(seed: int, agent: int, stream: int = 0) -> int:
    """A 63-bit seed for ``agent``'s private random stream, a pure function of its inputs:
    the first 64-bit word of NumPy's ``SeedSequence([seed, agent, stream])``, top 63 bits."""
    return int(np.random.SeedSequence([seed, agent, stream]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Meter:
    """Per-agent work counted at the oracle's boundary; the engine reads and resets it.

    ``seconds``: time spent in the oracle's passes (all its agents together) since the
    last :meth:`take_seconds`, read on :attr:`clock`: for state on the CPU the calling
    thread's CPU time (``time.thread_time``), i.e. the passes' work without the time spent
    waiting for a core that other processes hold; on an accelerator, whose kernels the
    thread only launches, wall time. A slow agent of the distributed engine sleeps a
    multiple of it, so that what it repeats is its computing, as the virtual clock
    charges (:meth:`~nettrain.engines.sim.clock.CostModel.compute_seconds`), not its
    communication nor its waits.
    """

    samples: torch.Tensor  # (m,) int64, samples processed since the last reset
    clock: Callable[[], float]
    seconds: float = 0.0

    @classmethod
    def zeros(cls, m: int, device: torch.device | str) -> Meter:
        """``m`` agents' meter, counting nothing yet, on the clock for state on ``device``."""
        clock = time.thread_time if torch.device(device).type == "cpu" else time.perf_counter
        return cls(torch.zeros(m, dtype=torch.int64), clock)

    def reset(self) -> torch.Tensor:
        out, self.samples = self.samples, torch.zeros_like(self.samples)
        return out

    def take_seconds(self) -> float:
        """The seconds spent computing since the last call, and start again from 0."""
        out, self.seconds = self.seconds, 0.0
        return out


@dataclass(frozen=True)
class Evaluation:
    """Test-set loss and accuracy of ``k`` parameter vectors (accuracy is None for regression)."""

    loss: torch.Tensor  # (k,)
    accuracy: torch.Tensor | None  # (k,)


@dataclass
class Problem:
    """Model, loss, regulariser and data: everything that defines ``f_i`` and the test metric.

    The model object is a template: its parameters are never used, every call
    substitutes views of a flat vector through ``functional_call``; its buffers (BatchNorm
    statistics) are the starting buffers of every agent, which then keeps its own
    (:mod:`~nettrain.problem.buffers`; ``buffer_policy`` says which buffers evaluate an
    agent). Dropout layers are swapped, in a copy, for per-agent seeded ones
    (:mod:`~nettrain.problem.random_layers`). Inputs may have any shape ``(N, ...)``.
    """

    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, k), (B, ...) -> (B,)
    regularizer: Regularizer
    data: Dataset
    buffer_policy: str = "mix"  # mix: every agent evaluated with the mean buffers; local: own
    execution: Execution = field(default_factory=Execution)
    template: nn.Module = field(init=False)  # the model as given (its own dropout layers)
    spec: FlatSpec = field(init=False)
    buffer_spec: BufferSpec = field(init=False)
    dropouts: tuple[SeededDropout, ...] = field(init=False)
    batched: BatchedModel | None = field(init=False)  # the layer-wise form, where one exists

    def __post_init__(self) -> None:
        if self.buffer_policy not in BUFFER_POLICIES:
            raise ConfigError(
                f"buffers={self.buffer_policy!r} is unknown; choose one of "
                f"{', '.join(BUFFER_POLICIES)}"
            )
        self.template = self.model
        self.model, self.dropouts = seeded(self.model)
        self.spec = FlatSpec.of(self.model)
        if not self.spec.dim:
            raise ConfigError(
                f"the model has no parameters to train ({type(self.template).__name__}); "
                "give it a layer with weights, e.g. nn.Linear"
            )
        self.buffer_spec = BufferSpec.of(self.model)
        shape = tuple(self.data.feature_shape)
        self.batched = BatchedModel.of(self.model, shape, native=self.execution.native)

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def stateless(self) -> bool:
        """No buffers and no random layers: the model is a pure function of ``x``."""
        return not self.buffer_spec and not self.dropouts

    def initial_params(self, seed: int, reinitialise: bool = True) -> torch.Tensor:
        """PyTorch's default initialisation of the model drawn under ``seed``, as ``(d,)``
        (``reinitialise=False``: the template's own parameters, e.g. pretrained ones).

        Re-initialising also resets the template's buffers (BatchNorm's statistics), the
        agents' starting buffers. It draws on the CPU's generator whatever the model's
        device, so a run starts from the same parameters on every device (a GPU's
        generator gives other numbers for the same seed); that generator is forked, so
        seeding here leaves the caller's streams untouched.
        """
        if reinitialise:
            tensors = self.model.state_dict(keep_vars=True)
            on_cpu = all(t.device.type == "cpu" for t in tensors.values())
            model = self.model if on_cpu else copy.deepcopy(self.model).cpu()
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                for module in model.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            if model is not self.model:
                with torch.no_grad():
                    for name, value in model.state_dict().items():
                        tensors[name].copy_(value)
        return self.spec.flatten(self.model).clone()

    def forward(
        self,
        x: torch.Tensor,
        inputs: torch.Tensor,
        buffers: Buffers | None = None,
        key: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model at the flat parameters ``x: (d,)`` on ``inputs: (B, ...)``, in the
        template's current mode, with ``buffers`` (else the template's) and the dropout
        ``key`` (else torch's global generator)."""
        for layer in self.dropouts:
            layer.key = key
        try:
            tensors = self.spec.unflatten(x) | (buffers or {})
            return functional_call(self.model, tensors, (inputs,))
        finally:
            for layer in self.dropouts:
                layer.key = None

    def train_loss(
        self,
        x: torch.Tensor,
        buffers: Buffers,
        key: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
    ) -> tuple[torch.Tensor, Buffers]:
        """One agent's training pass: ``(L, buffers')`` with
        ``L = sum_b w_b loss(model(x; xb_b), yb_b)``; ``buffers'`` are the buffers the pass
        updated (training mode; the model's mode is set by the caller)."""
        buffers = dict(buffers)  # BatchNorm updates these tensors in place
        loss = (self.loss(self.forward(x, xb, buffers, key), yb) * wb).sum()
        return loss, buffers

    def batch_loss(
        self, x: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor
    ) -> torch.Tensor:
        """``sum_b w_b * loss(model(x; xb_b), yb_b)`` for one agent: ``x (d,)``, ``xb (B, ...)``,
        in evaluation mode (no dropout, the template's buffers)."""
        with evaluation(self.model):
            return (self.loss(self.forward(x, xb), yb) * wb).sum()

    @torch.no_grad()
    def evaluate(
        self,
        x: torch.Tensor,
        buffers: Buffers | None = None,
        chunk: int = 16,
        samples: int | None = None,
        split: str = "test",
    ) -> Evaluation:
        """Test loss and accuracy of each row of ``x: (k, d)`` in evaluation mode, with
        ``buffers: {name: (k, ...)}`` (else the template's), on the first ``samples`` test
        samples (default: all); chunks of ``chunk`` vectors. ``split="val"``: on the
        validation samples in place of the test ones."""
        xt, yt = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        if xt is None:
            raise ConfigError(f"the data set has no {split} split (validation=0)")
        xt, yt = xt[:samples], yt[:samples]
        buffers = buffers or {}

        def one(v: torch.Tensor, b: Buffers) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.forward(v, xt, b)  # (M, k_out)
            loss = self.loss(out, yt).mean()
            if self.data.n_classes:
                return loss, (out.argmax(-1) == yt).float().mean()
            return loss, loss.new_zeros(())

        parts = []
        with evaluation(self.model):
            for i in range(0, len(x), chunk):
                part = {n: b[i : i + chunk] for n, b in buffers.items()}
                parts.append(vmap(one)(x[i : i + chunk], part))
        losses, accs = zip(*parts, strict=True)
        acc = torch.cat(accs) if self.data.n_classes else None
        return Evaluation(torch.cat(losses), acc)

    def check(self) -> None:
        """Raise a ConfigError naming the layer if the model cannot run in the vectorised
        oracle (torch.func.vmap over agents) or fails on the data, before any work."""
        check_vectorisable(self)

    def oracle(
        self,
        shards: Sequence[torch.Tensor],
        agents: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        with_regularizer: bool = True,
        compile: bool | None = None,
    ) -> Oracle:
        """The oracle of the agents ``agents`` on their training ``shards``; ``compile``
        overrides :attr:`Execution.compile` (None: as the execution says)."""
        return Oracle(self, shards, agents, batch_size, seed, with_regularizer, compile=compile)


# layers whose activations are many times their parameters (Oracle.chunk)
CONVOLUTIONS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def take(flat: torch.Tensor, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows ``idx: (k, B)`` of ``flat: (N, F)``, the rows of a tensor whose rows are of
    ``shape`` flattened: ``(k, B, *shape)``."""
    return torch.index_select(flat, 0, idx.view(-1)).view(*idx.shape, *shape)


class Oracle:
    """Loss and gradient of the local agents' objectives ``f_i(x) = E loss + r(x)``.

    Reads only its own agents' samples (``shards[k]`` are the training indices of
    ``agents[k]``), through their indices :attr:`rows`, without a copy. ``batch_size =
    0`` means the full local batch: every sample of the shard, weighted ``1/|shard|``;
    shards of unequal size are padded and masked.

    Also the local agents' model state beyond ``x``: how many mini-batches each has
    drawn (:attr:`drawn`, see the module's "Sampling"), their buffers (:attr:`buffers`,
    ``{name: (m, ...)}``, updated by every training pass) and, for a model with dropout,
    a generator per agent (seeded by ``(seed, agent, stream)``) that draws each pass's
    dropout key. :meth:`local_state` holds all of it for checkpoints.

    ``compile`` (default :attr:`Execution.compile` of the problem): the kernels of stacks
    of agents run compiled (:class:`~nettrain.problem.compiled.Compiled`, built on first
    use, one per kernel and oracle).
    """

    def __init__(
        self,
        problem: Problem,
        shards: Sequence[torch.Tensor],
        agents: Sequence[int],
        batch_size: int,
        seed: int,
        with_regularizer: bool = True,
        *,
        compile: bool | None = None,
    ) -> None:
        if len(shards) != len(agents):
            raise ValueError(f"{len(shards)} shards for {len(agents)} agents")
        if batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0 = full local batch), got {batch_size}")
        self.problem = problem
        self.agents = torch.as_tensor(list(agents), dtype=torch.int64)
        self._m = len(self.agents)
        self._local = torch.arange(self._m)  # every local agent, in order: read only
        self._modules = tuple(problem.model.modules())  # listed once for each pass's mode
        self.batch_size = batch_size
        self.with_regularizer = with_regularizer
        self.compile = problem.execution.compile if compile is None else compile
        device = problem.data.x_train.device
        sizes = torch.tensor([len(s) for s in shards], dtype=torch.int64)
        # This process's samples, agent after agent, as rows of the training set: read
        # through these indices, never copied (a copy of a 15,000-sample Fashion-MNIST
        # shard took a tenth of a second of a distributed run's clock on a loaded machine).
        self.rows = torch.cat(list(shards)).to(device)  # (sum |shard|,) int64
        self.x, self.y = problem.data.x_train, problem.data.y_train  # (N, ...), shared
        # their rows flattened, (N, F) and (N, T): views, or copied once if not contiguous
        self._x_rows, self._y_rows = (t.reshape(len(t), -1) for t in (self.x, self.y))
        self.sizes = sizes
        self.offsets = torch.cumsum(sizes, 0) - sizes  # (m,)
        self.meter = Meter.zeros(len(agents), device)
        # Samples one call counts per agent: B, or the whole shard (B = 0).
        self._counted = sizes.clone() if batch_size == 0 else torch.full_like(sizes, batch_size)
        # Mini-batch streams (module docstring), on the data's device: each agent's key,
        # its count of batches drawn, and its shard's size and offset in :attr:`rows`.
        keys = [agent_seed(seed, int(a)) for a in agents]
        self.keys = torch.tensor(keys, dtype=torch.int64, device=device)  # (m,)
        self.drawn = torch.zeros(len(agents), dtype=torch.int64, device=device)  # (m,)
        self._sizes = sizes.to(device)[:, None]  # (m, 1)
        self._offsets = self.offsets.to(device)[:, None]  # (m, 1)
        self._positions = torch.arange(batch_size, dtype=torch.int64, device=device)  # (B,)
        self._weights: torch.Tensor | None = None  # (m, B) of 1 / B, read only
        self._no_keys = torch.zeros(len(agents), dtype=torch.int64, device=self.x.device)
        self.dropout_generators = [
            torch.Generator().manual_seed(agent_seed(seed, int(a), DROPOUT_STREAM))
            for a in (agents if problem.dropouts else ())
        ]
        stacked = problem.buffer_spec.stack(problem.model, len(agents))
        self.buffers = {k: v.to(device) for k, v in stacked.items()}  # (m, ...) each
        self._grad = vmap(grad_and_value(problem.train_loss, has_aux=True))
        if batch_size == 0:
            self._full = self._full_batch_table()

    @property
    def m(self) -> int:
        return self._m

    def _full_batch_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded indices ``(m, L)`` and weights ``(m, L)`` with ``1/|shard|`` on real samples."""
        L = int(self.sizes.max())
        pos = torch.arange(L)
        mask = pos[None, :] < self.sizes[:, None]  # (m, L)
        idx = torch.where(mask, self.offsets[:, None] + pos[None, :], 0)
        w = mask.to(self.x.dtype) / self.sizes[:, None].to(self.x.dtype)
        return idx.to(self.x.device), w.to(self.x.device)

    def _sample(self, local: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Local positions (into :attr:`rows`) and weights, both ``(k, B)``, for the distinct local
        agents ``local`` (None: all of them, in order); each of them then counts one more
        batch drawn.

        Agent ``j``'s row is its batch number ``k = drawn[j]``: positions ``k * B + b``
        hashed with its key (:func:`integers53`), modulo its shard's size (module
        docstring). One vectorised draw for all of ``local``, on the data's device.
        """
        if self.batch_size == 0:
            idx, w = self._full
            return (idx, w) if local is None else (idx[local], w[local])
        B = self.batch_size
        if local is None:  # every agent: no gathers and scatters of the counters
            drawn, keys, sizes, offsets = self.drawn, self.keys, self._sizes, self._offsets
        else:
            local = local.to(self.drawn.device)
            drawn, keys = self.drawn[local], self.keys[local]  # (k,)
            sizes, offsets = self._sizes[local], self._offsets[local]
        u = integers53(keys, torch.add(self._positions, drawn[:, None], alpha=B))  # (k, B)
        idx = u.remainder_(sizes).add_(offsets)
        if local is not None:
            self.drawn[local] = drawn + 1
            return idx, torch.full(idx.shape, 1.0 / B, dtype=self.x.dtype, device=idx.device)
        self.drawn.add_(1)
        if self._weights is None:  # the same weights every call: made once
            self._weights = torch.full(idx.shape, 1.0 / B, dtype=self.x.dtype, device=idx.device)
        return idx, self._weights

    def grad(
        self,
        x: torch.Tensor,
        local: torch.Tensor | None = None,
        *,
        smooth: bool = False,
        sink: GradientSink | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss ``(k,)`` and gradient ``(k, d)`` of local agents ``local`` at ``x: (k, d)``.

        ``local`` indexes this oracle's agents (default: all of them, ``k = m``).
        ``smooth=True`` leaves out the regulariser (methods that apply its prox).
        Each call consumes one mini-batch per agent and counts its samples. The agents
        are taken :attr:`chunk` at a time. Both tensors are new, the caller's to
        overwrite (an SGD step writes the new ``x`` into the gradient's memory:
        :func:`~nettrain.algorithms.sgd.sgd_step`).

        ``sink`` (:class:`~nettrain.problem.buckets.GradientSink`) gets the gradient's
        columns bucket by bucket (:func:`~nettrain.problem.buckets.gradient_buckets`, at
        most ``sink.bucket_bytes`` each, the last layers first), every column once, before
        this returns: with the layer-wise batched kernel in one pass, each as soon as the
        backward pass has finished it, from autograd hooks on the stacked per-layer
        parameters; otherwise all of them after the pass. The gradient is the same either
        way.
        """
        return self._grads(x, local, smooth, sink, None)

    def descend(
        self, x: torch.Tensor, lr: float, local: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One SGD step of the local agents ``local`` (default: all) in place on
        ``x: (k, d)``, ``x_i <- x_i - lr * grad f_i(x_i)`` on each one's next mini-batch;
        returns their losses ``(k,)`` at ``x`` before the step.

        The numbers are those of :meth:`grad` followed by ``x - lr * g``, bit for bit.
        Where the backward pass is written out (:mod:`~nettrain.problem.backprop`) and
        there is no regulariser, each layer's gradient is added into ``x`` as it is made,
        a block of agents at a time from the cache: no gradient stack is written, and
        ``x`` is read and written once instead of the gradient written, then read with
        ``x``, then overwritten (local SGD on 256 agents of MLP 784-128-10 on the CPU:
        benchmarks/README.md); elsewhere the gradient is taken, then added."""
        return self._grads(x, local, False, None, -lr)[0]

    def _grads(
        self,
        x: torch.Tensor,
        local: torch.Tensor | None,
        smooth: bool,
        sink: GradientSink | None,
        alpha: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`grad`; with ``alpha``, ``x += alpha * g`` in place and ``(loss, x)``
        (:meth:`descend`)."""
        begin, every = self.meter.clock(), local is None
        if local is None:
            local = self._local  # agent ids, like the meters
        idx, w = self._sample(None if every else local)
        keys = self._keys(local)
        c = self.chunk if len(local) > 1 else 1  # one agent: no chunks (nor their sizing)
        regular = not smooth and self.with_regularizer and self.problem.regularizer.kind != "none"
        # One kernel for every chunk of the call, so that chunks change no number.
        kernel = self._kernel(len(local))
        # x += alpha g by the written-out backward pass, each layer's gradient as it is made
        adds = alpha is not None and not regular and kernel == self._batched_grad and self._by_hand
        feed = None
        if sink is not None and len(local) <= c and kernel in self._feeding:
            feed = self._feed(x.new_empty(x.shape), sink, x if regular else None)
            loss, g = self._pass(kernel, x, local, keys, idx, w, feed)
        elif len(local) <= c and not adds:
            loss, g = self._pass(kernel, x, local, keys, idx, w)
        else:
            loss, g = x.new_empty(len(local)), x if adds else torch.empty_like(x)
            for s in range(0, len(local), c):
                part = slice(s, s + c)
                loss[part], _ = self._pass(
                    kernel,
                    *(x[part], local[part], keys[part], idx[part], w[part]),
                    out=g[part],
                    alpha=alpha if adds else None,
                )
        if regular:
            loss = loss + self.problem.regularizer.value(x)
        if sink is not None and feed is None:  # every bucket, now: the regulariser added in
            g = self._feed(g, sink, x if regular else None).finish()
        elif regular and feed is None:
            g = g + self.problem.regularizer.grad(x)
        if alpha is not None and not adds:
            g = x.add_(g, alpha=alpha)
        if every:
            self.meter.samples += self._counted
        else:
            self.meter.samples[local] += self._counted[local]
        self.meter.seconds += self.meter.clock() - begin
        return loss, g

    def _feed(self, out: torch.Tensor, sink: GradientSink, x: torch.Tensor | None) -> BucketFeed:
        """A feed of ``out: (k, d)`` to ``sink``, adding the regulariser's gradient at
        ``x: (k, d)`` to each bucket when ``x`` is given (elementwise: the same numbers as
        adding it to the whole)."""
        extra = None
        if x is not None:
            regularizer = self.problem.regularizer

            def extra(cols: slice) -> torch.Tensor:
                return regularizer.grad(x[:, cols])

        return BucketFeed(out, self.problem.spec.slices, sink, extra)

    def _pass(
        self,
        kernel: Callable[..., tuple[torch.Tensor, torch.Tensor, Buffers]],
        x: torch.Tensor,
        local: torch.Tensor,
        keys: torch.Tensor,
        idx: torch.Tensor,
        w: torch.Tensor,
        feed: BucketFeed | None = None,
        out: torch.Tensor | None = None,
        alpha: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward and backward pass of the agents ``local`` on their batches ``idx``
        by ``kernel``: ``(loss (k,), g (k, d))``, detached; their buffers updated. With a
        ``feed`` (the batched kernel only) the gradient is written into ``feed.out`` and
        handed out bucket by bucket during the backward pass. With ``out: (k, d)`` the
        gradient is ``out`` (the batched kernel writes it there, any other is copied);
        with ``alpha`` too (the written-out backward pass only), ``out += alpha * g``."""
        buffers = rows(self.buffers, local) if self.buffers else {}
        options: dict[str, Any] = {} if feed is None else {"feed": feed}
        if out is not None and kernel in self._feeding:
            options["out"] = out
        if alpha is not None:
            options["alpha"] = alpha
        own = kernel == self._module_grad  # its own copy of the model, always training
        with contextlib.nullcontext() if own else training(self.problem.model, self._modules):
            g, loss, buffers = kernel(x, buffers, keys, *self.samples(idx), w, **options)
        for name, value in buffers.items():
            self.buffers[name][local] = value.detach()
        if out is not None and g is not out:
            g = out.copy_(g)
        return loss.detach(), g.detach()

    def samples(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(k, B, ...)`` and targets ``(k, B, ...)`` at the local positions
        ``idx: (k, B)`` (agent after agent, :attr:`rows`), by ``index_select`` on flat
        rows of the training set (about twice as fast as advanced indexing on a large
        batch)."""
        rows = self.rows[idx]  # (k, B) rows of the training set
        xb = take(self._x_rows, rows, self.x.shape[1:])
        return xb, take(self._y_rows, rows, self.y.shape[1:])

    def _kernel(self, k: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor, Buffers]]:
        """The kernel of a call for ``k`` agents: the batched model where there is one
        (compiled with :attr:`compile`), else ``vmap`` (compiled with it too); for one
        agent uncompiled, unless its backward pass is written out (:attr:`_by_hand`), the
        model itself (:meth:`_module_grad`) where it has no buffers, else one agent's
        autograd through ``functional_call``."""
        if self.compile and self.problem.batched is not None:
            return self._compiled_batched
        if k == 1 and not self._by_hand:
            return self._module_grad if self._own is not None else self._single_grad
        if self.problem.batched is not None:
            return self._batched_grad
        return self._compiled_vmap if self.compile else self._vmap_grad

    @property
    def _feeding(self) -> tuple[Callable[..., Any], ...]:
        """The kernels that write the gradient into ``out`` and feed buckets as they go."""
        return (self._batched_grad, self._module_grad)

    @functools.cached_property
    def _own(self) -> OwnModel | None:
        """The model for one agent's pass (:meth:`_module_grad`), where it has no buffers."""
        return OwnModel.of(self.problem) if not self.problem.buffer_spec else None

    @functools.cached_property
    def _compiled_batched(self) -> Compiled[tuple[torch.Tensor, torch.Tensor, Buffers]]:
        """:meth:`_batched_grad` as one compiled graph, forward and backward:
        ``torch.func.grad_and_value`` of :meth:`_batched_total` (in a trial on the CPU,
        faster for few agents than a compiled forward pass and autograd's backward)."""

        def build() -> Callable[..., tuple[torch.Tensor, torch.Tensor, Buffers]]:
            grad = torch.compile(grad_and_value(self._batched_total, has_aux=True), fullgraph=True)

            def kernel(
                x: torch.Tensor, buffers: Buffers, *batch: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, Buffers]:
                g, (_, loss) = grad(x, *batch)  # (k, d), (k,)
                return g, loss, buffers

            return kernel

        return Compiled(build, self._batched_grad)

    @functools.cached_property
    def _compiled_vmap(self) -> Compiled[tuple[torch.Tensor, torch.Tensor, Buffers]]:
        """:meth:`_vmap_grad` with the vmapped ``grad_and_value`` compiled."""

        def build() -> Callable[..., tuple[torch.Tensor, torch.Tensor, Buffers]]:
            grad = torch.compile(self._grad, fullgraph=True)
            return functools.partial(self._vmap_grad, grad=grad)

        return Compiled(build, self._vmap_grad)

    @functools.cached_property
    def chunk(self) -> int:
        """Agents per pass: :attr:`Execution.chunk_agents`, or with ``auto`` as many as
        fit in the memory budget (:meth:`pass_bytes` per agent) and, for a model with
        convolutions on the CPU, in twice the last-level cache and in
        :data:`~nettrain.problem.execution.CONVOLUTION_CHUNK_BYTES`; at least one."""
        execution = self.problem.execution
        if execution.chunk_agents != "auto":
            return int(execution.chunk_agents)
        budget = execution.memory_gb * 2**30 or free_memory(self.x.device) / 4
        convolves = any(isinstance(m, CONVOLUTIONS) for m in self._modules)
        capped = convolves and self.x.device.type == "cpu"
        # cache 0 (none listed, or not capped): the memory budget alone
        cache = min(2 * last_level_cache(), CONVOLUTION_CHUNK_BYTES) if capped else 0
        return max(1, int(min(budget, cache or budget) // self.pass_bytes()))

    def pass_bytes(self) -> int:
        """Memory one agent adds to a pass, estimated from one real pass of agent 0 on one
        batch: three times the activations autograd saves for the backward pass (the saved
        tensors, their gradients and the layers' outputs; views of the parameters and of the
        inputs cost nothing), plus the batch's inputs and two rows of ``d``: the gradient
        and, by autograd or ``vmap``, its copy into the stack. The written-out backward
        pass writes into the stack without the copy, so for a perceptron the second row
        is a margin, which the round's other tensors of the state's size (a mixed stack)
        use up."""
        problem = self.problem
        B = self.batch_size or int(self.sizes.max())
        idx = torch.arange(B, device=self.x.device) % int(self.sizes[0])
        xb, yb = self.samples(idx[None])  # (1, B, ...)
        x0 = problem.spec.flatten(problem.model).to(self.x)[None]
        wb = torch.full((1, B), 1.0 / B, dtype=self.x.dtype, device=self.x.device)
        key = torch.zeros(1, dtype=torch.int64, device=self.x.device)
        free = {x0.untyped_storage().data_ptr(), xb.untyped_storage().data_ptr()}
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if t.untyped_storage().data_ptr() not in free:
                saved += t.numel() * t.element_size()
            return t

        buffers = rows(self.buffers, slice(0, 1))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), training(problem.model):
            self._single_grad(x0, buffers, key, xb, yb, wb)
        return 3 * saved + xb.numel() * xb.element_size() + 2 * x0.numel() * x0.element_size()

    def _keys(self, local: torch.Tensor) -> torch.Tensor:
        """Each local agent's dropout key for its next pass ``(k,)`` int64 (zeros without
        dropout), drawn from the agent's own generator."""
        if not self.dropout_generators:  # read only
            return self._no_keys[: len(local)]
        generators = [self.dropout_generators[i] for i in local.tolist()]
        keys = [torch.randint(1 << 62, (1,), generator=g, device=g.device) for g in generators]
        return torch.cat(keys).to(self.x.device)

    # The kernels: (x (k, d), buffers, keys (k,), xb (k, B, ...), yb (k, B, ...), wb (k, B))
    # -> (g (k, d), loss (k,), buffers (k, ...)).

    def _vmap_grad(
        self,
        x: torch.Tensor,
        buffers: Buffers,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        grad: Callable[..., Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Buffers]:
        """Any model: ``vmap`` over agents of ``grad_and_value`` of one agent's loss
        (``grad``: that vmapped function compiled, else :attr:`_grad`)."""
        g, (loss, buffers) = (grad or self._grad)(x, buffers, keys, xb, yb, wb)
        return g, loss, buffers

    def _single_grad(
        self,
        x: torch.Tensor,
        buffers: Buffers,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, Buffers]:
        """One agent (``k = 1``) by ``torch.autograd.grad``: vmap over a single agent costs
        about twice as much (measured in benchmarks/distributed_overhead.py)."""
        own = {name: b[0].clone() for name, b in buffers.items()}
        with torch.enable_grad():
            p = x[0].detach().requires_grad_(True)
            loss, own = self.problem.train_loss(p, own, keys[0], xb[0], yb[0], wb[0])
            (g,) = torch.autograd.grad(loss, p)
        return g[None], loss.detach()[None], {name: b[None] for name, b in own.items()}

    def _module_grad(
        self,
        x: torch.Tensor,
        buffers: Buffers,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        feed: BucketFeed | None = None,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Buffers]:
        """One agent (``k = 1``) of a model without buffers, by the model itself
        (:class:`OwnModel`): its parameters take ``x``'s values (one copy), then the
        module's forward pass and autograd's backward, as a plain training step runs them
        (on the Fashion-MNIST MLP, 385 us a call against 408 for the batched kernel of one
        agent through autograd: benchmarks/README.md).
        A perceptron's written-out backward pass is faster still and takes its place
        (:meth:`_kernel`). Gradient, ``out`` and ``feed`` as :meth:`_batched_grad`."""
        own = self._own
        assert own is not None
        with torch.no_grad():
            own.flat.copy_(x[0])
        for layer in own.dropouts:
            layer.key = keys[0]
        with torch.enable_grad(), _hooks(feed, own.params):
            loss = (self.problem.loss(own.model(xb[0]), yb[0]) * wb[0]).sum()
            grads = [g.view(1, -1) for g in torch.autograd.grad(loss, own.params)]
        return _gradient(grads, feed, out), loss.detach()[None], buffers

    def _batched_grad(
        self,
        x: torch.Tensor,
        buffers: Buffers,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        feed: BucketFeed | None = None,
        out: torch.Tensor | None = None,
        alpha: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, Buffers]:
        """A model of known layers without buffers, by the layer-wise batched model
        (:mod:`~nettrain.problem.batched`): the losses ``L_i`` (:meth:`_batched_losses`)
        and one backward pass of ``sum_i L_i``, whose gradient with respect to the
        parameters of agent ``i`` is ``grad L_i(x_i)``. With a ``feed``, each layer's
        gradient goes from its leaf's autograd hook into ``feed.out``, and each bucket to
        the feed's sink as soon as it is complete; else into ``out`` if given (a chunk's
        rows of the whole gradient: no copy of it). A perceptron whose backward pass is
        written out (:mod:`~nettrain.problem.backprop`) takes it without autograd, its
        buckets fed alike, or with ``alpha`` its gradient added into ``out`` scaled."""
        if self._by_hand:
            return (*self._by_hand_grad(x, keys, xb, yb, wb, feed, out, alpha), buffers)
        with torch.enable_grad():
            parts = torch.split(x, self.problem.spec.numels, 1)
            leaves = [p.detach().requires_grad_(True) for p in parts]  # (k, numel) each
            with _hooks(feed, leaves):  # each layer's gradient to its bucket as it is made
                loss = self._batched_losses(leaves, keys, xb, yb, wb)  # (k,)
                grads = torch.autograd.grad(loss.sum(), leaves)
        return _gradient(list(grads), feed, out), loss.detach(), buffers

    @functools.cached_property
    def _by_hand(self) -> bool:
        """Whether :meth:`_batched_grad` takes the gradient by
        :func:`~nettrain.problem.backprop.losses_and_grads`."""
        batched = self.problem.batched
        return batched is not None and runs_by_hand(batched, self.problem.loss)

    def _by_hand_grad(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
        feed: BucketFeed | None,
        out: torch.Tensor | None,
        alpha: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g (k, d), loss (k,))`` of :meth:`_batched_grad` by the written-out backward
        pass (``g`` is ``out`` plus ``alpha`` times the gradient with ``alpha``)."""
        spec, batched = self.problem.spec, self.problem.batched
        assert batched is not None
        args = (batched, spec.stacked(x), xb, yb, wb, keys, self.problem.loss)
        if feed is None:  # written straight into the stack's columns (out may be x)
            g = x.new_empty(x.shape) if out is None else out
            loss, _ = losses_and_grads(*args, into=spec.stacked(g), alpha=alpha)
            return g, loss
        hooks: dict[str, Callable[[torch.Tensor], None]] = {}
        if feed.hooked:  # each parameter's columns as they are made
            hooks = dict(zip(spec.names, map(feed.hook, range(len(spec.names))), strict=True))
        ready = (lambda name, grad: hooks[name](grad)) if hooks else None
        loss, grads = losses_and_grads(*args, ready)
        return feed.gradient([grads[name].view(len(xb), -1) for name in spec.names]), loss

    def _batched_total(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_i L_i, L)`` of the batched model at ``x: (k, d)``: the function whose
        gradient is every agent's gradient (:meth:`_batched_grad`), as one function of
        the stack for ``torch.func``."""
        loss = self._batched_losses(
            list(torch.split(x, self.problem.spec.numels, 1)), keys, xb, yb, wb
        )
        return loss.sum(), loss

    def _batched_losses(
        self,
        leaves: Sequence[torch.Tensor],
        keys: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor,
    ) -> torch.Tensor:
        """``L_i = sum_b w_ib loss(model(x_i; xb_ib), yb_ib)``, ``(k,)``, of the batched
        model at the parameters ``leaves`` (each ``(k, numel)``, in the flat order)."""
        batched = self.problem.batched
        assert batched is not None
        out = batched.forward(self._stacked(leaves), xb, keys)  # (k, K, B)
        return (batched_loss(self.problem.loss, out, yb) * wb).sum(1)

    def _stacked(self, parts: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: (k, *shape)}``, the stacked parameters viewing their columns ``parts``
        (each ``(k, numel)``, in the flat order)."""
        spec = self.problem.spec
        return {
            name: p.view(len(p), *shape)
            for name, p, shape in zip(spec.names, parts, spec.shapes, strict=True)
        }

    def linearize(self, x: torch.Tensor, local: torch.Tensor | None = None) -> Linearization:
        """The network linearised at ``x: (k, d)`` on each agent's next batch (no regulariser).

        Consumes and counts one batch per agent, like :meth:`grad`.
        """
        begin = self.meter.clock()
        idx, w = self._sample(local)
        every = slice(None) if local is None else local
        self.meter.samples[every] += self._counted[every]
        out = Linearization.at(self.problem, x, *self.samples(idx), w)
        self.meter.seconds += self.meter.clock() - begin
        return out

    def local_state(self) -> list[Any]:
        """Every local agent's state beyond its parameters, for checkpoints: its count of
        mini-batches drawn (a 0-d int64 tensor on the CPU), and for models with dropout or
        buffers a dict holding it (``"batches"``) with the dropout generator's state and
        the agent's buffers."""
        batches = [torch.tensor(k) for k in self.drawn.tolist()]  # int64
        if self.problem.stateless:
            return batches
        out = []
        for i, state in enumerate(batches):
            entry: dict[str, Any] = {"batches": state}
            entry["buffers"] = rows(self.buffers, slice(i, i + 1))
            if self.dropout_generators:
                entry["dropout"] = self.dropout_generators[i].get_state()
            out.append(entry)
        return out

    def load_local_state(self, states: Sequence[Any]) -> None:
        """Restore what :meth:`local_state` returned (the same agents, in order).

        Raises a ConfigError for a checkpoint of an earlier nettrain, which saved each
        agent's mini-batch ``torch.Generator`` state (a 1-d uint8 tensor) instead of its
        count: its mini-batch streams differ from this version's, so it cannot be
        continued. A count may be a 0-d integer tensor or an int.
        """
        if len(states) != self.m:
            raise ValueError(f"{len(states)} agent states for {self.m} agents")
        batches = [s["batches"] if isinstance(s, dict) else s for s in states]
        if not all(_is_count(b) for b in batches):
            raise ConfigError(
                "this checkpoint was written by an earlier nettrain, whose mini-batch "
                "streams differ from this version's (it saved a torch.Generator state per "
                "agent, this version counts batches drawn): it cannot be continued; rerun "
                "from the start"
            )
        for i, state in enumerate(states):
            if isinstance(state, dict):
                if self.dropout_generators:
                    self.dropout_generators[i].set_state(state["dropout"])
                for name, value in state["buffers"].items():
                    self.buffers[name][i] = value[0]  # copied to the buffers' device
        self.drawn.copy_(torch.tensor([int(b) for b in batches]))


def _is_count(value: Any) -> bool:
    """A count of batches drawn: an int or a 0-d integer tensor (never a generator state)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and not value.is_complex()
    return isinstance(value, int)


def _hooks(
    feed: BucketFeed | None, leaves: Sequence[torch.Tensor]
) -> contextlib.AbstractContextManager[None]:
    """The ``feed``'s hooks on the parameters' ``leaves`` during the pass (none without
    a feed)."""
    return contextlib.nullcontext() if feed is None else feed.hooks(leaves)


def _gradient(
    grads: list[torch.Tensor], feed: BucketFeed | None, out: torch.Tensor | None
) -> torch.Tensor:
    """A kernel's gradient ``(k, d)`` from each parameter's ``grads[j]`` ``(k, numel_j)``:
    the ``feed``'s (:meth:`~nettrain.problem.buckets.BucketFeed.gradient`), else
    concatenated into ``out`` (a chunk's rows of the whole gradient: no copy of it)."""
    return torch.cat(grads, 1, out=out) if feed is None else feed.gradient(grads)


@dataclass(frozen=True)
class OwnModel:
    """A copy of a problem's model, in training mode, whose parameters are views of one
    flat ``(d,)`` tensor in the flat order: one agent's pass sets them with one copy and
    runs the module as it is (:meth:`Oracle._module_grad`)."""

    model: nn.Module
    flat: torch.Tensor
    params: tuple[nn.Parameter, ...]
    dropouts: tuple[SeededDropout, ...]

    @classmethod
    def of(cls, problem: Problem) -> OwnModel | None:
        """The copy of ``problem.model``; None where it has no parameters, or where one
        is shared by several modules (it has one place in the flat vector, and two in the
        copy)."""
        spec = problem.spec
        named = list(problem.model.named_parameters(remove_duplicate=False))
        if not named or len(named) != len(spec.names):
            return None
        model = copy.deepcopy(problem.model).train()
        first = next(model.parameters())
        flat = torch.empty(spec.dim, dtype=first.dtype, device=first.device)
        params = []
        for name, piece, shape in zip(
            spec.names, flat.split(spec.numels), spec.shapes, strict=True
        ):
            owner, _, attr = name.rpartition(".")
            param = nn.Parameter(piece.view(shape))
            setattr(model.get_submodule(owner), attr, param)
            params.append(param)
        dropouts = tuple(m for m in model.modules() if isinstance(m, SeededDropout))
        return cls(model, flat, tuple(params), dropouts)
