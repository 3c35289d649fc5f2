"""What a set of runs has in common and where they differ, in words, for plot titles,
legends and reports.

A run is described by the keys of its ``config.json`` that matter for it: the method's
own settings (:func:`nettrain.config.used_keys`), the graph's keys only for a method that
exchanges along the graph (``uses_graph``), a key that refines another only when that
one is set (``degree`` for ``topology=random_regular``), and optional features
(quantiser, stragglers, faults, ...) only when they are switched on.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

# the keys a description may name, in its order
KEYS = (
    "dataset",
    "train_samples",
    "partition",
    "classes_per_agent",
    "dirichlet_alpha",
    "model",
    "hidden",
    "loss",
    "regularizer",
    "reg_lambda",
    "agents",
    "engine",
    "processes",
    "algorithm",
    "topology",
    "weights",
    "schedule",
    "drop_prob",
    "degree",
    "edge_prob",
    "branching",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "batch_size",
    "tau",
    "local_steps",
    "surrogate",
    "prox_tau",
    "step0",
    "step_decay",
    "blocks",
    "alpha",
    "servers",
    "tree_periods",
    "quantizer",
    "bits",
    "lattice_eps",
    "error_feedback",
    "blocking",
    "stragglers",
    "straggler_slowdown",
    "message_drop",
    "crash",
    "split",
    "phase",
    "rounds",
    "seed",
)
# said whenever used, even at their default; the others only when set away from it
ALWAYS = frozenset(
    {"dataset", "model", "partition", "agents", "algorithm", "topology", "lr", "tau"}
    | {"local_steps", "rounds"}
)
# a key that refines another: said (even at its default) only when this holds
WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "classes_per_agent": lambda c: c.get("partition") == "shards",
    "dirichlet_alpha": lambda c: c.get("partition") == "dirichlet",
    "hidden": lambda c: c.get("model") == "mlp",
    "reg_lambda": lambda c: c.get("regularizer") not in (None, "none"),
    "processes": lambda c: c.get("engine") == "shared_memory",
    "degree": lambda c: c.get("topology") == "random_regular",
    "edge_prob": lambda c: c.get("topology") == "erdos_renyi",
    "drop_prob": lambda c: c.get("schedule") == "edge_drop",
    "bits": lambda c: c.get("quantizer") not in (None, "none"),
    "lattice_eps": lambda c: c.get("quantizer") == "lattice",
    "error_feedback": lambda c: c.get("quantizer") not in (None, "none"),
    "straggler_slowdown": lambda c: bool(c.get("stragglers")),
}
GRAPH_KEYS = frozenset({"topology", "weights", "schedule", "drop_prob", "degree", "edge_prob"})


def _method(config: Mapping[str, Any]) -> type | None:
    """The method class ``config["algorithm"]`` names, or None if it cannot be found."""
    from nettrain.algorithms import resolve

    try:
        return resolve(str(config.get("algorithm", "")))
    except Exception:  # a method of another installation: describe it by its keys alone
        return None


def _used(config: Mapping[str, Any]) -> set[str]:
    """The keys the method of ``config`` uses among those a description may name."""
    from nettrain.config import SECTION_OF, used_keys

    method = _method(config)
    if method is None:
        return set(KEYS)
    own = used_keys(method)
    fields = (
        {f.name for f in dataclasses.fields(method)} if dataclasses.is_dataclass(method) else set()
    )
    keys = {k for k in KEYS if SECTION_OF.get(k) != "method" or k in own}
    keys.add("algorithm")
    if not getattr(method, "uses_graph", True):
        keys -= GRAPH_KEYS
    if "branching" not in fields:
        keys.discard("branching")
    return keys


def shown_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``config`` (a ``config.json``) that describe its run, in order."""
    from nettrain.config import FIELDS

    used = _used(config)
    out: dict[str, Any] = {}
    for name in KEYS:
        if name not in config or name not in used or not WHEN.get(name, bool)(config):
            continue
        value = config[name]
        field = FIELDS.get(name)
        default = field.default if field is not None else None
        if isinstance(default, tuple):
            default = list(default)  # config.json holds tuples as lists
        if name in ALWAYS or name in WHEN or value != default:
            out[name] = value
    return out


def fmt(value: Any) -> str:
    """A config value as a description writes it."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Description:
    """What the runs share (``common``) and each run's own keys (``own[name]``)."""

    common: dict[str, Any]
    own: dict[str, dict[str, Any]]

    def title(self, prefix: str = "", width: int = 110) -> str:
        """``prefix: k=v, k=v, ...`` of the common keys, wrapped at ``width`` characters."""
        body = ", ".join(f"{k}={fmt(v)}" for k, v in self.common.items())
        text = f"{prefix}: {body}" if prefix and body else prefix or body
        return "\n".join(textwrap.wrap(text, width)) if text else ""

    def label(self, name: str) -> str:
        """``name (k=v, ...)`` with the run's own keys whose value its name does not say."""
        extra = [f"{k}={fmt(v)}" for k, v in self.own.get(name, {}).items() if fmt(v) != name]
        return f"{name} ({', '.join(extra)})" if extra else name


def describe(configs: Mapping[str, Mapping[str, Any]]) -> Description:
    """The keys every run shows with one value, and each run's others."""
    shown = {name: shown_keys(config) for name, config in configs.items()}
    order = list(dict.fromkeys(k for keys in shown.values() for k in keys))
    first = next(iter(shown.values()), {})
    common = {
        k: first[k]
        for k in order
        if all(k in keys and keys[k] == first.get(k) for keys in shown.values())
    }
    own = {name: {k: v for k, v in keys.items() if k not in common} for name, keys in shown.items()}
    return Description(common, own)
