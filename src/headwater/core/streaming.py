"""Fan-out of stream chunks to clients: lifecycles, per-client queues, replay and limits.

A :class:`StreamingManager` owns *streams* (named, numbered sequences of chunks) and the
*clients* subscribed to them. It knows nothing about sockets: a client is any object with
an async ``send(frame)`` and ``close(code, reason)`` (:class:`ClientTransport`), so the
same manager serves the WebSocket server, tests with in-memory clients, or a bridge.

How a chunk travels::

    push(stream, data) --encode once--> frame (bytes) --> replay buffer
                                                     \\--> client queue --> drain task --> send
                                                     \\--> client queue --> drain task --> send

* Every chunk is encoded to a protocol v1 ``stream_update`` frame **once**; all clients
  share the same ``bytes`` object.
* Every client has a bounded queue drained by its own task, so a slow client delays only
  itself. A client that is idle (nothing queued, nothing being sent) and whose transport
  has a non-blocking ``try_send`` gets each push's frames written at once, in one call,
  without waking its task; it falls back to the queue as soon as it is behind. When a
  queue is full the slow-consumer policy decides: ``block`` (the pusher waits:
  backpressure reaches the pipeline), ``drop_oldest`` (the client is told how many
  messages it missed) or ``disconnect`` (the client is closed).
* Chunks are numbered (``seq`` 1, 2, ...) and the latest are kept in a bounded replay
  buffer, so a client that reconnects with ``since=N`` receives what it missed, then the
  live chunks, with no gap and no duplicate. Each stream has a random ``epoch``; a client
  resuming against another epoch (the stream was recreated, the process restarted) is told
  its history is gone.

Frames follow protocol v1 (see ``docs/protocol.md`` and :mod:`headwater.server.protocol`):
UTF-8 JSON text, one message per frame. Transports must send them as *text* messages.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from types import EllipsisType, TracebackType
from typing import Any, Final, Literal, Protocol, Self, runtime_checkable

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from .errors import HeadwaterError, StageError
from .events import Complete, ErrorEvent, Event, Progress, Status
from .metrics import metrics_registry

__all__ = [
    "CLOSE_SEND_FAILED",
    "CLOSE_SLOW_CONSUMER",
    "PROTOCOL_VERSION",
    "BatchClientTransport",
    "ClientTransport",
    "DirectClientTransport",
    "Frame",
    "ReplayGap",
    "SendErrorPolicy",
    "SlowConsumerPolicy",
    "StreamError",
    "StreamErrorCode",
    "StreamInfo",
    "StreamObserver",
    "StreamingConfig",
    "StreamingManager",
    "Subscription",
    "encode_json",
    "error_details",
    "streams_metrics",
]

log = logging.getLogger("headwater.streaming")

PROTOCOL_VERSION: Final = 1
"""Version of the client protocol whose frames the manager produces."""

CLOSE_SLOW_CONSUMER: Final = "slow_consumer"
"""``code`` passed to :meth:`ClientTransport.close` by the ``disconnect`` policy."""

CLOSE_SEND_FAILED: Final = "send_failed"
"""``code`` passed to :meth:`ClientTransport.close` after a failed or timed-out send."""

CLOSE_TIMEOUT: Final = 5.0
"""Seconds a transport's ``close`` may take before the manager stops waiting for it."""

Frame = bytes
"""One protocol message: UTF-8 encoded JSON, to be sent as a *text* message."""

SlowConsumerPolicy = Literal["block", "drop_oldest", "disconnect"]
"""What happens when a client's queue is full (see :class:`StreamingConfig`)."""

SendErrorPolicy = Literal["log_and_continue", "deregister_client", "raise"]
"""What happens when sending to a client fails (see :class:`StreamingConfig`)."""

StreamErrorCode = Literal[
    "stream_error",
    "stream_exists",
    "unknown_stream",
    "stream_closed",
    "too_many_streams",
    "too_many_clients",
    "client_exists",
    "unknown_client",
    "client_send_failed",
    "invalid_stream_id",
    "unencodable_chunk",
    "not_running",
    "shutting_down",
]
"""The stable machine-readable codes of :class:`StreamError`."""


class StreamError(HeadwaterError):
    """A streaming operation failed; ``code`` says why, in a stable machine-readable way.

    ``stream_id`` and ``client_id`` name the stream and client involved, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        code: StreamErrorCode = "stream_error",
        stream_id: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.code: StreamErrorCode = code
        self.stream_id = stream_id
        self.client_id = client_id
        self.message = message
        super().__init__(message)


# -- configuration ----------------------------------------------------------------------


class StreamingConfig(BaseModel):
    """Limits and policies of a :class:`StreamingManager`. Times are in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_streams: int = Field(1000, ge=1, description="Most streams open at the same time.")
    max_clients_per_stream: int = Field(1000, ge=1, description="Most clients of one stream.")
    inactivity_timeout: float | None = Field(
        300.0,
        gt=0,
        description=(
            "A stream that received no chunk for this long is closed with reason "
            "`inactive`; None disables the timer."
        ),
    )
    on_send_error: SendErrorPolicy = Field(
        "deregister_client",
        description=(
            "When a send to a client fails or times out: `log_and_continue` (the message is "
            "lost for that client, later ones are still sent), `deregister_client` (the "
            "client is removed from the stream and its transport closed) or `raise` (as "
            "`deregister_client`, and the next `push` to the stream raises StreamError "
            "`client_send_failed`)."
        ),
    )
    send_timeout: float | None = Field(
        30.0, gt=0, description="A send taking longer than this counts as a failed send."
    )
    client_queue_size: int = Field(
        1024, ge=1, description="Messages waiting for one client before it counts as slow."
    )
    slow_consumer: SlowConsumerPolicy = Field(
        "drop_oldest",
        description=(
            "When a client's queue is full: `block` (the pusher waits for room), "
            "`drop_oldest` (the oldest queued message is dropped and the client told how "
            "many it missed) or `disconnect` (the client is closed with `slow_consumer`)."
        ),
    )
    replay_max_chunks: int = Field(
        1000, ge=0, description="Chunks kept per stream for clients resuming with `since`."
    )
    replay_max_bytes: int = Field(
        4 * 1024 * 1024, ge=0, description="Bytes of encoded frames kept per stream for replay."
    )
    coalesce_max: int = Field(
        64,
        ge=1,
        description=(
            "Most messages handed to a transport's `send_batch` at once (a client that is "
            "behind receives its backlog in batches of up to this many)."
        ),
    )
    shutdown_grace: float = Field(
        5.0, ge=0, description="How long shutdown waits for queued messages to be delivered."
    )
    remember_closed: int = Field(
        1024,
        ge=0,
        description=(
            "How many closed stream ids are remembered, so that a late push or subscribe "
            "gets `stream_closed` rather than `unknown_stream`."
        ),
    )


# -- clients ----------------------------------------------------------------------------


@runtime_checkable
class ClientTransport(Protocol):
    """Where a client's messages go: a WebSocket connection, a test double, a bridge.

    One transport may be registered to several streams (one WebSocket connection with
    several subscriptions), so ``send`` may be called concurrently by the drain tasks of
    different streams, and ``close`` may be called more than once; implementations must
    tolerate both.
    """

    async def send(self, frame: Frame) -> None:
        """Send one protocol message (UTF-8 JSON bytes) as one *text* message."""
        ...

    async def close(self, code: str, reason: str) -> None:
        """Close the connection; ``code`` is machine-readable (``slow_consumer``...)."""
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


@runtime_checkable
class StreamObserver(Protocol):
    """Sees every stream event of a manager, e.g. to mirror streams to other nodes.

    Registered with :meth:`StreamingManager.add_observer`. The methods are called
    synchronously, in order, at the moment the event happens (a chunk right after it got
    its ``seq``): they must return quickly without suspending (queue the work for a
    task). An exception is logged and otherwise ignored.
    """

    def stream_opened(self, stream_id: str, epoch: str, metadata: Mapping[str, Any]) -> None:
        """A stream was created."""
        ...

    def chunk_published(self, stream_id: str, epoch: str, seq: int, payload: bytes) -> None:
        """Chunk ``seq`` was published; ``payload`` is its data as encoded JSON."""
        ...

    def message_broadcast(self, stream_id: str, frame: Frame) -> None:
        """A control message (``progress``, ``status``, ``stream_error``) was sent."""
        ...

    def stream_closed(
        self,
        stream_id: str,
        reason: str,
        summary: Mapping[str, Any] | None,
        error: Frame | None,
    ) -> None:
        """The stream was closed; ``error`` is the ``stream_error`` frame sent first."""
        ...


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
    """The outcome of :meth:`StreamingManager.register_client`.

    The client receives ``replayed`` chunks (all with ``seq <= seq``), then the live
    chunks, from ``seq + 1`` on.
    """

    stream_id: str
    client_id: str
    epoch: str
    seq: int
    """Sequence number of the stream's last chunk when the client was registered."""
    replayed: int
    gap: ReplayGap | None = None


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


# -- encoding ---------------------------------------------------------------------------


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``: the default chunk encoder.

    Uses pydantic-core's serializer (compiled, and a dependency already): besides JSON
    types it handles pydantic models, dataclasses, datetimes, UUIDs, enums and sets.
    Non-finite floats become ``null``. Raises on anything else.
    """
    return to_json(value, inf_nan_mode="null")


def error_details(error: BaseException | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable description of an error sent in ``stream_error`` messages."""
    if isinstance(error, Mapping):
        return dict(error)
    if isinstance(error, StageError):
        return error.to_dict()
    details: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
    code = getattr(error, "code", None)
    if isinstance(code, str):
        details["code"] = code
    return details


def _message(kind: str, **fields: Any) -> Frame:
    return encode_json({"type": kind, "v": PROTOCOL_VERSION, **fields})


def _error_message(stream_id: str, details: Mapping[str, Any]) -> Frame:
    try:
        return _message("stream_error", stream=stream_id, error=details)
    except Exception:  # details that are not JSON-serialisable: send their text
        safe = {
            str(k): v if isinstance(v, str | int | float | bool | None) else str(v)
            for k, v in details.items()
        }
        return _message("stream_error", stream=stream_id, error=safe)


# -- internal state ---------------------------------------------------------------------


@dataclass(slots=True)
class _Counters:
    messages_sent: int = 0
    bytes_sent: int = 0
    dropped: int = 0
    send_errors: int = 0
    disconnects: int = 0
    subscriptions: int = 0
    replay_hits: int = 0
    replay_misses: int = 0
    replayed: int = 0


class _Stream:
    __slots__ = (
        "blocking",
        "closed",
        "created_at",
        "epoch",
        "id",
        "id_json",
        "idle_timeout",
        "last_push",
        "metadata",
        "pending_error",
        "pressure",
        "replay",
        "replay_bytes",
        "seq",
        "stats",
        "subscribers",
        "timer",
    )

    def __init__(
        self,
        stream_id: str,
        id_json: bytes,
        idle_timeout: float | None,
        metadata: Mapping[str, Any],
    ) -> None:
        self.id = stream_id
        self.id_json = id_json
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.subscribers: dict[str, _Subscriber] = {}
        self.blocking = 0
        self.replay: deque[tuple[int, Frame]] = deque()
        self.replay_bytes = 0
        self.closed = False
        self.idle_timeout = idle_timeout
        self.last_push = anyio.current_time()
        self.timer: anyio.CancelScope | None = None
        self.pending_error: StreamError | None = None
        self.pressure = False
        """A client queue is at least half full: the pusher should let drain tasks run."""
        self.stats = _Counters()
        self.metadata = dict(metadata)
        self.created_at = time.time()

    @property
    def first_buffered(self) -> int:
        return self.replay[0][0] if self.replay else self.seq + 1


class _Subscriber:
    """One client of one stream: its queue and the state of its drain task."""

    __slots__ = (
        "attached",
        "batch_send",
        "cancelled",
        "capacity",
        "client_id",
        "data_waiter",
        "direct",
        "done",
        "error_logged",
        "finishing",
        "flush_pending",
        "head",
        "inflight",
        "missed",
        "policy",
        "predecessor",
        "queue",
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
        stream: _Stream,
        client_id: str,
        transport: ClientTransport,
        policy: SlowConsumerPolicy,
        capacity: int,
    ) -> None:
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
        self.predecessor: _Subscriber | None = None
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
            out.append(
                _message("dropped", stream=self.stream.id, count=self.missed),
            )
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


# -- the manager ------------------------------------------------------------------------


class StreamingManager:
    """Owns streams and their clients: creation, fan-out, replay, limits, shutdown.

    Use it as an async context manager; it owns a task group (one drain task per client,
    one inactivity timer per stream)::

        async with StreamingManager(StreamingConfig(max_streams=10)) as mgr:
            sid = await mgr.create_stream("errors")
            await mgr.register_client(sid, "c1", transport)
            await mgr.push(sid, {"msg": "disk full"})
            await mgr.close_stream(sid, "completed")

    Leaving the block shuts the manager down: every stream is closed with reason
    ``shutdown`` and queued messages get up to ``shutdown_grace`` seconds to be delivered.

    Methods that change state are coroutines; queries are plain methods. Registration is
    atomic with respect to :meth:`push` (no suspension between taking the replay snapshot
    and attaching the client), which is what makes resumption gap-free. Like every anyio
    object, a manager belongs to its event loop: from a worker thread, call it through
    ``anyio.from_thread.run``.

    ``encoder`` turns chunk data into JSON bytes (default :func:`encode_json`); it is
    called once per chunk, whatever the number of clients.
    """

    def __init__(
        self,
        config: StreamingConfig | None = None,
        *,
        encoder: Callable[[Any], bytes] = encode_json,
    ) -> None:
        self.config = config if config is not None else StreamingConfig()
        self._encode = encoder
        self._streams: dict[str, _Stream] = {}
        self._closed: OrderedDict[str, str] = OrderedDict()
        self._clients: dict[str, set[str]] = {}
        self._tg: TaskGroup | None = None
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._busy = 0
        self._idle: anyio.Event | None = None
        self._draining: set[_Subscriber] = set()
        self._watchdog = anyio.CancelScope()
        self._last: dict[tuple[str, str], _Subscriber] = {}
        self._totals = _Counters()
        self._streams_created = 0
        self._streams_closed = 0
        self._observers: list[StreamObserver] = []
        self._flush: list[_Subscriber] = []
        """Idle clients with ``try_send`` that have frames queued by the current push;
        always empty while no push is running (flushed before every suspension)."""

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a StreamingManager can be started only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._state = "running"
        if self.config.send_timeout is not None:
            tg.start_soon(self._watch_sends, self.config.send_timeout)  # not in _busy
        _track(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            _retire(self)
            tg.cancel_scope.cancel()
            # The body's own exception, if any, propagates unchanged (not in a group).
            await tg.__aexit__(None, None, None)

    @property
    def running(self) -> bool:
        """True between entering the manager and the start of its shutdown."""
        return self._state == "running"

    async def shutdown(self, reason: str = "shutdown") -> None:
        """Close every stream (clients get ``stream_complete`` with ``reason``), then wait.

        Queued messages get up to ``shutdown_grace`` seconds to be delivered; drain tasks
        still running after that are cancelled. New streams are refused from the start of
        the shutdown (``shutting_down``). Safe to call more than once.
        """
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopping"
        for stream in list(self._streams.values()):
            self._close(stream, reason)
        with anyio.move_on_after(self.config.shutdown_grace):
            while self._busy:
                waiter = self._idle = anyio.Event()
                await waiter.wait()
        for sub in list(self._draining):
            sub.cancel()
        self._watchdog.cancel()
        self._state = "stopped"

    # -- streams ------------------------------------------------------------------------

    async def create_stream(
        self,
        stream_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        inactivity_timeout: float | EllipsisType | None = ...,
        epoch: str | None = None,
    ) -> str:
        """Open a stream and return its id (generated when ``stream_id`` is None).

        ``metadata`` is kept with the stream (e.g. pipeline, run id, owner) and returned
        by :meth:`info`. ``inactivity_timeout`` overrides the configured one for this
        stream (None disables it). A new stream gets a new random epoch, even when it
        reuses the id of a closed one; ``epoch`` gives it a chosen one instead (a mirror
        of another node's stream keeps that stream's epoch, so clients may resume on
        either node).

        Raises :class:`StreamError`: ``stream_exists``, ``too_many_streams``,
        ``invalid_stream_id``, ``not_running``, ``shutting_down``.
        """
        self._check_running()
        if stream_id is None:
            stream_id = secrets.token_hex(8)
            while stream_id in self._streams:  # pragma: no cover - 64 random bits
                stream_id = secrets.token_hex(8)
        elif not isinstance(stream_id, str) or not 1 <= len(stream_id) <= 256:
            raise StreamError(
                "a stream id must be a string of 1 to 256 characters",
                code="invalid_stream_id",
                stream_id=str(stream_id)[:256],
            )
        if stream_id in self._streams:
            raise StreamError(
                f"stream {stream_id!r} already exists", code="stream_exists", stream_id=stream_id
            )
        if len(self._streams) >= self.config.max_streams:
            raise StreamError(
                f"cannot open stream {stream_id!r}: the limit of "
                f"{self.config.max_streams} open streams is reached",
                code="too_many_streams",
                stream_id=stream_id,
            )
        try:
            id_json = encode_json(stream_id)
        except Exception as exc:
            raise StreamError(
                "a stream id must be valid Unicode text",
                code="invalid_stream_id",
                stream_id=repr(stream_id),
            ) from exc
        timeout = (
            self.config.inactivity_timeout
            if isinstance(inactivity_timeout, EllipsisType)
            else inactivity_timeout
        )
        stream = _Stream(stream_id, id_json, timeout, metadata or {})
        if epoch is not None:
            stream.epoch = epoch
        self._streams[stream_id] = stream
        self._closed.pop(stream_id, None)
        self._streams_created += 1
        if timeout is not None:
            stream.timer = anyio.CancelScope()
            self._start(self._watch_idle, stream)
        log.debug("stream %r opened (epoch %s)", stream_id, stream.epoch)
        for observer in self._observers:
            self._observe(observer.stream_opened, stream_id, stream.epoch, stream.metadata)
        return stream_id

    async def close_stream(
        self,
        stream_id: str,
        reason: str = "completed",
        *,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """Close a stream: each client receives ``stream_complete`` (with ``reason``).

        Messages already queued are delivered first; the call does not wait for that.
        A push blocked on a full queue fails with ``stream_closed``. Raises
        :class:`StreamError` ``unknown_stream`` or ``stream_closed``.
        """
        self._close(self._open_stream(stream_id), reason, summary=summary)

    async def handle_stream_error(
        self,
        stream_id: str,
        error: BaseException | Mapping[str, Any],
        *,
        terminate: bool = True,
    ) -> None:
        """Tell every client of the stream about ``error`` (a ``stream_error`` message).

        Unless ``terminate`` is False the stream is then closed with reason ``error``.
        ``error`` is an exception (described by :func:`error_details`) or a ready dict.
        Exception messages reach clients: sanitise them first if they may hold secrets.
        """
        stream = self._open_stream(stream_id)
        frame = _error_message(stream.id, error_details(error))
        if terminate:
            self._close(stream, "error", first=frame)
        else:
            await self._broadcast(stream, frame)

    # -- clients ------------------------------------------------------------------------

    async def register_client(
        self,
        stream_id: str,
        client_id: str,
        transport: ClientTransport,
        *,
        since: int | None = None,
        epoch: str | None = None,
        ref: str | int | None = None,
        slow_consumer: SlowConsumerPolicy | None = None,
        queue_size: int | None = None,
    ) -> Subscription:
        """Subscribe ``transport`` (known as ``client_id``) to a stream.

        The client first receives ``subscribed`` (with ``ref``, the id of the request that
        asked for it). With ``since=N`` it then receives every buffered chunk after ``N``,
        then live chunks: no gap, no duplicate. If some chunks after ``N`` are no longer
        buffered, or ``epoch`` is not the stream's current epoch (its history is gone), a
        ``replay_gap`` message says so and names the first available ``seq``; the client
        then receives every buffered chunk. With ``since=None`` only live chunks follow.

        ``slow_consumer`` and ``queue_size`` override the configured policy and queue size
        for this client. Raises :class:`StreamError`: ``unknown_stream``,
        ``stream_closed``, ``client_exists``, ``too_many_clients``.
        """
        stream = self._open_stream(stream_id)
        if client_id in stream.subscribers:
            raise StreamError(
                f"client {client_id!r} is already registered to stream {stream_id!r}",
                code="client_exists",
                stream_id=stream_id,
                client_id=client_id,
            )
        if len(stream.subscribers) >= self.config.max_clients_per_stream:
            raise StreamError(
                f"stream {stream_id!r} has reached its limit of "
                f"{self.config.max_clients_per_stream} clients",
                code="too_many_clients",
                stream_id=stream_id,
                client_id=client_id,
            )
        if since is not None and since < 0:
            raise ValueError("since must be >= 0")
        if queue_size is not None and queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        # From here to the end, nothing suspends: the snapshot of the replay buffer and
        # the attachment to the live fan-out happen between the same two pushes.
        policy = slow_consumer or self.config.slow_consumer
        sub = _Subscriber(
            stream, client_id, transport, policy, queue_size or self.config.client_queue_size
        )
        key = (stream.id, client_id)
        previous = self._last.get(key)
        if previous is not None and not previous.done.is_set():
            sub.predecessor = previous
        self._last[key] = sub
        gap: ReplayGap | None = None
        replay: list[Frame] = []
        if since is not None:
            first = stream.first_buffered
            reason: Literal["evicted", "epoch_changed", "ahead"] | None = None
            after = since
            if epoch is not None and epoch != stream.epoch:
                reason, after = "epoch_changed", 0
            elif since > stream.seq:
                reason, after = "ahead", 0
            elif after + 1 < first:
                reason = "evicted"
            if reason is not None:
                gap = ReplayGap(since, first, reason)
            skip = max(0, after + 1 - first)
            replay = [frame for _, frame in islice(stream.replay, skip, None)]
            self._count(stream, "replay_misses" if gap else "replay_hits")
            self._count(stream, "replayed", len(replay))
        sub.head.append(
            _message(
                "subscribed",
                stream=stream.id,
                epoch=stream.epoch,
                seq=stream.seq,
                replayed=len(replay),
                ref=ref,
            )
        )
        if gap is not None:
            sub.head.append(
                _message(
                    "replay_gap",
                    stream=stream.id,
                    since=gap.since,
                    first_available=gap.first_available,
                    reason=gap.reason,
                    epoch=stream.epoch,
                )
            )
        sub.head.extend(replay)
        stream.subscribers[client_id] = sub
        if policy == "block":
            stream.blocking += 1
        self._clients.setdefault(client_id, set()).add(stream.id)
        self._count(stream, "subscriptions")
        self._draining.add(sub)
        self._start(self._drain, sub)
        if sub.direct is not None and sub.predecessor is None:
            # `subscribed` (and the replay) now rather than when the drain task first runs
            self._send_head(sub)
        return Subscription(stream.id, client_id, stream.epoch, stream.seq, len(replay), gap)

    async def deregister_client(
        self,
        stream_id: str,
        client_id: str,
        *,
        notify: bool = True,
        ref: str | int | None = None,
    ) -> None:
        """Unsubscribe a client from a stream; its queued messages are discarded.

        With ``notify`` (an ``unsubscribe`` request) the client receives ``unsubscribed``
        (with ``ref``) as the last message of the stream; without it (the connection is
        gone) nothing more is sent and a send in progress is cancelled. Raises
        :class:`StreamError` ``unknown_stream``, ``stream_closed`` or ``unknown_client``.
        """
        stream = self._open_stream(stream_id)
        sub = stream.subscribers.get(client_id)
        if sub is None:
            raise StreamError(
                f"client {client_id!r} is not registered to stream {stream_id!r}",
                code="unknown_client",
                stream_id=stream_id,
                client_id=client_id,
            )
        self._detach(sub)
        sub.head.clear()
        sub.queue.clear()
        sub.missed = 0
        if notify:
            sub.tail.append(_message("unsubscribed", stream=stream.id, ref=ref))
            sub.finishing = True
            sub.wake()
        else:
            sub.cancel()

    async def deregister_all(self, client_id: str) -> list[str]:
        """Remove a client from every stream, silently (its connection closed).

        Returns the ids of the streams it was registered to. Never raises.
        """
        streams = sorted(self._clients.get(client_id, ()))
        for stream_id in streams:
            stream = self._streams.get(stream_id)
            sub = stream.subscribers.get(client_id) if stream is not None else None
            if sub is not None:
                self._detach(sub)
                sub.queue.clear()
                sub.cancel()
        self._clients.pop(client_id, None)
        return streams

    # -- data ---------------------------------------------------------------------------

    async def push(self, stream_id: str, data: Any) -> int:
        """Send a chunk to every client of the stream; returns its sequence number.

        ``data`` is encoded once (``stream_update`` message) and shared by all clients.
        Returns without waiting for delivery, except for clients with the ``block`` policy:
        while one of them has a full queue, ``push`` waits for room.

        Raises :class:`StreamError`: ``unknown_stream``, ``stream_closed``,
        ``unencodable_chunk``, and ``client_send_failed`` (policy ``raise``; the chunk is
        then not published).
        """
        stream = self._open_stream(stream_id)
        self._raise_pending(stream)
        payload = self._encode_chunk(stream, data)
        if stream.blocking:
            await self._wait_for_room(stream)
        seq = self._publish(stream, payload)
        self._flush_direct()
        if stream.pressure:
            await self._yield_to_clients(stream)
        return seq

    async def push_many(self, stream_id: str, chunks: Iterable[Any]) -> int:
        """Push several chunks in order (one ``seq`` each); returns the last ``seq``.

        Cheaper than repeated :meth:`push` for a batch. Returns the stream's current
        ``seq`` if ``chunks`` is empty. Raises as :meth:`push`; chunks before a failing
        one are published.
        """
        stream = self._open_stream(stream_id)
        self._raise_pending(stream)
        seq = stream.seq
        try:
            for data in chunks:
                payload = self._encode_chunk(stream, data)
                if stream.blocking:
                    await self._wait_for_room(stream)
                elif stream.closed:
                    raise self._gone(stream.id)
                seq = self._publish(stream, payload)
                if stream.pressure:
                    self._flush_direct()
                    await self._yield_to_clients(stream)
        finally:
            # Idle clients get the frames of the whole call in one write.
            self._flush_direct()
        return seq

    async def push_encoded(self, stream_id: str, payload: bytes, *, seq: int | None = None) -> int:
        """Publish a chunk whose data is already encoded JSON; returns its ``seq``.

        For relays (a bridge mirroring another node's stream): ``payload`` is used as is,
        and ``seq`` (default: the next one) numbers the chunk. A ``seq`` at or below the
        stream's current one is a chunk already published: it is ignored, and the
        current ``seq`` is returned. A ``seq`` further ahead leaves a gap (clients that
        resume from before it are told, as for chunks evicted from the replay buffer).
        Raises as :meth:`push`.
        """
        stream = self._open_stream(stream_id)
        self._raise_pending(stream)
        if seq is not None and seq <= stream.seq:
            return stream.seq
        if stream.blocking:
            await self._wait_for_room(stream)
        if seq is not None:
            stream.seq = max(stream.seq, seq - 1)
        published = self._publish(stream, payload)
        self._flush_direct()
        if stream.pressure:
            await self._yield_to_clients(stream)
        return published

    async def broadcast_frame(self, stream_id: str, frame: Frame) -> None:
        """Send an already encoded control message (``progress``, ``status``,
        ``stream_error``: not a chunk) to every client of the stream.

        For relays: the frame is what another manager produced for the same stream.
        Raises :class:`StreamError` ``unknown_stream`` or ``stream_closed``.
        """
        await self._broadcast(self._open_stream(stream_id), frame)

    def add_observer(self, observer: StreamObserver) -> None:
        """Have ``observer`` see every stream event from now on (see :class:`StreamObserver`)."""
        self._observers.append(observer)

    def remove_observer(self, observer: StreamObserver) -> None:
        """Stop notifying ``observer`` (no error if it was not registered)."""
        if observer in self._observers:
            self._observers.remove(observer)

    async def forward_event(self, stream_id: str, event: Event) -> None:
        """Forward a pipeline control event to the stream's clients.

        :class:`~headwater.Progress` becomes a ``progress`` message,
        :class:`~headwater.Status` a ``status`` message, :class:`~headwater.ErrorEvent` a
        ``stream_error`` message (the stream stays open), and :class:`~headwater.Complete`
        closes the stream with the run's final state as reason (``succeeded``, ``failed``,
        ``cancelled``) and its summary. Raises as :meth:`close_stream`.
        """
        stream = self._open_stream(stream_id)
        if isinstance(event, Complete):
            self._close(stream, event.state, summary=event.summary)
            return
        if isinstance(event, Progress):
            frame = _message(
                "progress",
                stream=stream.id,
                stage=event.stage,
                done=event.done,
                total=event.total,
                message=event.message,
            )
        elif isinstance(event, Status):
            frame = _message(
                "status",
                stream=stream.id,
                state=event.state,
                stage=event.stage,
                message=event.message,
            )
        elif isinstance(event, ErrorEvent):
            details = {"stage": event.stage, **event.error, "handled": event.handled}
            frame = _error_message(stream.id, details)
        else:  # pragma: no cover - Event is a closed union
            raise TypeError(f"not a control event: {event!r}")
        await self._broadcast(stream, frame)

    async def forward_events(self, stream_id: str, events: AsyncIterable[Event]) -> None:
        """Forward every event of ``events`` (e.g. ``RunHandle.events()``) to the stream.

        Returns when the events end (the final ``Complete`` closes the stream) or when the
        stream is closed by someone else.
        """
        async for event in events:
            try:
                await self.forward_event(stream_id, event)
            except StreamError as exc:
                if exc.code in ("stream_closed", "unknown_stream"):
                    return
                raise

    # -- queries ------------------------------------------------------------------------

    def active_streams(self) -> list[str]:
        """Ids of the open streams, oldest first."""
        return list(self._streams)

    def has_stream(self, stream_id: str) -> bool:
        """True if a stream with this id is open."""
        return stream_id in self._streams

    def client_count(self, stream_id: str) -> int:
        """Number of clients registered to a stream (raises ``unknown_stream``...)."""
        return len(self._open_stream(stream_id).subscribers)

    def subscriptions(self, client_id: str) -> list[str]:
        """Ids of the open streams a client is registered to."""
        return sorted(self._clients.get(client_id, ()))

    def info(self, stream_id: str) -> StreamInfo:
        """A snapshot of an open stream: epoch, last ``seq``, clients, metadata."""
        stream = self._open_stream(stream_id)
        return StreamInfo(
            stream_id=stream.id,
            epoch=stream.epoch,
            seq=stream.seq,
            first_buffered=stream.first_buffered,
            clients=len(stream.subscribers),
            created_at=stream.created_at,
            idle_seconds=anyio.current_time() - stream.last_push,
            metadata=dict(stream.metadata),
        )

    def stats(self, stream_id: str) -> dict[str, Any]:
        """Counters of an open stream, for metrics.

        ``clients`` (now), ``seq`` (chunks pushed), ``messages_sent`` and ``bytes_sent``
        (over all clients), ``dropped`` (by ``drop_oldest``), ``send_errors``,
        ``disconnects`` (slow consumers), ``subscriptions`` (ever), ``replay_hits`` and
        ``replay_misses`` (resumptions served fully / with a gap), ``replayed`` (chunks
        sent from the buffer), ``buffered`` and ``buffered_bytes`` (replay buffer now),
        ``queued`` (messages waiting in client queues now), plus ``stream`` and ``epoch``.
        """
        stream = self._open_stream(stream_id)
        c = stream.stats
        return {
            "stream": stream.id,
            "epoch": stream.epoch,
            "clients": len(stream.subscribers),
            "seq": stream.seq,
            "messages_sent": c.messages_sent,
            "bytes_sent": c.bytes_sent,
            "dropped": c.dropped,
            "send_errors": c.send_errors,
            "disconnects": c.disconnects,
            "subscriptions": c.subscriptions,
            "replay_hits": c.replay_hits,
            "replay_misses": c.replay_misses,
            "replayed": c.replayed,
            "buffered": len(stream.replay),
            "buffered_bytes": stream.replay_bytes,
            "queued": sum(len(s.queue) for s in stream.subscribers.values()),
        }

    def totals(self) -> dict[str, int]:
        """Manager-wide counters; they only grow (closed streams included), except
        ``streams`` and ``clients`` which are current values."""
        t = self._totals
        return {
            "streams": len(self._streams),
            "clients": sum(len(s.subscribers) for s in self._streams.values()),
            "streams_created": self._streams_created,
            "streams_closed": self._streams_closed,
            "messages_sent": t.messages_sent,
            "bytes_sent": t.bytes_sent,
            "dropped": t.dropped,
            "send_errors": t.send_errors,
            "disconnects": t.disconnects,
            "subscriptions": t.subscriptions,
            "replay_hits": t.replay_hits,
            "replay_misses": t.replay_misses,
            "replayed": t.replayed,
        }

    def metrics(self) -> dict[str, Any]:
        """``{"totals": totals(), "streams": [stats of every open stream]}`` for the
        metrics registry; safe to call from another thread (an exporter's)."""
        for _ in range(5):
            try:
                totals = self.totals()
                streams = []
                for stream_id in list(self._streams):
                    try:
                        streams.append(self.stats(stream_id))
                    except StreamError:  # closed meanwhile
                        continue
                return {"totals": totals, "streams": streams}
            except RuntimeError:  # a dict changed size under us (another thread): again
                continue
        return {"totals": {}, "streams": []}  # pragma: no cover - five resizes in a row

    # -- internals: lookup ----------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state == "running":
            return
        if self._state == "new":
            raise StreamError(
                "the StreamingManager is not started: use `async with StreamingManager(...)`",
                code="not_running",
            )
        raise StreamError("the StreamingManager is shutting down", code="shutting_down")

    def _gone(self, stream_id: str) -> StreamError:
        reason = self._closed.get(stream_id)
        if reason is not None:
            return StreamError(
                f"stream {stream_id!r} is closed ({reason})",
                code="stream_closed",
                stream_id=stream_id,
            )
        return StreamError(f"no stream {stream_id!r}", code="unknown_stream", stream_id=stream_id)

    def _open_stream(self, stream_id: str) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_running()
            raise self._gone(stream_id)
        return stream

    def _raise_pending(self, stream: _Stream) -> None:
        error = stream.pending_error
        if error is not None:
            stream.pending_error = None
            raise error

    def _encode_chunk(self, stream: _Stream, data: Any) -> bytes:
        try:
            return self._encode(data)
        except Exception as exc:
            raise StreamError(
                f"cannot encode a chunk of stream {stream.id!r} as JSON: {exc}",
                code="unencodable_chunk",
                stream_id=stream.id,
            ) from exc

    def _count(self, stream: _Stream, name: str, n: int = 1) -> None:
        setattr(stream.stats, name, getattr(stream.stats, name) + n)
        setattr(self._totals, name, getattr(self._totals, name) + n)

    # -- internals: fan-out ---------------------------------------------------------------

    async def _wait_for_room(self, stream: _Stream) -> None:
        """Wait until no ``block`` client of the stream has a full queue."""
        while True:
            if stream.closed:
                raise self._gone(stream.id)
            blocked = next(
                (s for s in stream.subscribers.values() if s.policy == "block" and s.full),
                None,
            )
            if blocked is None:
                return
            if self._flush:  # about to suspend: write what this push left for idle clients
                self._flush_direct()
                continue
            waiter = blocked.space_waiter
            if waiter is None:
                waiter = blocked.space_waiter = anyio.Event()
            await waiter.wait()

    def _publish(self, stream: _Stream, payload: bytes) -> int:
        """Number, buffer and enqueue one chunk. Never suspends."""
        seq = stream.seq = stream.seq + 1
        frame = b'{"type":"stream_update","v":1,"stream":%b,"seq":%d,"data":%b}' % (
            stream.id_json,
            seq,
            payload,
        )
        stream.last_push = anyio.current_time()
        for observer in self._observers:
            self._observe(observer.chunk_published, stream.id, stream.epoch, seq, payload)
        config = self.config
        if config.replay_max_chunks:
            replay = stream.replay
            replay.append((seq, frame))
            stream.replay_bytes += len(frame)
            while replay and (
                len(replay) > config.replay_max_chunks
                or stream.replay_bytes > config.replay_max_bytes
            ):
                stream.replay_bytes -= len(replay.popleft()[1])
        self._enqueue(stream, frame)
        return seq

    async def _broadcast(self, stream: _Stream, frame: Frame) -> None:
        """Enqueue a control message for every client, under the slow-consumer policy."""
        for observer in self._observers:
            self._observe(observer.message_broadcast, stream.id, frame)
        if stream.blocking:
            await self._wait_for_room(stream)
        self._enqueue(stream, frame)
        self._flush_direct()
        if stream.pressure:
            await self._yield_to_clients(stream)

    async def _yield_to_clients(self, stream: _Stream) -> None:
        """Let the drain tasks run before the next push.

        A pusher that never suspends would fill every queue, fast clients' included,
        before any drain task runs. Once a queue is half full, the pusher yields once per
        push: clients that keep up empty their queues, and only those that really lag
        reach the slow-consumer policy.
        """
        stream.pressure = False
        await anyio.lowlevel.checkpoint()

    def _enqueue(self, stream: _Stream, frame: Frame) -> None:
        slow: list[_Subscriber] | None = None
        for sub in stream.subscribers.values():
            queue = sub.queue
            if len(queue) >= sub.capacity:
                if sub.policy == "drop_oldest":
                    queue.popleft()
                    sub.missed += 1
                    self._count(stream, "dropped")
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
                    # idle: written by _flush_direct at the end of this push
                    sub.flush_pending = True
                    self._flush.append(sub)
        if slow:
            for sub in slow:
                self._disconnect(sub)

    def _flush_direct(self) -> None:
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
            self._send_direct(sub, sub.queue)

    def _send_head(self, sub: _Subscriber) -> None:
        """Send a new client's first messages (``subscribed``, replay) without waiting."""
        self._send_direct(sub, sub.head)

    def _send_direct(self, sub: _Subscriber, frames: deque[Frame]) -> None:
        """Write ``frames`` (the client's queue or head) with ``try_send`` while it accepts.

        What it declines stays in ``frames`` for the drain task, which is woken.
        """
        direct = sub.direct
        assert direct is not None
        limit = self.config.coalesce_max
        stream = sub.stream
        while frames:
            whole = len(frames) <= limit
            batch = list(frames) if whole else list(islice(frames, limit))
            error: Exception | None = None
            try:
                accepted = bool(direct(batch))
            except Exception as exc:  # these frames are lost, as with a failed send
                accepted, error = True, exc
            if not accepted:
                sub.wake()
                return
            if whole:
                frames.clear()
            else:
                for _ in batch:
                    frames.popleft()
            sub.wake_pushers()
            if error is not None:
                if not self._send_failed(sub, error, len(batch)):
                    sub.cancel()
                    return
                continue
            self._count(stream, "messages_sent", len(batch))
            self._count(stream, "bytes_sent", sum(map(len, batch)))

    def _disconnect(self, sub: _Subscriber) -> None:
        stream = sub.stream
        log.info(
            "client %r of stream %r is too slow (%d messages queued): disconnecting",
            sub.client_id,
            stream.id,
            len(sub.queue),
        )
        self._count(stream, "disconnects")
        self._detach(sub)
        sub.queue.clear()
        sub.cancel()
        self._start(
            self._close_transport,
            sub.transport,
            CLOSE_SLOW_CONSUMER,
            f"too slow to keep up with stream {stream.id}",
        )

    def _detach(self, sub: _Subscriber) -> None:
        """Remove a client from its stream's fan-out (its drain task may go on)."""
        if not sub.attached:
            return
        sub.attached = False
        stream = sub.stream
        if stream.subscribers.get(sub.client_id) is sub:
            del stream.subscribers[sub.client_id]
            if sub.policy == "block":
                stream.blocking -= 1
        streams = self._clients.get(sub.client_id)
        if streams is not None:
            streams.discard(stream.id)
            if not streams:
                del self._clients[sub.client_id]
        sub.wake_pushers()

    def _close(
        self,
        stream: _Stream,
        reason: str,
        *,
        summary: Mapping[str, Any] | None = None,
        first: Frame | None = None,
    ) -> None:
        """Close a stream now; its clients get ``first`` (if any) and ``stream_complete``."""
        if stream.closed:
            return
        stream.closed = True
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        if self.config.remember_closed:
            self._closed[stream.id] = reason
            while len(self._closed) > self.config.remember_closed:
                self._closed.popitem(last=False)
        if stream.timer is not None:
            stream.timer.cancel()
        self._streams_closed += 1
        try:
            complete = _message(
                "stream_complete",
                stream=stream.id,
                reason=reason,
                last_seq=stream.seq,
                summary=dict(summary) if summary is not None else None,
            )
        except Exception:  # a summary that is not JSON-serialisable is left out
            log.warning("summary of stream %r is not JSON-serialisable", stream.id)
            complete = _message(
                "stream_complete", stream=stream.id, reason=reason, last_seq=stream.seq
            )
        for observer in self._observers:
            self._observe(observer.stream_closed, stream.id, reason, summary, first)
        for sub in list(stream.subscribers.values()):
            self._detach(sub)
            if first is not None:
                sub.tail.append(first)
            sub.tail.append(complete)
            sub.finishing = True
            sub.wake()
        stream.replay.clear()
        stream.replay_bytes = 0
        log.debug("stream %r closed (%s)", stream.id, reason)

    def _observe(self, method: Callable[..., None], *args: Any) -> None:
        """Call an observer method; its exceptions are logged, never propagated."""
        try:
            method(*args)
        except Exception:
            log.exception("stream observer %r raised; ignored", method)

    # -- internals: tasks -----------------------------------------------------------------

    def _start(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        tg = self._tg
        if tg is None:  # pragma: no cover - guarded by _check_running
            raise RuntimeError("the StreamingManager is not started")
        self._busy += 1
        tg.start_soon(self._tracked, func, *args)

    async def _tracked(self, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await func(*args)
        finally:
            self._busy -= 1
            if not self._busy and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def _watch_idle(self, stream: _Stream) -> None:
        assert stream.timer is not None
        assert stream.idle_timeout is not None
        timeout = stream.idle_timeout
        with stream.timer:
            while True:
                remaining = stream.last_push + timeout - anyio.current_time()
                if remaining <= 0:
                    log.info("stream %r inactive for %gs: closing", stream.id, timeout)
                    self._close(stream, "inactive")
                    return
                await anyio.sleep(remaining)

    async def _drain(self, sub: _Subscriber) -> None:
        """The client's own task: sends its queued messages, in order, until the end."""
        try:
            while True:
                with sub.scope:
                    await self._drain_until_done(sub)
                    return
                # The scope was cancelled: by the manager (deregistration, slow client,
                # shutdown), or by the watchdog because a send took too long.
                if sub.cancelled or not sub.timed_out:
                    return
                sub.timed_out = False
                sub.sending_since = None
                lost, sub.inflight = sub.inflight, 0
                if not self._send_failed(sub, TimeoutError(), lost):
                    return
                sub.scope = anyio.CancelScope()
        finally:
            self._draining.discard(sub)
            sub.data_waiter = None
            sub.sending_since = None
            sub.done.set()
            key = (sub.stream.id, sub.client_id)
            if self._last.get(key) is sub:
                del self._last[key]

    async def _drain_until_done(self, sub: _Subscriber) -> None:
        if sub.predecessor is not None:
            # e.g. `unsubscribed` then `subscribed` again: keep them in order
            await sub.predecessor.done.wait()
            sub.predecessor = None
        limit = self.config.coalesce_max
        while True:
            frames = sub.take(limit)
            if not frames:
                if sub.finishing:
                    return
                waiter = sub.data_waiter = anyio.Event()
                await waiter.wait()
                continue
            if not await self._send(sub, frames):
                return

    async def _send(self, sub: _Subscriber, frames: list[Frame]) -> bool:
        """Send frames to one client; False when the client must stop receiving.

        No cancel scope per send (they cost more than the send itself): the start time is
        recorded and :meth:`_watch_sends` cancels the client's scope if it gets too old.
        """
        sent = nbytes = 0
        sub.inflight = len(frames)
        sub.sending_since = anyio.current_time()
        try:
            try:
                if sub.batch_send is not None and len(frames) > 1:
                    await sub.batch_send(frames)
                    sent, nbytes = len(frames), sum(map(len, frames))
                else:
                    send = sub.transport.send
                    for frame in frames:
                        await send(frame)
                        sent += 1
                        nbytes += len(frame)
                        sub.inflight -= 1
            finally:
                sub.sending_since = None
                if sent:
                    self._count(sub.stream, "messages_sent", sent)
                    self._count(sub.stream, "bytes_sent", nbytes)
        except Exception as exc:
            sub.inflight = 0
            return self._send_failed(sub, exc, len(frames) - sent)
        sub.inflight = 0
        return True

    async def _watch_sends(self, limit: float) -> None:
        """Cancel sends older than ``limit``; sleeps until the oldest one would expire."""
        with self._watchdog:
            while True:
                now = anyio.current_time()
                wake = now + limit
                for sub in self._draining:
                    since = sub.sending_since
                    if since is None or sub.timed_out:
                        continue
                    if now - since >= limit:
                        sub.timed_out = True
                        sub.scope.cancel()
                    else:
                        wake = min(wake, since + limit)
                await anyio.sleep(wake - now)

    def _send_failed(self, sub: _Subscriber, exc: Exception, lost: int) -> bool:
        stream = sub.stream
        self._count(stream, "send_errors")
        what = (
            f"timed out after {self.config.send_timeout:g}s"
            if isinstance(exc, TimeoutError)
            else f"failed: {type(exc).__name__}: {exc}"
        )
        policy = self.config.on_send_error
        if policy == "log_and_continue":
            log.log(
                logging.DEBUG if sub.error_logged else logging.WARNING,
                "send to client %r of stream %r %s (%d message(s) lost)",
                sub.client_id,
                stream.id,
                what,
                lost,
            )
            sub.error_logged = True
            return True
        log.warning(
            "send to client %r of stream %r %s: deregistering it", sub.client_id, stream.id, what
        )
        self._detach(sub)
        self._start(self._close_transport, sub.transport, CLOSE_SEND_FAILED, f"send {what}")
        if policy == "raise" and not stream.closed and stream.pending_error is None:
            error = StreamError(
                f"send to client {sub.client_id!r} of stream {stream.id!r} {what}",
                code="client_send_failed",
                stream_id=stream.id,
                client_id=sub.client_id,
            )
            error.__cause__ = exc
            stream.pending_error = error
        return False

    async def _close_transport(self, transport: ClientTransport, code: str, reason: str) -> None:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            try:
                await transport.close(code, reason)
            except Exception:
                log.debug("closing a client transport failed", exc_info=True)


# -- metrics ----------------------------------------------------------------------------

_RETIRED_KEYS: Final = (
    "streams_created",
    "streams_closed",
    "messages_sent",
    "bytes_sent",
    "dropped",
    "send_errors",
    "disconnects",
    "subscriptions",
    "replay_hits",
    "replay_misses",
    "replayed",
)
"""Counters of :meth:`StreamingManager.totals` (the rest are current values)."""

_metrics_lock = threading.Lock()
_live_managers: dict[int, StreamingManager] = {}
_retired: dict[str, int] = dict.fromkeys(_RETIRED_KEYS, 0)


def _track(manager: StreamingManager) -> None:
    """A manager started: include it in the ``streams`` entry of metrics snapshots."""
    with _metrics_lock:
        _live_managers[id(manager)] = manager
    metrics_registry().add_source("streams", streams_metrics)


def _retire(manager: StreamingManager) -> None:
    """A manager stopped: keep its counters (they must never go down), forget it."""
    totals = manager.totals()
    with _metrics_lock:
        if _live_managers.pop(id(manager), None) is None:
            return
        for key in _RETIRED_KEYS:
            _retired[key] += totals[key]


def streams_metrics() -> dict[str, Any]:
    """The ``streams`` entry of metrics snapshots, over every manager of the process.

    ``totals``: :meth:`StreamingManager.totals` summed over the running managers plus the
    counters of stopped ones (counters never go down); ``streams``: the
    :meth:`StreamingManager.stats` of every open stream. Safe to call from any thread.
    """
    with _metrics_lock:
        managers = list(_live_managers.values())
        totals: dict[str, int] = {"streams": 0, "clients": 0, **_retired}
    streams: list[dict[str, Any]] = []
    for manager in managers:
        figures = manager.metrics()
        for key, value in figures["totals"].items():
            totals[key] = totals.get(key, 0) + value
        streams.extend(figures["streams"])
    return {"totals": totals, "streams": streams}
