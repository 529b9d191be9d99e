"""One stream's state: sequence numbers, epoch, replay buffer, subscribers and counters.

A :class:`StreamState` numbers the chunks of its stream (``seq`` 1, 2, ...), keeps the
latest frames in a bounded replay buffer, and answers a resuming client with what it
missed (:meth:`StreamState.subscribe`): the buffered chunks after ``since``, or a
:class:`ReplayGap` saying why not all of them. Each stream has a random ``epoch``; a
client resuming against another epoch (the stream was recreated, the process restarted)
is told its history is gone.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from . import wire
from .config import StreamError
from .wire import Frame

if TYPE_CHECKING:
    from .delivery import ClientDelivery

__all__ = ["COUNTERS", "Counters", "ReplayGap", "StreamInfo", "StreamState", "Subscription"]

log = logging.getLogger("headwater.streaming")


@dataclass(slots=True)
class Counters:
    """Delivery counters, of one stream or of a whole manager (they only grow)."""

    messages_sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    send_errors: int = 0
    disconnects: int = 0
    subscriptions: int = 0
    replay_hits: int = 0
    replay_misses: int = 0
    replayed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTERS}


COUNTERS: Final = tuple(f.name for f in fields(Counters))
"""The names of the :class:`Counters`, in order."""


@dataclass(frozen=True, slots=True)
class ReplayGap:
    """Why a resuming client could not get everything after ``since``.

    ``reason`` is ``evicted`` (the chunks after ``since`` left the replay buffer),
    ``epoch_changed`` (the client's epoch is not the stream's: its history is gone) or
    ``ahead`` (``since`` is beyond the stream's last chunk: it belongs to another epoch).
    The client receives the buffered chunks from ``first_available`` on.
    """

    since: int
    first_available: int
    reason: Literal["evicted", "epoch_changed", "ahead"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A registered client of a stream: the outcome of
    :meth:`StreamingManager.register_client`.

    The client receives ``replayed`` chunks (all with ``seq <= seq``), then the live
    chunks, from ``seq + 1`` on. The fields are a snapshot taken at registration;
    :attr:`is_active`, :attr:`close_reason` and :meth:`wait_closed` follow the
    subscription as it goes on.
    """

    stream_id: str
    client_id: str
    epoch: str
    seq: int
    """Sequence number of the stream's last chunk when the client was registered."""
    replayed: int
    gap: ReplayGap | None = None
    _delivery: ClientDelivery | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """The client's id (``client_id``)."""
        return self.client_id

    @property
    def is_active(self) -> bool:
        """True while the client is registered to the stream: False once the stream
        closed, the client unsubscribed, or the manager dropped it."""
        delivery = self._delivery
        return delivery is not None and delivery.attached

    @property
    def close_reason(self) -> str | None:
        """Why the subscription ended (None while it goes on): the stream's close reason
        (``completed``, ``succeeded``, ``failed``, ``cancelled``, ``error``,
        ``inactive``, ``shutdown``...), ``unsubscribed``, ``disconnected``,
        ``slow_consumer`` or ``send_failed``."""
        delivery = self._delivery
        return None if delivery is None else delivery.end_reason

    async def wait_closed(self) -> str:
        """Wait until the subscription ended and its last message (``stream_complete``,
        ``unsubscribed``) was handed to the transport or dropped; return
        :attr:`close_reason`."""
        delivery = self._delivery
        if delivery is None:
            raise RuntimeError("this Subscription is not attached to a manager")
        await delivery.done.wait()
        return delivery.end_reason or "disconnected"


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A snapshot of one open stream."""

    stream_id: str
    epoch: str
    seq: int
    """Sequence number of the last chunk pushed (0 before the first)."""
    first_buffered: int
    """Sequence number of the oldest chunk still in the replay buffer (``seq + 1`` if none)."""
    clients: int
    created_at: float
    """Wall-clock creation time (``time.time()``)."""
    idle_seconds: float
    """Seconds since the last push (or since creation)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)


class StreamState:
    """One open (or just closed) stream of a manager.

    Its counters are added to ``totals`` (the manager's) as well. ``replay_max_chunks``
    and ``replay_max_bytes`` bound the replay buffer (0 chunks: no replay).
    """

    __slots__ = (
        "blocking",
        "closed",
        "created_at",
        "epoch",
        "id",
        "id_json",
        "idle_timeout",
        "last_push",
        "max_bytes",
        "max_chunks",
        "metadata",
        "pending_error",
        "pressure",
        "replay",
        "replay_bytes",
        "seq",
        "stats",
        "subscribers",
        "timer",
        "totals",
    )

    def __init__(
        self,
        stream_id: str,
        id_json: bytes,
        idle_timeout: float | None,
        metadata: Mapping[str, Any],
        *,
        totals: Counters,
        replay_max_chunks: int,
        replay_max_bytes: int,
    ) -> None:
        self.id = stream_id
        self.id_json = id_json
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.subscribers: dict[str, ClientDelivery] = {}
        self.blocking = 0
        """Number of subscribers with the ``block`` policy."""
        self.replay: deque[tuple[int, Frame]] = deque()
        self.replay_bytes = 0
        self.max_chunks = replay_max_chunks
        self.max_bytes = replay_max_bytes
        self.closed = False
        self.idle_timeout = idle_timeout
        self.last_push = anyio.current_time()
        self.timer: anyio.CancelScope | None = None
        self.pending_error: StreamError | None = None
        self.pressure = False
        """A client queue is at least half full: the pusher should let drain tasks run."""
        self.stats = Counters()
        self.totals = totals
        self.metadata = dict(metadata)
        self.created_at = time.time()

    @property
    def first_buffered(self) -> int:
        return self.replay[0][0] if self.replay else self.seq + 1

    # -- counters -------------------------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        setattr(self.stats, name, getattr(self.stats, name) + n)
        setattr(self.totals, name, getattr(self.totals, name) + n)

    def count_sent(self, messages: int, nbytes: int) -> None:
        stats, totals = self.stats, self.totals
        stats.messages_sent += messages
        stats.bytes_sent += nbytes
        totals.messages_sent += messages
        totals.bytes_sent += nbytes

    # -- chunks ---------------------------------------------------------------------------

    def number(self, payload: bytes) -> Frame:
        """Give the next ``seq`` to a chunk (its data encoded): its ``stream_update``."""
        seq = self.seq = self.seq + 1
        self.last_push = anyio.current_time()
        return wire.stream_update_encoded(self.id_json, seq, payload)

    def keep(self, seq: int, frame: Frame) -> None:
        """Add a chunk's frame to the replay buffer, evicting the oldest beyond the limits."""
        if not self.max_chunks:
            return
        replay = self.replay
        replay.append((seq, frame))
        self.replay_bytes += len(frame)
        while replay and (len(replay) > self.max_chunks or self.replay_bytes > self.max_bytes):
            self.replay_bytes -= len(replay.popleft()[1])

    def raise_pending(self) -> None:
        """Raise (once) the error a failed send left for the next push (policy ``raise``)."""
        error = self.pending_error
        if error is not None:
            self.pending_error = None
            raise error

    # -- clients --------------------------------------------------------------------------

    def check_new_client(self, client_id: str, limit: int) -> None:
        """Raise StreamError ``client_exists`` or ``too_many_clients`` (``limit``)."""
        if client_id in self.subscribers:
            raise StreamError(
                f"client {client_id!r} is already registered to stream {self.id!r}",
                code="client_exists",
                stream_id=self.id,
                client_id=client_id,
            )
        if len(self.subscribers) >= limit:
            raise StreamError(
                f"stream {self.id!r} has reached its limit of {limit} clients",
                code="too_many_clients",
                stream_id=self.id,
                client_id=client_id,
            )

    def client(self, client_id: str) -> ClientDelivery:
        """A registered client; raises StreamError ``unknown_client``."""
        sub = self.subscribers.get(client_id)
        if sub is None:
            raise StreamError(
                f"client {client_id!r} is not registered to stream {self.id!r}",
                code="unknown_client",
                stream_id=self.id,
                client_id=client_id,
            )
        return sub

    def subscribe(
        self,
        sub: ClientDelivery,
        since: int | None,
        epoch: str | None,
        ref: str | int | None,
    ) -> Subscription:
        """Attach a new client: queue its first messages, then include it in the fan-out.

        Its head gets ``subscribed``, a ``replay_gap`` if not everything after ``since``
        is buffered (or ``epoch`` is not the stream's), and the buffered chunks after
        ``since`` (all of them after a gap). Never suspends: the snapshot of the buffer
        and the attachment happen between the same two pushes.
        """
        gap: ReplayGap | None = None
        replay: list[Frame] = []
        if since is not None:
            first = self.first_buffered
            reason: Literal["evicted", "epoch_changed", "ahead"] | None = None
            after = since
            if epoch is not None and epoch != self.epoch:
                reason, after = "epoch_changed", 0
            elif since > self.seq:
                reason, after = "ahead", 0
            elif after + 1 < first:
                reason = "evicted"
            if reason is not None:
                gap = ReplayGap(since, first, reason)
            skip = max(0, after + 1 - first)
            replay = [frame for _, frame in islice(self.replay, skip, None)]
            self.count("replay_misses" if gap else "replay_hits")
            self.count("replayed", len(replay))
        head = sub.head
        greeting = sub.greeting = wire.subscribed(self.id, self.epoch, self.seq, len(replay), ref)
        head.append(greeting)
        if gap is not None:
            head.append(
                wire.replay_gap(self.id, gap.since, gap.first_available, gap.reason, self.epoch)
            )
        head.extend(replay)
        self.subscribers[sub.client_id] = sub
        if sub.policy == "block":
            self.blocking += 1
        self.count("subscriptions")
        return Subscription(self.id, sub.client_id, self.epoch, self.seq, len(replay), gap, sub)

    # -- end ------------------------------------------------------------------------------

    def complete_frame(self, reason: str, summary: Mapping[str, Any] | None) -> Frame:
        """The ``stream_complete`` message of this stream (a bad ``summary`` is left out)."""
        return wire.stream_complete(self.id, reason, self.seq, summary, lenient=True)

    def finish(self, last: list[Frame], reason: str) -> None:
        """Detach every client, each to receive ``last`` after its queue; drop the replay.

        ``reason`` (the stream's close reason) is each subscription's end reason.
        """
        for sub in list(self.subscribers.values()):
            sub.ended(reason)
            sub.detach()
            sub.finish(last)
        self.replay.clear()
        self.replay_bytes = 0

    async def watch_idle(self, close: Callable[[StreamState, str], None]) -> None:
        """The inactivity timer: ``close(self, "inactive")`` after ``idle_timeout``."""
        assert self.timer is not None
        assert self.idle_timeout is not None
        timeout = self.idle_timeout
        with self.timer:
            while True:
                remaining = self.last_push + timeout - anyio.current_time()
                if remaining <= 0:
                    log.info("stream %r inactive for %gs: closing", self.id, timeout)
                    close(self, "inactive")
                    return
                await anyio.sleep(remaining)

    # -- snapshots ------------------------------------------------------------------------

    def info(self) -> StreamInfo:
        return StreamInfo(
            stream_id=self.id,
            epoch=self.epoch,
            seq=self.seq,
            first_buffered=self.first_buffered,
            clients=len(self.subscribers),
            created_at=self.created_at,
            idle_seconds=anyio.current_time() - self.last_push,
            metadata=dict(self.metadata),
        )

    def figures(self) -> dict[str, Any]:
        """The counters and current sizes of the stream (see ``StreamingManager.stats``)."""
        return {
            "stream": self.id,
            "epoch": self.epoch,
            "clients": len(self.subscribers),
            "seq": self.seq,
            **self.stats.as_dict(),
            "buffered": len(self.replay),
            "buffered_bytes": self.replay_bytes,
            "queued": sum(len(s.queue) for s in self.subscribers.values()),
        }
