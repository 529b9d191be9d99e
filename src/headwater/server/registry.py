"""The process-wide registry of running servers (how the ``websocket`` sink finds one).

A :class:`~headwater.server.Server` registers itself when it starts listening and
unregisters when it stops. :func:`current_server` returns the most recently started one
that is still running. Importing this module is cheap.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from headwater.core.errors import HeadwaterError

if TYPE_CHECKING:
    from headwater.core.streaming import StreamingManager

    from .app import Server

__all__ = ["NoServerRunning", "current_manager", "current_server", "running_servers"]

_lock = threading.Lock()
_servers: list[Server] = []


class NoServerRunning(HeadwaterError, LookupError):
    """No headwater server is running in this process."""


def _register(server: Server) -> None:
    with _lock:
        if server not in _servers:
            _servers.append(server)


def _unregister(server: Server) -> None:
    with _lock:
        if server in _servers:
            _servers.remove(server)


def running_servers() -> list[Server]:
    """Every server running in this process, oldest first."""
    with _lock:
        return list(_servers)


def current_server() -> Server:
    """The most recently started server of this process that is still running.

    Raises :class:`NoServerRunning` when there is none.
    """
    with _lock:
        if _servers:
            return _servers[-1]
    raise NoServerRunning(
        "no headwater server is running in this process: start one with `headwater serve` "
        "(a pipeline it runs can use the websocket sink) or, when embedding, "
        "`async with headwater.server.Server(config):` around the run"
    )


def current_manager() -> StreamingManager:
    """The :class:`~headwater.core.streaming.StreamingManager` of :func:`current_server`."""
    return current_server().manager
