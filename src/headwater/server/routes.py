"""The server's HTTP side: its endpoints, as a route table, and the checks of upgrades.

Both front ends (``headwater serve``, on the ``websockets`` library, and the ASGI app)
hand every HTTP request, as a neutral :class:`~headwater.types.HttpRequest`, to
:meth:`HttpEndpoints.dispatch`, which answers it from :data:`ROUTES`, a table of
``(method, path pattern) -> handler``: ``/healthz``, ``/api/streams``,
``/api/pipelines``, ``/api/dashboard`` (and its ``/history``), ``/api/runs`` and
``/api/runs/{run}``, ``/api/components``, ``/metrics``, the dashboard's pages (``/``,
``/runs/{run}``, ``/errors``) and assets, then the routes plugins contribute
(``register_routes``). The Server-Sent Events endpoint,
``/api/streams/{stream}/events``, is vetted here too and handed back to the front end,
which streams it (:mod:`headwater.server.sse`). Routes marked ``authenticated`` (every
``/api`` route, ``/metrics``, every plugin route) answer 401 to a request without a
valid token; a handler that raises gets a 500 (and a log entry), a path no route
answers a 404.

A WebSocket upgrade is vetted by :meth:`HttpEndpoints.vet_upgrade` (path, origin,
connection limit, authentication) before it happens.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from headwater import __version__
from headwater.core.net import is_loopback
from headwater.core.plugins import LoadFailure
from headwater.types import HttpRequest, HttpResponse, HttpRoute

from . import snapshots
from .auth import AuthRequest
from .dashboard import DASHBOARD_STREAM, static_response
from .hosts import HostPolicy, default_hosts
from .http import (
    PathPattern,
    error_response,
    from_websockets,
    json_response,
    request_token,
    static_file,
    to_websockets,
)

if TYPE_CHECKING:
    from .base import BaseServer
    from .sse import SseSubscription

__all__ = [
    "EVENTS_PATH",
    "METRICS_TARGET",
    "ROUTES",
    "WEBSOCKET_PATHS",
    "Handler",
    "HttpEndpoints",
    "Route",
    "is_loopback",
    "local_address",
    "url_host",
]

log = logging.getLogger("headwater.server")

WEBSOCKET_PATHS: Final = frozenset({"/", "/ws"})
"""Paths on which WebSocket upgrades are accepted."""

EVENTS_PATH: Final = "/api/streams/{stream}/events"
"""The Server-Sent Events endpoint of a stream."""

METRICS_TARGET: Final = "$metrics"
"""The target of the ``authorize`` question for ``/metrics`` (action ``metrics``): a
reserved name, so that static tokens grant it through their stream patterns (``*``,
or ``$metrics`` itself)."""

_AUTH_REQUIRED: Final = (("WWW-Authenticate", "Bearer"),)


def local_address(sockname: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a socket's local address (None for other kinds of sockets)."""
    if isinstance(sockname, tuple | list) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None


def url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


Handler = Callable[["HttpEndpoints", HttpRequest], Awaitable[HttpResponse | None]]
"""A built-in endpoint: ``(endpoints, request) -> response``; None answers 404."""


@dataclass(frozen=True, slots=True)
class Route:
    """One line of the route table: requests it answers, and how."""

    method: str
    path: PathPattern
    handler: Handler | None
    """None: the Server-Sent Events endpoint, streamed by the front end."""
    authenticated: bool = False
    """Answer 401 unless the request authenticates (the principal goes to the handler)."""

    @classmethod
    def of(
        cls, method: str, pattern: str, handler: Handler | None, authenticated: bool = False
    ) -> Route:
        return cls(method, PathPattern.compile(pattern), handler, authenticated)


@dataclass(frozen=True, slots=True)
class PluginRoute:
    """A route contributed by a plugin, with its compiled pattern."""

    route: HttpRoute
    path: PathPattern

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when this route answers ``method path``."""
        route = self.route
        if method != route.method and not (method == "HEAD" and route.method == "GET"):
            return None
        if route.directory is not None:
            base = route.path.rstrip("/")
            if path == base or path.startswith(base + "/"):
                return {"path": path[len(base) :].lstrip("/")}
            return None
        return self.path.match(path)

    async def answer(self, request: HttpRequest) -> HttpResponse | None:
        """The plugin's answer (None: a file its static folder does not have)."""
        route = self.route
        if route.body is not None:
            return HttpResponse(
                200, route.body, route.content_type, (("Cache-Control", "no-cache"),)
            )
        if route.directory is not None:
            return static_file(route.directory, request.path_params.get("path", ""))
        assert route.handler is not None
        response = await route.handler(request)
        if not isinstance(response, HttpResponse):
            raise TypeError(
                f"the handler of {route.method} {route.path} returned "
                f"{type(response).__name__}, not an HttpResponse"
            )
        return response


class HttpEndpoints:
    """One server's HTTP endpoints and the checks of its WebSocket handshakes."""

    def __init__(self, server: BaseServer) -> None:
        self.server = server
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._prometheus: Any = None
        self._hosts: HostPolicy | Literal[False] | None = None
        self.plugin_routes: list[PluginRoute] = []
        self.route_failures: list[LoadFailure] = []
        """Plugin routes refused (clashes) and plugins that raised in ``register_routes``."""

    # -- plugin routes --------------------------------------------------------------------

    def load_plugin_routes(self) -> None:
        """Ask the plugins for their routes; keep those that clash with no other route."""
        self.plugin_routes, self.route_failures = [], []
        builtin = [r.path for r in ROUTES] + [PathPattern.compile(p) for p in WEBSOCKET_PATHS]

        def add(route: HttpRoute) -> None:
            pattern = route.path
            if route.directory is not None:
                pattern = pattern.rstrip("/") + "/{path:path}"
            compiled = PathPattern.compile(pattern)
            clash = next((b.pattern for b in builtin if b.overlaps(compiled)), None)
            if clash is None:
                clash = next(
                    (
                        f"{p.route.path} of plugin {p.route.plugin!r}"
                        for p in self.plugin_routes
                        if p.route.method == route.method and p.path.overlaps(compiled)
                    ),
                    None,
                )
            if clash is not None:
                failure = LoadFailure(
                    route.plugin or "?",
                    None,
                    None,
                    "routes",
                    f"route {route.method} {route.path} skipped: it would answer paths of {clash}",
                )
                log.warning("%s", failure)
                self.route_failures.append(failure)
                return
            self.plugin_routes.append(PluginRoute(route, compiled))

        self.route_failures.extend(self.server.plugins.register_routes(add))

    # -- dispatch ---------------------------------------------------------------------------

    async def dispatch(
        self, request: HttpRequest, local: tuple[str, int] | None = None
    ) -> HttpResponse | SseSubscription:
        """Answer an HTTP request (not an upgrade): a response, or for the events endpoint
        the vetted subscription that the front end streams. ``local`` is the address the
        server answers on (for the default origin check)."""
        from dataclasses import replace

        from .sse import prepare_sse

        path = request.path
        method = "GET" if request.method == "HEAD" else request.method
        refused = self.refuse_host(request, local)
        if refused is not None:
            return refused
        try:
            found: Route | PluginRoute | None = None
            params: dict[str, str] | None = None
            for route in ROUTES:
                if route.method == method:
                    params = route.path.match(path)
                    if params is not None:
                        found = route
                        break
            else:
                for plugin_route in self.plugin_routes:
                    params = plugin_route.match(request.method, path)
                    if params is not None:
                        found = plugin_route
                        break
            if found is None or params is None:
                return error_response(404, f"no such endpoint: {path}")
            principal = None
            if isinstance(found, PluginRoute) or found.authenticated:
                ok, principal = await self.authenticate(request)
                if not ok:
                    return error_response(401, "authentication required", _AUTH_REQUIRED)
            request = replace(
                request,
                path_params=params,
                principal=principal,
                services=self.server.engine.services,
            )
            if isinstance(found, PluginRoute):
                response = await found.answer(request)
            elif found.handler is None:
                vetted = await prepare_sse(self.server, request, local)
                if isinstance(vetted, HttpResponse):
                    return self._masked_error(vetted)
                return vetted
            else:
                response = await found.handler(self, request)
        except Exception:
            owner = f" (plugin {found.route.plugin!r})" if isinstance(found, PluginRoute) else ""
            log.exception("HTTP request %s %s failed%s", request.method, path, owner)
            return error_response(500, "internal error (see the server's log)")
        if response is None:
            return error_response(404, f"no such endpoint: {path}")
        return self._masked_error(response) if response.status >= 400 else response

    def _masked_error(self, response: HttpResponse) -> HttpResponse:
        """An error's text with the engine's secrets masked (it may quote a value a
        pipeline file substituted)."""
        secrets = self.server.engine.services.secrets
        kind = response.content_type
        if not len(secrets) or not (
            kind.startswith("text/") or kind.startswith("application/json")
        ):
            return response
        text = response.body.decode("utf-8", errors="replace")
        masked = secrets.mask(text)
        if masked == text:
            return response
        return HttpResponse(response.status, masked.encode(), kind, response.headers)

    async def vet_upgrade(
        self, request: HttpRequest, local: tuple[str, int] | None
    ) -> tuple[HttpResponse | None, Any]:
        """Refuse a WebSocket upgrade (wrong path, origin, too many connections, no valid
        token) with an HTTP error, or accept it: ``(None, principal)``. ``local`` is the
        address the server answers on (for the default origin and host checks)."""
        refused = self.refuse_host(request, local)
        if refused is not None:
            return refused, None
        if request.path not in WEBSOCKET_PATHS:
            return error_response(404, f"no WebSocket endpoint at {request.path}; use /"), None
        refused = self.refuse_connection(request, local)
        if refused is not None:
            return refused, None
        ok, principal = await self.authenticate(request, cookie=False)
        if not ok:
            return (
                error_response(401, "authentication required or token not valid", _AUTH_REQUIRED),
                None,
            )
        return None, principal

    def refuse_connection(
        self, request: HttpRequest, local: tuple[str, int] | None
    ) -> HttpResponse | None:
        """The checks every long-lived connection passes (WebSocket or SSE): the server
        is running, the origin is allowed, the connection limit is not reached."""
        server = self.server
        if not server.running:
            starting = server.lifecycle in ("new", "starting")
            return error_response(
                503, "the server is starting" if starting else "the server is shutting down"
            )
        origin = request.headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, local):
            return error_response(403, f"origin {origin} is not allowed")
        limit = server.config.limits.max_connections
        if server.connections >= limit:
            return error_response(503, f"the limit of {limit} connections is reached")
        return None

    # -- the websockets hook ------------------------------------------------------------

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """Answer an HTTP request, or vet a WebSocket upgrade (None lets it happen)."""
        neutral = from_websockets(request, conn.remote_address)
        local = local_address(conn.local_address) or (self.server.host, self.server.port)
        if "websocket" in request.headers.get("Upgrade", "").lower():
            refused, principal = await self.vet_upgrade(neutral, local)
            if refused is not None:
                return to_websockets(refused)
            self._principals[conn] = principal
            return None
        answer = await self.dispatch(neutral, local)
        if not isinstance(answer, HttpResponse):  # pragma: no cover - sniffed before
            return to_websockets(error_response(500, "events are not served here"))
        return to_websockets(answer)

    def principal_of(self, conn: ServerConnection) -> Any:
        """The principal the handshake of ``conn`` authenticated (once: it is forgotten)."""
        return self._principals.pop(conn, None)

    # -- security -----------------------------------------------------------------------

    def settings_changed(self) -> None:
        """The server's configuration was reloaded: forget what was derived from it."""
        self._hosts = None

    def host_policy(self, local: tuple[str, int] | None) -> HostPolicy:
        """The ``Host`` values answered on a connection that arrived at ``local``:
        ``allowed_hosts`` of the configuration, else the default (see
        :mod:`headwater.server.hosts`)."""
        if self._hosts is None:
            self._hosts = self.server.config.host_policy() or False
        if self._hosts is not False:
            return self._hosts
        bound = self.server.bound_address
        return default_hosts(bound, local, any_port_loopback=bound is None)

    def refuse_host(
        self, request: HttpRequest, local: tuple[str, int] | None
    ) -> HttpResponse | None:
        """421 for a request whose ``Host`` header names no allowed host (DNS rebinding:
        a page of another site reaching this server through the visitor's browser)."""
        host = request.headers.get("host")
        if self.host_policy(local).allows(host):
            return None
        shown = "no Host header" if host is None else f"Host {host[:200]!r}"
        return error_response(
            421,
            f"{shown} is not a name of this server: requests must name an allowed host "
            "(allowed_hosts in the server configuration)",
        )

    async def authenticate(self, request: HttpRequest, *, cookie: bool = True) -> tuple[bool, Any]:
        """``(ok, principal)`` of a request, from the ``authenticate`` hook. The token
        comes from the ``Authorization`` header, ``?token=`` or (``cookie``, GET only)
        the dashboard's cookie."""
        server = self.server
        headers = request.headers
        req = AuthRequest(
            path=request.target,
            headers=headers,
            remote=request.remote,
            origin=headers.get("origin"),
            auth=server.auth,
        )
        token = request_token(request, cookie=cookie)
        principal = await server.plugins.authenticate(token, req)
        if principal is False:
            return False, None
        if principal is None and server.auth.required:
            return False, None
        return True, principal

    def origin_allowed(self, origin: str, local: tuple[str, int] | None = None) -> bool:
        """May a page from ``origin`` connect (``origins`` of the configuration; by
        default only the server's own pages, at ``local``: its address and port)?"""
        server = self.server
        allowed = server.config.origins
        origin = origin.strip().rstrip("/").lower()
        if allowed is None:
            if local is None:
                return False
            host, port = local
            hosts = {url_host(host)}
            if is_loopback(host):
                hosts |= {"127.0.0.1", "localhost", "[::1]"}
            own = {f"{scheme}://{h}:{port}" for scheme in ("http", "https") for h in hosts}
            if port in (80, 443):
                own |= {f"{scheme}://{h}" for scheme in ("http", "https") for h in hosts}
            return origin in own
        return "*" in allowed or origin in {o.strip().rstrip("/").lower() for o in allowed}

    # -- the endpoints ------------------------------------------------------------------

    async def healthz(self, request: HttpRequest) -> HttpResponse | None:
        """``/healthz``: ``ok`` (or ``stopping``), the version, streams and clients."""
        server = self.server
        starting = server.lifecycle in ("new", "starting")
        return json_response(
            {
                "status": "ok" if server.running else "starting" if starting else "stopping",
                "version": __version__,
                "streams": len(server.manager.active_streams()),
                "clients": server.connections,
            }
        )

    async def readyz(self, request: HttpRequest) -> HttpResponse | None:
        """``/readyz``: 200 when the server should get new clients, else 503; the body
        says what is not ready (see :meth:`BaseServer.readiness
        <headwater.server.base.BaseServer.readiness>`)."""
        readiness = self.server.readiness()
        return json_response(readiness.to_dict(), 200 if readiness.ready else 503)

    def _masked(self, value: Any) -> HttpResponse:
        """A JSON response of ``value`` with the engine's secrets masked (the values its
        files substituted, URL passwords): pipelines' params are shown as they are set."""
        return json_response(self.server.engine.services.secrets.mask_data(value))

    async def api_streams(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/streams``: see :meth:`streams_snapshot`."""
        return self._masked(await self.streams_snapshot(request.principal))

    async def api_pipelines(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/pipelines``: see :meth:`pipelines_snapshot`."""
        return self._masked(await self.pipelines_snapshot(request.principal))

    async def api_dashboard(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/dashboard``: the dashboard feed's recent history."""
        if not await self.server.allowed(request.principal, "subscribe", DASHBOARD_STREAM):
            return error_response(403, f"not allowed to see {DASHBOARD_STREAM}")
        return self._masked(self.server.dashboard.history())

    async def api_components(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/components``: see :meth:`components_snapshot`."""
        return json_response(self.components_snapshot())

    async def api_runs(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/runs``: recorded runs (see :mod:`headwater.server.history.api`)."""
        from .history.api import api_runs

        return await api_runs(self.server, request)

    async def api_run(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/runs/{run}``: one recorded run (see :mod:`headwater.server.history.api`)."""
        from .history.api import api_run

        return await api_run(self.server, request)

    async def api_dashboard_history(self, request: HttpRequest) -> HttpResponse | None:
        """``/api/dashboard/history``: the charts' points over a time range (``range``:
        ``1m``, ``15m``, ``1h``), per pipeline and per stage of ``pipeline``."""
        if not await self.server.allowed(request.principal, "subscribe", DASHBOARD_STREAM):
            return error_response(403, f"not allowed to see {DASHBOARD_STREAM}")
        try:
            body = self.server.dashboard.series_view(
                request.query_value("range") or "1m", request.query_value("pipeline")
            )
        except ValueError as exc:
            return error_response(400, str(exc))
        return self._masked(body)

    async def not_found(self, request: HttpRequest) -> HttpResponse | None:
        """Every other ``/api/...`` path: reserved for the server (404)."""
        return None

    async def dashboard_page(self, request: HttpRequest) -> HttpResponse | None:
        """The dashboard's page (``/``, ``/index.html``) and assets (``/static/X``)."""
        return static_response(request.path, request.headers.get("host"))

    async def metrics(self, request: HttpRequest) -> HttpResponse | None:
        """``/metrics``: the Prometheus exposition of the engine's metrics (see
        ``docs/metrics.md``); scrapers send the same bearer token as other clients. The
        series name every stream, pipeline and stage, so the principal must be allowed
        action ``metrics`` on :data:`METRICS_TARGET` (403 otherwise)."""
        from headwater.core.metrics.prometheus import exposition, prometheus_registry

        if not await self.server.allowed(request.principal, "metrics", METRICS_TARGET):
            return error_response(403, f"not allowed to read the metrics ({METRICS_TARGET})")

        try:
            if self._prometheus is None:
                self._prometheus = prometheus_registry(self.server.engine.metrics.snapshot)
            body, content_type = exposition(request.headers.get("accept"), self._prometheus)
        except ImportError as exc:
            return error_response(501, str(exc))
        secrets = self.server.engine.services.secrets
        if len(secrets):  # a label (a sink's name, say) may hold a substituted value
            body = secrets.mask(body.decode()).encode()
        return HttpResponse(200, body, content_type, (("Cache-Control", "no-store"),))

    # -- the bodies of the API (see :mod:`headwater.server.snapshots`) -------------------

    async def streams_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/streams``: streams the principal may subscribe to."""
        return await snapshots.streams_snapshot(self.server, principal)

    async def pipelines_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/pipelines``: the named pipelines the principal may run."""
        return await snapshots.pipelines_snapshot(self.server, principal)

    def components_snapshot(self) -> dict[str, Any]:
        """The body of ``/api/components``: every registered component's metadata."""
        return snapshots.components_snapshot(self.server, self.route_failures)


ROUTES: Final[tuple[Route, ...]] = (
    Route.of("GET", "/healthz", HttpEndpoints.healthz),
    Route.of("GET", "/readyz", HttpEndpoints.readyz),
    Route.of("GET", "/api/streams", HttpEndpoints.api_streams, authenticated=True),
    Route.of("GET", EVENTS_PATH, None, authenticated=True),
    Route.of("GET", "/api/pipelines", HttpEndpoints.api_pipelines, authenticated=True),
    Route.of("GET", "/api/dashboard", HttpEndpoints.api_dashboard, authenticated=True),
    Route.of(
        "GET", "/api/dashboard/history", HttpEndpoints.api_dashboard_history, authenticated=True
    ),
    Route.of("GET", "/api/runs", HttpEndpoints.api_runs, authenticated=True),
    Route.of("GET", "/api/runs/{run}", HttpEndpoints.api_run, authenticated=True),
    Route.of("GET", "/api/components", HttpEndpoints.api_components, authenticated=True),
    Route.of("GET", "/api/{reserved:path}", HttpEndpoints.not_found, authenticated=True),
    Route.of("GET", "/", HttpEndpoints.dashboard_page),
    Route.of("GET", "/index.html", HttpEndpoints.dashboard_page),
    Route.of("GET", "/runs/{run}", HttpEndpoints.dashboard_page),
    Route.of("GET", "/errors", HttpEndpoints.dashboard_page),
    Route.of("GET", "/static/{asset:path}", HttpEndpoints.dashboard_page),
    Route.of("GET", "/metrics", HttpEndpoints.metrics, authenticated=True),
)
"""The built-in HTTP endpoints, in the order they are tried (the first route that
matches answers), before the plugins' routes. WebSocket upgrades never reach it: see
:meth:`HttpEndpoints.vet_upgrade`."""
