"""What a set of runs has in common and where they differ, in words, for plot titles,
legends and reports.

Each run comes as the keys that describe it (which keys matter for a run's method is
the configuration's business: :func:`nettrain.description.shown_keys`); a
:class:`Description` splits them into the keys every run has with one value (a title)
and each run's own (its legend label).
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any


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

    def labels(self, names: Iterable[str]) -> dict[str, str]:
        """:meth:`label` of each of ``names``."""
        return {name: self.label(name) for name in names}


def describe(shown: Mapping[str, Mapping[str, Any]]) -> Description:
    """The keys that every run of ``shown`` (its describing keys, by run) has with one
    value, and each run's others."""
    order = list(dict.fromkeys(k for keys in shown.values() for k in keys))
    first = next(iter(shown.values()), {})
    common = {
        k: first[k]
        for k in order
        if all(k in keys and keys[k] == first.get(k) for keys in shown.values())
    }
    own = {name: {k: v for k, v in keys.items() if k not in common} for name, keys in shown.items()}
    return Description(common, own)
