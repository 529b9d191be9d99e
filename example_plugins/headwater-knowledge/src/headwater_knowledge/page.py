"""The search page: static assets of this distribution, served by ``headwater serve``.

``/plugins/knowledge/`` is the page (``index.html``); it speaks the WebSocket protocol
v1 to the same server: ``run`` of the ``knowledge`` pipeline (or ``?pipeline=NAME``)
with ``{"query", "session"}``, and ``subscribe`` with ``since`` to resume after a
reconnection. ``?token=TOKEN`` is passed on when the server requires one.
"""

from __future__ import annotations

from pathlib import Path

import headwater

__all__ = ["PAGE_PATH", "STATIC", "routes"]

PAGE_PATH = "/plugins/knowledge"
STATIC = Path(__file__).with_name("static")


def routes() -> list[headwater.HttpRoute]:
    """The page's routes: the static folder (``index.html`` at ``/plugins/knowledge/``)."""
    return [headwater.HttpRoute.static(PAGE_PATH, STATIC)]
