"""Snapshots of asynchronous distributed runs: every rank's own state, written as it goes.

The processes of an asynchronous run never stop at one round together, so no
checkpoint can hold every agent at one point. With ``checkpoint_every=K`` each worker
writes its own state every ``K`` of its own rounds, and each parameter server its
shard as often: ``<run>/snapshots/rank-<r>.<k>.pt`` (its ``k``-th), one ``torch.save``
written to a temporary file then renamed. After each, the rank enters its snapshot's
file, round, events, wall time and exchange counts in ``snapshots/manifest.json``
(under a file lock: ranks update it concurrently), then deletes its previous file.
The manifest is the commit point: a crash before it is updated leaves it naming the
previous snapshot, still on disk, whose counts are the ones it holds.

``nettrain run --resume DIR`` (:class:`Snapshots`) restarts every rank from its latest
snapshot. What is guaranteed: each agent's own state (parameters, optimiser state,
random streams, batches drawn, counters) is exactly as it was at its snapshot, and
the agents replay their own draws from there. Exchanges whose two sides are not in
the snapshots alike (one side's snapshot was taken after the exchange, the other's
before) are lost at the crash, never applied twice: an exchange carries its
initiator's event number and a partner or server that answered it before the crash
refuses it when it is replayed. They are counted, from the snapshots as every rank
reads them when the run is resumed, as ``exchanges_lost_at_crash``, and the audit of the last record
(``interactions_unmatched``, ``exchanges_unmatched``) leaves them out
(:func:`crash_offsets`, from the counts each rank enters in the manifest with its
snapshot: resuming reads only the manifest and the rank's own snapshot).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nettrain.errors import DataError

DIR = "snapshots"
MANIFEST = "manifest.json"


def snapshot_path(folder: Path, rank: int, entry: Mapping[str, Any] | None = None) -> Path:
    """The file of rank ``rank``'s snapshot that its manifest ``entry`` names (runs
    written before entries named their file kept one, ``rank-<r>.pt``)."""
    return folder / DIR / (entry or {}).get("file", f"rank-{rank}.pt")


def write_snapshot(folder: Path, rank: int, saved: dict[str, Any], entry: dict[str, Any]) -> None:
    """Write rank ``rank``'s snapshot ``saved`` atomically into a new file, then its
    ``entry`` (round, events, wall time) in the manifest with the file's name and the
    snapshot's exchange counts (:func:`tally`), then delete the previous file."""
    before = read_manifest(folder).get(rank)  # only this rank writes its own entry
    number = (before or {}).get("number", 0) + 1
    entry = entry | {"file": f"rank-{rank}.{number}.pt", "number": number, "tally": tally(saved)}
    path = snapshot_path(folder, rank, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(saved | {"entry": entry}, tmp)
    os.replace(tmp, path)
    _enter(folder, rank, entry)
    if before is not None:
        snapshot_path(folder, rank, before).unlink(missing_ok=True)


def _enter(folder: Path, rank: int, entry: dict[str, Any]) -> None:
    """Replace rank ``rank``'s entry in the manifest, atomically and under its lock."""
    with open(folder / DIR / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(folder)
        manifest[rank] = entry
        text = json.dumps({"ranks": {str(r): e for r, e in sorted(manifest.items())}}, indent=1)
        tmp = folder / DIR / f".{MANIFEST}.{rank}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / DIR / MANIFEST)


def read_manifest(folder: Path) -> dict[int, dict[str, Any]]:
    """The manifest's entries by rank (empty where none was written)."""
    path = folder / DIR / MANIFEST
    if not path.is_file():
        return {}
    return {int(r): e for r, e in json.loads(path.read_text())["ranks"].items()}


@dataclass(frozen=True)
class Snapshots:
    """What every rank of a resumed asynchronous run is handed.

    ``round``: the records go on after the last one written (a rank whose snapshot is
    past an evaluation round posts its state as it is for that round's record, as a
    rank does that is ahead in any asynchronous run); ``records``: the records kept,
    all of them; ``wall_time_s``: the furthest rank's; ``offsets``: the exchanges the
    snapshots disagree on (:func:`crash_offsets`), counted when the run is resumed,
    before any rank writes a new snapshot.
    """

    folder: Path
    entries: Mapping[int, dict[str, Any]]
    round: int
    records: int
    wall_time_s: float
    offsets: torch.Tensor

    @classmethod
    def read(cls, folder: Path, workers: int, servers: int, rounds: list[int]) -> Snapshots:
        """The snapshots of the run in ``folder`` (``workers`` agent ranks, then
        ``servers`` server ranks); ``rounds``: the rounds of the records written."""
        entries = read_manifest(folder)
        missing = [r for r in range(workers + servers) if r not in entries]
        if missing:
            raise DataError(
                f"{folder / DIR} holds no snapshot of rank(s) {missing}: the run stopped "
                "before every rank wrote one (each writes after checkpoint_every of its own "
                "rounds); start it again"
            )
        wall = max(e["wall_time_s"] for e in entries.values())
        tallies = [  # from the manifest: no rank loads the others' states
            entries[r].get("tally") or tally(load_snapshot(folder, r, entries[r]))  # older runs
            for r in range(workers + servers)
        ]
        offsets = crash_offsets(tallies, workers)
        return cls(folder, entries, max(rounds, default=0), len(rounds), wall, offsets)

    def load(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s snapshot."""
        return load_snapshot(self.folder, rank, self.entries[rank])


def load_snapshot(folder: Path, rank: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Rank ``rank``'s snapshot in the run folder ``folder``, the one its manifest
    ``entry`` names."""
    return torch.load(snapshot_path(folder, rank, entry), weights_only=True)


def tally(saved: dict[str, Any]) -> dict[str, dict[str, int]]:
    """A snapshot's exchange counts: a worker's ``delivered`` (by partner) and
    ``answered`` (by initiator), a server's ``answered`` (its updates applied, by
    worker); keys as strings, as the manifest's JSON holds them."""
    if "shard" in saved:
        counts = {"answered": saved["shard"]["applied"]}
    else:
        counts = {
            "delivered": saved["comm"]["delivered"],
            "answered": (saved["peer"] or {}).get("answered", {}),
        }
    return {name: {str(k): int(c) for k, c in v.items()} for name, v in counts.items()}


def crash_offsets(tallies: Sequence[dict[str, dict[str, int]]], workers: int) -> torch.Tensor:
    """The exchanges the snapshots disagree on, from their :func:`tally` (of every
    rank, in rank order: the ``workers`` agents, then the servers): ``(n + S, n)``,
    entry ``[j, i]`` is what initiator ``i``'s snapshot counts as delivered to ``j`` (an
    agent, or server rank ``n + s``) less what ``j``'s snapshot counts as answered or
    applied for ``i``.

    Positive: ``j`` lost what ``i`` kept; negative: ``i`` lost what ``j`` kept (its
    replay is refused). ``|offsets|.sum()`` is ``exchanges_lost_at_crash``."""
    offsets = torch.zeros(len(tallies), workers, dtype=torch.int64)
    for j, counts in enumerate(tallies):
        for partner, count in counts.get("delivered", {}).items():
            offsets[int(partner), j] += count
        for i, count in counts["answered"].items():
            offsets[j, int(i)] -= count
    return offsets
