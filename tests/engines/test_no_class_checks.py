"""Engines ask capabilities, never classes (docs/architecture.md, "Capabilities").

The test reads the engines' source with ``ast``: no ``isinstance``/``issubclass`` whose
class is one of nettrain's algorithm classes (the registered methods and the kinds in
``algorithms/base.py``), and no import from ``nettrain.algorithms`` but its ``base``
module (the kinds an engine may name in a type hint and the ``BlockOracle``
protocol). Concrete methods reach an engine only as ``job.algorithm``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nettrain.algorithms import ALGORITHMS
from nettrain.algorithms import base as kinds

ENGINES = Path(__file__).resolve().parents[2] / "src" / "nettrain" / "engines"
ALGORITHM_CLASSES = {cls.__name__ for cls in ALGORITHMS.values()} | {
    name
    for name, value in vars(kinds).items()
    if isinstance(value, type) and value.__module__ == kinds.__name__
}
ALLOWED_MODULE = "nettrain.algorithms.base"
FILES = sorted(ENGINES.rglob("*.py"))


def class_checks(tree: ast.AST) -> list[str]:
    """``isinstance(x, C)``/``issubclass(x, C)`` calls naming an algorithm class."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in ("isinstance", "issubclass") or len(node.args) != 2:
            continue
        classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
        for c in classes:
            name = c.attr if isinstance(c, ast.Attribute) else getattr(c, "id", "")
            if name in ALGORITHM_CLASSES:
                found.append(f"line {node.lineno}: {node.func.id}(..., {name})")
    return found


def algorithm_imports(tree: ast.AST) -> list[str]:
    """Imports of ``nettrain.algorithms`` other than its ``base`` module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            if node.module == "nettrain.algorithms":
                modules = [f"nettrain.algorithms.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for m in modules:
            if m.startswith("nettrain.algorithms") and m != ALLOWED_MODULE:
                found.append(f"line {node.lineno}: {m}")
    return found


def test_the_probe_finds_what_it_looks_for() -> None:
    """The checks below would fail on a class test or a concrete import."""
    src = (
        "from nettrain.algorithms.block_async import BlockAsyncSGD\n"
        "from nettrain.algorithms import AllReduceSGD\n"
        "import nettrain.algorithms.swarm\n"
        "from nettrain.algorithms.base import Method\n"
        "ok = isinstance(a, (BlockAsyncSGD, int)) or issubclass(b, base.AsyncAlgorithm)\n"
        "fine = isinstance(c, torch.Tensor)\n"
    )
    tree = ast.parse(src)
    assert len(class_checks(tree)) == 2
    assert [s.split(": ")[1] for s in algorithm_imports(tree)] == [
        "nettrain.algorithms.block_async",
        "nettrain.algorithms.AllReduceSGD",
        "nettrain.algorithms.swarm",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ENGINES)))
def test_no_engine_tests_an_algorithm_class_or_imports_one(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert class_checks(tree) == [], f"{path.name} tests algorithm classes; read a capability"
    assert algorithm_imports(tree) == [], f"{path.name} imports concrete algorithms"


def test_the_engines_were_found() -> None:
    names = {p.relative_to(ENGINES).as_posix() for p in FILES}
    assert {"sim/engine.py", "distributed/engine.py", "shared_memory/worker.py"} <= names
