"""Running a user's model in the vectorised oracle: modes, and errors that name the layer.

The oracle runs every local agent's forward and backward pass in one
``torch.func.vmap`` call. Most layers vectorise; a layer that reads a tensor's value
into Python (``.item()``, ``if x.sum() > 0``), draws random numbers other than through
``nn.Dropout``, or updates a tensor it captured cannot. :func:`check_vectorisable`
runs the oracle once on two agents of two samples before any work and turns torch's
message into one that names the layer and says what to change (or, for an error that
is no vectorisation limit, such as a shape mismatch, names the layer that failed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from nettrain.errors import ConfigError


@contextmanager
def _mode(
    model: nn.Module, train: bool, modules: Sequence[nn.Module] | None = None
) -> Iterator[None]:
    """``model`` and all its modules (``modules``: ``model.modules()`` listed once by the
    caller, whose tree does not change) in mode ``train`` inside the block, as they were
    after. When every module already is (the oracle's passes, one a round), nothing is
    set: ``nn.Module.train`` walks the tree through ``__setattr__`` twice, a tenth of a
    millisecond a round for a small MLP."""
    modules = list(model.modules()) if modules is None else modules
    was = [m.training for m in modules]
    if all(w == train for w in was):
        yield
        return
    model.train(train)
    try:
        yield
    finally:
        for m, w in zip(modules, was, strict=True):
            m.training = w


def training(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> Any:
    """``model`` in training mode inside the block (dropout on, BatchNorm on batch stats);
    ``modules``: its ``modules()``, when the caller holds them listed."""
    return _mode(model, True, modules)


def evaluation(model: nn.Module) -> Any:
    """``model`` in evaluation mode inside the block (no dropout, running statistics)."""
    return _mode(model, False)


# (words in torch's message, the cause in plain words, what to change)
CAUSES = (
    (
        "random",
        "it draws random numbers",
        "draw randomness through nn.Dropout layers (nettrain seeds them per agent) or pass "
        "it in as data",
    ),
    (
        ".item()",
        "it reads a tensor's value into Python (.item(), float(t), or an if on a tensor)",
        "keep values as tensors: torch.where instead of if, no .item()",
    ),
    (
        "in-place",
        "it updates a tensor it captured in place",
        "register such tensors as buffers or compute out of place",
    ),
)


@contextmanager
def blame(model: nn.Module) -> Iterator[None]:
    """Turn an error raised inside the model's forward pass into a ConfigError naming the
    innermost layer that was running and saying what to change."""
    stack: list[nn.Module] = []
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}

    def enter(module: nn.Module, *_: Any) -> None:
        stack.append(module)

    def leave(module: nn.Module, *_: Any) -> None:
        if stack:
            stack.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in model.modules()]
    hooks += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if not stack:
            raise
        layer = stack[-1]
        where = f"layer {names[layer]!r} ({type(layer).__name__})"
        text = str(err).strip() or type(err).__name__
        known = [(cause, fix) for word, cause, fix in CAUSES if word in text]
        if not known:  # not a vectorisation limit: the model fails on this data
            raise ConfigError(
                f"{where} failed on two training samples of the data: {text.splitlines()[0]}"
            ) from None
        cause, fix = known[0]
        raise ConfigError(
            f"{where} cannot run in nettrain's vectorised oracle (torch.func.vmap over "
            f"agents): {cause}. To fix it: {fix}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()


def check_vectorisable(problem: Any) -> None:
    """Run one training pass of two agents on two samples each, and evaluate two models
    on two test samples, with :func:`blame` around them (a cheap rehearsal before any
    work, eager even where the run compiles its oracle)."""
    data = problem.data
    if len(data.y_train) < 2:
        return
    x0 = problem.initial_params(0, reinitialise=False)
    shards = [torch.tensor([0]), torch.tensor([1])]
    with blame(problem.model):
        oracle = problem.oracle(
            shards, [0, 1], batch_size=2, seed=0, with_regularizer=False, compile=False
        )
        oracle.grad(torch.stack([x0, x0]))
        problem.evaluate(torch.stack([x0, x0]), oracle.buffers or None, samples=2)
