"""headwater's server side: the client protocol (v1) and the WebSocket + HTTP server.

* :mod:`headwater.server.protocol`: pydantic models of every message, the frame parser;
* :class:`Server` (:mod:`headwater.server.app`): ``headwater serve`` as an async context
  manager, on asyncio; fan-out, replay and limits live in
  :class:`headwater.core.streaming.StreamingManager`, which the server drives;
* :func:`asgi_app` (:class:`AsgiApp`, :mod:`headwater.server.asgi`): the same server as
  an ASGI 3 application, for uvicorn or mounting in Starlette / FastAPI;
* :class:`ServerConfig` and :func:`load_server_config` (:mod:`headwater.server.config`);
* :class:`StreamingManager` (with :class:`StreamingConfig`, :class:`StreamError`,
  :class:`ClientTransport`): stream lifecycles and fan-out, usable without a server;
* serving an engine's metrics elsewhere: :class:`HeadwaterCollector` (for a
  ``prometheus_client`` registry of your own), :func:`prometheus_registry`,
  :func:`exposition`, :func:`build_exporters`, :func:`running_exporters`,
  :class:`MetricsConfig`;
* :class:`NoServerRunning`: raised by the ``websocket`` sink of a run whose engine runs
  no server.

A server runs on an :class:`~headwater.Engine` (``Server(config, engine=engine)``); the
``websocket`` sinks of the engine's runs publish to it.

Names are resolved lazily: importing this package imports neither websockets nor pydantic.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.core.metrics import (
        ExporterEntry,
        HeadwaterCollector,
        MetricsConfig,
        build_exporters,
        exposition,
        prometheus_registry,
        running_exporters,
    )
    from headwater.core.services import NoServerRunning
    from headwater.core.streaming import (
        ClientTransport,
        StreamError,
        StreamingConfig,
        StreamingManager,
    )

    from .app import RunInfo, Server, ServerError
    from .asgi import AsgiApp, asgi_app
    from .auth import AuthRequest, TokenPrincipal
    from .config import ServerConfig, ServerConfigError, load_server_config, parse_server_config

_LAZY: dict[str, str] = {
    "AsgiApp": "asgi",
    "asgi_app": "asgi",
    "RunInfo": "app",
    "Server": "app",
    "ServerError": "app",
    "AuthRequest": "auth",
    "TokenPrincipal": "auth",
    "ServerConfig": "config",
    "ServerConfigError": "config",
    "load_server_config": "config",
    "parse_server_config": "config",
    "NoServerRunning": "headwater.core.services",
    "ExporterEntry": "headwater.core.metrics",
    "HeadwaterCollector": "headwater.core.metrics",
    "MetricsConfig": "headwater.core.metrics",
    "build_exporters": "headwater.core.metrics",
    "exposition": "headwater.core.metrics",
    "prometheus_registry": "headwater.core.metrics",
    "running_exporters": "headwater.core.metrics",
    "ClientTransport": "headwater.core.streaming",
    "StreamError": "headwater.core.streaming",
    "StreamingConfig": "headwater.core.streaming",
    "StreamingManager": "headwater.core.streaming",
}

_REMOVED: dict[str, str] = {
    name: "a run publishes to the server of its engine: use ctx.publisher in a component, "
    "server.engine or engine.servers in an application"
    for name in ("current_server", "current_manager", "running_servers")
}

__all__ = [
    "AsgiApp",
    "AuthRequest",
    "ClientTransport",
    "ExporterEntry",
    "HeadwaterCollector",
    "MetricsConfig",
    "NoServerRunning",
    "RunInfo",
    "Server",
    "ServerConfig",
    "ServerConfigError",
    "ServerError",
    "StreamError",
    "StreamingConfig",
    "StreamingManager",
    "TokenPrincipal",
    "asgi_app",
    "build_exporters",
    "exposition",
    "load_server_config",
    "parse_server_config",
    "prometheus_registry",
    "running_exporters",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _REMOVED:
            raise AttributeError(f"headwater.server.{name} was removed in 0.2: {_REMOVED[name]}")
        raise AttributeError(f"module 'headwater.server' has no attribute {name!r}")
    if module.startswith("headwater."):
        value = getattr(import_module(module), name)
    else:
        value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
