"""What describes a run: the keys of its ``config.json`` that matter for it.

:func:`shown_keys` keeps the method's own settings (:func:`nettrain.config.used_keys`),
the graph's keys only for a method that exchanges along the graph (``uses_graph``), a
key that refines another only when that one is set (``degree`` for
``topology=random_regular``), and optional features (quantiser, stragglers, speeds,
faults, ...) only when they are switched on. :func:`describe_runs` says what runs share
(plot titles) and where each differs (legend labels). Every run names its plot with it,
so this module imports no plotting (a worker process starts without matplotlib).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nettrain.algorithms import Method, resolve
from nettrain.config import FIELDS, SECTION_OF, used_keys
from nettrain.errors import ConfigError
from nettrain.report.titles import Description, describe

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
    "lr_warmup",
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
    "qsgd_bucket",
    "error_feedback",
    "blocking",
    "stragglers",
    "straggler_slowdown",
    "speed",
    "bandwidth",
    "trace",
    "message_drop",
    "crash",
    "rejoin_model",
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


def _method(config: Mapping[str, Any]) -> type[Method] | None:
    """The method class ``config["algorithm"]`` names, or None if it cannot be found."""
    try:
        return resolve(str(config.get("algorithm", "")))
    except ConfigError:  # a method of another installation: described by its keys alone
        return None


def _used(config: Mapping[str, Any]) -> set[str]:
    """The keys the method of ``config`` uses among those a description may name."""
    method = _method(config)
    if method is None:
        return set(KEYS)
    own = used_keys(method)
    fields = set(getattr(method, "__dataclass_fields__", {}))
    keys = {k for k in KEYS if SECTION_OF.get(k) != "method" or k in own}
    keys.add("algorithm")
    if not getattr(method, "uses_graph", True):
        keys -= GRAPH_KEYS
    if "branching" not in fields:
        keys.discard("branching")
    return keys


def _plain(value: Any) -> Any:
    """A value as ``config.json`` holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def shown_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``config`` (a ``config.json``) that describe its run, in order."""
    used = _used(config)
    out: dict[str, Any] = {}
    for name in KEYS:
        if name not in config or name not in used or not WHEN.get(name, bool)(config):
            continue
        value = _plain(config[name])
        field = FIELDS.get(name)
        default = _plain(field.default) if field is not None else None
        if name in ALWAYS or name in WHEN or value != default:
            out[name] = value
    return out


def describe_runs(configs: Mapping[str, Mapping[str, Any]]) -> Description:
    """What the runs of ``configs`` (their ``config.json`` by name) share and where each
    differs, in the keys that describe them."""
    return describe({name: shown_keys(config) for name, config in configs.items()})
