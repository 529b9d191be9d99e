"""Importing optional dependencies (extras) with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependency", "require"]


class MissingDependency(ImportError):
    """An optional client library is not installed; the message says what to install."""


def require(module: str, extra: str, component: str) -> ModuleType:
    """Import ``module`` for ``component``, or raise :class:`MissingDependency` naming the
    extra to install (``pip install 'headwater[EXTRA]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{component} needs the {module.partition('.')[0]!r} package, which is not "
            f"installed: pip install 'headwater[{extra}]' ({exc})"
        ) from None
