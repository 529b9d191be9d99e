"""The streaming manager: the public facade over streams, clients and their delivery.

:class:`StreamingManager` opens and closes streams, registers clients, publishes chunks
and control messages, and answers queries. The work is done by the table of streams
(:mod:`.stream_table`), the per-stream state (:mod:`.stream_state`: numbering and
replay), the per-client delivery (:mod:`.delivery`: queues, policies, drain tasks) and the
fan-out engine (:mod:`.fanout`); frames come from :mod:`.wire`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from types import EllipsisType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio

from ..events import Complete, Event
from . import wire
from .config import SlowConsumerPolicy, StreamError, StreamingConfig
from .delivery import ClientDelivery, ClientTransport
from .fanout import Fanout
from .metrics_source import streams_metrics_of

if TYPE_CHECKING:
    from ..metrics import MetricsRegistry
from .observers import StreamObserver
from .stream_state import Counters, StreamInfo, StreamState, Subscription
from .stream_table import StreamTable
from .wire import Frame, encode_json, error_details

__all__ = ["StreamingManager"]

log = logging.getLogger("headwater.streaming")


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
    called once per chunk, whatever the number of clients. ``metrics`` is the engine's
    :class:`~headwater.core.metrics.MetricsRegistry` whose ``streams`` entry counts this
    manager while it runs (a server passes its engine's; None: counted nowhere).
    """

    def __init__(
        self,
        config: StreamingConfig | None = None,
        *,
        encoder: Callable[[Any], bytes] = encode_json,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self.config = config if config is not None else StreamingConfig()
        self._metrics = metrics
        self._encode = encoder
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._totals = Counters()
        self._observers: list[StreamObserver] = []
        self._table = StreamTable(self.config, self._totals, self._observers)
        self._streams = self._table.streams
        self._fanout = Fanout(self.config, self._observers, self._table.gone)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a StreamingManager can be started only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._fanout.run_in(tg)
        self._state = "running"
        if self._metrics is not None:
            streams_metrics_of(self._metrics).track(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._fanout.tg
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            if self._metrics is not None:
                streams_metrics_of(self._metrics).retire(self)
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
            self._table.close(stream, reason)
        with anyio.move_on_after(self.config.shutdown_grace):
            await self._fanout.wait_idle()
        self._fanout.stop()
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
        timeout = (
            self.config.inactivity_timeout
            if isinstance(inactivity_timeout, EllipsisType)
            else inactivity_timeout
        )
        stream = self._table.open(stream_id, metadata or {}, timeout, epoch)
        if timeout is not None:
            stream.timer = anyio.CancelScope()
            self._fanout.start(stream.watch_idle, self._table.close)
        return stream.id

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
        self._table.close(self._open_stream(stream_id), reason, summary=summary)

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
        frame = wire.stream_error(stream.id, error_details(error), lenient=True)
        if terminate:
            self._table.close(stream, "error", first=frame)
        else:
            await self._fanout.broadcast(stream, frame)

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
        for this client. The returned :class:`Subscription` follows the client: its
        ``is_active``, and ``wait_closed()`` which returns, with the reason, once the
        subscription ended (the transport's optional ``stream_closed`` is called then
        too). Raises :class:`StreamError`: ``unknown_stream``, ``stream_closed``,
        ``client_exists``, ``too_many_clients``.
        """
        stream = self._open_stream(stream_id)
        stream.check_new_client(client_id, self.config.max_clients_per_stream)
        if since is not None and since < 0:
            raise ValueError("since must be >= 0")
        if queue_size is not None and queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        # From here to the end, nothing suspends: the snapshot of the replay buffer and
        # the attachment to the live fan-out happen between the same two pushes.
        policy = slow_consumer or self.config.slow_consumer
        capacity = queue_size or self.config.client_queue_size
        sub = ClientDelivery(self._fanout, stream, client_id, transport, policy, capacity)
        subscription = stream.subscribe(sub, since, epoch, ref)
        self._fanout.attach(sub)
        return subscription

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
        stream.client(client_id).leave(notify, ref)

    async def replies_sent(self, client_id: str) -> None:
        """Wait until every reply queued for ``client_id`` has been handed to its transport.

        The replies are ``subscribed`` (queued by :meth:`register_client`) and
        ``unsubscribed`` (:meth:`deregister_client` with ``notify``); each goes out with
        its stream's messages, possibly after a replay or a previous subscription's last
        send. A server answers each request of a connection only after this returned for
        the previous ones, so that replies arrive in request order. A reply that will
        never be sent (its subscription was dropped, the connection closed) counts as
        sent. Returns at once when nothing is owed.
        """
        if client_id in self._fanout.owed:
            await self._fanout.replies_sent(client_id)

    async def deregister_all(self, client_id: str) -> list[str]:
        """Remove a client from every stream, silently (its connection closed).

        Returns the ids of the streams it was registered to. Never raises.
        """
        clients = self._fanout.clients
        streams = sorted(clients.get(client_id, ()))
        for stream_id in streams:
            stream = self._streams.get(stream_id)
            sub = stream.subscribers.get(client_id) if stream is not None else None
            if sub is not None:
                sub.leave(notify=False)
        clients.pop(client_id, None)
        return streams

    # -- data ---------------------------------------------------------------------------

    async def push(self, stream_id: str, data: Any) -> int:
        """Send a chunk to every client of the stream; returns its sequence number.

        ``data`` is encoded once (``stream_update`` message) and shared by all clients.
        Returns without waiting for delivery, except for clients with the ``block`` policy:
        while one of them has a full queue, ``push`` waits for room.

        Raises :class:`StreamError`: ``unknown_stream``, ``stream_closed``,
        ``unencodable_chunk``, and ``client_send_failed`` (policy ``raise``): a send to a
        client failed since the previous push, push_many or push_encoded of this stream
        started. Sends happen after the push that queued the message returned (in the
        client's task), so the failure of a message is raised by a later push, the first
        one that starts after the failure was detected; that push publishes nothing, and
        the failure is raised once.
        """
        stream = self._open_stream(stream_id)
        stream.raise_pending()
        return await self._fanout.push(stream, self._encode_chunk(stream, data))

    async def push_many(self, stream_id: str, chunks: Iterable[Any]) -> int:
        """Push several chunks in order (one ``seq`` each); returns the last ``seq``.

        Cheaper than repeated :meth:`push` for a batch. Returns the stream's current
        ``seq`` if ``chunks`` is empty. Raises as :meth:`push`; chunks before a failing
        one are published.
        """
        stream = self._open_stream(stream_id)
        stream.raise_pending()
        return await self._fanout.push_many(stream, chunks, self._encode_chunk)

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
        stream.raise_pending()
        if seq is not None and seq <= stream.seq:
            return stream.seq
        return await self._fanout.push(stream, payload, seq)

    async def broadcast_frame(self, stream_id: str, frame: Frame) -> None:
        """Send an already encoded control message (``progress``, ``status``,
        ``stream_error``: not a chunk) to every client of the stream.

        For relays: the frame is what another manager produced for the same stream.
        Raises :class:`StreamError` ``unknown_stream`` or ``stream_closed``.
        """
        await self._fanout.broadcast(self._open_stream(stream_id), frame)

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
            self._table.close(stream, event.state, summary=event.summary)
        else:
            await self._fanout.broadcast(stream, wire.event_frame(stream.id, event))

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
        return sorted(self._fanout.clients.get(client_id, ()))

    def info(self, stream_id: str) -> StreamInfo:
        """A snapshot of an open stream: epoch, last ``seq``, clients, metadata."""
        return self._open_stream(stream_id).info()

    def stats(self, stream_id: str) -> dict[str, Any]:
        """Counters of an open stream, for metrics.

        ``clients`` (now), ``seq`` (chunks pushed), ``messages_sent`` and ``bytes_sent``
        (over all clients), ``dropped`` (by ``drop_oldest``), ``send_errors``,
        ``disconnects`` (slow consumers), ``subscriptions`` (ever), ``replay_hits`` and
        ``replay_misses`` (resumptions served fully / with a gap), ``replayed`` (chunks
        sent from the buffer), ``buffered`` and ``buffered_bytes`` (replay buffer now),
        ``queued`` (messages waiting in client queues now), plus ``stream`` and ``epoch``.
        """
        return self._open_stream(stream_id).figures()

    def totals(self) -> dict[str, int]:
        """Manager-wide counters; they only grow (closed streams included), except
        ``streams`` and ``clients`` which are current values."""
        return {
            "streams": len(self._streams),
            "clients": self._table.client_count(),
            "streams_created": self._table.created,
            "streams_closed": self._table.closed_count,
            **self._totals.as_dict(),
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

    # -- internals ----------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state == "running":
            return
        if self._state == "new":
            raise StreamError(
                "the StreamingManager is not started: use `async with StreamingManager(...)`",
                code="not_running",
            )
        raise StreamError("the StreamingManager is shutting down", code="shutting_down")

    def _open_stream(self, stream_id: str) -> StreamState:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._check_running()
            raise self._table.gone(stream_id)
        return stream

    def _encode_chunk(self, stream: StreamState, data: Any) -> bytes:
        try:
            return self._encode(data)
        except Exception as exc:
            raise StreamError(
                f"cannot encode a chunk of stream {stream.id!r} as JSON: {exc}",
                code="unencodable_chunk",
                stream_id=stream.id,
            ) from exc
