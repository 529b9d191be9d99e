"""headwater's server as an ASGI 3 application: run it with uvicorn, or mount it.

:func:`asgi_app` returns an :class:`AsgiApp`: the same application as ``headwater
serve`` (:class:`~headwater.server.base.BaseServer`: streaming manager, runs,
dashboard, endpoints, plugin routes, authentication, origin checks, limits), served over
the ASGI interface instead of the ``websockets`` library:

* ``websocket`` scopes on ``/`` or ``/ws``: protocol v1, one
  :class:`~headwater.server.session.Session` per connection (the same class as under
  ``serve``); an upgrade that is refused gets its HTTP error through the
  ``websocket.http.response`` extension when the server offers it, else a close;
* ``http`` scopes: every endpoint (:mod:`headwater.server.routes`), and Server-Sent
  Events streamed as the response body (:mod:`headwater.server.sse`);
* ``lifespan``: starts the streaming manager and its task group, stops them at the end.

Mounted in another application (``Mount("/hw", app)`` in Starlette), paths are taken
relative to the mount (``root_path``), and the host application's lifespan starts the
app: Starlette does not forward lifespan events to mounted apps, so pass
``lifespan=app.lifespan`` (or enter ``async with app.serving():`` in your own lifespan).
ASGI has no non-blocking send, so every client is written to by its drain task (no
``try_send``): ``headwater serve`` remains the faster WebSocket fan-out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

import anyio

from headwater.core.engine import Engine
from headwater.core.net import is_loopback
from headwater.core.plugins import PluginManager
from headwater.core.streaming import Frame
from headwater.types import HttpRequest, HttpResponse

from .base import BaseServer
from .config import ServerConfig
from .http import error_response, header_map, remote_text, response_headers
from .sse import SSE_HEADERS, SseConnection
from .transport import CLOSE_CODES, ConnectionGone, close_reason

__all__ = ["AsgiApp", "asgi_app"]

log = logging.getLogger("headwater.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY: Final = 1024 * 1024
"""Bytes a request body may take (413 beyond)."""


def asgi_app(
    engine: Engine | None = None,
    config: ServerConfig | None = None,
    *,
    base_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsgiApp:
    """headwater's server as an ASGI 3 application, on ``engine`` (default: a new one).

    ``config`` is a :class:`~headwater.server.ServerConfig` (its ``host`` and ``port``
    are the ASGI server's business and are ignored). The app starts with the ASGI
    ``lifespan`` protocol; mounted under Starlette, use ``lifespan=app.lifespan``.
    """
    return AsgiApp(config, engine=engine, base_dir=base_dir, environ=environ)


class AsgiApp(BaseServer):
    """headwater's server as an ASGI 3 application (see :func:`asgi_app`).

    ::

        app = headwater.server.asgi_app(engine, config)
        # uvicorn module:app          (lifespan starts it)
        # Starlette(routes=[Mount("/hw", app)], lifespan=app.lifespan)
        # async with app.serving(): ...   (tests, other frameworks)
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
        super().__init__(config, engine=engine, plugins=plugins, base_dir=base_dir, environ=environ)
        self._warned_public = False

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Check the configuration, start the streaming manager and its task group.

        Raises :class:`~headwater.server.ServerConfigError` when a pipeline does not
        resolve. Call :meth:`aclose` from the same task to stop.
        """
        self._begin()
        stack = await self._start_services()
        self._running(stack)
        log.info("headwater ASGI app started")

    async def shutdown(self, reason: str = "shutdown") -> None:
        """End every stream (clients get ``stream_complete`` with ``reason``), close every
        WebSocket (1001) and event stream; new connections get 503. Idempotent."""
        if not self._stopping():
            return
        await self._end_connections(reason)
        self._state = "stopped"
        assert self._stopped is not None
        self._stopped.set()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[AsgiApp]:
        """``async with app.serving():`` the app is started inside the block (from a
        lifespan of your own, or a test)."""
        await self.start()
        try:
            yield self
        finally:
            await self.aclose()

    def lifespan(self, app: Any = None) -> AbstractAsyncContextManager[None]:
        """A Starlette ``lifespan``: ``Starlette(..., lifespan=hw.lifespan)`` (the host
        app is passed and ignored; no state is added to the host's)."""
        return self._hosted()

    @asynccontextmanager
    async def _hosted(self) -> AsyncIterator[None]:
        async with self.serving():
            yield

    # -- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http_request(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.error("headwater could not start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _request(self, scope: Scope, method: str, body: bytes = b"") -> HttpRequest:
        root = scope.get("root_path", "") or ""
        path = scope.get("path", "/") or "/"
        if root and path.startswith(root):
            path = path[len(root) :]
        raw_query = scope.get("query_string", b"")
        return HttpRequest(
            method=method,
            path=path,
            query_string=raw_query.decode("latin-1"),
            headers=header_map(scope.get("headers", [])),
            root_path=root,
            remote=remote_text(scope.get("client")),
            body=body,
        )

    def _refusal(self, scope: Scope) -> HttpResponse | None:
        """Not started; or no authentication on an address others can reach."""
        if self._state == "new":
            return error_response(
                503,
                "the headwater app is not started: run it with the ASGI lifespan (mounted: "
                "lifespan=app.lifespan) or inside `async with app.serving():`",
            )
        local = scope.get("server")
        if not self.auth.required and local and not _local_address(str(local[0])):
            if not self._warned_public:
                self._warned_public = True
                log.warning("refusing requests on %s: no authentication configured", local[0])
            return error_response(
                403,
                "no authentication configured: headwater answers only on loopback addresses "
                "(configure auth.tokens or HEADWATER_TOKENS)",
            )
        return None

    async def _http_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await _respond(send, error_response(413, f"a body may take {MAX_BODY} bytes"))
                return
        request = self._request(scope, method, bytes(body))
        refused = self._refusal(scope) or self._http.refuse_host(request, _local(scope))
        if refused is not None:
            await _respond(send, refused)
            return
        if request.path == "":
            target = request.root_path + "/"
            if request.query_string:
                target += "?" + request.query_string
            await _respond(send, HttpResponse(307, b"", headers=(("Location", target),)))
            return
        answer = await self._http.dispatch(request, _local(scope))
        if isinstance(answer, HttpResponse):
            await _respond(send, answer, head=method == "HEAD")
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS],
            }
        )
        writer = AsgiSseWriter(send)
        sse = SseConnection(self, answer, writer, self.new_client_id("sse"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.watch, receive)
            await sse.run(self.config.sse.retry)
            tg.cancel_scope.cancel()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request = self._request(scope, "GET")
        refused = self._refusal(scope)
        principal = None
        if refused is None:
            refused, principal = await self._http.vet_upgrade(request, _local(scope))
        if refused is not None:
            await _deny(scope, send, refused)
            return
        await send({"type": "websocket.accept"})
        max_bytes = 4 * self.config.limits.max_frame_bytes
        await self.serve_session(AsgiWebSocket(send, receive, max_bytes), principal)


def _local_address(host: str) -> bool:
    """True for loopback addresses and for names (not IP literals: a test client's)."""
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return is_loopback(host)


def _local(scope: Scope) -> tuple[str, int] | None:
    server = scope.get("server")
    if server and server[1] is not None:
        return str(server[0]), int(server[1])
    return None


async def _respond(send: Send, response: HttpResponse, *, head: bool = False) -> None:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response_headers(response, close=False)
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _deny(scope: Scope, send: Send, response: HttpResponse) -> None:
    """Refuse a WebSocket upgrade: its HTTP error when the server can send one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in response_headers(response, close=False)
        ]
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1008})


class AsgiWebSocket:
    """An ASGI WebSocket as a session sees it (:class:`~headwater.server.session.Connection`)."""

    def __init__(self, send: Send, receive: Receive, max_bytes: int) -> None:
        self._send = send
        self._receive = receive
        self.max_bytes = max_bytes
        self.closed = False
        self.transport = AsgiWebSocketTransport(self)

    async def messages(self) -> AsyncIterator[str | bytes]:
        """The client's messages until it disconnects; one over ``max_bytes`` closes the
        connection with 1009 (as ``websockets``' ``max_size`` does under ``serve``)."""
        while True:
            message = await self._receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.closed = True
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            data: str | bytes = text if text is not None else (message.get("bytes") or b"")
            if len(data) > self.max_bytes // 4 and _size(data) > self.max_bytes:
                await self.close(1009, "message too big")
                return
            yield data

    async def send(self, frame: Frame) -> None:
        """Send one frame as a text message; :class:`ConnectionGone` once closed."""
        if self.closed:
            raise ConnectionGone
        try:
            await self._send({"type": "websocket.send", "text": frame.decode()})
        except Exception:  # the ASGI server's own "disconnected" error (OSError...)
            self.closed = True
            raise ConnectionGone from None

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception:  # already gone
            log.debug("closing an ASGI WebSocket failed", exc_info=True)


def _size(data: str | bytes) -> int:
    return len(data) if isinstance(data, bytes) else len(data.encode())


class AsgiWebSocketTransport:
    """A :class:`~headwater.core.streaming.ClientTransport` over an ASGI WebSocket.

    ASGI's ``send`` waits for the server's flow control: there is no ``try_send``, so the
    manager writes through each client's drain task.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: AsgiWebSocket) -> None:
        self._conn = conn

    async def send(self, frame: Frame) -> None:
        """Send one frame; nothing once the connection is closed (its session then
        unsubscribes it everywhere)."""
        with suppress(ConnectionGone):
            await self._conn.send(frame)

    async def send_batch(self, frames: list[Frame]) -> None:
        """Send several frames, in order."""
        conn = self._conn
        try:
            for frame in frames:
                await conn.send(frame)
        except ConnectionGone:
            pass

    async def close(self, code: str, reason: str) -> None:
        """Close the connection (4001 ``slow_consumer``, 4002 ``send_failed``...)."""
        await self._conn.close(CLOSE_CODES.get(code, 1011), close_reason(code, reason))


class AsgiSseWriter:
    """The body of an ASGI event-stream response (an :class:`~headwater.server.sse.SseWriter`)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._ended = False
        self.gone = anyio.Event()

    def try_write(self, data: bytes) -> bool:
        """Always False: an ASGI ``send`` may wait."""
        return False

    async def write(self, data: bytes) -> None:
        """Send a piece of the body; :class:`ConnectionGone` once the client went away."""
        if self._ended or self.gone.is_set():
            raise ConnectionGone
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception:  # the ASGI server's own "disconnected" error
            self.gone.set()
            raise ConnectionGone from None

    async def end(self) -> None:
        """End the body (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if not self.gone.is_set():
            try:
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # gone meanwhile
                self.gone.set()

    async def watch(self, receive: Receive) -> None:
        """Wait for ``http.disconnect`` (the client went away)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone.set()
                return
