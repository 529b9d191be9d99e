"""Path handling shared by the file actions: path-like params, paths in errors."""

from __future__ import annotations

import os
from typing import Any


def _fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` objects where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _where(path: str) -> str:
    """`` (resolved to '/abs/path')`` for relative paths, for error messages."""
    return "" if os.path.isabs(path) else f" (resolved to {os.path.abspath(path)!r})"
