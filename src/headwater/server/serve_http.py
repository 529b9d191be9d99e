"""``headwater serve``'s own HTTP/1.1 path: event streams, and methods other than GET.

The ``websockets`` library answers a plain HTTP request with one response built before
anything is sent (``process_request``): it cannot stream a body, and it reads GET
requests only. So the first line of every new connection is read before websockets sees
it (:class:`SniffingConnection`, the ``ServerConnection`` the server creates). A request
for a stream's events (``GET /api/streams/{stream}/events``), or one with another method
than GET (a plugin's ``POST`` route...), moves to an :class:`HttpConnection` of
headwater's own: the asyncio transport is handed to it (``transport.set_protocol``), the
bytes read so far are replayed, the head is parsed by ``h11`` and the response written
with the transport's flow control (``pause_writing`` / ``resume_writing``), then the
connection is closed (``Connection: close``). The websockets side ends as a connection
lost before its handshake, with a stand-in transport, so it never touches the real one.

Every other connection (WebSocket upgrades, other GET requests) stays with websockets,
unchanged: the WebSocket fan-out path costs nothing more than reading one line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import anyio
import h11
from websockets.asyncio.server import ServerConnection

from headwater.types import HttpRequest, HttpResponse

from .http import encode_response, error_response, remote_text
from .routes import local_address
from .sse import SSE_HEADERS, DirectSseConnection
from .transport import ConnectionGone

if TYPE_CHECKING:
    from .app import Server

__all__ = ["MAX_BODY", "MAX_HEAD", "HttpConnection", "SniffingConnection"]

log = logging.getLogger("headwater.server")

MAX_HEAD: Final = 64 * 1024
"""Bytes a request line plus headers may take."""

MAX_BODY: Final = 1024 * 1024
"""Bytes a request body may take (413 beyond)."""

_WRITE_HIGH: Final = 64 * 1024


def _events_path(target: bytes) -> bool:
    """True when a request target is ``/api/streams/{stream}/events`` (query allowed)."""
    path = target.partition(b"?")[0]
    prefix, suffix = b"/api/streams/", b"/events"
    if not (path.startswith(prefix) and path.endswith(suffix)):
        return False
    stream = path[len(prefix) : -len(suffix)]
    return bool(stream) and b"/" not in stream


def own_path(request_line: bytes) -> bool:
    """Whether a request, by its first line, is answered here rather than by websockets."""
    parts = request_line.split(b" ")
    if len(parts) != 3:
        return False  # websockets answers 400
    method, target, _ = parts
    return method != b"GET" or _events_path(target)


class _Detached(asyncio.Transport):
    """What a handed-over websockets connection keeps instead of the real transport."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class SniffingConnection(ServerConnection):
    """A websockets connection that first reads the request line, and hands requests the
    websockets library cannot answer to an :class:`HttpConnection`."""

    hw_server: Server
    """The server whose connections these are (see :meth:`bound_to`)."""

    @classmethod
    def bound_to(cls, server: Server) -> type[SniffingConnection]:
        """The ``create_connection`` argument of ``websockets.asyncio.server.serve``: this
        class, for ``server``'s connections."""
        return type(cls.__name__, (cls,), {"hw_server": server})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sniffed: bytearray | None = bytearray()

    def data_received(self, data: bytes) -> None:
        sniffed = self._sniffed
        if sniffed is None:
            super().data_received(data)
            return
        sniffed += data
        end = sniffed.find(b"\r\n")
        if end < 0 and len(sniffed) <= MAX_HEAD:
            return  # the request line is not complete yet
        self._sniffed = None
        buffered = bytes(sniffed)
        if end >= 0 and own_path(buffered[:end]):
            self._hand_over(buffered)
        else:
            super().data_received(buffered)

    def _hand_over(self, buffered: bytes) -> None:
        transport = self.transport
        protocol = HttpConnection(self.hw_server)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        self.transport = _Detached()
        self.connection_lost(None)  # the handshake ends: no request, connection closed
        protocol.data_received(buffered)


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 request answered by headwater itself (one request per connection)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.paused = False
        self.closed = False
        self._drained: asyncio.Future[None] | None = None
        self.gone: anyio.Event  # created by the task answering the request

    # -- asyncio protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return  # one request per connection: anything after it is ignored
        try:
            self.parser.receive_data(data)
            while True:
                event = self.parser.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Request):
                    self.request = event
                elif isinstance(event, h11.Data):
                    self.body += event.data
                    if len(self.body) > MAX_BODY:
                        self._refuse(error_response(413, f"a body may take {MAX_BODY} bytes"))
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self.task = asyncio.get_running_loop().create_task(self._answer())
                    return
                else:
                    return
        except h11.RemoteProtocolError as exc:
            self._refuse(error_response(400, f"bad request: {exc}"))

    def eof_received(self) -> bool | None:
        return False  # the client went away: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        gone = getattr(self, "gone", None)
        if gone is not None:
            gone.set()
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _refuse(self, response: HttpResponse) -> None:
        assert self.transport is not None
        self.task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
        self.transport.write(encode_response(response, self.server.server_header))
        self.transport.close()

    # -- SseWriter ----------------------------------------------------------------------

    def try_write(self, data: bytes) -> bool:
        """Write now unless the transport's buffer is above its high-water mark."""
        transport = self.transport
        if self.closed or self.paused or transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    async def write(self, data: bytes) -> None:
        """Write once the transport's buffer is below its high-water mark."""
        while self.paused and not self.closed:
            waiter = self._drained = asyncio.get_running_loop().create_future()
            await waiter
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionGone
        transport.write(data)

    async def end(self) -> None:
        """Close the connection once what is written is sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- the request --------------------------------------------------------------------

    async def _answer(self) -> None:
        self.gone = anyio.Event()
        if self.closed:
            self.gone.set()
        server = self.server
        request = self.request
        assert request is not None
        assert self.transport is not None
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            if name == "cookie" and name in headers:
                value = f"{headers[name]}; {value}"
            headers[name] = value
        method = request.method.decode("ascii", errors="replace")
        neutral = HttpRequest(
            method=method,
            path=path,
            query_string=query,
            headers=headers,
            remote=remote_text(self.transport.get_extra_info("peername")),
            body=bytes(self.body),
        )
        try:
            local = local_address(self.transport.get_extra_info("sockname"))
            answer = await server.http.dispatch(neutral, local or (server.host, server.port))
            if isinstance(answer, HttpResponse):
                self.transport.write(
                    encode_response(answer, server.server_header, head=method == "HEAD")
                )
                return
            head = [f"HTTP/1.1 200 OK\r\nServer: {server.server_header}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in SSE_HEADERS]
            head.append("Connection: close\r\n\r\n")
            await self.write("".join(head).encode("latin-1"))
            sse = DirectSseConnection(server, answer, self, server.new_client_id("sse"))
            await sse.run(server.config.sse.retry)
        except ConnectionGone:
            pass
        except Exception:
            log.exception("HTTP request %s %s failed", method, path)
        finally:
            await self.end()
