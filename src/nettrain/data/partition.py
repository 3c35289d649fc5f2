"""Split a training set among agents: IID, by-label shards, Dirichlet skew, or by group.

Every scheme returns one sorted int64 index tensor per agent; the parts are disjoint,
together hold every sample, and none is empty::

    iid        seeded permutation cut into near-equal parts (sizes differ by <= 1)
    shards     McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks
               from Decentralized Data": sort by label, cut into
               n_agents * classes_per_agent shards, deal classes_per_agent to each agent
    dirichlet  Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution
               for Federated Visual Classification": per class c, p_c ~ Dir(alpha 1_n)
               over agents; agent i gets a share p_c[i] of class c. Small alpha: each
               agent sees few classes; large alpha: close to IID
    groups     natural partition: each agent holds every sample of its groups (writers,
               users, clients). Groups in seeded random order, then largest first,
               each to the agent with the fewest samples so far (ties: lowest index);
               loads then differ by at most the largest group's size

All randomness comes from ``numpy.random.default_rng(seed)``; the global RNGs of numpy
and torch are never touched.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nettrain.errors import ConfigError, DataError

__all__ = ["PARTITIONS", "label_histogram", "partition"]

PARTITIONS = ("iid", "shards", "dirichlet", "groups")

# Dirichlet draws that leave an agent without samples are redrawn up to this many times.
DIRICHLET_MAX_TRIES = 100

Array = np.ndarray


@dataclass(frozen=True)
class _Options:
    """Scheme-specific settings, validated by the scheme that uses them."""

    classes_per_agent: int
    alpha: float
    n_classes: int | None
    groups: Array | None


def partition(
    labels: torch.Tensor,
    n_agents: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    classes_per_agent: int = 2,
    alpha: float = 0.5,
    n_classes: int | None = None,
    groups: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Split sample indices ``0..len(labels)-1`` among ``n_agents`` agents.

    Args:
        labels: ``(N,)`` training labels, integer class labels for ``shards`` and
            ``dirichlet``; for ``iid`` and ``groups`` anything with N rows (regression
            targets ``(N, *)`` too).
        n_agents: number of parts, ``1 <= n_agents <= N``.
        scheme: one of :data:`PARTITIONS`.
        seed: seeds a private numpy generator; the same seed gives the same parts.
        classes_per_agent: ``shards`` only: shards (hence at most classes) per agent.
        alpha: ``dirichlet`` only: concentration; 0.1 is strongly skewed, 100 near IID.
        n_classes: ``dirichlet``/``shards``: number of classes; default ``max(labels)+1``.
        groups: ``groups`` only: ``(N,)`` integer group id of each sample
            (:attr:`Dataset.groups <nettrain.data.Dataset.groups>`).

    Returns:
        ``n_agents`` sorted int64 index tensors, disjoint, covering all N samples,
        none empty.

    Raises:
        ConfigError: unknown scheme, ``n_agents < 1`` (key ``agents``), ``alpha <= 0``
            (``dirichlet_alpha``), ``classes_per_agent < 1`` (``classes_per_agent``).
        DataError: more agents than samples; float labels for a label-based scheme;
            too few samples for the shards; a Dirichlet draw that keeps leaving an
            agent empty; ``groups`` without group ids, with a wrong number of them,
            or with fewer groups than agents.
    """
    if scheme not in _SCHEMES:
        raise ConfigError(f"unknown partition {scheme!r}: choose one of {', '.join(PARTITIONS)}")
    if not _is_count(seed, minimum=0):
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    y = _check_labels(labels)  # (N,)
    _check_agents(n_agents, len(y))
    rng = np.random.default_rng(seed)
    ids = None if groups is None else _check_groups(groups, len(y))
    options = _Options(classes_per_agent, alpha, n_classes, ids)
    parts = _SCHEMES[scheme](y, n_agents, rng, options)
    return [torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts]


def label_histogram(
    labels: torch.Tensor, parts: list[torch.Tensor], n_classes: int
) -> torch.Tensor:
    """Class counts per agent: ``(n_agents, n_classes)`` int64, row i = agent i's labels."""
    labels = labels.to(torch.int64)
    rows = [torch.bincount(labels[p], minlength=n_classes)[:n_classes] for p in parts]
    return torch.stack(rows) if rows else torch.zeros(0, n_classes, dtype=torch.int64)


# ------------------------------------------------------------------------------ checks


def _is_count(value: object, *, minimum: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _check_labels(labels: torch.Tensor) -> Array:
    """Labels (or targets) as a numpy array of N rows; DataError unless a tensor of ndim >= 1."""
    if not isinstance(labels, torch.Tensor) or labels.ndim == 0:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
        raise DataError(f"labels must be a tensor of N training labels or targets, got {shape}")
    return labels.detach().cpu().numpy()


def _check_groups(groups: torch.Tensor, n_samples: int) -> Array:
    """Group ids as a 1-D integer numpy array of length N; DataError otherwise."""
    ids = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise DataError(
            f"groups must be one integer id per training sample, got shape {ids.shape} "
            f"{ids.dtype}; nettrain.data.from_tensors(..., groups=...) numbers string ids"
        )
    if len(ids) != n_samples:
        raise DataError(
            f"groups has {len(ids)} ids but there are {n_samples} training samples; "
            "give one group id per training sample"
        )
    return ids


def _check_agents(n_agents: int, n_samples: int) -> None:
    """ConfigError for a non-positive agent count, DataError for more agents than samples."""
    if not _is_count(n_agents, minimum=1):
        raise ConfigError(f"agents must be a positive integer, got {n_agents!r}")
    if n_agents > n_samples:
        raise DataError(
            f"{n_agents} agents but only {n_samples} training samples: every agent needs at "
            f"least one sample; use at most {n_samples} agents or a larger data set"
        )


def _class_labels(y: Array, scheme: str, n_classes: int | None) -> tuple[Array, int]:
    """Integer class labels and the class count; DataError for regression targets."""
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(
            f"partition {scheme!r} splits by class label but the labels are {y.dtype} "
            "(regression targets?); use the 'iid' partition instead"
        )
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"class labels must be >= 0 for partition {scheme!r}, found {y.min()}")
    n_found = int(y.max()) + 1 if y.size else 0
    if n_classes is None:
        return y, n_found
    if n_classes < n_found:
        raise DataError(f"n_classes={n_classes} but the labels go up to {n_found - 1}")
    return y, n_classes


# ----------------------------------------------------------------------------- schemes


def _iid(y: Array, n_agents: int, rng: np.random.Generator, options: _Options) -> list[Array]:
    """Seeded permutation cut into ``n_agents`` parts whose sizes differ by at most one."""
    del options
    return np.array_split(rng.permutation(len(y)), n_agents)


def _shards(y: Array, n_agents: int, rng: np.random.Generator, options: _Options) -> list[Array]:
    """By-label shards (McMahan et al. 2017), dealt ``classes_per_agent`` per agent.

    Indices are sorted by label with ties in seeded random order and cut into
    ``S = n_agents * classes_per_agent`` contiguous shards. When ``S`` is at least the
    number of classes present, cuts fall on class boundaries: class c of size n_c gets
    s_c >= 1 shards, allotted one at a time to the class with the largest current shard
    ``n_c / s_c`` (D'Hondt), so every shard holds one class and each agent at most
    ``classes_per_agent`` classes. With fewer shards than classes some shards must
    straddle a class boundary; the cuts are then equal-sized.
    """
    per_agent = options.classes_per_agent
    if not _is_count(per_agent, minimum=1):
        raise ConfigError(f"classes_per_agent must be a positive integer, got {per_agent!r}")
    y, _ = _class_labels(y, "shards", options.n_classes)
    n_shards = int(n_agents * per_agent)
    if n_shards > len(y):
        raise DataError(
            f"shards: {n_agents} agents x {per_agent} classes_per_agent = {n_shards} shards "
            f"but only {len(y)} samples; lower classes_per_agent or use fewer agents"
        )
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # by label, ties shuffled
    classes, counts = np.unique(y, return_counts=True)
    if n_shards >= len(classes):
        cuts = np.cumsum(counts)[:-1]
        shards = [
            piece
            for members, k in zip(np.split(order, cuts), _dhondt(counts, n_shards), strict=True)
            for piece in np.array_split(members, k)
        ]
    else:
        shards = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(n_agents, per_agent)  # shard ids per agent
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def _dhondt(sizes: Array, seats: int) -> Array:
    """Seats per group, at least one each, the rest by D'Hondt (largest ``size / seats``).

    Needs ``len(sizes) <= seats <= sizes.sum()``; then no group gets more seats than
    members, since the group chosen always has ``size / seats > 1``.
    """
    alloc = np.ones(len(sizes), dtype=np.int64)
    for _ in range(seats - len(sizes)):
        alloc[np.argmax(sizes / alloc)] += 1
    return alloc


def _dirichlet(y: Array, n_agents: int, rng: np.random.Generator, options: _Options) -> list[Array]:
    """Dirichlet label skew (Hsu et al. 2019), redrawn while some agent is empty."""
    alpha = options.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ConfigError(f"dirichlet_alpha must be a positive number, got {alpha!r}")
    y, n_classes = _class_labels(y, "dirichlet", options.n_classes)
    members = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    for _ in range(DIRICHLET_MAX_TRIES):
        parts = _dirichlet_draw(members, n_agents, float(alpha), rng)
        sizes = np.array([len(p) for p in parts])
        if sizes.min() > 0:
            return parts
    empty = int(np.argmin(sizes))
    raise DataError(
        f"dirichlet partition with dirichlet_alpha={alpha} left agent {empty} without samples "
        f"in {DIRICHLET_MAX_TRIES} draws ({n_agents} agents, {len(y)} samples); use a larger "
        "dirichlet_alpha, fewer agents, or the 'iid' partition"
    )


def _dirichlet_draw(
    members: list[Array], n_agents: int, alpha: float, rng: np.random.Generator
) -> list[Array]:
    """One draw: class c's shuffled indices cut by proportions ``p ~ Dir(alpha 1_n)``."""
    pieces: list[list[Array]] = [[] for _ in range(n_agents)]
    for idx in members:
        p = rng.dirichlet(np.full(n_agents, alpha))  # (n_agents,)
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for agent, piece in enumerate(np.split(idx, cuts)):
            pieces[agent].append(piece)
    return [np.concatenate(p) if p else np.empty(0, np.int64) for p in pieces]


def _groups(y: Array, n_agents: int, rng: np.random.Generator, options: _Options) -> list[Array]:
    """Whole groups per agent, balanced greedily (largest group first, least-loaded agent).

    Bound: after each assignment ``max load - min load <= c_max``, the largest group
    size. It holds at the start (all 0); a group of size ``c <= c_max`` goes to an agent
    at the minimum load ``m``, so the new maximum is ``max(old max, m + c)`` and the
    minimum does not drop.
    """
    del y  # the labels play no part: groups decide
    if options.groups is None:
        raise DataError(
            "partition=groups needs per-sample group ids: from_tensors(..., groups=...) "
            "or an npz with groups_train; or choose partition=iid, shards or dirichlet"
        )
    names, inverse, counts = np.unique(options.groups, return_inverse=True, return_counts=True)
    if len(names) < n_agents:
        raise DataError(
            f"partition=groups: {len(names)} groups but {n_agents} agents; every agent needs "
            f"at least one whole group: use at most {len(names)} agents or another partition"
        )
    order = rng.permutation(len(names))  # seeded shuffle: ties between sizes broken at random
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first
    load = np.zeros(n_agents, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)  # agent of each group
    for g in order:
        agent = int(np.argmin(load))  # least loaded, lowest index on ties
        owner[g] = agent
        load[agent] += counts[g]
    sample_owner = owner[inverse.reshape(-1)]  # (N,)
    return [np.flatnonzero(sample_owner == a) for a in range(n_agents)]


Scheme = Callable[[Array, int, np.random.Generator, _Options], list[Array]]

_SCHEMES: dict[str, Scheme] = {
    "iid": _iid,
    "shards": _shards,
    "dirichlet": _dirichlet,
    "groups": _groups,
}
