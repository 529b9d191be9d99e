"""Server -> client messages of protocol v1: one pydantic model per message type.

Server messages are read tolerantly (unknown fields are ignored), so the server may add
optional fields within version 1 without breaking clients.

Server frames have one encoder, in the core: :mod:`headwater.core.streaming.wire`. The
streaming manager builds the frames that carry stream data (``subscribed``,
``stream_update``, ``progress``...) with it, without going through these models (encode
once, share among clients), and :func:`encode_message` encodes the server's own replies
(``run_started``, ``pong``, ``error``) through it too. The models here document those
frames and validate them (the tests check that every frame the encoder produces
validates against its model).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from headwater.core.streaming.wire import SERVER_FRAMES

from .fields import RequestId, Seq

__all__ = [
    "SERVER_MESSAGE_TYPES",
    "DroppedMessage",
    "ErrorMessage",
    "PongMessage",
    "ProgressMessage",
    "ReplayGapMessage",
    "RunStartedMessage",
    "ServerMessage",
    "StatusMessage",
    "StreamCompleteMessage",
    "StreamErrorMessage",
    "StreamUpdateMessage",
    "SubscribedMessage",
    "UnsubscribedMessage",
    "encode_message",
]


class _ServerBase(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str
    v: Literal[1] = 1


class SubscribedMessage(_ServerBase):
    """The subscription is active. ``replayed`` buffered chunks follow, then live ones.

    ``seq`` is the stream's last seq at that moment: replayed chunks have ``seq <= seq``,
    live ones ``seq > seq``. Keep ``epoch`` and the last seq received to resume later.
    """

    type: Literal["subscribed"] = "subscribed"
    stream: str
    epoch: str
    seq: Seq
    replayed: Annotated[int, Field(ge=0)]
    ref: RequestId | None = None


class UnsubscribedMessage(_ServerBase):
    """The last message of a stream after an ``unsubscribe``."""

    type: Literal["unsubscribed"] = "unsubscribed"
    stream: str
    ref: RequestId | None = None


class StreamUpdateMessage(_ServerBase):
    """One chunk of a stream; ``seq`` numbers the stream's chunks 1, 2, 3..."""

    type: Literal["stream_update"] = "stream_update"
    stream: str
    seq: Annotated[int, Field(ge=1)]
    data: Any


class ProgressMessage(_ServerBase):
    """Progress of one stage of the pipeline feeding the stream (``total`` may be null)."""

    type: Literal["progress"] = "progress"
    stream: str
    stage: str
    done: float
    total: float | None = None
    message: str | None = None


class StatusMessage(_ServerBase):
    """A state change of the run (``stage`` null) or of one of its stages."""

    type: Literal["status"] = "status"
    stream: str
    state: str
    stage: str | None = None
    message: str | None = None


class StreamCompleteMessage(_ServerBase):
    """The stream ended; nothing more comes for it. ``last_seq`` is its last chunk.

    ``reason``: ``completed`` (closed by its owner), ``succeeded`` / ``failed`` /
    ``cancelled`` (the run's final state), ``error``, ``inactive`` (no chunk within the
    inactivity timeout), ``shutdown`` (the server is stopping), or an owner's own reason.
    """

    type: Literal["stream_complete"] = "stream_complete"
    stream: str
    reason: str
    last_seq: Seq
    summary: dict[str, Any] | None = None


class StreamErrorMessage(_ServerBase):
    """An error in the stream's pipeline; if it ends the stream, ``stream_complete`` follows."""

    type: Literal["stream_error"] = "stream_error"
    stream: str
    error: dict[str, Any]


class ReplayGapMessage(_ServerBase):
    """After ``subscribed``: not everything after ``since`` could be replayed.

    ``reason``: ``evicted`` (those chunks left the replay buffer), ``epoch_changed`` (the
    stream was recreated: the client's history is gone) or ``ahead`` (``since`` is past
    the stream's last chunk: it belongs to another epoch). Chunks from
    ``first_available`` on follow.
    """

    type: Literal["replay_gap"] = "replay_gap"
    stream: str
    since: Seq
    first_available: Seq
    reason: str
    epoch: str


class DroppedMessage(_ServerBase):
    """The client was too slow: ``count`` messages for this stream were dropped here."""

    type: Literal["dropped"] = "dropped"
    stream: str
    count: Annotated[int, Field(ge=1)]


class RunStartedMessage(_ServerBase):
    """A ``run`` request was accepted; the requester is subscribed to ``stream``."""

    type: Literal["run_started"] = "run_started"
    stream: str
    run: str
    pipeline: str
    ref: RequestId | None = None


class PongMessage(_ServerBase):
    """Answer to ``ping``, with its ``id``."""

    type: Literal["pong"] = "pong"
    id: RequestId | None = None


class ErrorMessage(_ServerBase):
    """A request failed, or a frame was rejected; the connection stays open.

    ``code`` is stable (see :data:`ErrorCode`); ``message`` is for humans; ``ref`` is the
    ``id`` of the offending request, when it had a readable one.
    """

    type: Literal["error"] = "error"
    code: str
    message: str
    ref: RequestId | None = None


ServerMessage: TypeAlias = Annotated[
    SubscribedMessage
    | UnsubscribedMessage
    | StreamUpdateMessage
    | ProgressMessage
    | StatusMessage
    | StreamCompleteMessage
    | StreamErrorMessage
    | ReplayGapMessage
    | DroppedMessage
    | RunStartedMessage
    | PongMessage
    | ErrorMessage,
    Field(discriminator="type"),
]
"""Any message the server may send."""

SERVER_MESSAGE_TYPES: Final = (
    "subscribed",
    "unsubscribed",
    "stream_update",
    "progress",
    "status",
    "stream_complete",
    "stream_error",
    "replay_gap",
    "dropped",
    "run_started",
    "pong",
    "error",
)
"""Values of ``type`` the server may send in version 1."""


def encode_message(message: BaseModel) -> bytes:
    """A message as one frame: compact UTF-8 JSON, to be sent as a text message.

    Server messages are encoded by the core's frame encoder
    (:data:`headwater.core.streaming.wire.SERVER_FRAMES`), the one the streaming manager
    uses; client messages by their model.
    """
    if isinstance(message, _ServerBase):
        fields = {name: getattr(message, name) for name in _fields_of(type(message))}
        return SERVER_FRAMES[message.type](**fields)
    return message.model_dump_json().encode()


def _fields_of(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of a server message, besides ``type`` and ``v``, in order."""
    return tuple(name for name in model.model_fields if name not in ("type", "v"))
