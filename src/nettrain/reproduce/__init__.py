"""``nettrain reproduce NAME``: one command per paper, checking its claims at small scale.

Each experiment runs its configurations for every seed of the request through
:func:`nettrain.experiment.run` (every run leaves an ordinary run folder, under
``DIR/seed-<s>/``), draws its plots, and returns a list of
:class:`~nettrain.reproduce.claims.Claim` written to ``DIR/claims.json``; the command
exits 0 only if every empirical claim holds (by-construction ones are reported only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nettrain.reproduce import block_async, easgd, next_sca, swarm
from nettrain.reproduce.claims import Claim, write_claims
from nettrain.reproduce.runner import Request

EXPERIMENTS: dict[str, Callable[[Request], list[Claim]]] = {
    "easgd": easgd.reproduce,
    "next": next_sca.reproduce,
    "swarm": swarm.reproduce,
    "block-async": block_async.reproduce,
}

__all__ = ["EXPERIMENTS", "Claim", "Path", "write_claims"]
