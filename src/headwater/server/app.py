"""headwater's server: protocol v1 over WebSockets, plus a few HTTP endpoints, on one port.

:class:`Server` is the application: its configuration and lifecycle. It ties together:

* the ``websockets`` library (its asyncio API), which accepts connections; the HTTP
  endpoints and the checks of WebSocket upgrades (origin, connection limit,
  authentication) are in :mod:`headwater.server.routes`, a route table;
* a :class:`~headwater.core.streaming.StreamingManager`, which owns the streams and fans
  their chunks out to the connections (encode once, one bounded queue per client,
  written through :mod:`headwater.server.transport`);
* a :class:`~headwater.server.session.Session` per connection, which reads, limits and
  answers the client's requests;
* the named pipelines of the :class:`~headwater.server.config.ServerConfig`, which
  clients start with ``run`` and stop with ``cancel`` (:mod:`headwater.server.runs`);
  each run streams its output (``websocket`` sink), progress, errors and final state to
  its own stream.

The server runs on asyncio only (``websockets`` is asyncio-based).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve

from headwater import __version__
from headwater.core.engine import Engine
from headwater.core.errors import HeadwaterError, PipelineValidationError, ValidationIssue
from headwater.core.plugins import PluginManager
from headwater.core.streaming import StreamingManager

from .auth import AuthSettings
from .config import NamedPipeline, ServerConfig, ServerConfigError
from .dashboard import DashboardFeed
from .routes import WEBSOCKET_PATHS, HttpEndpoints, is_loopback, url_host
from .runs import ClientRuns, RunInfo, with_stream_sink
from .session import Session
from .transport import CLOSE_CODES, CLOSE_GOING_AWAY, TokenBucket, WebSocketTransport

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

SHUTDOWN_TIMEOUT: Final = 10.0
"""Seconds the last steps of a shutdown (closing connections, run clean-up) may take."""


class ServerError(HeadwaterError):
    """The server cannot start as configured (e.g. an unsafe host without authentication)."""


class Server:
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

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        engine: Engine | None = None,
        plugins: PluginManager | None = None,
        base_dir: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config if config is not None else ServerConfig()
        if engine is None:
            engine = Engine(plugin_manager=plugins) if plugins is not None else Engine()
        elif plugins is not None:
            raise TypeError("pass either engine or plugins")
        self.engine = engine
        """The engine the server runs on."""
        self._base_dir = base_dir
        self._environ = environ
        self._plugins: PluginManager | None = None
        self._manager: StreamingManager | None = None
        self._ws: WsServer | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._state = "new"
        self._stopped: anyio.Event | None = None
        self._runs = ClientRuns(self)
        self._http = HttpEndpoints(self)
        self._sessions: set[Session] = set()
        self._next_client = 0
        self._host = self.config.host
        self._port = self.config.port
        self._thread_token: object | None = None
        self._thread_id = 0
        self.auth: AuthSettings = AuthSettings()
        """The effective authentication settings (known once started)."""
        self.dashboard = DashboardFeed(self)
        """The dashboard's live feed (the ``$dashboard`` stream)."""

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
        """Validate the configuration, start the streaming manager and listen.

        Raises :class:`ServerConfigError` (a pipeline does not resolve against the
        installed components), :class:`ServerError` (an unsafe host without
        authentication) or ``OSError`` (the port is taken).
        """
        if self._state != "new":
            raise RuntimeError("a Server can be started only once")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "headwater's server runs on asyncio (the websockets library is asyncio-based)"
            ) from None
        self._state = "starting"
        self._stopped = anyio.Event()
        try:
            host = self._prepare()
        except BaseException:
            self._state = "stopped"
            self._stopped.set()
            raise
        config = self.config
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._manager = await stack.enter_async_context(
                StreamingManager(config.streaming, metrics=self.engine.metrics)
            )
            if config.bridge is not None:
                from .bridge import StreamBridge

                await stack.enter_async_context(StreamBridge(self._manager, config.bridge))
            if config.metrics.exporters:
                from headwater.core.metrics import build_exporters, running_exporters

                exporters = build_exporters(
                    config.metrics.exporters, self.plugins, self.engine.metrics.snapshot
                )
                await stack.enter_async_context(running_exporters(exporters))
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._runs.attach(self._tg)
            self.dashboard.attach(self._manager, self._tg)
            limits = config.limits
            self._ws = await serve(
                self._handler,
                host,
                config.port,
                process_request=self._http.process_request,
                compression="deflate" if config.compression else None,
                max_size=4 * limits.max_frame_bytes,
                write_limit=64 * 1024,
                ping_interval=config.ping_interval,
                ping_timeout=config.ping_timeout,
                close_timeout=5,
                server_header=f"headwater/{__version__}",
            )
        except BaseException:
            # Not inside a new cancel scope: the stack holds a task group entered here.
            await stack.aclose()
            self._state = "stopped"
            self._stopped.set()
            raise
        self._stack = stack
        sockname = self._ws.sockets[0].getsockname()
        self._host, self._port = host, int(sockname[1])
        self._thread_token = anyio.lowlevel.current_token()
        self._thread_id = threading.get_ident()
        self._state = "running"
        self.engine.attach_server(self)
        if not self.auth.required:
            log.warning(
                "no authentication configured: serving on %s only, to clients of this machine",
                host,
            )
        log.info("serving on %s", self.url)

    def _prepare(self) -> str:
        """Check everything that can be checked before listening; returns the host."""
        config = self.config
        self._plugins = self.engine.load()
        try:
            self.auth = config.auth.settings(self._environ)
        except ValueError as exc:
            raise ServerConfigError([_issue("auth", str(exc))]) from None
        host = config.host
        if not self.auth.required and not is_loopback(host):
            raise ServerError(
                f"refusing to serve on {host} without authentication: anybody who can reach "
                "it could read every stream and run every pipeline. Configure auth.tokens "
                "(or HEADWATER_TOKENS, or auth.required with an authentication plugin), or "
                "bind 127.0.0.1"
            )
        if self.auth.tokens and not self._plugins.has_listeners("authenticate"):
            log.warning(
                "static tokens are configured but no authenticate plugin is loaded (is the "
                "built-in plugin headwater.auth disabled?): every connection will be refused"
            )
        self._runs.pipelines = self._validate_pipelines()
        if host == "localhost":
            host = "127.0.0.1"  # one address, so that port 0 means one port
        return host

    async def serve_forever(self) -> None:
        """Wait until the server is shut down (by :meth:`shutdown` or a signal handler)."""
        if self._stopped is None:
            raise RuntimeError("the server is not started")
        await self._stopped.wait()

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Stop: refuse new connections, end every stream, close every connection.

        Every subscribed client receives ``stream_complete`` with ``reason`` (queued
        messages first, within ``streaming.shutdown_grace``), then every connection is
        closed with code 1001. Runs are cancelled and cleaned up. Idempotent.
        """
        if self._state in ("stopping", "stopped", "new"):
            if self._state == "new":
                self._state = "stopped"
            return
        self._state = "stopping"
        self.engine.detach_server(self)
        assert self._ws is not None
        assert self._manager is not None
        self._ws.server.close()  # stop listening; open connections stay for now
        self._runs.cancel_all("server shutdown")
        await self._manager.shutdown(reason)
        with anyio.move_on_after(SHUTDOWN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for session in list(self._sessions):
                    tg.start_soon(session.close, CLOSE_GOING_AWAY, "server shutting down")
        self._ws.close(close_connections=True)
        with anyio.move_on_after(SHUTDOWN_TIMEOUT):
            await self._ws.wait_closed()
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    async def aclose(self) -> None:
        """:meth:`shutdown`, then wait for the runs' clean-up and stop the manager."""
        with anyio.CancelScope(shield=True):
            await self.shutdown()
        stack, self._stack = self._stack, None
        if stack is not None:
            # Not inside a new cancel scope: the stack holds task groups entered in start().
            await stack.aclose()

    # -- properties ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between the end of :meth:`start` and the start of :meth:`shutdown`."""
        return self._state == "running"

    @property
    def manager(self) -> StreamingManager:
        """The streaming manager (raises ``RuntimeError`` before the server starts)."""
        if self._manager is None:
            raise RuntimeError("the server is not started")
        return self._manager

    @property
    def plugins(self) -> PluginManager:
        """The plugin manager the server uses (loaded at start)."""
        if self._plugins is None:
            raise RuntimeError("the server is not started")
        return self._plugins

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return self._host

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when the configuration said 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``: the WebSocket URL of the server."""
        return f"ws://{self._url_host()}:{self._port}/"

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT``: the base URL of the HTTP endpoints."""
        return f"http://{self._url_host()}:{self._port}"

    def _url_host(self) -> str:
        return url_host(self._host)

    @property
    def pipelines(self) -> dict[str, NamedPipeline]:
        """The named pipelines clients may run."""
        return dict(self._runs.pipelines)

    @property
    def runs(self) -> list[RunInfo]:
        """The runs going on, oldest first."""
        return list(self._runs)

    @property
    def connections(self) -> int:
        """Open WebSocket connections."""
        return len(self._sessions)

    def run_of_stream(self, stream_id: str) -> RunInfo | None:
        """The run feeding ``stream_id``, if it is the stream of a run started by a client."""
        return self._runs.of_stream(stream_id)

    def stream_of_run(self, run_id: str) -> str | None:
        """The stream of a run started by a client (None for other runs)."""
        run = self._runs.get(run_id)
        return run.stream if run is not None else None

    async def call(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await ``func(*args)`` on the server's event loop, from any thread's event loop.

        The streaming manager belongs to the server's loop: a pipeline running in another
        thread (an embedder running the server in a background thread) reaches it
        through this method.
        """
        if self._thread_token is None or threading.get_ident() == self._thread_id:
            return await func(*args)
        token = self._thread_token

        def hop() -> Any:
            return anyio.from_thread.run(func, *args, token=token)  # type: ignore[arg-type]

        return await anyio.to_thread.run_sync(hop)

    # -- pipelines and runs -------------------------------------------------------------

    def _validate_pipelines(self) -> dict[str, NamedPipeline]:
        named = self.config.named_pipelines(self._base_dir)
        issues = []
        for name, pipeline in named.items():
            try:
                self.engine.prepare(with_stream_sink(pipeline.data))
            except PipelineValidationError as exc:
                where = f"pipelines.{name}" if name.isidentifier() else f"pipelines[{name!r}]"
                for issue in exc.issues:
                    issues.append(
                        _issue(f"{where}.{issue.path}" if issue.path else where, issue.message)
                    )
        if issues:
            raise ServerConfigError(issues)
        return named

    async def start_run(
        self,
        pipeline: str,
        params: Mapping[str, Any] | None = None,
        *,
        stream: str | None = None,
        owner: Any = None,
        before_start: Callable[[RunInfo], Awaitable[None]] | None = None,
    ) -> RunInfo:
        """Start a named pipeline with a client's ``params``; its output goes to a stream
        (``stream`` or ``PIPELINE-RUNID``). See :meth:`ClientRuns.start
        <headwater.server.runs.ClientRuns.start>`."""
        return await self._runs.start(
            pipeline, params, stream=stream, owner=owner, before_start=before_start
        )

    async def cancel_run(
        self, *, stream: str | None = None, run: str | None = None, principal: Any = None
    ) -> RunInfo:
        """Cancel a run started by a client, named by its stream or run id. See
        :meth:`ClientRuns.cancel <headwater.server.runs.ClientRuns.cancel>`."""
        return await self._runs.cancel(stream=stream, run=run, principal=principal)

    # -- security -----------------------------------------------------------------------

    async def allowed(self, principal: Any, action: str, target: str, *, owner: Any = None) -> bool:
        """May ``principal`` do ``action`` (``subscribe``, ``run``, ``cancel``) on ``target``?

        The principal that started a run may always subscribe to and cancel it. Otherwise
        the ``authorize`` hook decides; with no answer, the request is allowed only when
        the server runs without authentication.
        """
        if owner is not None and principal is not None and owner == principal:
            return True
        answer = await self.plugins.authorize(principal, action, target)
        if answer is not None:
            return answer
        return not self.auth.required

    # -- HTTP ---------------------------------------------------------------------------

    async def streams_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/streams``: streams the principal may subscribe to."""
        return await self._http.streams_snapshot(principal)

    async def pipelines_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/pipelines``: the named pipelines the principal may run, each
        with the JSON Schema of its params."""
        return await self._http.pipelines_snapshot(principal)

    def components_snapshot(self) -> dict[str, Any]:
        """The body of ``/api/components``: every registered component's metadata."""
        return self._http.components_snapshot()

    # -- WebSocket ----------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        principal = self._http.principal_of(conn)
        self._next_client += 1
        session = Session(self, conn, principal, f"c{self._next_client}")
        self._sessions.add(session)
        try:
            await session.serve()
        finally:
            self._sessions.discard(session)


def _issue(path: str, message: str) -> ValidationIssue:
    return ValidationIssue(path, message)
