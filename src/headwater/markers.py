"""The pluggy marker pair. ``hookimpl`` is re-exported as ``headwater.hookimpl``."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "headwater"
"""The pluggy project name; also the entry-point group plugins declare."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]
