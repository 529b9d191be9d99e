"""Stream observers: who else sees every stream event of a manager (e.g. a bridge).

An observer is registered with :meth:`StreamingManager.add_observer`; :func:`notify`
calls one of its methods and keeps its exceptions from reaching the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from .wire import Frame

__all__ = ["StreamObserver", "notify"]

log = logging.getLogger("headwater.streaming")


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


def notify(method: Callable[..., None], *args: Any) -> None:
    """Call an observer method; its exceptions are logged, never propagated."""
    try:
        method(*args)
    except Exception:
        log.exception("stream observer %r raised; ignored", method)
