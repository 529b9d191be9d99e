"""The WebSocket side of one connection: how frames are written, and the rate limiter.

:class:`WebSocketTransport` is the :class:`~headwater.core.streaming.ClientTransport` the
streaming manager writes a client's frames through (text messages, never re-encoded,
batched when a client lags); :class:`TokenBucket` limits how fast a client may send
requests. The close codes of the manager's close reasons are in :data:`CLOSE_CODES`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import suppress
from typing import Final

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from headwater.core.streaming import CLOSE_SEND_FAILED, CLOSE_SLOW_CONSUMER, Frame

__all__ = [
    "CLOSE_CODES",
    "CLOSE_GOING_AWAY",
    "ConnectionGone",
    "TokenBucket",
    "WebSocketTransport",
    "WebSocketsConnection",
    "close_reason",
]

CLOSE_GOING_AWAY: Final = 1001
"""WebSocket close code sent to every client when the server shuts down."""

CLOSE_HANDSHAKE_TIMEOUT: Final = 5.0
"""Seconds a dropped client has to answer the close frame when its connection has no
``close_timeout`` of its own; then the TCP connection is aborted."""

CLOSE_CODES: Final[Mapping[str, int]] = {
    CLOSE_SLOW_CONSUMER: 4001,
    CLOSE_SEND_FAILED: 4002,
}
"""WebSocket close codes of the manager's close reasons (the reason text starts with the
machine-readable code, e.g. ``slow_consumer: too slow to keep up with stream x``)."""


class ConnectionGone(Exception):
    """The connection closed: nothing more can be sent on it."""


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


def close_reason(code: str, reason: str) -> str:
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

    __slots__ = ("_closed", "_conn", "_fast", "_open")

    def __init__(self, conn: ServerConnection) -> None:
        from websockets.protocol import State

        self._conn = conn
        self._open = State.OPEN
        self._closed = State.CLOSED
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
        """Close the connection (4001 ``slow_consumer``, 4002 ``send_failed``...).

        A bounded close handshake: the close frame goes out after what the socket's
        buffer already holds, and the client has the connection's ``close_timeout`` to
        answer it. A client that stopped reading (a slow consumer, whose buffer is full)
        never gets that far, so the TCP connection is then aborted, also when this call
        is cancelled: a stalled client never keeps its connection and buffers alive.
        """
        conn = self._conn
        try:
            with anyio.move_on_after(conn.close_timeout or CLOSE_HANDSHAKE_TIMEOUT):
                await conn.close(CLOSE_CODES.get(code, 1011), close_reason(code, reason))
        finally:
            if conn.protocol.state is not self._closed:
                conn.transport.abort()


class WebSocketsConnection:
    """A ``websockets`` server connection as a session sees it
    (:class:`~headwater.server.session.Connection`)."""

    __slots__ = ("conn", "transport")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.transport = WebSocketTransport(conn)

    async def messages(self) -> AsyncIterator[str | bytes]:
        """Every message the client sends, until the connection closes (websockets
        closes it with 1009 beyond ``max_size``)."""
        try:
            async for raw in self.conn:
                yield raw
        except ConnectionClosed:
            return
        finally:
            _forget_traceback(self.conn.connection_exc)

    async def send(self, frame: Frame) -> None:
        """Send one frame as a text message; :class:`ConnectionGone` once closed."""
        try:
            await self.conn.send(frame, text=True)
        except ConnectionClosed:
            raise ConnectionGone from None

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code``."""
        await self.conn.close(code, reason)


def _forget_traceback(error: BaseException | None) -> None:
    """Drop the tracebacks of a closed connection's error (and of its causes).

    The error of a connection that broke (a client that vanished) is kept on the
    connection, and its traceback holds the frames of the write that failed: the data
    being written, the transport, the connection itself. That is a reference cycle, which
    only the cyclic garbage collector frees, possibly many connections later: a flood of
    vanishing clients then piles up their last writes. The error itself is kept.
    """
    for _ in range(8):  # a chain of causes is short; never loop on a cycle
        if error is None:
            return
        error.__traceback__ = None
        error = error.__context__


def _write_pieces(conn: ServerConnection, data: list[bytes]) -> None:
    """Write what the protocol produced as websockets' ``send_data`` does (EOF included)."""
    for piece in data:
        if piece:
            conn.transport.write(piece)
        elif conn.transport.can_write_eof():
            conn.transport.write_eof()
        else:
            conn.transport.close()
