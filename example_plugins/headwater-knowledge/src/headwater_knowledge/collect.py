"""Documents to index: text files of folders, and docstrings of Python source.

Folders give one document per Markdown, text, reStructuredText or HTML file (HTML as its
text). Python packages give one document per module, class and function docstring,
read from the source with :mod:`ast` (nothing is imported, so nothing runs); the URL of
such a document points at its line (``file:///.../module.py#L42``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from .index import Document
from .text import html_to_text, markdown_to_text

__all__ = [
    "folder_documents",
    "package_documents",
    "python_roots",
    "site_packages_documents",
    "stdlib_documents",
]

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".html", ".htm"})
MAX_BYTES = 2 * 1024 * 1024
"""Larger files are indexed by their first 2 MiB."""
SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", "site-packages"}
)


def _markdown_title(text: str, fallback: str) -> str:
    for line in text.splitlines()[:50]:
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def folder_documents(root: str | Path) -> Iterator[Document]:
    """A document per text file under ``root`` (hidden and tool folders skipped)."""
    root = Path(root).resolve()
    source = str(root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            path = Path(folder, name)
            if path.suffix.lower() not in TEXT_SUFFIXES:
                continue
            try:
                with path.open("rb") as handle:
                    raw = handle.read(MAX_BYTES)
            except OSError:
                continue
            if b"\0" in raw[:4096]:
                continue
            text = raw.decode("utf-8", "replace")
            title = path.stem.replace("-", " ").replace("_", " ")
            if path.suffix.lower() in (".html", ".htm"):
                page_title, text = html_to_text(text)
                title = page_title or title
            elif path.suffix.lower() in (".md", ".markdown"):
                title = _markdown_title(text, title)
                text = markdown_to_text(text)
            if text.strip():
                yield Document(path.as_uri(), title, text, source)


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, int, str]]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError, RecursionError):
        return
    doc = ast.get_docstring(tree)
    if doc:
        yield module, 1, doc
    stack: list[tuple[str, ast.AST]] = [(module, tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if child.name.startswith("_") and not child.name.startswith("__init"):
                    continue
                name = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield name, child.lineno, doc
                if isinstance(child, ast.ClassDef):
                    stack.append((name, child))


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_documents(base: Path, top: Path, source: str) -> Iterator[Document]:
    """Docstring documents of the ``.py`` files under ``top`` (module names from ``base``)."""
    files = [top] if top.is_file() else sorted(top.rglob("*.py"))
    for path in files:
        inside = path.relative_to(base).parts
        if any(p in SKIP_DIRS or p in ("test", "tests", "idlelib") for p in inside):
            continue
        module = _module_name(path, base)
        if not module or any(p.startswith("_") and p != "__main__" for p in module.split(".")):
            continue
        for name, line, doc in _docstrings(path, module):
            if len(doc) >= 20:
                yield Document(f"{path.resolve().as_uri()}#L{line}", name, doc, source)


def python_roots() -> tuple[Path, list[Path]]:
    """The standard library's folder and the site-packages folders of this Python."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    return stdlib, sorted(set(site))


def site_packages_documents() -> Iterator[Document]:
    """Docstrings of every package and module installed in site-packages (each once)."""
    _, folders = python_roots()
    seen: set[str] = set()
    for folder in folders:
        for entry in sorted(folder.iterdir()):
            name = entry.stem if entry.suffix == ".py" else entry.name
            package = entry.is_dir() and (entry / "__init__.py").is_file()
            if name in seen or name.startswith("_") or not (package or entry.suffix == ".py"):
                continue
            seen.add(name)
            yield from python_documents(folder, entry, "python:site-packages")


def stdlib_documents() -> Iterator[Document]:
    """Docstrings of the standard library (its tests and private modules left out)."""
    stdlib, _ = python_roots()
    yield from python_documents(stdlib, stdlib, "python:stdlib")


def package_documents(name: str) -> Iterator[Document]:
    """Docstrings of an installed top-level package or module (by import name).

    Raises ``LookupError`` when it is not installed."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise LookupError(f"no installed Python package {name!r}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:
        top = origin.parent
        base = top.parent
    else:
        top, base = origin, origin.parent
    yield from python_documents(base, top, f"python:{name}")
