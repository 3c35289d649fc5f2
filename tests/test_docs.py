"""The project's documents: every link and image points at a file in the repository, and
their Python examples parse and are formatted as ruff formats the code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *ROOT.glob("docs/*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PYTHON = re.compile(r"```python\n(.*?)```", flags=re.S)


def links(document: Path) -> list[str]:
    """The targets of the Markdown links and images of ``document`` (code blocks left out)."""
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)
    return LINK.findall(text)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_inside_the_repository(document: Path) -> None:
    for target in links(document):
        assert "://" not in target and not target.startswith("mailto:"), (
            f"{document.name} links outside the repository: {target}"
        )
        path = target.split("#", 1)[0]
        if path:
            assert (document.parent / path).exists(), f"{document.name}: {target} does not exist"


def test_the_link_pattern_finds_links_and_images(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("see [a](a.md#x) and ![b](img/b.png)\n```\n[c](http://x)\n```\n")
    assert links(page) == ["a.md#x", "img/b.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_parse_and_are_formatted(document: Path) -> None:
    for block in PYTHON.findall(document.read_text()):
        ast.parse(block)
        # a file name in the repository: ruff formats the block with pyproject.toml's settings
        where = str(ROOT / "example.py")
        ruff = [sys.executable, "-m", "ruff", "format", "--check", "--stdin-filename", where, "-"]
        checked = subprocess.run(ruff, input=block, capture_output=True, text=True)
        assert checked.returncode == 0, f"{document.name}: ruff would reformat\n{block}"
