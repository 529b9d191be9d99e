"""What both of headwater's servers are made of, whichever front end accepts connections.

:class:`BaseServer` is the application without its listener: the configuration, the
engine, the :class:`~headwater.core.streaming.StreamingManager` and its task group, the
named pipelines and the runs clients start (:mod:`headwater.server.runs`), the dashboard
feed, the HTTP endpoints (:mod:`headwater.server.routes`), authentication and
authorization, and the connections: protocol v1 :class:`~headwater.server.session.Session`
objects and Server-Sent Events responses (:mod:`headwater.server.sse`).

Two front ends feed it connections:

* :class:`~headwater.server.app.Server` (``headwater serve``) listens with the
  ``websockets`` library, plus its own HTTP/1.1 path for event streams and other
  methods than GET (:mod:`headwater.server.serve_http`);
* :class:`~headwater.server.asgi.AsgiApp` is an ASGI 3 application, run by any ASGI
  server (uvicorn...) or mounted in another application (Starlette, FastAPI).

Both answer the same endpoints with the same checks, limits and streaming semantics,
because both go through this class. Its life: ``new``, ``starting``, ``running``,
``draining`` (:meth:`BaseServer.drain`: runs end, new ones are refused), ``stopping``,
``stopped``; while it runs, :meth:`BaseServer.reload` takes a new configuration and
:meth:`BaseServer.readiness` answers ``/readyz`` (:mod:`headwater.server.lifecycle`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.abc import TaskGroup

from headwater.core.engine import Engine
from headwater.core.errors import HeadwaterError, PipelineValidationError, ValidationIssue
from headwater.core.plugins import PluginManager
from headwater.core.streaming import StreamingManager

from . import lifecycle
from .auth import AuthSettings
from .config import NamedPipeline, ServerConfig, ServerConfigError
from .dashboard import DashboardFeed
from .history import RunHistory
from .protocol import ProtocolError
from .routes import HttpEndpoints
from .runs import ClientRuns, RunInfo, with_stream_sink
from .session import Connection, Session
from .transport import CLOSE_GOING_AWAY

if TYPE_CHECKING:
    from .bridge import StreamBridge
    from .sse import SseConnection

__all__ = ["SHUTDOWN_TIMEOUT", "BaseServer", "ServerError"]

log = logging.getLogger("headwater.server")

SHUTDOWN_TIMEOUT: Final = 10.0
"""Seconds the last steps of a shutdown (closing connections, run clean-up) may take."""


class ServerError(HeadwaterError):
    """The server cannot start as configured (e.g. an unsafe host without authentication)."""


class BaseServer:
    """The parts of a headwater server that do not depend on how it accepts connections.

    ``engine`` is the :class:`~headwater.Engine` whose plugins validate and run the
    pipelines and whose metrics ``/metrics`` shows (default: a new engine of the server's
    own, using ``plugins`` when given). ``base_dir`` is where pipeline files named in the
    configuration are looked up (default: the working directory). While it runs, the
    server is attached to its engine: the ``websocket`` sinks of the engine's runs
    publish to it (to the newest server of the engine).
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
            policy = self.config.sandbox.policy(base_dir, environ)
            engine = Engine(plugin_manager=plugins, policy=policy)
        elif plugins is not None:
            raise TypeError("pass either engine or plugins")
        self.engine = engine
        """The engine the server runs on."""
        self._base_dir = base_dir
        self._environ = environ
        self._plugins: PluginManager | None = None
        self._manager: StreamingManager | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._state = "new"
        self._stopped: anyio.Event | None = None
        self._bridge: StreamBridge | None = None
        self._runs = ClientRuns(self)
        self._http = HttpEndpoints(self)
        self._sessions: set[Session] = set()
        self._sse: set[SseConnection] = set()
        self._next_client = 0
        self._host = self.config.host
        self._port = self.config.port
        self._thread_token: object | None = None
        self._thread_id = 0
        self.auth: AuthSettings = AuthSettings()
        """The effective authentication settings (known once started)."""
        self.dashboard = DashboardFeed(self)
        """The dashboard's live feed (the ``$dashboard`` stream)."""
        self.history = RunHistory(self)
        """The run history (``history`` of the configuration; open once started)."""

    # -- lifecycle (for the front ends) ---------------------------------------------------

    def _begin(self) -> None:
        """Check the configuration (plugins, auth, pipelines, plugin routes)."""
        if self._state != "new":
            raise RuntimeError(f"a {type(self).__name__} can be started only once")
        self._state = "starting"
        self._stopped = anyio.Event()
        try:
            config = self.config
            self._plugins = self.engine.load()
            self.auth = self.auth_settings(config)
            if self.auth.tokens and not self._plugins.has_listeners("authenticate"):
                log.warning(
                    "static tokens are configured but no authenticate plugin is loaded (is "
                    "the built-in plugin headwater.auth disabled?): every connection will "
                    "be refused"
                )
            self._runs.pipelines = self._validate_pipelines()
            self._http.load_plugin_routes()
        except BaseException:
            self._state = "stopped"
            self._stopped.set()
            raise

    async def _start_services(
        self, listen: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncExitStack:
        """Start the manager, bridge, exporters and task group; returns their stack (the
        caller closes it, from the same task, when it fails or stops). ``listen`` is
        awaited once the manager runs, before the bridge connects: ``headwater serve``
        listens there, so that its probes answer during a long start-up (``/readyz``:
        503 ``starting``)."""
        config = self.config
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._manager = await stack.enter_async_context(
                StreamingManager(config.streaming, metrics=self.engine.metrics)
            )
            await self.history.open()
            stack.push_async_callback(self.history.close)
            self._manager.add_observer(self.history)
            if listen is not None:
                await listen()
            if config.bridge is not None:
                from .bridge import StreamBridge

                self._bridge = StreamBridge(
                    self._manager, config.bridge, metrics=self.engine.metrics
                )
                await stack.enter_async_context(self._bridge)
            if config.metrics.exporters:
                from headwater.core.metrics import build_exporters, running_exporters

                exporters = build_exporters(
                    config.metrics.exporters, self.plugins, self.engine.metrics.snapshot
                )
                await stack.enter_async_context(running_exporters(exporters))
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._runs.attach(self._tg)
            self.dashboard.attach(self._manager, self._tg)
        except BaseException:
            # Not inside a new cancel scope: the stack holds a task group entered here.
            await stack.aclose()
            self._failed()
            raise
        return stack

    def _failed(self) -> None:
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    def _running(self, stack: AsyncExitStack) -> None:
        """The front end is ready: attach to the engine."""
        self._stack = stack
        self._thread_token = anyio.lowlevel.current_token()
        self._thread_id = threading.get_ident()
        self._state = "running"
        self.engine.attach_server(self)

    async def _end_connections(self, reason: str) -> None:
        """Stop the runs, end every stream, close every connection (the front end has
        stopped accepting new ones)."""
        self.engine.detach_server(self)
        assert self._manager is not None
        self._runs.cancel_all("server shutdown")
        await self._manager.shutdown(reason)
        with anyio.move_on_after(SHUTDOWN_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for session in list(self._sessions):
                    tg.start_soon(session.close, CLOSE_GOING_AWAY, "server shutting down")
                for sse in list(self._sse):
                    sse.drop()

    async def drain(self, seconds: float | None = None) -> bool:
        """Let the runs clients started end before a shutdown (a deploy without loss).

        From now on ``run`` requests get the error ``draining`` and ``/readyz`` answers
        503, while connections, subscriptions and streams go on. The runs' broker sources
        stop taking messages; the other runs go on to their end. Returns True once every
        run has ended and its stream's clients were sent ``stream_complete``; after
        ``seconds`` (default: ``shutdown.drain_seconds`` of the configuration) the runs
        still going are cancelled (checkpointed ones commit a final checkpoint) and it
        returns False. Call :meth:`shutdown` next. Returns at once unless running.
        """
        if self._state != "running":
            return not self._runs
        self._state = "draining"
        if seconds is None:
            seconds = self.config.shutdown.drain_seconds
        late = await lifecycle.drain_runs(self, seconds)
        return not late

    def readiness(self) -> lifecycle.Readiness:
        """Whether the server should get new clients (``/readyz``), and if not, what is
        not ready: see :func:`headwater.server.lifecycle.readiness`."""
        return lifecycle.readiness(self)

    def reload(self, config: ServerConfig) -> lifecycle.Reload:
        """Run with a new configuration from now on (``headwater serve`` on SIGHUP).

        Its sections ``pipelines``, ``auth``, ``origins``, ``allowed_hosts``,
        ``limits``, ``sse`` and ``shutdown`` apply at once (runs going on keep their
        pipeline; open connections keep their principal, rate and frame limits); the
        others are read at start only and keep their values (listed in the result's
        ``ignored``). Streams and connections are untouched. All or nothing: raises
        :class:`~headwater.server.ServerConfigError`, changing nothing, when the new
        configuration cannot run here (see :func:`~headwater.server.lifecycle.prepare_reload`).
        """
        if self._state not in ("running", "draining"):
            raise RuntimeError("only a running server can reload its configuration")
        change = lifecycle.prepare_reload(self, config)
        self.config = change.config
        self.auth = change.auth
        self._runs.pipelines = change.pipelines
        self._http.settings_changed()
        log.info("configuration reloaded: %s", change.describe())
        return change

    def auth_settings(self, config: ServerConfig) -> AuthSettings:
        """The effective authentication settings of ``config`` here (its tokens, plus
        ``HEADWATER_TOKENS`` of the server's environment); raises ServerConfigError."""
        try:
            return config.auth.settings(self._environ)
        except ValueError as exc:
            raise ServerConfigError([ValidationIssue("auth", str(exc))]) from None

    def unsafe_settings(self, config: ServerConfig, auth: AuthSettings) -> str | None:
        """Why this server must not run with ``config`` and ``auth``, if it must not
        (``headwater serve``: no authentication beyond loopback, tokens without TLS)."""
        return None

    def _stopping(self) -> bool:
        """Enter the ``stopping`` state; False when there is nothing to stop."""
        if self._state in ("stopping", "stopped", "new"):
            if self._state == "new":
                self._state = "stopped"
            return False
        self._state = "stopping"
        return True

    async def serve_forever(self) -> None:
        """Wait until the server is shut down (by :meth:`shutdown` or a signal handler)."""
        if self._stopped is None:
            raise RuntimeError("the server is not started")
        await self._stopped.wait()

    async def shutdown(self, reason: str = "shutdown") -> None:  # pragma: no cover - abstract
        """Stop: refuse new connections, end every stream, close every connection."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """:meth:`shutdown`, then wait for the runs' clean-up and stop the manager."""
        with anyio.CancelScope(shield=True):
            await self.shutdown()
        stack, self._stack = self._stack, None
        if stack is not None:
            # Not inside a new cancel scope: the stack holds task groups entered at start.
            await stack.aclose()

    # -- properties ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server serves connections: from the end of the start to the
        start of the shutdown, its drain included."""
        return self._state in ("running", "draining")

    @property
    def draining(self) -> bool:
        """True during :meth:`drain`: new runs are refused, the others end."""
        return self._state == "draining"

    @property
    def lifecycle(self) -> str:
        """``new``, ``starting``, ``running``, ``draining``, ``stopping`` or ``stopped``."""
        return self._state

    @property
    def bridge(self) -> StreamBridge | None:
        """The stream bridge to the other nodes (``bridge`` of the configuration), once
        the server starts it."""
        return self._bridge

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
        """The address the server is bound to (as configured, for the ASGI app)."""
        return self._host

    @property
    def bound_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the server listens on; None when it does not know (the ASGI
        app: that is the ASGI server's business)."""
        return None

    @property
    def port(self) -> int:
        """The port the server listens on (as configured, for the ASGI app)."""
        return self._port

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
        """Open connections: WebSocket sessions and event streams."""
        return len(self._sessions) + len(self._sse)

    @property
    def event_streams(self) -> list[SseConnection]:
        """The open Server-Sent Events responses (``drop()`` ends one, as a broken
        connection would: its client may resume)."""
        return list(self._sse)

    @property
    def http(self) -> HttpEndpoints:
        """The HTTP endpoints (built-in and plugin routes)."""
        return self._http

    def run_of_stream(self, stream_id: str) -> RunInfo | None:
        """The run feeding ``stream_id``, if it is the stream of a run started by a client."""
        return self._runs.of_stream(stream_id)

    def stream_of_run(self, run_id: str) -> str | None:
        """The stream of a run started by a client (None for other runs)."""
        run = self._runs.get(run_id)
        return run.stream if run is not None else None

    def new_client_id(self, prefix: str = "c") -> str:
        """A client id unique in this server (``c1``, ``c2``... ``sse3``...)."""
        self._next_client += 1
        return f"{prefix}{self._next_client}"

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
        return self.validate_pipelines(self.config)

    def validate_pipelines(self, config: ServerConfig) -> dict[str, NamedPipeline]:
        """The named pipelines of ``config``, each resolved against the engine's
        components; raises :class:`ServerConfigError` naming every problem."""
        named = config.named_pipelines(self._base_dir)
        issues = []
        for name, pipeline in named.items():
            try:
                self.engine.prepare(with_stream_sink(pipeline.data))
            except PipelineValidationError as exc:
                where = f"pipelines.{name}" if name.isidentifier() else f"pipelines[{name!r}]"
                for issue in exc.issues:
                    issues.append(
                        ValidationIssue(
                            f"{where}.{issue.path}" if issue.path else where, issue.message
                        )
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
        <headwater.server.runs.ClientRuns.start>`; during a drain, raises
        :class:`~headwater.server.protocol.ProtocolError` ``draining``."""
        if self._state == "draining":
            raise ProtocolError(
                "draining",
                "this server is draining before it shuts down and starts no new runs: "
                "start the run on another server, or here once it is back",
            )
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
        """May ``principal`` do ``action`` (``subscribe``, ``run``, ``cancel``, ``create``,
        ``metrics``) on ``target``? See the ``authorize`` hook for the actions.

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

    # -- connections --------------------------------------------------------------------

    async def serve_session(self, conn: Connection, principal: Any) -> None:
        """Serve one protocol v1 connection until it closes."""
        session = Session(self, conn, principal, self.new_client_id())
        self._sessions.add(session)
        try:
            await session.serve()
        finally:
            self._sessions.discard(session)
