"""Fan-out of frames to the clients of a stream, and the tasks that deliver them.

A :class:`Fanout` is the delivery engine of one manager, shared by all its streams. It
publishes chunks (numbered, buffered for replay, shown to observers) and control
messages, enqueues every frame for every client of a stream under the client's
slow-consumer policy (:meth:`Fanout.enqueue`), writes directly to idle clients that can
take frames without waiting (:meth:`Fanout.flush_direct`), makes pushers wait for room
or yield to the drain tasks (backpressure), runs those tasks and the send watchdog, and
keeps the index of which client is subscribed to which streams, and the count of the
replies each client is still owed (:meth:`Fanout.owe`, :meth:`Fanout.replies_sent`).

A push never suspends between enqueueing a frame and writing it to idle clients: every
push calls :meth:`Fanout.flush_direct` before it suspends, so a drain task that is still
parked has sent everything before those frames, which keeps the order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .config import CLOSE_TIMEOUT, StreamError, StreamingConfig
from .delivery import ClientDelivery, ClientTransport
from .observers import StreamObserver, notify
from .wire import Frame

if TYPE_CHECKING:
    from .stream_state import StreamState

__all__ = ["Fanout"]

log = logging.getLogger("headwater.streaming")


class Fanout:
    """Delivers the frames of a manager's streams to their clients.

    ``observers`` (the manager's list) see every chunk and control message; ``gone``
    makes the error raised when a stream is closed under a waiting pusher.
    """

    def __init__(
        self,
        config: StreamingConfig,
        observers: list[StreamObserver],
        gone: Callable[[str], StreamError],
    ) -> None:
        self.config = config
        self.observers = observers
        self.gone = gone
        self.tg: TaskGroup | None = None
        self.busy = 0
        """Tasks started by :meth:`start` and still running."""
        self._idle: anyio.Event | None = None
        self.draining: set[ClientDelivery] = set()
        """Clients whose drain task is running (watched by the send watchdog)."""
        self._watchdog = anyio.CancelScope()
        self.clients: dict[str, set[str]] = {}
        """The ids of the streams each client is registered to."""
        self._last: dict[tuple[str, str], ClientDelivery] = {}
        self._flush: list[ClientDelivery] = []
        """Idle clients with ``try_send`` that have frames queued by the current push;
        always empty while no push is running (flushed before every suspension)."""
        self.owed: dict[str, int] = {}
        """Replies (``subscribed``, ``unsubscribed``) queued for each client and not yet
        handed to its transport; clients owed nothing are absent."""
        self._paid: dict[str, anyio.Event] = {}
        """Set when a client is owed nothing any more (created by a waiter)."""

    # -- tasks ----------------------------------------------------------------------------

    def run_in(self, tg: TaskGroup) -> None:
        """Start tasks in ``tg`` from now on, the send watchdog first."""
        self.tg = tg
        if self.config.send_timeout is not None:
            tg.start_soon(self._watch_sends, self.config.send_timeout)  # not in `busy`

    def start(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        tg = self.tg
        if tg is None:  # pragma: no cover - guarded by the manager's state
            raise RuntimeError("the StreamingManager is not started")
        self.busy += 1
        tg.start_soon(self._tracked, func, *args)

    async def _tracked(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await func(*args)
        finally:
            self.busy -= 1
            if not self.busy and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def wait_idle(self) -> None:
        """Wait until every task started by :meth:`start` has ended."""
        while self.busy:
            waiter = self._idle = anyio.Event()
            await waiter.wait()

    def stop(self) -> None:
        """Cancel the drain tasks still running and the send watchdog."""
        for sub in list(self.draining):
            sub.cancel()
        self._watchdog.cancel()

    async def _watch_sends(self, limit: float) -> None:
        """Cancel sends older than ``limit``; sleeps until the oldest one would expire."""
        with self._watchdog:
            while True:
                now = anyio.current_time()
                wake = now + limit
                for sub in self.draining:
                    since = sub.sending_since
                    if since is None or sub.timed_out:
                        continue
                    if now - since >= limit:
                        sub.timed_out = True
                        sub.scope.cancel()
                    else:
                        wake = min(wake, since + limit)
                await anyio.sleep(wake - now)

    async def close_transport(self, transport: ClientTransport, code: str, reason: str) -> None:
        """Close a dropped client's transport, if it can be closed (within CLOSE_TIMEOUT)."""
        close = getattr(transport, "close", None)
        if not callable(close):
            return
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await close(code, reason)
            except Exception:
                log.debug("closing a client transport failed", exc_info=True)

    # -- replies --------------------------------------------------------------------------

    def owe(self, sub: ClientDelivery, frame: Frame) -> None:
        """``frame``, queued for ``sub``, is a reply: count it until it is sent."""
        sub.replies.append(frame)
        client_id = sub.client_id
        self.owed[client_id] = self.owed.get(client_id, 0) + 1

    def settle(self, sub: ClientDelivery, frames: list[Frame] | None = None) -> None:
        """The replies among ``frames`` (all of ``sub``'s when None) were handed to the
        transport, or never will be: they are owed no more."""
        replies = sub.replies
        if not replies:
            return
        if frames is None:
            paid = len(replies)
            replies.clear()
        else:
            kept = [r for r in replies if not any(r is f for f in frames)]
            paid = len(replies) - len(kept)
            replies[:] = kept
        if not paid:
            return
        client_id = sub.client_id
        left = self.owed.get(client_id, 0) - paid
        if left > 0:
            self.owed[client_id] = left
            return
        self.owed.pop(client_id, None)
        waiter = self._paid.pop(client_id, None)
        if waiter is not None:
            waiter.set()

    async def replies_sent(self, client_id: str) -> None:
        """Wait until no reply queued for ``client_id`` is still to be sent."""
        while client_id in self.owed:
            waiter = self._paid.get(client_id)
            if waiter is None:
                waiter = self._paid[client_id] = anyio.Event()
            await waiter.wait()

    # -- clients --------------------------------------------------------------------------

    def attach(self, sub: ClientDelivery) -> None:
        """Start delivering to a client just subscribed (its head is ready).

        A previous subscription of the same client to the same stream id that is still
        sending its last messages goes first.
        """
        stream = sub.stream
        key = (stream.id, sub.client_id)
        previous = self._last.get(key)
        if previous is not None and not previous.done.is_set():
            sub.predecessor = previous
        self._last[key] = sub
        self.clients.setdefault(sub.client_id, set()).add(stream.id)
        self.draining.add(sub)
        if sub.greeting is not None:
            self.owe(sub, sub.greeting)
        self.start(sub.drain)
        if sub.direct is not None and sub.predecessor is None:
            # `subscribed` (and the replay) now rather than when the drain task first runs
            sub.send_direct(sub.head)

    def forget(self, client_id: str, stream_id: str) -> None:
        """The client left the stream: drop it from the index."""
        streams = self.clients.get(client_id)
        if streams is not None:
            streams.discard(stream_id)
            if not streams:
                del self.clients[client_id]

    def drained(self, sub: ClientDelivery) -> None:
        """The client's drain task ended."""
        self.draining.discard(sub)
        key = (sub.stream.id, sub.client_id)
        if self._last.get(key) is sub:
            del self._last[key]

    # -- publishing -----------------------------------------------------------------------

    def publish(self, stream: StreamState, payload: bytes) -> int:
        """Number, buffer and enqueue one chunk (its data encoded); its ``seq``.

        Never suspends.
        """
        frame = stream.number(payload)
        seq = stream.seq
        for observer in self.observers:
            notify(observer.chunk_published, stream.id, stream.epoch, seq, payload)
        stream.keep(seq, frame)
        self.enqueue(stream, frame)
        return seq

    async def push(self, stream: StreamState, payload: bytes, seq: int | None = None) -> int:
        """Publish one chunk once ``block`` clients have room; ``seq`` numbers it."""
        if stream.blocking and not await self.wait_for_room(stream):
            raise self.gone(stream.id)
        if seq is not None:
            stream.seq = max(stream.seq, seq - 1)
        published = self.publish(stream, payload)
        self.flush_direct()
        if stream.pressure:
            await self.yield_to_clients(stream)
        return published

    async def push_many(
        self,
        stream: StreamState,
        chunks: Iterable[Any],
        encode: Callable[[StreamState, Any], bytes],
    ) -> int:
        """Publish chunks in order (``encode`` encodes each one); the last ``seq``.

        Idle clients get the frames of the whole call in one write.
        """
        seq = stream.seq
        try:
            for data in chunks:
                payload = encode(stream, data)
                if stream.blocking:
                    if not await self.wait_for_room(stream):
                        raise self.gone(stream.id)
                elif stream.closed:
                    raise self.gone(stream.id)
                seq = self.publish(stream, payload)
                if stream.pressure:
                    self.flush_direct()
                    await self.yield_to_clients(stream)
        finally:
            self.flush_direct()
        return seq

    async def broadcast(self, stream: StreamState, frame: Frame) -> None:
        """Enqueue a control message for every client, under the slow-consumer policy."""
        for observer in self.observers:
            notify(observer.message_broadcast, stream.id, frame)
        if stream.blocking and not await self.wait_for_room(stream):
            raise self.gone(stream.id)
        self.enqueue(stream, frame)
        self.flush_direct()
        if stream.pressure:
            await self.yield_to_clients(stream)

    # -- frames ---------------------------------------------------------------------------

    def enqueue(self, stream: StreamState, frame: Frame) -> None:
        """Queue ``frame`` for every client of the stream, under its slow-consumer policy.

        Never suspends: ``block`` clients have room because the pusher waited for it
        (:meth:`wait_for_room`); ``drop_oldest`` drops the oldest queued message (the
        client is told with ``dropped``); ``disconnect`` closes the client.
        """
        slow: list[ClientDelivery] | None = None
        for sub in stream.subscribers.values():
            queue = sub.queue
            if len(queue) >= sub.capacity:
                if sub.policy == "drop_oldest":
                    queue.popleft()
                    sub.missed += 1
                    stream.count("dropped")
                elif sub.policy == "disconnect":
                    if slow is None:
                        slow = []
                    slow.append(sub)
                    continue
                # "block": the pusher waited for room; another pusher may have taken it
                # in between only through a bug, so accept being one over.
            queue.append(frame)
            if 2 * len(queue) >= sub.capacity:
                stream.pressure = True
            if sub.data_waiter is not None:
                if sub.direct is None:
                    sub.wake()
                elif not sub.flush_pending:
                    # idle: written by flush_direct at the end of this push
                    sub.flush_pending = True
                    self._flush.append(sub)
        if slow:
            for sub in slow:
                sub.disconnect()

    def flush_direct(self) -> None:
        """Write the frames queued for idle clients by this push, without waiting.

        Called by every push before it suspends (and when it ends), so the drain tasks
        never see these frames unless ``try_send`` declines: a client whose drain task is
        still parked has sent everything before them, which keeps the order. Frames go
        out ``coalesce_max`` at a time, one ``try_send`` each; what ``try_send`` declines
        stays queued and the drain task is woken for it.
        """
        pending = self._flush
        if not pending:
            return
        self._flush = []
        for sub in pending:
            sub.flush_pending = False
            if sub.data_waiter is None:  # woken meanwhile: the drain task sends
                continue
            if sub.cancelled or not sub.attached or sub.missed or sub.head or sub.finishing:
                sub.wake()  # not a plain idle client any more: as without try_send
                continue
            sub.send_direct(sub.queue)

    async def wait_for_room(self, stream: StreamState) -> bool:
        """Wait until no ``block`` client of the stream has a full queue.

        False if the stream is (or gets) closed meanwhile.
        """
        while True:
            if stream.closed:
                return False
            blocked = next(
                (s for s in stream.subscribers.values() if s.policy == "block" and s.full),
                None,
            )
            if blocked is None:
                return True
            if self._flush:  # about to suspend: write what this push left for idle clients
                self.flush_direct()
                continue
            waiter = blocked.space_waiter
            if waiter is None:
                waiter = blocked.space_waiter = anyio.Event()
            await waiter.wait()

    @staticmethod
    async def yield_to_clients(stream: StreamState) -> None:
        """Let the drain tasks run before the next push.

        A pusher that never suspends would fill every queue, fast clients' included,
        before any drain task runs. Once a queue is half full, the pusher yields once per
        push: clients that keep up empty their queues, and only those that really lag
        reach the slow-consumer policy.
        """
        stream.pressure = False
        await anyio.lowlevel.checkpoint()
