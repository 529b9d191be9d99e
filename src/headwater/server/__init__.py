"""headwater's server side: the client protocol (v1) and the WebSocket + HTTP server.

* :mod:`headwater.server.protocol`: pydantic models of every message, the frame parser;
* :class:`Server` (:mod:`headwater.server.app`): ``headwater serve`` as an async context
  manager, on asyncio; fan-out, replay and limits live in
  :class:`headwater.core.streaming.StreamingManager`, which the server drives;
* :class:`ServerConfig` and :func:`load_server_config` (:mod:`headwater.server.config`);
* :func:`current_server` / :func:`current_manager`: the server running in this process
  (how the ``websocket`` sink publishes), :class:`NoServerRunning` when there is none.

Names are resolved lazily: importing this package imports neither websockets nor pydantic.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import RunInfo, Server, ServerError
    from .auth import AuthRequest, TokenPrincipal
    from .config import ServerConfig, ServerConfigError, load_server_config, parse_server_config
    from .registry import NoServerRunning, current_manager, current_server, running_servers

_LAZY: dict[str, str] = {
    "RunInfo": "app",
    "Server": "app",
    "ServerError": "app",
    "AuthRequest": "auth",
    "TokenPrincipal": "auth",
    "ServerConfig": "config",
    "ServerConfigError": "config",
    "load_server_config": "config",
    "parse_server_config": "config",
    "NoServerRunning": "registry",
    "current_manager": "registry",
    "current_server": "registry",
    "running_servers": "registry",
}

__all__ = [
    "AuthRequest",
    "NoServerRunning",
    "RunInfo",
    "Server",
    "ServerConfig",
    "ServerConfigError",
    "ServerError",
    "TokenPrincipal",
    "current_manager",
    "current_server",
    "load_server_config",
    "parse_server_config",
    "running_servers",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headwater.server' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
