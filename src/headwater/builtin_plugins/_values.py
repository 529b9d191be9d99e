"""Small helpers shared by the built-in plugins' params and error messages."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["fspath", "type_name"]


def fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` objects where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def type_name(obj: object) -> str:
    """``set`` for builtins, ``module.Class`` otherwise (for error messages)."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
