"""``torch.compile`` for the oracle's kernels, with an eager fallback.

:class:`Compiled` runs a function compiled by ``torch.compile`` (``fullgraph=True``:
the whole kernel is one graph or compilation fails) and, the first time compiling or
running it raises (no C compiler, an operator the compiler does not support, a
backend error), warns once in one line naming the cause and runs the eager function
for the rest of the run. Graphs are built on the first call of each input shape, then
reused: a synchronous run, whose calls all have the same shapes, compiles once. For
the batched model a second shape (the last chunk of a round, an asynchronous method's
varying number of agents) compiles once more, with the number of agents symbolic
(``torch.compile``'s automatic dynamic shapes), and then serves every further number
of agents but one (``k = 1`` has a graph of its own). Under ``vmap`` every number of
agents compiles its own graph. Dynamo keeps at most
``torch._dynamo.config.recompile_limit`` (8) graphs of a kernel per process (for all
oracles together); past that, compiling fails and the oracle runs eagerly, warned.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
CAUSE_CHARS = 200  # the cause's text in the warning, at most


def cause(error: BaseException) -> str:
    """``Type: message`` of ``error`` on one line, whitespace collapsed, at most
    :data:`CAUSE_CHARS` characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= CAUSE_CHARS else text[: CAUSE_CHARS - 3] + "..."


class Compiled(Generic[T]):
    """A kernel with compiled parts, or its eager form once compiling or running the
    compiled parts raised (warned once, in one line).

    ``build()`` returns the kernel with its parts compiled by ``torch.compile``; it is
    called on the first call (building this object costs nothing), and ``torch.compile``
    builds each graph on the first call of its shapes. ``eager`` computes the same.
    """

    def __init__(self, build: Callable[[], Callable[..., T]], eager: Callable[..., T]) -> None:
        self.build, self.eager = build, eager
        self.compiled: Callable[..., T] | None = None
        self.failed: str | None = None  # the cause, once compilation failed

    def __call__(self, *args: object) -> T:
        if self.failed is None:
            try:
                if self.compiled is None:
                    self.compiled = self.build()
                return self.compiled(*args)
            except Exception as error:  # any failure of the compiler: run eagerly
                self.failed = cause(error)
                warnings.warn(
                    f"compile=true: torch.compile failed ({self.failed}); "
                    "nettrain continues without compiling",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.eager(*args)
