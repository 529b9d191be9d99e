"""Server-Sent Events: one stream's messages over plain HTTP, for ``EventSource`` and curl.

``GET /api/streams/{stream}/events`` answers ``text/event-stream``: every message the
WebSocket protocol would send a subscriber of the stream, one event each, with

* ``event:`` the message's ``type`` (``stream_update``, ``progress``, ``status``,
  ``stream_error``, ``stream_complete``, and ``subscribed``, ``replay_gap``,
  ``dropped``);
* ``data:`` the WebSocket frame itself, the same JSON (frames are encoded once, by
  :mod:`headwater.core.streaming.wire`, and never contain a line break);
* ``id:`` ``EPOCH:SEQ`` on chunks (``stream_update``) only, so that a browser's
  automatic reconnection sends ``Last-Event-ID: EPOCH:SEQ`` and resumes from the replay
  buffer, as a WebSocket ``subscribe`` with ``since`` and ``epoch`` does: no gap, no
  duplicate; a foreign epoch gets ``replay_gap`` (``epoch_changed``), as over WebSocket.

A bare ``Last-Event-ID: SEQ`` means the stream's current epoch; without the header,
``?since=N`` (and ``&epoch=E``) resumes the same way. Comment lines (``: hb``) keep an
idle response alive (``sse.heartbeat`` seconds of the configuration). The response ends
after ``stream_complete``.

Each response is a client of the streaming manager (:class:`SseConnection`, a
:class:`~headwater.core.streaming.ClientTransport` that writes frames as events), so
per-client queues and slow-consumer policies apply as to WebSocket clients; the
``disconnect`` policy ends the response (the browser then reconnects and resumes).

The front ends (``headwater serve``'s own HTTP path, :mod:`headwater.server.serve_http`;
the ASGI app) write the bytes through an :class:`SseWriter`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from headwater.core.streaming import Frame, StreamError
from headwater.types import HttpRequest, HttpResponse

from .dashboard import DASHBOARD_STREAM
from .http import error_response
from .transport import ConnectionGone

if TYPE_CHECKING:
    from .base import BaseServer

__all__ = [
    "HEARTBEAT",
    "SSE_HEADERS",
    "DirectSseConnection",
    "SseConnection",
    "SseSubscription",
    "SseWriter",
    "frame_type",
    "parse_event_id",
    "prepare_sse",
    "sse_event",
]

log = logging.getLogger("headwater.server")

SSE_HEADERS: Final = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
)
"""The headers of an event stream (besides ``Connection: close`` under ``serve``)."""

HEARTBEAT: Final = b": hb\n\n"
"""The comment written to an idle event stream."""

_CHUNK: Final = b"stream_update"
_TERMINAL: Final = frozenset({b"stream_complete", b"unsubscribed"})
_SEQ: Final = re.compile(rb',"seq":(\d+),')
_EVENT_ID: Final = re.compile(r"(?:([0-9A-Za-z_-]{1,64}):)?([0-9]{1,19})")
_STATUS: Final = {
    "unknown_stream": 404,
    "stream_closed": 410,
    "too_many_clients": 503,
    "not_running": 503,
    "shutting_down": 503,
}


def frame_type(frame: Frame) -> bytes:
    """The ``type`` of a server frame (its first field, ``{"type":"..."``)."""
    if frame.startswith(b'{"type":"'):
        end = frame.find(b'"', 9)
        if end > 9:
            return frame[9:end]
    kind = json.loads(frame).get("type", "message")  # pragma: no cover - not ours
    return str(kind).encode()  # pragma: no cover


def sse_event(frame: Frame, epoch: str | None) -> bytes:
    """One frame as an event: ``id: EPOCH:SEQ`` (chunks only), ``event:``, ``data:``."""
    kind = frame_type(frame)
    if kind == _CHUNK and epoch is not None:
        found = _SEQ.search(frame)  # the first match: the stream id is JSON-escaped
        if found is not None:
            return b"id: %b:%b\nevent: %b\ndata: %b\n\n" % (
                epoch.encode(),
                found.group(1),
                kind,
                frame,
            )
    return b"event: %b\ndata: %b\n\n" % (kind, frame)


def parse_event_id(value: str) -> tuple[int, str | None]:
    """``EPOCH:SEQ`` (or a bare ``SEQ``: the current epoch) as ``(seq, epoch)``.

    Raises ``ValueError`` saying what is wrong.
    """
    found = _EVENT_ID.fullmatch(value.strip())
    if found is None:
        raise ValueError(f"Last-Event-ID {value[:80]!r} is not EPOCH:SEQ or SEQ")
    return int(found.group(2)), found.group(1)


def resume_point(request: HttpRequest) -> tuple[int | None, str | None]:
    """Where a client resumes: ``Last-Event-ID``, else ``?since=N`` (``&epoch=E``), else
    nowhere (live chunks only). Raises ``ValueError`` naming the bad value."""
    last = request.headers.get("last-event-id")
    if last is not None and last.strip():
        return parse_event_id(last)
    since = request.query_value("since")
    epoch = request.query_value("epoch") or None
    if since is None:
        return None, None
    if not since.isdigit() or len(since) > 19:
        raise ValueError(f"since: {since[:40]!r} is not a whole number >= 0")
    return int(since), epoch


@dataclass(frozen=True, slots=True)
class SseSubscription:
    """A vetted request for a stream's events: what the front end streams."""

    stream: str
    since: int | None
    epoch: str | None
    principal: Any
    remote: str | None = None
    replay: tuple[Frame, ...] | None = None
    """The messages of a finished run's stream, from the run history (then the end)."""


async def prepare_sse(
    server: BaseServer, request: HttpRequest, local: tuple[str, int] | None = None
) -> HttpResponse | SseSubscription:
    """Vet a request for a stream's events (already authenticated: ``request.principal``):
    the same checks as a WebSocket upgrade and a ``subscribe``; an HTTP error, or the
    subscription to stream."""
    refused = server.http.refuse_connection(request, local)
    if refused is not None:
        return refused
    stream = request.path_params["stream"]
    run = server.run_of_stream(stream)
    owner = run.owner if run is not None else None
    if not await server.allowed(
        request.principal, "subscribe", stream, owner=owner
    ) and not await server.history.owned_by(stream, request.principal):
        return error_response(403, f"not allowed to subscribe to {stream!r}")
    try:
        since, epoch = resume_point(request)
    except ValueError as exc:
        return error_response(400, str(exc))
    if stream == DASHBOARD_STREAM:
        await server.dashboard.open()
    try:
        server.manager.info(stream)
    except StreamError as exc:
        frames = await server.history.replay(stream, since, epoch, None)
        if frames is not None:  # a finished run's stream: replayed from the run history
            return SseSubscription(
                stream, since, epoch, request.principal, request.remote, tuple(frames)
            )
        return error_response(_STATUS.get(exc.code, 400), exc.message)
    return SseSubscription(stream, since, epoch, request.principal, request.remote)


class SseWriter(Protocol):
    """Where an event stream's bytes go (the response body, after its head)."""

    gone: anyio.Event
    """Set when the client went away."""

    def try_write(self, data: bytes) -> bool:
        """Write now if that needs no waiting (False: nothing written). May always be
        False (an ASGI response cannot write without waiting)."""
        ...

    async def write(self, data: bytes) -> None:
        """Write, waiting for the connection to take it; :class:`ConnectionGone` once the
        client went away."""
        ...

    async def end(self) -> None:
        """End the response (idempotent)."""
        ...


class SseConnection:
    """One event stream: a client of the streaming manager writing frames as events.

    Implements :class:`~headwater.core.streaming.BatchClientTransport`;
    :class:`DirectSseConnection` adds the non-blocking ``try_send`` for writers that can
    write without waiting.
    """

    def __init__(
        self, server: BaseServer, sub: SseSubscription, writer: SseWriter, client_id: str
    ) -> None:
        self.server = server
        self.subscription = sub
        self.writer = writer
        self.client_id = client_id
        self.epoch: str | None = None
        self.finished = anyio.Event()
        """Set when the response should end: the stream completed, the client went away,
        the manager closed it (slow consumer, failed send) or the server dropped it."""
        self.last_write = anyio.current_time()

    @property
    def stream(self) -> str:
        """The stream this response follows."""
        return self.subscription.stream

    def _encode(self, frames: Sequence[Frame]) -> tuple[bytes, bool]:
        out = []
        terminal = False
        for frame in frames:
            kind = frame_type(frame)
            if kind == b"subscribed":
                self.epoch = json.loads(frame).get("epoch")
            elif kind in _TERMINAL:
                terminal = True
            out.append(sse_event(frame, self.epoch))
        return b"".join(out), terminal

    async def send(self, frame: Frame) -> None:
        """Write one frame as an event (nothing once the response ended)."""
        await self.send_batch((frame,))

    async def send_batch(self, frames: Sequence[Frame]) -> None:
        """Write several frames as events, in one write."""
        if self.finished.is_set():
            return
        data, terminal = self._encode(frames)
        try:
            await self.writer.write(data)
        except ConnectionGone:
            self.finished.set()
            return
        self.last_write = anyio.current_time()
        if terminal:
            self.finished.set()

    async def close(self, code: str, reason: str) -> None:
        """End the response (``slow_consumer``, ``send_failed``): a comment says why."""
        if not self.finished.is_set():
            self.writer.try_write(f": closed {code}: {reason}\n\n".encode())
            self.finished.set()

    def stream_closed(self, stream_id: str, reason: str) -> None:
        """The manager ended the subscription (its last message is written): end."""
        self.finished.set()

    def drop(self) -> None:
        """End the response now, as if the connection broke (the client may resume)."""
        self.finished.set()

    async def run(self, retry: int | None = None) -> None:
        """Register with the manager and stream until the end (the head is written)."""
        server = self.server
        manager = server.manager
        sub = self.subscription
        server._sse.add(self)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_client)
                if retry is not None:
                    await self.writer.write(b"retry: %d\n\n" % retry)
                if sub.replay is not None:
                    await self.send_batch(sub.replay)
                    tg.cancel_scope.cancel()
                    return
                try:
                    await manager.register_client(
                        sub.stream, self.client_id, self, since=sub.since, epoch=sub.epoch
                    )
                except StreamError as exc:
                    await self._error(exc)
                else:
                    await self._heartbeats(server.config.sse.heartbeat)
                tg.cancel_scope.cancel()
        except ConnectionGone:
            pass
        finally:
            server._sse.discard(self)
            with anyio.CancelScope(shield=True):
                await manager.deregister_all(self.client_id)
                await self.writer.end()

    async def _watch_client(self) -> None:
        await self.writer.gone.wait()
        self.finished.set()

    async def _heartbeats(self, interval: float) -> None:
        while not self.finished.is_set():
            with anyio.move_on_after(interval):
                await self.finished.wait()
                return
            if anyio.current_time() - self.last_write >= interval * 0.9:
                self.last_write = anyio.current_time()
                try:
                    await self.writer.write(HEARTBEAT)
                except ConnectionGone:
                    return

    async def _error(self, exc: StreamError) -> None:
        from .protocol import ProtocolError, encode_message

        message = ProtocolError.from_stream_error(exc).to_message()
        masked = self.server.engine.services.secrets.mask(message.message)
        frame = encode_message(message.model_copy(update={"message": masked}))
        await self.writer.write(sse_event(frame, None))


class DirectSseConnection(SseConnection):
    """An event stream whose writer can write without waiting: chunks for a client that
    keeps up are written by the pusher itself (see ``DirectClientTransport``)."""

    def try_send(self, frames: Sequence[Frame]) -> bool:
        """Write every frame now and return True, or write none and return False."""
        if self.finished.is_set():
            return True
        data, terminal = self._encode(frames)
        if not self.writer.try_write(data):
            return False
        self.last_write = anyio.current_time()
        if terminal:
            self.finished.set()
        return True
