"""Imports flow one way: no cycle among nettrain's modules, and each layer imports only
the layers below it (docs/architecture.md, "Layers").

The test reads the source, it imports nothing: every module under ``src/nettrain`` is
parsed with ``ast`` and every ``import`` statement counts, wherever it is (top level,
under ``if TYPE_CHECKING:``, inside a function), because an import that only a type
checker or a late call sees still ties the two modules together.

Edges of the import graph:

* ``import nettrain.a.b`` is an edge to ``nettrain.a.b``;
* ``from nettrain.a import n`` is an edge to ``nettrain.a.n`` when ``n`` is a module,
  and otherwise to ``nettrain.a`` itself (a module, or a package whose ``__init__``
  gives the name: ``from nettrain.algorithms import DPSGD`` depends on
  ``algorithms/__init__.py``, which imports every algorithm);
* the packages a module sits in are not edges. Python runs ``nettrain/__init__.py``
  (which names the experiment's functions, imported on first use, and counts here as
  importing them, hence nearly everything) before any submodule, so
  counting it would put every module on one cycle; it is harmless as long as no module
  takes a name from a package ``__init__`` that imports that module back, and that is
  exactly a cycle through the package node, which the test does report.

A module belongs to the layer of its first name under ``nettrain`` (``problem`` for
``nettrain.problem.oracle``, ``patterns`` for ``nettrain.patterns``; the package's own
``__init__`` is the top layer). A module may import its own layer and the layers below
it, never one above. Among the consequences: ``topology``, ``compression``, ``data``
and ``problem`` import no ``algorithms`` and no ``engines``; ``patterns`` imports no
``algorithms`` (a centre method reaches the servers through the ``ServerRule`` protocol
defined beside the patterns); ``algorithms`` import no ``engines``, ``config``,
``experiment`` or ``cli`` (the configuration builds algorithms, not the other way);
only ``__main__`` and the package ``__init__`` may import ``cli``.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "nettrain"

# Lowest first. A module imports modules of its own layer or of lower ones only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "machine", "memory", "progress", "version"),
    (
        "topology",
        "compression",
        "data",
        "checkpoint",
        "heterogeneity",
        "faults",
        "analysis",
        "report",
    ),
    ("problem", "patterns", "wrappers"),
    ("algorithms",),
    ("evaluation", "recording", "result"),
    ("engines",),
    ("config",),
    # calibration measures what experiment builds
    ("experiment", "description", "reporting", "calibration"),
    ("reproduce",),
    ("sweeps",),  # runs its grids through reproduce.runner.run_all
    ("cli",),
    ("__main__", ""),  # "": the package's own __init__, the public face of nettrain
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The nettrain modules ``name`` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target not in known and "." in target:  # import nettrain.a.b.attr
            target = target.rpartition(".")[0]
        if target in known and target != name:
            out.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in known else source, node.lineno)
    return out


def graph(src: Path = SRC) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    """``edges[a][b]``: the line where module ``a`` first imports ``b``; and the files."""
    known = modules(src)
    return {name: imports(name, path, known) for name, path in known.items()}, known


def reachable(edges: dict[str, dict[str, int]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def shortest_cycle(edges: dict[str, dict[str, int]], start: str) -> list[str] | None:
    """The shortest cycle ``[start, ..., start]`` (breadth-first), or None."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        step = []
        for a in frontier:
            for b in sorted(edges[a]):
                if b == start:
                    path, back = [b], a
                    while back is not None:
                        path.append(back)
                        back = previous[back]
                    return path[::-1]
                if b not in previous:
                    previous[b] = a
                    step.append(b)
        frontier = step
    return None


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other (directly or not)."""
    reach = {m: reachable(edges, m) for m in edges}
    out, done = [], set()
    for start in sorted(edges):
        if start in done or start not in reach[start]:
            continue
        done |= {m for m in reach[start] if start in reach[m]}
        out.append(shortest_cycle(edges, start))
    return out


def unit(module: str) -> str:
    """The layer name of a module: its first name under the package ("" for the package)."""
    return module.split(".")[1] if "." in module else ""


def test_the_graph_sees_every_kind_of_import_and_every_cycle(tmp_path: Path) -> None:
    """Imports under TYPE_CHECKING, inside functions, relative, and of package names."""
    files = {
        "__init__.py": "from nettrain.top import run\n",
        "top.py": "from nettrain.pkg import Thing, low\n",
        "pkg/__init__.py": "from nettrain.pkg.low import Thing\nfrom nettrain.pkg import low\n",
        "pkg/low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from nettrain.top import run\n",
        "a.py": "def f():\n    import nettrain.b\n",
        "b.py": "from . import a\n",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    edges, _ = graph(tmp_path)
    assert edges["nettrain.top"] == {"nettrain.pkg": 1, "nettrain.pkg.low": 1}
    assert edges["nettrain.pkg"] == {"nettrain.pkg.low": 1}  # its own submodule: no self-edge
    assert edges["nettrain.pkg.low"] == {"nettrain.top": 3}
    assert edges["nettrain.a"] == {"nettrain.b": 2} and edges["nettrain.b"] == {"nettrain.a": 1}
    assert cycles(edges) == [
        ["nettrain.a", "nettrain.b", "nettrain.a"],
        ["nettrain.pkg", "nettrain.pkg.low", "nettrain.top", "nettrain.pkg"],
    ]


def test_no_import_cycle() -> None:
    edges, known = graph()
    found = [
        "\n".join(
            f"  {a} imports {b} ({known[a].relative_to(SRC)}:{edges[a][b]})"
            for a, b in itertools.pairwise(cycle)
        )
        for cycle in cycles(edges)
    ]
    assert not found, (
        "import cycles among nettrain's modules:\n" + "\n\n".join(found) + "\nbreak each by "
        "moving the shared piece down to the lower module, or a protocol beside its user"
    )


def test_every_module_is_in_a_layer() -> None:
    _, known = graph()
    missing = sorted({unit(m) for m in known} - set(RANK))
    assert not missing, (
        f"nettrain.{missing[0]} is in no layer; add it to LAYERS in {Path(__file__).name} "
        "(and to the table in docs/architecture.md)"
    )


def test_imports_go_down_the_layers() -> None:
    edges, known = graph()
    wrong = [
        f"  {a} ({unit(a) or 'nettrain'}) imports {b} ({unit(b) or 'nettrain'}): "
        f"{known[a].relative_to(SRC)}:{line}"
        for a, targets in sorted(edges.items())
        for b, line in sorted(targets.items())
        if RANK.get(unit(b), -1) > RANK.get(unit(a), len(LAYERS))
    ]
    assert not wrong, "imports up the layers (LAYERS in tests/test_imports.py):\n" + "\n".join(
        wrong
    )
