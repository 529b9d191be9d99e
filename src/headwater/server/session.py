"""One client connection: its protocol v1 requests, read, limited and answered.

A :class:`Session` reads the frames of one WebSocket connection (a :class:`Connection`:
a ``websockets`` connection of ``headwater serve`` or an ASGI WebSocket), enforces the limits
(frame size, rate, subscriptions), validates each frame with
:func:`~headwater.server.protocol.parse_client_frame` and answers every request
(``subscribe``, ``unsubscribe``, ``run``, ``cancel``, ``ping``). Bad input gets an
``error`` frame; it never closes the connection or touches another client's stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from pydantic import BaseModel

from headwater.core.streaming import ClientTransport, Frame, StreamError

from .dashboard import DASHBOARD_STREAM, RESERVED_PREFIX
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
from .transport import ConnectionGone, TokenBucket

if TYPE_CHECKING:
    from .base import BaseServer
    from .runs import RunInfo

__all__ = ["Connection", "Session"]

log = logging.getLogger("headwater.server")


class Connection(Protocol):
    """One WebSocket connection, whatever accepted it: what a :class:`Session` needs."""

    @property
    def transport(self) -> ClientTransport:
        """Where the streaming manager writes this connection's stream messages."""
        ...

    def messages(self) -> AsyncIterator[str | bytes]:
        """The client's messages (text or binary), until the connection closes; a
        message over four times ``limits.max_frame_bytes`` closes it (code 1009)."""
        ...

    async def send(self, frame: Frame) -> None:
        """Send one frame as a text message; raises :class:`ConnectionGone` once closed."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""
        ...


class Session:
    """One WebSocket connection: reads requests, applies limits, answers each one.

    Replies (``pong``, ``run_started``, ``error``) are sent directly; stream messages
    (``subscribed``, chunks, ``stream_complete``...) come from the streaming manager,
    which this session registers as client ``client_id``.
    """

    def __init__(
        self, server: BaseServer, conn: Connection, principal: Any, client_id: str
    ) -> None:
        self.server = server
        self.conn = conn
        self.principal = principal
        self.client_id = client_id
        self.transport = conn.transport
        limits = server.config.limits
        self.bucket = TokenBucket(limits.rate, limits.burst)
        self.max_bytes = limits.max_frame_bytes

    async def serve(self) -> None:
        """Handle frames until the connection closes, then unsubscribe everywhere."""
        try:
            async for raw in self.conn.messages():
                await self.handle(raw)
        except ConnectionGone:
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
        """Answer one frame; never raises except when the connection is gone.

        Replies go out in request order: the previous requests' replies that travel with
        stream messages (``subscribed``, ``unsubscribed``) are sent before this one is
        handled.
        """
        await self.server.manager.replies_sent(self.client_id)
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
        except ConnectionGone:
            raise
        except Exception as exc:
            log.exception("request %s of %s failed", message.type, self.client_id)
            await self.error("internal_error", f"{type(exc).__name__}: {exc}", message.id)

    async def dispatch(self, message: ClientMessage) -> None:
        """Carry out one validated request."""
        if isinstance(message, SubscribeMessage):
            await self.subscribe(message)
        elif isinstance(message, UnsubscribeMessage):
            await self.unsubscribe(message)
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

    async def _authorize_subscription(self, stream: str, ref: str | int | None) -> None:
        """``unauthorized`` unless the principal may subscribe to ``stream`` (the same
        answer whether the stream exists or not)."""
        server = self.server
        run = server.run_of_stream(stream)
        owner = run.owner if run is not None else None
        if not await server.allowed(
            self.principal, "subscribe", stream, owner=owner
        ) and not await server.history.owned_by(stream, self.principal):
            raise ProtocolError("unauthorized", f"not allowed to subscribe to {stream!r}", ref=ref)

    async def subscribe(self, message: SubscribeMessage) -> None:
        """``subscribe``: authorize, check the limit, register with the manager."""
        server = self.server
        await self._authorize_subscription(message.stream, message.id)
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
            # the stream of a finished run: replayed from the run history, then complete
            if exc.code in ("stream_closed", "unknown_stream"):
                frames = await server.history.replay(
                    message.stream, message.since, message.epoch, message.id
                )
                if frames is not None:
                    for frame in frames:
                        await self.conn.send(frame)
                    return
            raise ProtocolError.from_stream_error(exc, ref=message.id) from None

    async def unsubscribe(self, message: UnsubscribeMessage) -> None:
        """``unsubscribe``: a stream this connection does not follow is answered as a
        ``subscribe`` would be first (``unauthorized`` for streams it may not see,
        existing or not)."""
        manager = self.server.manager
        if message.stream not in manager.subscriptions(self.client_id):
            await self._authorize_subscription(message.stream, message.id)
        try:
            await manager.deregister_client(
                message.stream, self.client_id, notify=True, ref=message.id
            )
        except StreamError as exc:
            raise ProtocolError.from_stream_error(exc, ref=message.id) from None

    async def run(self, message: RunMessage) -> None:
        """``run``: authorize (the pipeline, and the stream when the client names one),
        start the pipeline, subscribe the requester to its stream."""
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
            # asked before the stream is looked at, so that the answer is the same
            # whether a stream of that name exists or not
            if not await server.allowed(self.principal, "create", message.stream):
                raise ProtocolError(
                    "unauthorized",
                    f"not allowed to create stream {message.stream!r}",
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
        """Send one reply (``pong``, ``run_started``, ``error``) on this connection. An
        error's text is masked with the engine's secrets (it may quote a pipeline's
        substituted values, e.g. a path the sandbox refuses)."""
        if isinstance(message, ErrorMessage):
            secrets = self.server.engine.services.secrets
            masked = secrets.mask(message.message)
            if masked != message.message:
                message = message.model_copy(update={"message": masked})
        await self.conn.send(encode_message(message))

    async def error(self, code: ErrorCode, text: str, ref: str | int | None = None) -> None:
        """Send an ``error`` message."""
        await self.reply(ErrorMessage(code=code, message=text, ref=ref))
