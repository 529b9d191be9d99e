"""Paths in the file actions' error messages."""

from __future__ import annotations

import os


def _where(path: str) -> str:
    """`` (resolved to '/abs/path')`` for relative paths, for error messages."""
    return "" if os.path.isabs(path) else f" (resolved to {os.path.abspath(path)!r})"
