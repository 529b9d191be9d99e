"""Delivery to one client: its transport, bounded queue, drain task and send errors.

A client is any object with an async ``send(frame)`` (:class:`ClientTransport`); it may
also be closed by the manager (:class:`ClosableClientTransport`), be told when one of its
subscriptions ends (:class:`StreamClosedListener`), take several frames at once
(:class:`BatchClientTransport`) or write without waiting (:class:`DirectClientTransport`).

Each subscription of a client to a stream is a :class:`ClientDelivery`: a bounded queue
drained by the client's own task, so a slow client delays only itself. When the queue is
full the slow-consumer policy decides (applied by
:meth:`~headwater.core.streaming.fanout.Fanout.enqueue`): ``block`` (the pusher waits
for room), ``drop_oldest`` (the client is told how many messages it missed, with a
``dropped`` message) or ``disconnect`` (:meth:`ClientDelivery.disconnect`). A send that
fails or takes longer than ``send_timeout`` is handled by ``on_send_error``
(:meth:`ClientDelivery.send_failed`).

The replies among a client's messages (``subscribed``, ``unsubscribed``) are counted
until they were handed to its transport (:meth:`~headwater.core.streaming.fanout.Fanout.owe`),
so that whoever answers the client's other requests can keep its replies in order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

import anyio

from . import wire
from .config import CLOSE_SEND_FAILED, CLOSE_SLOW_CONSUMER, SlowConsumerPolicy, StreamError
from .wire import Frame

if TYPE_CHECKING:
    from .fanout import Fanout
    from .stream_state import StreamState

__all__ = [
    "BatchClientTransport",
    "ClientDelivery",
    "ClientTransport",
    "ClosableClientTransport",
    "DirectClientTransport",
    "StreamClosedListener",
]

UNSUBSCRIBED: Final = "unsubscribed"
"""End reason of a subscription ended by ``deregister_client(notify=True)``."""

DISCONNECTED: Final = "disconnected"
"""End reason of a subscription ended silently (the client's connection is gone)."""

log = logging.getLogger("headwater.streaming")


@runtime_checkable
class ClientTransport(Protocol):
    """Where a client's messages go: a WebSocket connection, a test double, a bridge.

    ``send`` is the only required method. Optional ones, each found by name: ``close``
    (:class:`ClosableClientTransport`), ``stream_closed`` (:class:`StreamClosedListener`),
    ``send_batch`` (:class:`BatchClientTransport`), ``try_send``
    (:class:`DirectClientTransport`).

    One transport may be registered to several streams (one WebSocket connection with
    several subscriptions), so ``send`` may be called concurrently by the drain tasks of
    different streams, and ``close`` may be called more than once; implementations must
    tolerate both.
    """

    async def send(self, frame: Frame) -> None:
        """Send one protocol message (UTF-8 JSON bytes) as one *text* message."""
        ...


@runtime_checkable
class ClosableClientTransport(ClientTransport, Protocol):
    """A transport the manager can close (optional).

    The manager calls ``close`` when it drops the client: a slow consumer under the
    ``disconnect`` policy (code ``slow_consumer``), a failed or timed-out send under
    ``deregister_client`` or ``raise`` (code ``send_failed``). It is given
    ``CLOSE_TIMEOUT`` seconds. A transport without ``close`` is simply not sent anything
    more.
    """

    async def close(self, code: str, reason: str) -> None:
        """Close the connection; ``code`` is machine-readable (``slow_consumer``...)."""
        ...


@runtime_checkable
class StreamClosedListener(ClientTransport, Protocol):
    """A transport told when one of its subscriptions ends (optional).

    ``stream_closed`` is called once per subscription, after its last message was handed
    to ``send`` (or dropped), with the reason it ended: the stream's close reason
    (``completed``, ``succeeded``, ``failed``, ``cancelled``, ``error``, ``inactive``,
    ``shutdown``...), ``unsubscribed``, ``disconnected``, ``slow_consumer`` or
    ``send_failed``. It must not block; an exception is logged and ignored.
    """

    def stream_closed(self, stream_id: str, reason: str) -> None:
        """The subscription to ``stream_id`` ended, for ``reason``."""
        ...


@runtime_checkable
class BatchClientTransport(ClientTransport, Protocol):
    """A transport that can take several pending messages at once (optional).

    When a client is behind, its drain task hands up to ``coalesce_max`` messages to
    ``send_batch`` in one call; the transport may write them back to back, or combine
    them. Each frame is still one complete protocol message, in order.
    """

    async def send_batch(self, frames: Sequence[Frame]) -> None:
        """Send several protocol messages, in order."""
        ...


@runtime_checkable
class DirectClientTransport(ClientTransport, Protocol):
    """A transport that can write without waiting (optional).

    When a client is idle (its queue is empty and no send is in progress), ``push``,
    ``push_many`` and the registration write that call's frames with one synchronous
    ``try_send`` instead of waking the client's drain task: no task switch per client
    and per push. ``try_send`` either writes *all* the frames, in order, and returns
    True, or writes none and returns False when it cannot write now without waiting
    (e.g. its write buffer is full or another send is in progress); the frames are then
    queued and sent by the drain task with ``send``/``send_batch``, as without
    ``try_send``. It must not suspend. An exception counts as a failed send (see
    ``on_send_error``).
    """

    def try_send(self, frames: Sequence[Frame]) -> bool:
        """Write every frame now and return True, or write none and return False."""
        ...


class ClientDelivery:
    """One client of one stream: its queue, its drain task and what happens on errors."""

    __slots__ = (
        "attached",
        "batch_send",
        "cancelled",
        "capacity",
        "client_id",
        "data_waiter",
        "direct",
        "done",
        "end_reason",
        "error_logged",
        "fanout",
        "finishing",
        "flush_pending",
        "greeting",
        "head",
        "inflight",
        "missed",
        "policy",
        "predecessor",
        "queue",
        "replies",
        "scope",
        "sending_since",
        "space_waiter",
        "stream",
        "tail",
        "timed_out",
        "transport",
    )

    def __init__(
        self,
        fanout: Fanout,
        stream: StreamState,
        client_id: str,
        transport: ClientTransport,
        policy: SlowConsumerPolicy,
        capacity: int,
    ) -> None:
        self.fanout = fanout
        self.stream = stream
        self.client_id = client_id
        self.transport = transport
        send_batch = getattr(transport, "send_batch", None)
        self.batch_send: Callable[[Sequence[Frame]], Awaitable[None]] | None = (
            send_batch if callable(send_batch) else None
        )
        try_send = getattr(transport, "try_send", None)
        self.direct: Callable[[Sequence[Frame]], bool] | None = (
            try_send if callable(try_send) else None
        )
        self.flush_pending = False
        """Frames were queued for this idle client during the current push: the pusher
        writes them with ``direct`` (or wakes the drain task) before it suspends."""
        self.policy: SlowConsumerPolicy = policy
        self.capacity = capacity
        self.head: deque[Frame] = deque()
        """Sent first, never dropped: ``subscribed``, ``replay_gap``, replayed chunks."""
        self.greeting: Frame | None = None
        """The ``subscribed`` reply (first in ``head`` until it is sent)."""
        self.replies: list[Frame] = []
        """Replies (``subscribed``, ``unsubscribed``) not yet handed to the transport."""
        self.end_reason: str | None = None
        """Why the subscription ended (see :class:`StreamClosedListener`); None while on."""
        self.queue: deque[Frame] = deque()
        """Live messages, bounded by ``capacity`` and subject to the slow-consumer policy."""
        self.tail: list[Frame] = []
        """Sent last, once the queue is empty: the final messages of a closing stream."""
        self.missed = 0
        self.finishing = False
        self.attached = True
        self.error_logged = False
        self.scope = anyio.CancelScope()
        self.data_waiter: anyio.Event | None = None
        self.space_waiter: anyio.Event | None = None
        self.done = anyio.Event()
        self.cancelled = False
        """The manager stopped this client's task on purpose (not a send timeout)."""
        self.sending_since: float | None = None
        """When the send in progress started (watched by the send watchdog)."""
        self.timed_out = False
        self.inflight = 0
        """Messages of the send in progress not yet confirmed sent."""
        self.predecessor: ClientDelivery | None = None
        """The same client's previous subscription to the same stream id, still sending
        its last messages: this one starts sending only after it finished."""

    @property
    def full(self) -> bool:
        return len(self.queue) >= self.capacity

    def cancel(self) -> None:
        """Stop the drain task, a send in progress included."""
        self.cancelled = True
        self.scope.cancel()

    def wake(self) -> None:
        waiter = self.data_waiter
        if waiter is not None:
            self.data_waiter = None
            waiter.set()

    def wake_pushers(self) -> None:
        waiter = self.space_waiter
        if waiter is not None:
            self.space_waiter = None
            waiter.set()

    def take(self, limit: int) -> list[Frame]:
        """Up to ``limit`` frames to send now, in protocol order."""
        out: list[Frame] = []
        head = self.head
        while head and len(out) < limit:
            out.append(head.popleft())
        if head:
            return out
        if self.missed:
            out.append(wire.dropped(self.stream.id, self.missed))
            self.missed = 0
        queue = self.queue
        if queue:
            n = min(len(queue), max(1, limit - len(out)))
            out.extend(queue.popleft() for _ in range(n))
            self.wake_pushers()
        if not queue and self.finishing and self.tail:
            out.extend(self.tail)
            self.tail.clear()
        return out

    # -- leaving the stream ---------------------------------------------------------------

    def ended(self, reason: str) -> None:
        """Record why the subscription ends (the first reason given is kept)."""
        if self.end_reason is None:
            self.end_reason = reason

    def detach(self) -> None:
        """Remove the client from its stream's fan-out (its drain task may go on)."""
        if not self.attached:
            return
        self.attached = False
        stream = self.stream
        if stream.subscribers.get(self.client_id) is self:
            del stream.subscribers[self.client_id]
            if self.policy == "block":
                stream.blocking -= 1
        self.fanout.forget(self.client_id, stream.id)
        self.wake_pushers()

    def finish(self, last: Iterable[Frame]) -> None:
        """Send ``last`` once the queue is empty, then end the drain task."""
        self.tail.extend(last)
        self.finishing = True
        self.wake()

    def leave(self, notify: bool, ref: str | int | None = None) -> None:
        """Unsubscribe: the messages not sent yet are discarded.

        With ``notify`` the client receives ``unsubscribed`` (with ``ref``) as its last
        message of the stream, after ``subscribed`` if that was not sent yet (it answers
        an earlier request: only the replay and live messages are discarded); without
        it, nothing more is sent and a send in progress is cancelled.
        """
        self.ended(UNSUBSCRIBED if notify else DISCONNECTED)
        self.detach()
        head = self.head
        greeting = head[0] if head and head[0] is self.greeting else None
        head.clear()
        self.queue.clear()
        self.missed = 0
        if notify:
            if greeting is not None:
                head.append(greeting)
            last = wire.unsubscribed(self.stream.id, ref)
            self.fanout.owe(self, last)
            self.finish([last])
        else:
            self.cancel()

    def disconnect(self) -> None:
        """The ``disconnect`` policy: the client is too slow; close its transport."""
        stream = self.stream
        log.info(
            "client %r of stream %r is too slow (%d messages queued): disconnecting",
            self.client_id,
            stream.id,
            len(self.queue),
        )
        stream.count("disconnects")
        self.ended(CLOSE_SLOW_CONSUMER)
        self.detach()
        self.queue.clear()
        self.cancel()
        fanout = self.fanout
        fanout.start(
            fanout.close_transport,
            self.transport,
            CLOSE_SLOW_CONSUMER,
            f"too slow to keep up with stream {stream.id}",
        )

    # -- sending --------------------------------------------------------------------------

    def send_direct(self, frames: deque[Frame]) -> None:
        """Write ``frames`` (the client's queue or head) with ``try_send`` while it accepts.

        What it declines stays in ``frames`` for the drain task, which is woken.
        """
        direct = self.direct
        assert direct is not None
        limit = self.fanout.config.coalesce_max
        stream = self.stream
        while frames:
            whole = len(frames) <= limit
            batch = list(frames) if whole else list(islice(frames, limit))
            error: Exception | None = None
            try:
                accepted = bool(direct(batch))
            except Exception as exc:  # these frames are lost, as with a failed send
                accepted, error = True, exc
            if not accepted:
                self.wake()
                return
            if whole:
                frames.clear()
            else:
                for _ in batch:
                    frames.popleft()
            if self.replies:
                self.fanout.settle(self, batch)
            self.wake_pushers()
            if error is not None:
                if not self.send_failed(error, len(batch)):
                    self.cancel()
                    return
                continue
            stream.count_sent(len(batch), sum(map(len, batch)))

    async def drain(self) -> None:
        """The client's own task: sends its queued messages, in order, until the end."""
        try:
            while True:
                with self.scope:
                    await self._drain_until_done()
                    return
                # The scope was cancelled: by the manager (deregistration, slow client,
                # shutdown), or by the watchdog because a send took too long.
                if self.cancelled or not self.timed_out:
                    return
                self.timed_out = False
                self.sending_since = None
                lost, self.inflight = self.inflight, 0
                if not self.send_failed(TimeoutError(), lost):
                    return
                self.scope = anyio.CancelScope()
        finally:
            self.data_waiter = None
            self.sending_since = None
            self.fanout.settle(self)
            self.done.set()
            self.fanout.drained(self)
            self._tell_transport()

    def _tell_transport(self) -> None:
        """Call the transport's ``stream_closed`` (if it has one) with the end reason."""
        listener = getattr(self.transport, "stream_closed", None)
        if not callable(listener):
            return
        try:
            listener(self.stream.id, self.end_reason or DISCONNECTED)
        except Exception:
            log.warning("stream_closed() of client %r raised", self.client_id, exc_info=True)

    async def _drain_until_done(self) -> None:
        if self.predecessor is not None:
            # e.g. `unsubscribed` then `subscribed` again: keep them in order
            await self.predecessor.done.wait()
            self.predecessor = None
        limit = self.fanout.config.coalesce_max
        while True:
            frames = self.take(limit)
            if not frames:
                if self.finishing:
                    return
                waiter = self.data_waiter = anyio.Event()
                await waiter.wait()
                continue
            if not await self._send(frames):
                return

    async def _send(self, frames: list[Frame]) -> bool:
        """Send frames to the client; False when it must stop receiving.

        No cancel scope per send (they cost more than the send itself): the start time is
        recorded and the fan-out's send watchdog cancels the client's scope if it gets
        too old.
        """
        sent = nbytes = 0
        self.inflight = len(frames)
        self.sending_since = anyio.current_time()
        try:
            try:
                if self.batch_send is not None and len(frames) > 1:
                    await self.batch_send(frames)
                    sent, nbytes = len(frames), sum(map(len, frames))
                else:
                    send = self.transport.send
                    for frame in frames:
                        await send(frame)
                        sent += 1
                        nbytes += len(frame)
                        self.inflight -= 1
            finally:
                self.sending_since = None
                if sent:
                    self.stream.count_sent(sent, nbytes)
                if self.replies:  # sent, or lost with the failed send: no longer owed
                    self.fanout.settle(self, frames)
        except Exception as exc:
            self.inflight = 0
            return self.send_failed(exc, len(frames) - sent)
        self.inflight = 0
        return True

    def send_failed(self, exc: Exception, lost: int) -> bool:
        """Apply ``on_send_error``; False when the client must stop receiving."""
        stream = self.stream
        fanout = self.fanout
        stream.count("send_errors")
        what = (
            f"timed out after {fanout.config.send_timeout:g}s"
            if isinstance(exc, TimeoutError)
            else f"failed: {type(exc).__name__}: {exc}"
        )
        policy = fanout.config.on_send_error
        if policy == "log_and_continue":
            log.log(
                logging.DEBUG if self.error_logged else logging.WARNING,
                "send to client %r of stream %r %s (%d message(s) lost)",
                self.client_id,
                stream.id,
                what,
                lost,
            )
            self.error_logged = True
            return True
        log.warning(
            "send to client %r of stream %r %s: deregistering it", self.client_id, stream.id, what
        )
        self.ended(CLOSE_SEND_FAILED)
        self.detach()
        fanout.start(fanout.close_transport, self.transport, CLOSE_SEND_FAILED, f"send {what}")
        if policy == "raise" and not stream.closed and stream.pending_error is None:
            error = StreamError(
                f"send to client {self.client_id!r} of stream {stream.id!r} {what}",
                code="client_send_failed",
                stream_id=stream.id,
                client_id=self.client_id,
            )
            error.__cause__ = exc
            stream.pending_error = error
        return False
