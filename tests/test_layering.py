"""The layering rules hold on the tree, and the checker catches a new violation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from layering import SRC, violations


def test_the_source_tree_keeps_the_layering_rules() -> None:
    assert violations() == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package to add bad imports to."""
    root = tmp_path / "headwater"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "static"))
    assert violations(root) == []
    return root


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        (
            "core/_bad.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from headwater.server import Server\n",
            "core imports only core",
        ),
        ("core/_bad.py", "def f():\n    from ..builtin_plugins import sinks\n", "core imports"),
        ("hookspecs_extra.py", "", None),
        ("server/_bad.py", "from headwater.builtin_plugins.exporters import x\n", "server never"),
        ("builtin_plugins/_bad.py", "from ..server.app import Server\n", "never import the server"),
        ("client_extra.py", "import headwater.cli\n", "nothing imports the cli"),
        ("server/_bad2.py", "from headwater import cli\n", "nothing imports the cli"),
    ],
)
def test_the_checker_fails_on_an_added_bad_import(
    tree: Path, module: str, source: str, rule: str | None
) -> None:
    path = tree / module
    path.write_text(source, encoding="utf-8")
    found = violations(tree)
    if rule is None:
        assert found == []
        return
    assert len(found) == 1, found
    assert found[0].startswith(f"headwater.{module.removesuffix('.py').replace('/', '.')}:")
    assert rule in found[0]


def test_hookspecs_may_not_reach_the_server_even_for_annotations(tree: Path) -> None:
    path = tree / "hookspecs.py"
    path.write_text(
        path.read_text(encoding="utf-8")
        + "\nif TYPE_CHECKING:\n    from .server.auth import AuthRequest as _A\n",
        encoding="utf-8",
    )
    found = violations(tree)
    assert len(found) == 1
    assert "under TYPE_CHECKING" in found[0]
    assert "hookspecs imports only" in found[0]
