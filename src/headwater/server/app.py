"""headwater's server: protocol v1 over WebSockets, plus a few HTTP endpoints, on one port.

:class:`Server` ties three things together:

* the ``websockets`` library (its asyncio API), which accepts connections. Its
  ``process_request`` hook answers plain HTTP ``GET`` requests (``/healthz``,
  ``/api/streams``, ``/api/components``, ``/api/pipelines``, the dashboard at ``/``) and
  vets WebSocket upgrades *before* they
  happen: origin, connection limit, authentication (HTTP 401);
* a :class:`~headwater.core.streaming.StreamingManager`, which owns the streams and fans
  their chunks out to the connections (encode once, one bounded queue per client);
* the named pipelines of the :class:`~headwater.server.config.ServerConfig`, which
  clients start with ``run`` and stop with ``cancel``; each run streams its output
  (``websocket`` sink), progress, errors and final state to its own stream.

Each connection is served by a :class:`Session`: it reads frames, enforces the limits
(frame size, rate, subscriptions), validates each frame with
:func:`~headwater.server.protocol.parse_client_frame` and answers every request. Bad
input gets an ``error`` frame; it never closes the connection or touches another
client's stream.

The server runs on asyncio only (``websockets`` is asyncio-based).
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel
from pydantic_core import to_json
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from headwater import __version__
from headwater.core.engine import Engine
from headwater.core.errors import HeadwaterError, PipelineValidationError, ValidationIssue
from headwater.core.plugins import PluginManager
from headwater.core.runtime import RunHandle
from headwater.core.streaming import (
    CLOSE_SEND_FAILED,
    CLOSE_SLOW_CONSUMER,
    Frame,
    StreamError,
    StreamingManager,
)

from .auth import AuthRequest, AuthSettings, bearer_token, principal_name
from .config import NamedPipeline, ServerConfig, ServerConfigError
from .dashboard import (
    DASHBOARD_STREAM,
    RESERVED_PREFIX,
    DashboardFeed,
    pipelines_listing,
    static_response,
)
from .protocol import (
    CancelMessage,
    ClientMessage,
    ErrorCode,
    ErrorMessage,
    PingMessage,
    PongMessage,
    ProtocolError,
    RunMessage,
    RunStartedMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    encode_message,
    parse_client_frame,
)

__all__ = [
    "CLOSE_CODES",
    "CLOSE_GOING_AWAY",
    "RunInfo",
    "Server",
    "ServerError",
    "Session",
    "TokenBucket",
    "WebSocketTransport",
]

log = logging.getLogger("headwater.server")

CLOSE_GOING_AWAY: Final = 1001
"""WebSocket close code sent to every client when the server shuts down."""

CLOSE_CODES: Final[Mapping[str, int]] = {
    CLOSE_SLOW_CONSUMER: 4001,
    CLOSE_SEND_FAILED: 4002,
}
"""WebSocket close codes of the manager's close reasons (the reason text starts with the
machine-readable code, e.g. ``slow_consumer: too slow to keep up with stream x``)."""

SHUTDOWN_TIMEOUT: Final = 10.0
"""Seconds the last steps of a shutdown (closing connections, run clean-up) may take."""

WEBSOCKET_PATHS: Final = frozenset({"/", "/ws"})
"""Paths on which WebSocket upgrades are accepted."""


class ServerError(HeadwaterError):
    """The server cannot start as configured (e.g. an unsafe host without authentication)."""


# -- small parts ------------------------------------------------------------------------


class TokenBucket:
    """Rate limiter: ``rate`` tokens per second, at most ``capacity`` saved up."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        now = time.monotonic()
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


def _close_reason(code: str, reason: str) -> str:
    """``code: reason``, cut to the 123 bytes a WebSocket close reason may hold."""
    text = f"{code}: {reason}" if reason else code
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:120].decode(errors="ignore") + "..."


class WebSocketTransport:
    """A :class:`~headwater.core.streaming.ClientTransport` over one WebSocket connection.

    Frames are sent as text messages without re-encoding (``send(bytes, text=True)``).
    ``send_batch`` writes a backlog back to back and waits for the socket's buffer once
    (the manager hands a lagging client up to ``coalesce_max`` frames at a time).
    ``try_send`` writes without waiting when the connection can take data now: the
    manager uses it for clients that are keeping up, instead of waking their drain task.
    """

    __slots__ = ("_conn", "_fast", "_open")

    def __init__(self, conn: ServerConnection) -> None:
        from websockets.protocol import State

        self._conn = conn
        self._open = State.OPEN
        # The batch fast path uses websockets' send_context + the Sans-I/O protocol
        # object; fall back to one send() per frame if a future version lacks them.
        self._fast = callable(getattr(conn, "send_context", None)) and callable(
            getattr(getattr(conn, "protocol", None), "send_text", None)
        )

    def try_send(self, frames: Sequence[Frame]) -> bool:
        """Write several protocol messages now, in one write, if nothing has to wait.

        Returns False, writing nothing, when the connection is not open, another send is
        in progress (a fragmented message, or one waiting for the buffer) or the socket's
        buffer is above its high-water mark: the manager then queues the frames and its
        drain task sends them with :meth:`send_batch` (which waits). Never suspends.
        """
        conn = self._conn
        if not frames:
            return True
        if (
            not self._fast
            or conn.paused
            or conn.send_in_progress is not None
            or conn.protocol.state is not self._open
        ):
            return False
        transport = conn.transport
        if transport.is_closing():
            return False
        protocol = conn.protocol
        for frame in frames:
            protocol.send_text(frame)
        data = protocol.data_to_send()
        if all(data):
            transport.write(b"".join(data) if len(data) > 1 else data[0])
        else:  # pragma: no cover - an end-of-stream marker: let websockets do it
            _write_pieces(conn, data)
        return True

    async def send(self, frame: Frame) -> None:
        """Send one protocol message as a text message.

        Nothing happens once the connection is closed: its session then unsubscribes it
        from every stream (a closed connection is not a failed send).
        """
        with suppress(ConnectionClosed):
            await self._conn.send(frame, text=True)

    async def send_batch(self, frames: Sequence[Frame]) -> None:
        """Send several protocol messages, in order, with one write to the socket.

        Each frame is still its own WebSocket message; they are serialised back to back
        and handed to the transport at once (one system call instead of one per message),
        then the socket's buffer is waited for once.
        """
        conn = self._conn
        try:
            if self._fast and conn.send_in_progress is None:
                protocol = conn.protocol
                async with conn.send_context():
                    for frame in frames:
                        protocol.send_text(frame)
                    data = protocol.data_to_send()
                    if all(data):
                        conn.transport.write(b"".join(data))
                    else:  # pragma: no cover - an end-of-stream marker: let websockets do it
                        _write_pieces(conn, data)
                return
            for frame in frames:
                await conn.send(frame, text=True)
        except ConnectionClosed:
            pass

    async def close(self, code: str, reason: str) -> None:
        """Close the connection (4001 ``slow_consumer``, 4002 ``send_failed``...)."""
        await self._conn.close(CLOSE_CODES.get(code, 1011), _close_reason(code, reason))


def _write_pieces(conn: ServerConnection, data: list[bytes]) -> None:
    """Write what the protocol produced as websockets' ``send_data`` does (EOF included)."""
    for piece in data:
        if piece:
            conn.transport.write(piece)
        elif conn.transport.can_write_eof():
            conn.transport.write_eof()
        else:
            conn.transport.close()


@dataclass(slots=True, eq=False)
class RunInfo:
    """A run started by a client: its ids, its stream and who started it."""

    run_id: str
    pipeline: str
    stream: str
    owner: Any
    handle: RunHandle
    forward: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started_at: float = field(default_factory=time.time)


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- the server -------------------------------------------------------------------------


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
        self._prometheus: Any = None
        self._base_dir = base_dir
        self._environ = environ
        self._plugins: PluginManager | None = None
        self._manager: StreamingManager | None = None
        self._ws: WsServer | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._state = "new"
        self._stopped: anyio.Event | None = None
        self._pipelines: dict[str, NamedPipeline] = {}
        self._runs: dict[str, RunInfo] = {}
        self._run_streams: dict[str, RunInfo] = {}
        self._sessions: set[Session] = set()
        self._principals: weakref.WeakKeyDictionary[ServerConnection, Any] = (
            weakref.WeakKeyDictionary()
        )
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
            self._manager = await stack.enter_async_context(StreamingManager(config.streaming))
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
            self.dashboard.attach(self._manager, self._tg)
            limits = config.limits
            self._ws = await serve(
                self._handler,
                host,
                config.port,
                process_request=self._process_request,
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
        if not self.auth.required and not _is_loopback(host):
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
        self._pipelines = self._validate_pipelines()
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
        for run in list(self._runs.values()):
            run.forward.cancel()
            run.handle.cancel("server shutdown")
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
        return f"[{self._host}]" if ":" in self._host else self._host

    @property
    def pipelines(self) -> dict[str, NamedPipeline]:
        """The named pipelines clients may run."""
        return dict(self._pipelines)

    @property
    def runs(self) -> list[RunInfo]:
        """The runs going on, oldest first."""
        return list(self._runs.values())

    @property
    def connections(self) -> int:
        """Open WebSocket connections."""
        return len(self._sessions)

    def run_of_stream(self, stream_id: str) -> RunInfo | None:
        """The run feeding ``stream_id``, if it is the stream of a run started by a client."""
        return self._run_streams.get(stream_id)

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
                self.engine.prepare(_with_stream_sink(pipeline.data))
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
        """Start a named pipeline with a client's ``params``; its output goes to a stream.

        The stream is ``stream`` or ``PIPELINE-RUNID``; it has no inactivity timeout and
        ends with the run (``stream_complete`` with the run's final state and summary).
        ``before_start`` is awaited once the stream exists and before the run starts (the
        server subscribes the requester there, so it misses nothing); if it raises, the
        run is not started and its stream is closed.

        Raises :class:`~headwater.server.protocol.ProtocolError`: ``unknown_pipeline``,
        ``invalid_params``, ``limit_reached``, ``stream_exists``, ``unavailable``.
        """
        if not self.running:
            raise ProtocolError("unavailable", "the server is shutting down")
        named = self._pipelines.get(pipeline)
        if named is None:
            known = ", ".join(sorted(self._pipelines)) or "none is configured"
            raise ProtocolError("unknown_pipeline", f"no pipeline {pipeline!r} (known: {known})")
        limit = self.config.limits.max_runs
        if len(self._runs) >= limit:
            raise ProtocolError(
                "limit_reached", f"the limit of {limit} runs going at once is reached"
            )
        try:
            data = named.with_params(params or {})
            resolved, plugins = self.engine.prepare(_with_stream_sink(data))
        except PipelineValidationError as exc:
            problems = "; ".join(str(issue) for issue in exc.issues[:5])
            raise ProtocolError("invalid_params", f"pipeline {pipeline!r}: {problems}") from None
        run_id = uuid.uuid4().hex[:12]
        stream_id = stream if stream is not None else f"{pipeline}-{run_id}"
        metadata = {"pipeline": pipeline, "run": run_id, "owner": principal_name(owner)}
        try:
            await self.manager.create_stream(stream_id, metadata=metadata, inactivity_timeout=None)
        except StreamError as exc:
            raise ProtocolError.from_stream_error(exc) from None
        handle = self.engine.create_run(resolved, plugins, run_id=run_id, publisher=self)
        run = RunInfo(run_id, pipeline, stream_id, owner, handle)
        self._runs[run_id] = run
        self._run_streams[stream_id] = run
        try:
            if before_start is not None:
                await before_start(run)
        except BaseException:
            self._forget(run)
            with anyio.CancelScope(shield=True):
                if self.manager.has_stream(stream_id):
                    await self.manager.close_stream(stream_id, "cancelled")
            raise
        assert self._tg is not None
        self._tg.start_soon(self._execute, run)
        log.info("run %s of pipeline %r started (stream %r)", run_id, pipeline, stream_id)
        return run

    async def cancel_run(
        self, *, stream: str | None = None, run: str | None = None, principal: Any = None
    ) -> RunInfo:
        """Cancel a run started by a client, named by its stream or run id.

        The principal that started it may always cancel it; anybody else needs
        ``authorize(principal, "cancel", stream)``. Raises
        :class:`~headwater.server.protocol.ProtocolError` ``unknown_run`` or
        ``unauthorized``.
        """
        info = self._runs.get(run) if run is not None else None
        if info is None and stream is not None:
            info = self._run_streams.get(stream)
        if info is None:
            what = f"run {run!r}" if run is not None else f"run on stream {stream!r}"
            raise ProtocolError("unknown_run", f"no {what} is going on")
        if not await self.allowed(principal, "cancel", info.stream, owner=info.owner):
            raise ProtocolError("unauthorized", f"not allowed to cancel run {info.run_id!r}")
        info.handle.cancel("cancelled by client")
        return info

    async def _execute(self, run: RunInfo) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, run)
                await run.handle.start()
        except Exception:
            log.exception("run %s of pipeline %r crashed", run.run_id, run.pipeline)
        finally:
            self._forget(run)
            log.info("run %s of pipeline %r ended: %s", run.run_id, run.pipeline, run.handle.state)

    async def _forward(self, run: RunInfo) -> None:
        with run.forward:
            try:
                await self.manager.forward_events(run.stream, run.handle.events())
            except StreamError as exc:
                log.warning("events of run %s not forwarded: %s", run.run_id, exc)

    def _forget(self, run: RunInfo) -> None:
        if self._runs.get(run.run_id) is run:
            del self._runs[run.run_id]
        if self._run_streams.get(run.stream) is run:
            del self._run_streams[run.stream]

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

    async def _authenticate(self, conn: ServerConnection, request: Request) -> tuple[bool, Any]:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        remote = conn.remote_address
        req = AuthRequest(
            path=request.path,
            headers=headers,
            remote=f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else None,
            origin=headers.get("origin"),
            auth=self.auth,
        )
        token = bearer_token(request.path, headers)
        principal = await self.plugins.authenticate(token, req)
        if principal is False:
            return False, None
        if principal is None and self.auth.required:
            return False, None
        return True, principal

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.config.origins
        origin = origin.strip().rstrip("/").lower()
        if allowed is None:
            hosts = {self._url_host()}
            if _is_loopback(self._host):
                hosts |= {"127.0.0.1", "localhost", "[::1]"}
            own = {f"{scheme}://{h}:{self._port}" for scheme in ("http", "https") for h in hosts}
            return origin in own
        return "*" in allowed or origin in {o.strip().rstrip("/").lower() for o in allowed}

    # -- HTTP ---------------------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if upgrade:
            return await self._vet_upgrade(conn, request, path)
        try:
            if path == "/healthz":
                return _http(
                    200,
                    _json(
                        {
                            "status": "ok" if self.running else "stopping",
                            "version": __version__,
                            "streams": len(self.manager.active_streams()),
                            "clients": len(self._sessions),
                        }
                    ),
                )
            if path in ("/api/streams", "/api/components", "/api/pipelines", "/api/dashboard"):
                ok, principal = await self._authenticate(conn, request)
                if not ok:
                    return _error_response(
                        401, "authentication required", [("WWW-Authenticate", "Bearer")]
                    )
                if path == "/api/streams":
                    return _http(200, _json(await self.streams_snapshot(principal)))
                if path == "/api/pipelines":
                    return _http(200, _json(await self.pipelines_snapshot(principal)))
                if path == "/api/dashboard":
                    if not await self.allowed(principal, "subscribe", DASHBOARD_STREAM):
                        return _error_response(403, f"not allowed to see {DASHBOARD_STREAM}")
                    return _http(200, _json(self.dashboard.history()))
                return _http(200, _json(self.components_snapshot()))
            page = static_response(path, request.headers.get("Host"))
            if page is not None:
                return page
            if path == "/metrics":
                # Prometheus exposition of the engine's metrics (see docs/metrics.md);
                # scrapers send the same bearer token as other clients
                ok, _ = await self._authenticate(conn, request)
                if not ok:
                    return _error_response(
                        401, "authentication required", [("WWW-Authenticate", "Bearer")]
                    )
                from headwater.core.metrics.prometheus import exposition, prometheus_registry

                try:
                    if self._prometheus is None:
                        self._prometheus = prometheus_registry(self.engine.metrics.snapshot)
                    body, content_type = exposition(request.headers.get("Accept"), self._prometheus)
                except ImportError as exc:
                    return _error_response(501, str(exc))
                return _http(200, body, content_type)
        except Exception:
            log.exception("HTTP request %s failed", request.path)
            return _error_response(500, "internal error (see the server's log)")
        return _error_response(404, f"no such endpoint: {path}")

    async def _vet_upgrade(
        self, conn: ServerConnection, request: Request, path: str
    ) -> Response | None:
        if path not in WEBSOCKET_PATHS:
            return _error_response(404, f"no WebSocket endpoint at {path}; use /")
        if not self.running:
            return _error_response(503, "the server is shutting down")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin):
            return _error_response(403, f"origin {origin} is not allowed")
        limit = self.config.limits.max_connections
        if len(self._sessions) >= limit:
            return _error_response(503, f"the limit of {limit} connections is reached")
        ok, principal = await self._authenticate(conn, request)
        if not ok:
            return _error_response(
                401, "authentication required or token not valid", [("WWW-Authenticate", "Bearer")]
            )
        self._principals[conn] = principal
        return None

    async def streams_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/streams``: streams the principal may subscribe to."""
        manager = self.manager
        streams = []
        for stream_id in manager.active_streams():
            run = self._run_streams.get(stream_id)
            owner = run.owner if run is not None else None
            if not await self.allowed(principal, "subscribe", stream_id, owner=owner):
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
            "clients": len(self._sessions),
            "pipelines": sorted(self._pipelines),
            "runs": len(self._runs),
        }

    async def pipelines_snapshot(self, principal: Any = None) -> dict[str, Any]:
        """The body of ``/api/pipelines``: the named pipelines the principal may run, each
        with the JSON Schema of its params (see
        :func:`~headwater.server.dashboard.pipelines_listing`)."""
        allowed = {
            name: named
            for name, named in self._pipelines.items()
            if await self.allowed(principal, "run", name)
        }
        return {"pipelines": pipelines_listing(allowed, self.plugins)}

    def components_snapshot(self) -> dict[str, Any]:
        """The body of ``/api/components``: every registered component's metadata."""
        components = []
        for component in self.plugins.registry:
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
            "failures": [f.to_dict() for f in self.plugins.failures],
        }

    # -- WebSocket ----------------------------------------------------------------------

    async def _handler(self, conn: ServerConnection) -> None:
        principal = self._principals.pop(conn, None)
        self._next_client += 1
        session = Session(self, conn, principal, f"c{self._next_client}")
        self._sessions.add(session)
        try:
            await session.serve()
        finally:
            self._sessions.discard(session)


def _with_stream_sink(data: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline mapping, with a ``websocket`` sink appended if it has none."""
    out = dict(data)
    sinks = list(out.get("sinks") or [])
    if not any(isinstance(s, Mapping) and s.get("sink") == "websocket" for s in sinks):
        sinks.append({"sink": "websocket"})
    out["sinks"] = sinks
    return out


def _issue(path: str, message: str) -> ValidationIssue:
    return ValidationIssue(path, message)


# -- one connection ---------------------------------------------------------------------


class Session:
    """One WebSocket connection: reads requests, applies limits, answers each one.

    Replies (``pong``, ``run_started``, ``error``) are sent directly; stream messages
    (``subscribed``, chunks, ``stream_complete``...) come from the streaming manager,
    which this session registers as client ``client_id``.
    """

    def __init__(
        self, server: Server, conn: ServerConnection, principal: Any, client_id: str
    ) -> None:
        self.server = server
        self.conn = conn
        self.principal = principal
        self.client_id = client_id
        self.transport = WebSocketTransport(conn)
        limits = server.config.limits
        self.bucket = TokenBucket(limits.rate, limits.burst)
        self.max_bytes = limits.max_frame_bytes

    async def serve(self) -> None:
        """Handle frames until the connection closes, then unsubscribe everywhere."""
        try:
            async for raw in self.conn:
                await self.handle(raw)
        except ConnectionClosed:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.server.manager.deregister_all(self.client_id)

    async def close(self, code: int, reason: str) -> None:
        """Close the connection (used at shutdown)."""
        try:
            await self.conn.close(code, reason)
        except Exception:  # pragma: no cover - already broken
            log.debug("closing %s failed", self.client_id, exc_info=True)

    async def handle(self, raw: str | bytes) -> None:
        """Answer one frame; never raises except when the connection is gone."""
        if not self.bucket.take():
            await self.error("rate_limited", "too many messages; slow down and retry later")
            return
        if not isinstance(raw, str):
            await self.error(
                "invalid_message", "binary frames are not accepted: send JSON in text frames"
            )
            return
        try:
            message = parse_client_frame(raw, self.max_bytes)
        except ProtocolError as exc:
            await self.reply(exc.to_message())
            return
        try:
            await self.dispatch(message)
        except ProtocolError as exc:
            if exc.ref is None:
                exc.ref = message.id
            await self.reply(exc.to_message())
        except StreamError as exc:
            await self.reply(ProtocolError.from_stream_error(exc, ref=message.id).to_message())
        except ConnectionClosed:
            raise
        except Exception as exc:
            log.exception("request %s of %s failed", message.type, self.client_id)
            await self.error("internal_error", f"{type(exc).__name__}: {exc}", message.id)

    async def dispatch(self, message: ClientMessage) -> None:
        """Carry out one validated request."""
        if isinstance(message, SubscribeMessage):
            await self.subscribe(message)
        elif isinstance(message, UnsubscribeMessage):
            try:
                await self.server.manager.deregister_client(
                    message.stream, self.client_id, notify=True, ref=message.id
                )
            except StreamError as exc:
                raise ProtocolError.from_stream_error(exc, ref=message.id) from None
        elif isinstance(message, RunMessage):
            await self.run(message)
        elif isinstance(message, CancelMessage):
            await self.server.cancel_run(
                stream=message.stream, run=message.run, principal=self.principal
            )
        elif isinstance(message, PingMessage):
            await self.reply(PongMessage(id=message.id))

    def _check_room(self, stream: str, ref: str | int | None) -> None:
        subscriptions = self.server.manager.subscriptions(self.client_id)
        limit = self.server.config.limits.max_subscriptions
        if stream not in subscriptions and len(subscriptions) >= limit:
            raise ProtocolError(
                "limit_reached",
                f"a connection may be subscribed to at most {limit} streams",
                ref=ref,
            )

    async def subscribe(self, message: SubscribeMessage) -> None:
        """``subscribe``: authorize, check the limit, register with the manager."""
        server = self.server
        run = server.run_of_stream(message.stream)
        owner = run.owner if run is not None else None
        if not await server.allowed(self.principal, "subscribe", message.stream, owner=owner):
            raise ProtocolError(
                "unauthorized", f"not allowed to subscribe to {message.stream!r}", ref=message.id
            )
        self._check_room(message.stream, message.id)
        if message.stream == DASHBOARD_STREAM:
            await server.dashboard.open()  # created on demand, fed while watched
        try:
            await server.manager.register_client(
                message.stream,
                self.client_id,
                self.transport,
                since=message.since,
                epoch=message.epoch,
                ref=message.id,
            )
        except StreamError as exc:
            raise ProtocolError.from_stream_error(exc, ref=message.id) from None

    async def run(self, message: RunMessage) -> None:
        """``run``: authorize, start the pipeline, subscribe the requester to its stream."""
        server = self.server
        if not await server.allowed(self.principal, "run", message.pipeline):
            raise ProtocolError(
                "unauthorized", f"not allowed to run {message.pipeline!r}", ref=message.id
            )
        if message.stream is not None:
            if message.stream.startswith(RESERVED_PREFIX):
                raise ProtocolError(
                    "invalid_message",
                    f"stream: ids starting with {RESERVED_PREFIX!r} are reserved",
                    ref=message.id,
                )
            self._check_room(message.stream, message.id)
        else:
            self._check_room("", message.id)

        async def subscribe_requester(run: RunInfo) -> None:
            await self.reply(
                RunStartedMessage(
                    stream=run.stream, run=run.run_id, pipeline=run.pipeline, ref=message.id
                )
            )
            await server.manager.register_client(
                run.stream, self.client_id, self.transport, since=0, ref=message.id
            )

        try:
            await server.start_run(
                message.pipeline,
                message.params,
                stream=message.stream,
                owner=self.principal,
                before_start=subscribe_requester,
            )
        except ProtocolError as exc:
            exc.ref = message.id
            raise

    async def reply(self, message: BaseModel) -> None:
        """Send one reply (``pong``, ``run_started``, ``error``) on this connection."""
        await self.conn.send(encode_message(message), text=True)

    async def error(self, code: ErrorCode, text: str, ref: str | int | None = None) -> None:
        """Send an ``error`` message."""
        await self.reply(ErrorMessage(code=code, message=text, ref=ref))
