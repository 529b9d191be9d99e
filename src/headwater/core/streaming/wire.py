"""The wire format: every server -> client frame of protocol v1, encoded in one place.

A frame is one JSON object, compact UTF-8 (:data:`Frame`), to be sent as a *text*
message: ``{"type": ..., "v": 1, <fields>}``, the fields in the order documented by the
models of :mod:`headwater.server.protocol`. There is one function per message type; the
streaming manager builds its frames with them, and the server encodes its own replies
(``run_started``, ``pong``, ``error``) through them too, so this module is the only
encoder of server frames. :data:`SERVER_FRAMES` maps each ``type`` to its function, whose
parameters are the message's fields.

``stream_update`` is the hot one: the manager encodes a chunk's data once and numbers it
with :func:`stream_update_encoded`, a byte template that costs no JSON encoding at all;
the frame is then shared by every client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic_core import to_json

from ..errors import StageError
from ..events import ErrorEvent, Event, Progress, Status

__all__ = [
    "PROTOCOL_VERSION",
    "SERVER_FRAMES",
    "Frame",
    "dropped",
    "encode_frame",
    "encode_json",
    "error",
    "error_details",
    "event_frame",
    "pong",
    "progress",
    "replay_gap",
    "run_started",
    "status",
    "stream_complete",
    "stream_error",
    "stream_update",
    "stream_update_encoded",
    "subscribed",
    "unsubscribed",
]

log = logging.getLogger("headwater.streaming")

PROTOCOL_VERSION: Final = 1
"""Version of the client protocol whose frames this module produces."""

Frame = bytes
"""One protocol message: UTF-8 encoded JSON, to be sent as a *text* message."""


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


def encode_frame(kind: str, **fields: Any) -> Frame:
    """``{"type": kind, "v": 1, **fields}`` as a frame; raises if a field is not JSON."""
    return encode_json({"type": kind, "v": PROTOCOL_VERSION, **fields})


# -- stream messages (sent by the streaming manager) --------------------------------------


def subscribed(stream: str, epoch: str, seq: int, replayed: int, ref: str | int | None) -> Frame:
    """``subscribed``: the first message of a subscription."""
    return encode_frame(
        "subscribed", stream=stream, epoch=epoch, seq=seq, replayed=replayed, ref=ref
    )


def replay_gap(stream: str, since: int, first_available: int, reason: str, epoch: str) -> Frame:
    """``replay_gap``: after ``subscribed``, not everything after ``since`` is replayed."""
    return encode_frame(
        "replay_gap",
        stream=stream,
        since=since,
        first_available=first_available,
        reason=reason,
        epoch=epoch,
    )


_STREAM_UPDATE: Final = (
    b'{"type":"stream_update","v":%d,' % PROTOCOL_VERSION + b'"stream":%b,"seq":%d,"data":%b}'
)


def stream_update_encoded(stream_json: bytes, seq: int, payload: bytes) -> Frame:
    """``stream_update`` from the stream id and the chunk's data, both already JSON."""
    return _STREAM_UPDATE % (stream_json, seq, payload)


def stream_update(stream: str, seq: int, data: Any) -> Frame:
    """``stream_update``: chunk ``seq`` of ``stream``."""
    return stream_update_encoded(encode_json(stream), seq, encode_json(data))


def progress(
    stream: str, stage: str, done: float, total: float | None, message: str | None
) -> Frame:
    """``progress`` of one stage of the pipeline feeding the stream."""
    return encode_frame(
        "progress", stream=stream, stage=stage, done=done, total=total, message=message
    )


def status(stream: str, state: str, stage: str | None, message: str | None) -> Frame:
    """``status``: a state change of the run (``stage`` None) or of one of its stages."""
    return encode_frame("status", stream=stream, state=state, stage=stage, message=message)


def stream_error(stream: str, error: Mapping[str, Any], *, lenient: bool = False) -> Frame:
    """``stream_error`` with ``error``'s details (see :func:`error_details`).

    ``lenient``: details that are not JSON-serialisable are sent as their text instead
    of raising.
    """
    try:
        return encode_frame("stream_error", stream=stream, error=error)
    except Exception:
        if not lenient:
            raise
        safe = {
            str(k): v if isinstance(v, str | int | float | bool | None) else str(v)
            for k, v in error.items()
        }
        return encode_frame("stream_error", stream=stream, error=safe)


def dropped(stream: str, count: int) -> Frame:
    """``dropped``: ``count`` messages of the stream were dropped for a slow client."""
    return encode_frame("dropped", stream=stream, count=count)


def unsubscribed(stream: str, ref: str | int | None) -> Frame:
    """``unsubscribed``: the last message of a stream after an ``unsubscribe``."""
    return encode_frame("unsubscribed", stream=stream, ref=ref)


def stream_complete(
    stream: str,
    reason: str,
    last_seq: int,
    summary: Mapping[str, Any] | None,
    *,
    lenient: bool = False,
) -> Frame:
    """``stream_complete``: the last message of a stream.

    ``lenient``: a ``summary`` that is not JSON-serialisable is left out (with a
    warning) instead of raising.
    """
    try:
        return encode_frame(
            "stream_complete",
            stream=stream,
            reason=reason,
            last_seq=last_seq,
            summary=dict(summary) if summary is not None else None,
        )
    except Exception:
        if not lenient:
            raise
        log.warning("summary of stream %r is not JSON-serialisable", stream)
        return encode_frame("stream_complete", stream=stream, reason=reason, last_seq=last_seq)


def event_frame(stream: str, event: Event) -> Frame:
    """The message of a pipeline control event: :class:`~headwater.Progress` becomes
    ``progress``, :class:`~headwater.Status` ``status`` and
    :class:`~headwater.ErrorEvent` ``stream_error``. ``Complete`` has none (it ends the
    stream with ``stream_complete``): TypeError.
    """
    if isinstance(event, Progress):
        return progress(stream, event.stage, event.done, event.total, event.message)
    if isinstance(event, Status):
        return status(stream, event.state, event.stage, event.message)
    if isinstance(event, ErrorEvent):
        details = {"stage": event.stage, **event.error, "handled": event.handled}
        return stream_error(stream, details, lenient=True)
    raise TypeError(f"not a control event: {event!r}")


# -- replies to requests (sent by the server) ---------------------------------------------


def run_started(stream: str, run: str, pipeline: str, ref: str | int | None) -> Frame:
    """``run_started``: a ``run`` request was accepted."""
    return encode_frame("run_started", stream=stream, run=run, pipeline=pipeline, ref=ref)


def pong(id: str | int | None) -> Frame:
    """``pong``: the answer to ``ping``, with its ``id``."""
    return encode_frame("pong", id=id)


def error(code: str, message: str, ref: str | int | None) -> Frame:
    """``error``: a request failed, or a frame was rejected."""
    return encode_frame("error", code=code, message=message, ref=ref)


SERVER_FRAMES: Final[Mapping[str, Callable[..., Frame]]] = {
    "subscribed": subscribed,
    "unsubscribed": unsubscribed,
    "stream_update": stream_update,
    "progress": progress,
    "status": status,
    "stream_complete": stream_complete,
    "stream_error": stream_error,
    "replay_gap": replay_gap,
    "dropped": dropped,
    "run_started": run_started,
    "pong": pong,
    "error": error,
}
"""The encoder of every server -> client message type; keyword arguments are the fields."""
