"""headwater's server: protocol v1 over WebSockets, plus HTTP endpoints, on one port.

:class:`Server` is ``headwater serve``: a :class:`~headwater.server.base.BaseServer`
(streaming manager, runs, dashboard feed, endpoints, security) whose connections are
accepted by

* the ``websockets`` library (its asyncio API) for WebSocket upgrades and plain GET
  requests; the checks of upgrades (origin, connection limit, authentication) and the
  endpoints are in :mod:`headwater.server.routes`; each WebSocket connection is served
  by a :class:`~headwater.server.session.Session`, written to by the streaming manager
  through :mod:`headwater.server.transport` (encode once, one bounded queue per client,
  non-blocking writes for clients that keep up);
* the server's own HTTP/1.1 path (:mod:`headwater.server.serve_http`) for Server-Sent
  Events (``/api/streams/{stream}/events``) and requests with other methods than GET
  (plugin routes): the first line of every new connection is read before the
  ``websockets`` library sees it.

With ``tls`` in its configuration the port speaks HTTPS and ``wss://``
(:mod:`headwater.server.tls`); every request must name an allowed host
(:mod:`headwater.server.hosts`). The server runs on asyncio only (``websockets`` is
asyncio-based). The same application is available as an ASGI app:
:func:`headwater.server.asgi_app`.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

import anyio
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve

from headwater import __version__

from .auth import AuthSettings, RedactingLogger
from .base import SHUTDOWN_TIMEOUT, BaseServer, ServerError
from .config import ServerConfig
from .routes import WEBSOCKET_PATHS, is_loopback, url_host
from .runs import RunInfo
from .serve_http import SniffingConnection
from .session import Session
from .tls import ServerCertificate, tls_requirement
from .transport import (
    CLOSE_CODES,
    CLOSE_GOING_AWAY,
    TokenBucket,
    WebSocketsConnection,
    WebSocketTransport,
)

__all__ = [
    "CLOSE_CODES",
    "CLOSE_GOING_AWAY",
    "SHUTDOWN_TIMEOUT",
    "WEBSOCKET_PATHS",
    "RunInfo",
    "Server",
    "ServerError",
    "Session",
    "TokenBucket",
    "WebSocketTransport",
]

log = logging.getLogger("headwater.server")


class Server(BaseServer):
    """A running ``headwater serve``: use it as an async context manager (asyncio only).

    ::

        async with Server(ServerConfig(port=0)) as server:
            print(server.url)                      # ws://127.0.0.1:PORT/
            await server.manager.create_stream("errors")
            await server.manager.push("errors", {"msg": "disk full"})
            await server.serve_forever()           # until shutdown() or cancellation

    ``engine`` is the :class:`~headwater.Engine` whose plugins validate and run the
    pipelines and whose metrics ``/metrics`` shows (default: a new engine of the server's
    own, using ``plugins`` when given). ``base_dir`` is where pipeline files named in the
    configuration are looked up (default: the working directory;
    :func:`~headwater.server.load_server_config` users pass the file's directory). While
    it runs, the server is attached to its engine: the ``websocket`` sinks of the runs it
    starts publish to it, and so do those of the engine's other runs (to the newest
    server of the engine).
    """

    _ws: WsServer | None = None
    _tls: ServerCertificate | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Validate the configuration, start the streaming manager, listen, then start
        the bridge and the exporters (meanwhile ``/healthz`` answers and ``/readyz``
        says ``starting``; connections wait for the end of the start).

        Raises :class:`ServerConfigError` (a pipeline does not resolve against the
        installed components), :class:`ServerError` (an unsafe host without
        authentication, tokens beyond loopback without TLS, a certificate that does not
        load) or ``OSError`` (the port is taken).
        """
        if self._state != "new":
            raise RuntimeError("a Server can be started only once")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "headwater's server runs on asyncio (the websockets library is asyncio-based)"
            ) from None
        self._begin()
        config = self.config
        host = config.host
        problem = self.unsafe_settings(config, self.auth)
        if problem is not None:
            self._failed()
            raise ServerError(problem)
        requirement = tls_requirement(host, self.auth.required, config.tls)
        paths = config.tls.paths(self._base_dir)
        try:
            if paths is not None:
                self._tls = ServerCertificate(*paths)
        except (ServerError, ValueError) as exc:
            self._failed()
            raise ServerError(str(exc)) from None
        if requirement.warning is not None:
            log.warning("%s", requirement.warning)
        if host == "localhost":
            host = "127.0.0.1"  # one address, so that port 0 means one port

        async def listen() -> None:
            limits = config.limits
            self._ws = await serve(
                self._handler,
                host,
                config.port,
                create_connection=SniffingConnection.bound_to(self),
                process_request=self._http.process_request,
                compression="deflate" if config.compression else None,
                max_size=4 * limits.max_frame_bytes,
                write_limit=64 * 1024,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                close_timeout=5,
                server_header=self.server_header,
                ssl=self._tls.context if self._tls is not None else None,
                logger=RedactingLogger(logging.getLogger("websockets.server")),
            )
            sockname = self._ws.sockets[0].getsockname()
            self._host, self._port = host, int(sockname[1])

        try:
            stack = await self._start_services(listen)  # closes what it started on failure
        except BaseException:
            if self._ws is not None:
                self._ws.close(close_connections=True)
                with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                    await self._ws.wait_closed()
            raise
        self._running(stack)
        if not self.auth.required:
            log.warning(
                "no authentication configured: serving on %s only, to clients of this machine",
                host,
            )
        log.info("serving on %s", self.url)

    def unsafe_settings(self, config: ServerConfig, auth: AuthSettings) -> str | None:
        """Why the server must not run on its address with ``config`` and ``auth``: no
        authentication beyond loopback, or tokens beyond loopback without TLS (see
        :func:`~headwater.server.tls.tls_requirement`). Checked at start and on reload."""
        host = self._host
        if not auth.required and not is_loopback(host):
            return (
                f"refusing to serve on {host} without authentication: anybody who can reach "
                "it could read every stream and run every pipeline. Configure auth.tokens "
                "(or HEADWATER_TOKENS, or auth.required with an authentication plugin), or "
                "bind 127.0.0.1"
            )
        return tls_requirement(host, auth.required, config.tls).error

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Stop: refuse new connections, end every stream, close every connection.

        Every subscribed client receives ``stream_complete`` with ``reason`` (queued
        messages first, within ``streaming.shutdown_grace``), then every WebSocket
        connection is closed with code 1001 and every event stream ends. Runs are
        cancelled and cleaned up. Idempotent.
        """
        if not self._stopping():
            return
        assert self._ws is not None
        self._ws.server.close()  # stop listening; open connections stay for now
        await self._end_connections(reason)
        self._ws.close(close_connections=True)
        with anyio.move_on_after(SHUTDOWN_TIMEOUT):
            await self._ws.wait_closed()
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    # -- properties ---------------------------------------------------------------------

    @property
    def bound_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the server listens on (known once started)."""
        return (self._host, self._port) if self._ws is not None else None

    @property
    def server_header(self) -> str:
        """The ``Server`` header of every response."""
        return f"headwater/{__version__}"

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS (HTTPS and ``wss://``)."""
        return self._tls is not None

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` (``wss://`` with TLS): the WebSocket URL of the server."""
        scheme = "wss" if self._tls is not None else "ws"
        return f"{scheme}://{url_host(self._host)}:{self._port}/"

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT`` (``https://`` with TLS): the base URL of the HTTP
        endpoints."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{url_host(self._host)}:{self._port}"

    def reload_tls(self) -> bool:
        """Load the TLS certificate and key again from their files (``headwater serve``
        does on SIGHUP): new connections get the new certificate, open ones keep theirs.

        Returns False when the server has no TLS configured. Raises ``ValueError``
        saying which file is wrong; the server then keeps its certificate.
        """
        if self._tls is None:
            return False
        self._tls.reload()
        log.info("TLS certificate reloaded from %s", self._tls.cert_file)
        return True

    # -- WebSocket ----------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        principal = self._http.principal_of(conn)
        await self.serve_session(WebSocketsConnection(conn), principal)
