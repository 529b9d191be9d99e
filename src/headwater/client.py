"""A small async client for headwater's WebSocket protocol (v1), on asyncio.

::

    from headwater.client import connect

    async with connect("ws://127.0.0.1:8765/", token="s3cret") as client:
        started = await client.run("count", {"stop": 100})
        async for message in client:
            if message.type == "stream_update":
                print(message.seq, message.data)
            elif message.type == "stream_complete":
                break

Requests that have a reply (``subscribe``, ``unsubscribe``, ``run``, ``ping``) wait for
it and return it, or raise :class:`RequestFailed` when the server answers with an
``error``. Everything else the server sends is yielded by iterating the client, in the
order it arrived (messages that arrive while a request waits for its reply are kept for
the iteration, so nothing is lost). A client is meant to be used from one task at a time.

The client remembers the epoch and last ``seq`` it received of each stream
(:meth:`Client.position`), so that :meth:`Client.resume` on a new connection continues
exactly where the previous one stopped, as long as the server still buffers the chunks.
Messages are the pydantic models of :mod:`headwater.server.protocol`; message types this
version does not know are skipped, as the protocol asks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .core.errors import HeadwaterError
from .server.protocol import (
    CancelMessage,
    ErrorMessage,
    PingMessage,
    PongMessage,
    ProtocolError,
    ReplayGapMessage,
    RunMessage,
    RunStartedMessage,
    ServerMessage,
    StreamUpdateMessage,
    SubscribedMessage,
    SubscribeMessage,
    UnsubscribedMessage,
    UnsubscribeMessage,
    encode_message,
    parse_server_frame,
)

__all__ = [
    "DEFAULT_MAX_SIZE",
    "Client",
    "ConnectFailed",
    "RequestFailed",
    "connect",
]

log = logging.getLogger("headwater.client")

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
"""Largest server message the client accepts by default (bytes)."""

_Reply = TypeVar("_Reply", bound=BaseModel)


class RequestFailed(HeadwaterError):
    """The server answered a request with an ``error`` message.

    ``code`` is the protocol's stable error code (``unknown_stream``, ``unauthorized``,
    ``limit_reached``...), ``message`` the server's explanation.
    """

    def __init__(self, error: ErrorMessage) -> None:
        self.code = error.code
        self.message = error.message
        self.ref = error.ref
        self.error = error
        super().__init__(f"{error.code}: {error.message}")


class ConnectFailed(HeadwaterError):
    """The server refused the WebSocket upgrade (``status`` 401, 403, 503...)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class Client:
    """A connection to a headwater server. Create it with :func:`connect`."""

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._backlog: deque[ServerMessage] = deque()
        self._ids = itertools.count(1)
        self._positions: dict[str, tuple[str, int]] = {}

    @property
    def connection(self) -> ClientConnection:
        """The underlying ``websockets`` connection."""
        return self._conn

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once the connection is closed (1001: server shutdown,
        4001: too slow, 1009: message too big...)."""
        return self._conn.close_code

    @property
    def close_reason(self) -> str | None:
        """The WebSocket close reason once the connection is closed."""
        return self._conn.close_reason

    def position(self, stream: str) -> tuple[str, int] | None:
        """``(epoch, last seq received)`` of a stream, or None if nothing was received."""
        return self._positions.get(stream)

    # -- requests -----------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"r{next(self._ids)}"

    async def send(self, message: BaseModel | Mapping[str, Any] | str) -> None:
        """Send one message as is: a protocol model, a mapping, or raw JSON text."""
        if isinstance(message, BaseModel):
            await self._conn.send(encode_message(message), text=True)
        elif isinstance(message, str):
            await self._conn.send(message)
        else:
            from pydantic_core import to_json

            await self._conn.send(to_json(dict(message)), text=True)

    async def subscribe(
        self, stream: str, *, since: int | None = None, epoch: str | None = None
    ) -> SubscribedMessage:
        """Subscribe to a stream; returns the ``subscribed`` reply.

        With ``since`` (the last seq you have) the buffered chunks after it come first
        (pass ``epoch`` from an earlier ``subscribed`` to detect a recreated stream; a
        ``replay_gap`` message follows if something could not be replayed). Raises
        :class:`RequestFailed` (``unknown_stream``, ``unauthorized``, ``limit_reached``...).
        """
        ref = self._next_id()
        await self.send(SubscribeMessage(stream=stream, since=since, epoch=epoch, id=ref))
        return await self._wait_reply(ref, SubscribedMessage)

    async def resume(self, stream: str) -> SubscribedMessage:
        """Subscribe again from the last chunk this client received of ``stream``.

        Use it on a new client after a disconnection: ``Client.position`` of the old
        client gives the place; pass it to :meth:`subscribe`. On the same client (after an
        ``unsubscribe``) it continues with the next chunk; with nothing received yet it
        asks for everything buffered.
        """
        position = self._positions.get(stream)
        if position is None:
            return await self.subscribe(stream, since=0)
        epoch, seq = position
        return await self.subscribe(stream, since=seq, epoch=epoch)

    async def unsubscribe(self, stream: str) -> UnsubscribedMessage:
        """Unsubscribe from a stream; returns the ``unsubscribed`` reply."""
        ref = self._next_id()
        await self.send(UnsubscribeMessage(stream=stream, id=ref))
        return await self._wait_reply(ref, UnsubscribedMessage)

    async def run(
        self,
        pipeline: str,
        params: Mapping[str, Any] | None = None,
        *,
        stream: str | None = None,
    ) -> RunStartedMessage:
        """Start a named pipeline of the server; returns ``run_started`` (stream, run id).

        The client is subscribed to the run's stream: its ``subscribed`` message, the
        chunks, progress and the final ``stream_complete`` follow in the iteration.
        Raises :class:`RequestFailed` (``unknown_pipeline``, ``invalid_params``,
        ``unauthorized``, ``limit_reached``...).
        """
        ref = self._next_id()
        await self.send(
            RunMessage(pipeline=pipeline, params=dict(params or {}), stream=stream, id=ref)
        )
        return await self._wait_reply(ref, RunStartedMessage)

    async def cancel(self, *, stream: str | None = None, run: str | None = None) -> None:
        """Ask the server to cancel a run (by its stream or its run id).

        There is no direct reply: the run's stream ends with ``stream_complete``
        (reason ``cancelled``); errors (``unknown_run``, ``unauthorized``) arrive as
        ``error`` messages in the iteration.
        """
        await self.send(CancelMessage(stream=stream, run=run, id=self._next_id()))

    async def ping(self) -> float:
        """Send ``ping`` and wait for ``pong``; returns the round-trip time in seconds."""
        ref = self._next_id()
        start = time.perf_counter()
        await self.send(PingMessage(id=ref))
        await self._wait_reply(ref, PongMessage)
        return time.perf_counter() - start

    async def _wait_reply(self, ref: str, kind: type[_Reply]) -> _Reply:
        """Read until the reply to ``ref``; other messages are kept for the iteration."""
        kept: list[ServerMessage] = []
        try:
            while True:
                message = await self._read()
                if isinstance(message, kind) and _ref_of(message) == ref:
                    return message
                if isinstance(message, ErrorMessage) and message.ref == ref:
                    raise RequestFailed(message)
                kept.append(message)
        finally:
            self._backlog.extend(kept)

    # -- receiving ----------------------------------------------------------------------

    async def receive(self) -> ServerMessage:
        """The next message (raises ``websockets.exceptions.ConnectionClosed`` at the end)."""
        if self._backlog:
            return self._backlog.popleft()
        return await self._read()

    def __aiter__(self) -> AsyncIterator[ServerMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ServerMessage]:
        while True:
            try:
                message = await self.receive()
            except ConnectionClosed:
                return
            yield message

    async def _read(self) -> ServerMessage:
        while True:
            raw = await self._conn.recv()
            try:
                message = parse_server_frame(raw)
            except ProtocolError as exc:
                if exc.code == "unknown_type":
                    continue  # a newer server's message type: ignore it, as the protocol asks
                raise
            self._track(message)
            return message

    def _track(self, message: ServerMessage) -> None:
        if isinstance(message, StreamUpdateMessage):
            position = self._positions.get(message.stream)
            if position is not None:
                self._positions[message.stream] = (position[0], message.seq)
        elif isinstance(message, SubscribedMessage):
            position = self._positions.get(message.stream)
            if position is None or position[0] != message.epoch:
                # a new stream (or a new epoch): nothing of it received yet
                self._positions[message.stream] = (message.epoch, 0)
        elif isinstance(message, ReplayGapMessage):
            self._positions[message.stream] = (message.epoch, message.first_available - 1)

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; messages not read yet are discarded.

        Reads while the closing handshake runs: a connection whose receive buffer is full
        would otherwise never see the server's answer to the close.
        """
        import anyio

        conn = self._conn
        self._backlog.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.close)
            try:
                while True:
                    await conn.recv()
            except ConnectionClosed:
                pass


def _ref_of(message: BaseModel) -> Any:
    if isinstance(message, PongMessage):
        return message.id
    return getattr(message, "ref", None)


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"token": token})))


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: str | None = None,
    token_in_query: bool = False,
    origin: str | None = None,
    open_timeout: float | None = 10,
    max_size: int | None = DEFAULT_MAX_SIZE,
    compression: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[Client]:
    """Connect to a headwater server (``ws://HOST:PORT/``) and yield a :class:`Client`.

    ``token`` is sent as ``Authorization: Bearer TOKEN`` (or as ``?token=`` with
    ``token_in_query``, for environments that cannot set headers). ``compression``
    ``"deflate"`` offers permessage-deflate (used only if the server enables it). Other
    keyword arguments go to :func:`websockets.asyncio.client.connect`. Raises
    :class:`ConnectFailed` when the server refuses the connection (401 without a valid
    token, 403 for a foreign origin, 503 when full or shutting down).
    """
    headers: list[tuple[str, str]] = []
    if token is not None:
        if token_in_query:
            url = _with_token(url, token)
        else:
            headers.append(("Authorization", f"Bearer {token}"))
    try:
        conn = await ws_connect(
            url,
            additional_headers=headers or None,
            origin=origin,  # type: ignore[arg-type]
            open_timeout=open_timeout,
            max_size=max_size,
            compression=compression,
            **kwargs,
        )
    except InvalidStatus as exc:
        response = exc.response
        detail = response.body.decode(errors="replace").strip() if response.body else ""
        raise ConnectFailed(
            response.status_code,
            f"the server refused the connection: HTTP {response.status_code} "
            f"{response.reason_phrase}" + (f" ({detail})" if detail else ""),
        ) from None
    client = Client(conn)
    try:
        yield client
    finally:
        await client.close()
