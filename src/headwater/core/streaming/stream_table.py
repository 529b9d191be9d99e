"""The open streams of a manager: ids, limits, closing, and the memory of closed ids.

A :class:`StreamTable` opens streams (checking their ids and the ``max_streams`` limit),
finds them, closes them (clients get their last messages, observers are told) and
remembers the ids of the last ``remember_closed`` closed streams, so that a late push or
subscribe gets ``stream_closed`` rather than ``unknown_stream``.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .config import StreamError, StreamingConfig
from .observers import StreamObserver, notify
from .stream_state import Counters, StreamState
from .wire import Frame, encode_json

__all__ = ["StreamTable"]

log = logging.getLogger("headwater.streaming")


class StreamTable:
    """The streams of one manager, and the counters they add to (``totals``)."""

    def __init__(
        self, config: StreamingConfig, totals: Counters, observers: list[StreamObserver]
    ) -> None:
        self.config = config
        self.totals = totals
        self.observers = observers
        self.streams: dict[str, StreamState] = {}
        """The open streams, oldest first."""
        self.closed: OrderedDict[str, str] = OrderedDict()
        """The reasons of the last closed streams, by id."""
        self.created = 0
        self.closed_count = 0

    def open(
        self,
        stream_id: str | None,
        metadata: Mapping[str, Any],
        inactivity_timeout: float | None,
        epoch: str | None,
    ) -> StreamState:
        """Open a stream (see ``StreamingManager.create_stream``) and tell the observers.

        Raises StreamError ``invalid_stream_id``, ``stream_exists`` or ``too_many_streams``.
        """
        streams = self.streams
        config = self.config
        if stream_id is None:
            stream_id = secrets.token_hex(8)
            while stream_id in streams:  # pragma: no cover - 64 random bits
                stream_id = secrets.token_hex(8)
        elif not isinstance(stream_id, str) or not 1 <= len(stream_id) <= 256:
            raise StreamError(
                "a stream id must be a string of 1 to 256 characters",
                code="invalid_stream_id",
                stream_id=str(stream_id)[:256],
            )
        if stream_id in streams:
            raise StreamError(
                f"stream {stream_id!r} already exists", code="stream_exists", stream_id=stream_id
            )
        if len(streams) >= config.max_streams:
            raise StreamError(
                f"cannot open stream {stream_id!r}: the limit of "
                f"{config.max_streams} open streams is reached",
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
        stream = StreamState(
            stream_id,
            id_json,
            inactivity_timeout,
            metadata,
            totals=self.totals,
            replay_max_chunks=config.replay_max_chunks,
            replay_max_bytes=config.replay_max_bytes,
        )
        if epoch is not None:
            stream.epoch = epoch
        streams[stream_id] = stream
        self.closed.pop(stream_id, None)
        self.created += 1
        log.debug("stream %r opened (epoch %s)", stream_id, stream.epoch)
        for observer in self.observers:
            notify(observer.stream_opened, stream_id, stream.epoch, stream.metadata)
        return stream

    def gone(self, stream_id: str) -> StreamError:
        """The error for a stream that is not open: ``stream_closed`` or ``unknown_stream``."""
        reason = self.closed.get(stream_id)
        if reason is not None:
            return StreamError(
                f"stream {stream_id!r} is closed ({reason})",
                code="stream_closed",
                stream_id=stream_id,
            )
        return StreamError(f"no stream {stream_id!r}", code="unknown_stream", stream_id=stream_id)

    def close(
        self,
        stream: StreamState,
        reason: str,
        *,
        summary: Mapping[str, Any] | None = None,
        first: Frame | None = None,
    ) -> None:
        """Close a stream now; its clients get ``first`` (if any) and ``stream_complete``."""
        if stream.closed:
            return
        stream.closed = True
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        remember = self.config.remember_closed
        if remember:
            self.closed[stream.id] = reason
            while len(self.closed) > remember:
                self.closed.popitem(last=False)
        if stream.timer is not None:
            stream.timer.cancel()
        self.closed_count += 1
        complete = stream.complete_frame(reason, summary)
        for observer in self.observers:
            notify(observer.stream_closed, stream.id, reason, summary, first)
        stream.finish([complete] if first is None else [first, complete], reason)
        log.debug("stream %r closed (%s)", stream.id, reason)

    def client_count(self) -> int:
        """Clients registered to the open streams, all together."""
        return sum(len(s.subscribers) for s in self.streams.values())
