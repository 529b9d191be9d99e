"""headwater's layering rules, checked on the source tree (``python tests/layering.py``).

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
The rules (``docs/architecture.md`` explains them):

* ``headwater.markers`` imports nothing of headwater;
* ``headwater.hookspecs`` imports only ``markers`` and ``types``;
* ``headwater.types`` imports only ``markers``, plus, for annotations under
  ``TYPE_CHECKING`` only, the core modules that define what hooks mention;
* ``headwater.core`` imports only core, ``markers``, ``types``, ``hookspecs`` and the
  package root (for ``__version__``): never the server, the built-in plugins, the cli
  or the author tools;
* ``headwater.server`` never imports the built-in plugins or the cli;
* ``headwater.builtin_plugins`` never imports the server or the cli: built-ins use the
  hooks and the context a third party has;
* nothing but ``headwater.__main__`` imports the cli.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "headwater"

_TYPES_ANNOTATION_ONLY = (
    "headwater.core.components",
    "headwater.core.errors",
    "headwater.core.pipeline",
)


@dataclass(frozen=True)
class Import:
    """One import statement of a headwater module."""

    module: str
    """The importing module (``headwater.core.engine``)."""
    target: str
    """The imported module, resolved (``headwater.core.metrics``)."""
    line: int
    type_checking: bool


def module_name(path: Path, root: Path) -> str:
    """``headwater.core.engine`` for ``root/core/engine.py`` (``root`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([root.name, *parts])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_checking: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inside = type_checking or (isinstance(child, ast.If) and _is_type_checking(child.test))
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_checking
                yield from _walk(stmt, type_checking)
            continue
        yield child, inside
        yield from _walk(child, inside)


def imports(path: Path, root: Path) -> list[Import]:
    """Every import of headwater modules in ``path``, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[Import] = []
    for node, type_checking in _walk(tree, False):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from . import x`` and ``from headwater import server`` import submodules
            targets = [stem]
            if stem in (root.name, package) or not node.module:
                targets = [f"{stem}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == root.name or target.startswith(root.name + "."):
                found.append(Import(name, target, getattr(node, "lineno", 0), type_checking))
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _known(target: str, modules: set[str]) -> str:
    """The longest known module that ``target`` names (``headwater.X.attr`` -> ``headwater.X``)."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def problem(imp: Import, modules: set[str]) -> str | None:
    """Why ``imp`` breaks a layering rule, or None."""
    src, dst = imp.module, _known(imp.target, modules)
    hw = "headwater"
    if src == dst:
        return None
    if _under(dst, f"{hw}.cli") and not _under(src, f"{hw}.cli") and src != f"{hw}.__main__":
        return "nothing imports the cli"
    if src == f"{hw}.markers":
        return "markers imports nothing of headwater"
    if src == f"{hw}.hookspecs" and dst not in (f"{hw}.markers", f"{hw}.types"):
        return "hookspecs imports only markers and types"
    if src == f"{hw}.types" and dst != f"{hw}.markers":
        if imp.type_checking and dst in _TYPES_ANNOTATION_ONLY:
            return None
        return "types imports only markers (and, under TYPE_CHECKING, what hooks mention)"
    if _under(src, f"{hw}.core"):
        allowed = (f"{hw}.core", f"{hw}.markers", f"{hw}.types", f"{hw}.hookspecs")
        if dst != hw and not any(_under(dst, a) for a in allowed):
            return "core imports only core, markers, types and hookspecs"
    if _under(src, f"{hw}.server") and _under(dst, f"{hw}.builtin_plugins"):
        return "the server never imports the built-in plugins"
    if _under(src, f"{hw}.builtin_plugins") and _under(dst, f"{hw}.server"):
        return "built-in plugins never import the server"
    return None


def violations(root: Path = SRC) -> list[str]:
    """Every broken rule in the package at ``root``, as ``module:line: target (rule)``."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    out: list[str] = []
    for path in files:
        for imp in imports(path, root):
            why = problem(imp, modules)
            if why is not None:
                where = " (under TYPE_CHECKING)" if imp.type_checking else ""
                out.append(f"{imp.module}:{imp.line}: imports {imp.target}{where}: {why}")
    return out


if __name__ == "__main__":
    found = violations()
    for line in found:
        print(line)
    print(f"{len(found)} layering violation(s)")
    sys.exit(1 if found else 0)
