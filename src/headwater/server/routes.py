"""The server's HTTP side: its endpoints, as a route table, and the WebSocket handshake.

The ``websockets`` library hands every HTTP request to
:meth:`HttpEndpoints.process_request` before answering it. A WebSocket upgrade is vetted
there, before it happens (:meth:`HttpEndpoints.vet_upgrade`: path, origin, connection
limit, authentication); any other request is answered from :data:`ROUTES`, a table of
``(method, path pattern) -> handler``: ``/healthz``, ``/api/streams``,
``/api/pipelines``, ``/api/dashboard``, ``/api/components``, ``/metrics`` and the
dashboard's page and assets. Routes marked ``authenticated`` answer 401 to a request
without a valid token; a handler that raises gets a 500 (and a log entry), a path no
route answers a 404.
"""

from __future__ import annotations

import http
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pydantic_core import to_json
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from headwater import __version__
from headwater.core.net import is_loopback
from headwater.core.streaming import StreamError

from .auth import AuthRequest, bearer_token
from .dashboard import DASHBOARD_STREAM, pipelines_listing, static_response

if TYPE_CHECKING:
    from .app import Server

__all__ = ["ROUTES", "WEBSOCKET_PATHS", "Handler", "HttpEndpoints", "Route", "is_loopback"]

log = logging.getLogger("headwater.server")

WEBSOCKET_PATHS: Final = frozenset({"/", "/ws"})
"""Paths on which WebSocket upgrades are accepted."""


def _json(value: Any) -> bytes:
    return to_json(value, inf_nan_mode="null", fallback=repr)


def _http(
    status: int,
    body: bytes | str,
    content_type: str = "application/json",
    extra: Sequence[tuple[str, str]] = (),
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def _error_response(status: int, message: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    return _http(
        status, _json({"error": http.HTTPStatus(status).phrase, "message": message}), extra=extra
    )


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


Handler = Callable[["HttpEndpoints", Request, Any], Awaitable[Response | None]]
"""An endpoint: ``(endpoints, request, principal) -> response``; None answers 404."""


@dataclass(frozen=True, slots=True)
class Route:
    """One line of the route table: requests it answers, and how."""

    method: str
    pattern: str
    """An exact path, or a prefix ending in ``*`` (``/static/*``)."""
    handler: Handler
    authenticated: bool = False
    """Answer 401 unless the request authenticates (the principal goes to the handler)."""

    def matches(self, method: str, path: str) -> bool:
        """True when this route answers ``method`` on ``path`` (without its query)."""
        if method != self.method:
            return False
        if self.pattern.endswith("*"):
            return path.startswith(self.pattern[:-1])
        return path == self.pattern


class HttpEndpoints:
    """One server's HTTP endpoints and the checks of its WebSocket handshakes."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._prometheus: Any = None

    # -- the websockets hook ------------------------------------------------------------

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer an HTTP request, or vet a WebSocket upgrade (None lets it happen)."""
        path = request.path.partition("?")[0]
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if upgrade:
            return await self.vet_upgrade(conn, request, path)
        method = "GET"  # websockets reads GET requests only
        try:
            route = next((r for r in ROUTES if r.matches(method, path)), None)
            if route is None:
                return _error_response(404, f"no such endpoint: {path}")
            principal = None
            if route.authenticated:
                ok, principal = await self.authenticate(conn, request)
                if not ok:
                    return _error_response(
                        401, "authentication required", [("WWW-Authenticate", "Bearer")]
                    )
            response = await route.handler(self, request, principal)
        except Exception:
            log.exception("HTTP request %s failed", request.path)
            return _error_response(500, "internal error (see the server's log)")
        if response is None:
            return _error_response(404, f"no such endpoint: {path}")
        return response

    async def vet_upgrade(
        self, conn: ServerConnection, request: Request, path: str
    ) -> Response | None:
        """Refuse a WebSocket upgrade (wrong path, origin, too many connections, no valid
        token) with an HTTP error, or keep its principal for the session and let it be."""
        server = self.server
        if path not in WEBSOCKET_PATHS:
            return _error_response(404, f"no WebSocket endpoint at {path}; use /")
        if not server.running:
            return _error_response(503, "the server is shutting down")
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            return _error_response(403, f"origin {origin} is not allowed")
        limit = server.config.limits.max_connections
        if server.connections >= limit:
            return _error_response(503, f"the limit of {limit} connections is reached")
        ok, principal = await self.authenticate(conn, request)
        if not ok:
            return _error_response(
                401, "authentication required or token not valid", [("WWW-Authenticate", "Bearer")]
            )
        self._principals[conn] = principal
        return None

    def principal_of(self, conn: ServerConnection) -> Any:
        """The principal the handshake of ``conn`` authenticated (once: it is forgotten)."""
        return self._principals.pop(conn, None)

    # -- security -----------------------------------------------------------------------

    async def authenticate(self, conn: ServerConnection, request: Request) -> tuple[bool, Any]:
        """``(ok, principal)`` of a request, from the ``authenticate`` hook."""
        server = self.server
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        remote = conn.remote_address
        req = AuthRequest(
            path=request.path,
            headers=headers,
            remote=f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else None,
            origin=headers.get("origin"),
            auth=server.auth,
        )
        token = bearer_token(request.path, headers)
        principal = await server.plugins.authenticate(token, req)
        if principal is False:
            return False, None
        if principal is None and server.auth.required:
            return False, None
        return True, principal

    def origin_allowed(self, origin: str) -> bool:
        """May a page from ``origin`` open a WebSocket (``origins`` of the configuration;
        by default only the server's own pages)?"""
        server = self.server
        allowed = server.config.origins
        origin = origin.strip().rstrip("/").lower()
        if allowed is None:
            hosts = {url_host(server.host)}
            if is_loopback(server.host):
                hosts |= {"127.0.0.1", "localhost", "[::1]"}
            own = {f"{scheme}://{h}:{server.port}" for scheme in ("http", "https") for h in hosts}
            return origin in own
        return "*" in allowed or origin in {o.strip().rstrip("/").lower() for o in allowed}

    # -- the endpoints ------------------------------------------------------------------

    async def healthz(self, request: Request, principal: Any) -> Response | None:
        """``/healthz``: ``ok`` (or ``stopping``), the version, streams and clients."""
        server = self.server
        return _http(
            200,
            _json(
                {
                    "status": "ok" if server.running else "stopping",
                    "version": __version__,
                    "streams": len(server.manager.active_streams()),
                    "clients": server.connections,
                }
            ),
        )

    async def api_streams(self, request: Request, principal: Any) -> Response | None:
        """``/api/streams``: see :meth:`streams_snapshot`."""
        return _http(200, _json(await self.streams_snapshot(principal)))

    async def api_pipelines(self, request: Request, principal: Any) -> Response | None:
        """``/api/pipelines``: see :meth:`pipelines_snapshot`."""
        return _http(200, _json(await self.pipelines_snapshot(principal)))

    async def api_dashboard(self, request: Request, principal: Any) -> Response | None:
        """``/api/dashboard``: the dashboard feed's recent history."""
        if not await self.server.allowed(principal, "subscribe", DASHBOARD_STREAM):
            return _error_response(403, f"not allowed to see {DASHBOARD_STREAM}")
        return _http(200, _json(self.server.dashboard.history()))

    async def api_components(self, request: Request, principal: Any) -> Response | None:
        """``/api/components``: see :meth:`components_snapshot`."""
        return _http(200, _json(self.components_snapshot()))

    async def dashboard_page(self, request: Request, principal: Any) -> Response | None:
        """The dashboard's page (``/``, ``/index.html``) and assets (``/static/X``)."""
        path = request.path.partition("?")[0]
        return static_response(path, request.headers.get("Host"))

    async def metrics(self, request: Request, principal: Any) -> Response | None:
        """``/metrics``: the Prometheus exposition of the engine's metrics (see
        ``docs/metrics.md``); scrapers send the same bearer token as other clients."""
        from headwater.core.metrics.prometheus import exposition, prometheus_registry

        try:
            if self._prometheus is None:
                self._prometheus = prometheus_registry(self.server.engine.metrics.snapshot)
            body, content_type = exposition(request.headers.get("Accept"), self._prometheus)
        except ImportError as exc:
            return _error_response(501, str(exc))
        return _http(200, body, content_type)

    # -- the bodies of the API ----------------------------------------------------------

    async def streams_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/streams``: streams the principal may subscribe to."""
        server = self.server
        manager = server.manager
        streams = []
        for stream_id in manager.active_streams():
            run = server.run_of_stream(stream_id)
            owner = run.owner if run is not None else None
            if not await server.allowed(principal, "subscribe", stream_id, owner=owner):
                continue
            try:
                info = manager.info(stream_id)
            except StreamError:  # closed meanwhile
                continue
            streams.append(
                {
                    "stream": info.stream_id,
                    "epoch": info.epoch,
                    "seq": info.seq,
                    "first_buffered": info.first_buffered,
                    "clients": info.clients,
                    "state": run.handle.state if run is not None else "open",
                    "pipeline": info.metadata.get("pipeline"),
                    "run": info.metadata.get("run"),
                    "created_at": info.created_at,
                    "idle_seconds": info.idle_seconds,
                    "metadata": dict(info.metadata),
                }
            )
        return {
            "streams": streams,
            "clients": server.connections,
            "pipelines": sorted(server.pipelines),
            "runs": len(server.runs),
        }

    async def pipelines_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/pipelines``: the named pipelines the principal may run, each
        with the JSON Schema of its params (see
        :func:`~headwater.server.dashboard.pipelines_listing`)."""
        server = self.server
        allowed = {
            name: named
            for name, named in server.pipelines.items()
            if await server.allowed(principal, "run", name)
        }
        return {"pipelines": pipelines_listing(allowed, server.plugins)}

    def components_snapshot(self) -> dict[str, Any]:
        """The body of ``/api/components``: every registered component's metadata."""
        plugins = self.server.plugins
        components = []
        for component in plugins.registry:
            try:
                components.append(component.metadata())
            except Exception as exc:  # a params model without a JSON Schema
                components.append(
                    {
                        "name": component.name,
                        "kind": str(component.kind),
                        "plugin": component.plugin,
                        "metadata_error": f"{type(exc).__name__}: {exc}",
                    }
                )
        return {
            "components": components,
            "failures": [f.to_dict() for f in plugins.failures],
        }


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/healthz", HttpEndpoints.healthz),
    Route("GET", "/api/streams", HttpEndpoints.api_streams, authenticated=True),
    Route("GET", "/api/pipelines", HttpEndpoints.api_pipelines, authenticated=True),
    Route("GET", "/api/dashboard", HttpEndpoints.api_dashboard, authenticated=True),
    Route("GET", "/api/components", HttpEndpoints.api_components, authenticated=True),
    Route("GET", "/", HttpEndpoints.dashboard_page),
    Route("GET", "/index.html", HttpEndpoints.dashboard_page),
    Route("GET", "/static/*", HttpEndpoints.dashboard_page),
    Route("GET", "/metrics", HttpEndpoints.metrics, authenticated=True),
)
"""The HTTP endpoints, in the order they are tried (the first route that matches
answers). WebSocket upgrades never reach it: see :meth:`HttpEndpoints.vet_upgrade`."""
