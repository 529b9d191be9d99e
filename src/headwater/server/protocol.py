"""Protocol v1 between headwater's server and its clients: message models and parsing.

Every message is one JSON object in one *text* frame, with a ``type`` and a protocol
version ``v`` (optional from clients, 1 when absent; always present from the server).
``docs/protocol.md`` is the reference for client authors; this module is the reference
for the server: pydantic models of every message, a discriminated union per direction,
and :func:`parse_client_frame`, which turns any bytes or text into a validated
:data:`ClientMessage` or raises :class:`ProtocolError` with one of the documented codes.

Client messages are validated strictly (unknown fields and wrongly typed values are
errors, so a typo gets a precise answer). Server messages are read tolerantly
(:func:`parse_server_frame` ignores unknown fields), so the server may add optional fields
within version 1 without breaking clients.

Server frames have one encoder, in the core: :mod:`headwater.core.streaming.wire`. The
streaming manager builds the frames that carry stream data (``subscribed``,
``stream_update``, ``progress``...) with it, without going through these models (encode
once, share among clients), and :func:`encode_message` encodes the server's own replies
(``run_started``, ``pong``, ``error``) through it too. The server models here document
those frames and validate them (the tests check that every frame the encoder produces
validates against its model).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal, Self, TypeAlias, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import from_json

from headwater.core.errors import HeadwaterError
from headwater.core.streaming import StreamError
from headwater.core.streaming.wire import PROTOCOL_VERSION, SERVER_FRAMES

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "ERROR_CODES",
    "MAX_CLIENT_FRAME_BYTES",
    "PARSE_ERROR_CODES",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGE_TYPES",
    "CancelMessage",
    "ClientMessage",
    "DroppedMessage",
    "ErrorCode",
    "ErrorMessage",
    "PingMessage",
    "PongMessage",
    "ProgressMessage",
    "ProtocolError",
    "ReplayGapMessage",
    "RequestId",
    "RunMessage",
    "RunStartedMessage",
    "ServerMessage",
    "StatusMessage",
    "StreamCompleteMessage",
    "StreamErrorMessage",
    "StreamUpdateMessage",
    "SubscribeMessage",
    "SubscribedMessage",
    "UnsubscribeMessage",
    "UnsubscribedMessage",
    "encode_message",
    "parse_client_frame",
    "parse_server_frame",
    "protocol_json_schema",
]

MAX_CLIENT_FRAME_BYTES: Final = 64 * 1024
"""Default size limit of one client frame, in bytes of UTF-8."""

ErrorCode = Literal[
    # parse_client_frame
    "bad_json",
    "not_an_object",
    "unknown_type",
    "invalid_message",
    "too_large",
    "unsupported_version",
    # requests
    "unknown_stream",
    "stream_closed",
    "stream_exists",
    "already_subscribed",
    "not_subscribed",
    "unknown_pipeline",
    "unknown_run",
    "invalid_params",
    # policy
    "unauthorized",
    "limit_reached",
    "rate_limited",
    # server
    "unavailable",
    "internal_error",
]
"""Stable codes of ``error`` messages (see ``docs/protocol.md`` for their meaning)."""

ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))
"""Every code an ``error`` message may carry in version 1."""

PARSE_ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        "bad_json",
        "not_an_object",
        "unknown_type",
        "invalid_message",
        "too_large",
        "unsupported_version",
    }
)
"""The codes :func:`parse_client_frame` raises."""

StreamName: TypeAlias = Annotated[str, StringConstraints(min_length=1, max_length=256)]
"""A stream id: 1 to 256 characters."""

_ID_LIMIT: Final = 2**53


def _request_id(value: object) -> str | int:
    if isinstance(value, str) and len(value) <= 128:
        return value
    if type(value) is int and -_ID_LIMIT <= value <= _ID_LIMIT:
        return value
    raise ValueError("must be a string of up to 128 characters or an integer within ±2**53")


RequestId: TypeAlias = Annotated[
    str | int, PlainValidator(_request_id, json_schema_input_type=str | int)
]
"""A client-chosen request id (string of up to 128 characters, or a JSON-safe integer)."""

Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]


class ProtocolError(HeadwaterError):
    """A client sent something the protocol does not allow; becomes an ``error`` message.

    ``code`` is one of :data:`ErrorCode`; ``ref`` is the ``id`` of the offending request
    when it could be read.
    """

    def __init__(self, code: ErrorCode, message: str, *, ref: str | int | None = None) -> None:
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref
        super().__init__(f"{code}: {message}")

    def to_message(self) -> ErrorMessage:
        """The ``error`` message telling the client about this error."""
        return ErrorMessage(code=self.code, message=self.message, ref=self.ref)

    @classmethod
    def from_stream_error(cls, error: StreamError, *, ref: str | int | None = None) -> Self:
        """Translate a :class:`~headwater.core.streaming.StreamError` for a client."""
        code: ErrorCode
        match error.code:
            case "unknown_stream" | "stream_closed" | "stream_exists":
                code = error.code
            case "too_many_streams" | "too_many_clients":
                code = "limit_reached"
            case "client_exists":
                code = "already_subscribed"
            case "unknown_client":
                code = "not_subscribed"
            case "invalid_stream_id":
                code = "invalid_message"
            case "not_running" | "shutting_down":
                code = "unavailable"
            case _:
                code = "internal_error"
        return cls(code, error.message, ref=ref)


# -- client -> server -------------------------------------------------------------------


class _ClientBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: str
    v: Literal[1] = Field(1, description="Protocol version; optional, 1 when absent.")
    id: RequestId | None = Field(
        None, description="Chosen by the client; replies to this request carry it as `ref`."
    )


class SubscribeMessage(_ClientBase):
    """Receive a stream's chunks: live ones, and with ``since`` the buffered ones after it."""

    type: Literal["subscribe"] = "subscribe"
    stream: StreamName
    since: Seq | None = Field(
        None,
        description=(
            "The last seq the client has; it first receives the buffered chunks after it. "
            "0 asks for everything buffered; absent, only live chunks."
        ),
    )
    epoch: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="The epoch `since` belongs to (from the earlier `subscribed`)."
    )


class UnsubscribeMessage(_ClientBase):
    """Stop receiving a stream; the last message for it is ``unsubscribed``."""

    type: Literal["unsubscribe"] = "unsubscribe"
    stream: StreamName


class RunMessage(_ClientBase):
    """Start a named pipeline (or action) with params, streaming its output (if allowed)."""

    type: Literal["run"] = "run"
    pipeline: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    params: dict[str, Any] = Field(default_factory=dict)
    stream: StreamName | None = Field(
        None, description="Id for the run's stream; the server chooses one when absent."
    )


class CancelMessage(_ClientBase):
    """Cancel a run, named by its stream or its run id (exactly one of them)."""

    type: Literal["cancel"] = "cancel"
    stream: StreamName | None = None
    run: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.stream is None) == (self.run is None):
            raise ValueError("exactly one of `stream` or `run` is required")
        return self


class PingMessage(_ClientBase):
    """Check the connection; answered by ``pong`` with the same ``id``."""

    type: Literal["ping"] = "ping"


ClientMessage: TypeAlias = Annotated[
    SubscribeMessage | UnsubscribeMessage | RunMessage | CancelMessage | PingMessage,
    Field(discriminator="type"),
]
"""Any message a client may send."""

CLIENT_MESSAGE_TYPES: Final = ("subscribe", "unsubscribe", "run", "cancel", "ping")
"""Values of ``type`` a client may send."""


# -- server -> client -------------------------------------------------------------------


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

_CLIENT: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


# -- parsing ----------------------------------------------------------------------------


def parse_client_frame(raw: str | bytes, max_bytes: int = MAX_CLIENT_FRAME_BYTES) -> ClientMessage:
    """Validate one frame from a client.

    Returns the message, or raises :class:`ProtocolError` with code ``too_large`` (more
    than ``max_bytes`` bytes of UTF-8), ``bad_json`` (not UTF-8 JSON, nested too deeply,
    ``NaN``...), ``not_an_object``, ``unsupported_version`` (``v`` is not 1),
    ``unknown_type`` or ``invalid_message`` (a missing, unknown or invalid field; the
    message names the field path). Never raises anything else for str or bytes input.
    """
    obj = _load(raw, max_bytes)
    if not isinstance(obj, dict):
        raise ProtocolError(
            "not_an_object", f"a message must be a JSON object, not {_json_type(obj)}"
        )
    ref = _ref_of(obj)
    version = obj.get("v", PROTOCOL_VERSION)
    if type(version) is not int:
        raise ProtocolError("invalid_message", "v: must be the integer 1", ref=ref)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {_show(version)} is not supported; this server speaks v1",
            ref=ref,
        )
    if "type" not in obj:
        raise ProtocolError("invalid_message", "type: field required", ref=ref)
    kind = obj["type"]
    if not isinstance(kind, str) or kind not in CLIENT_MESSAGE_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"unknown message type {_show(kind)}; expected one of "
            + ", ".join(CLIENT_MESSAGE_TYPES),
            ref=ref,
        )
    try:
        return _CLIENT.validate_python(obj, strict=True)
    except ValidationError as exc:
        raise ProtocolError("invalid_message", _describe(exc), ref=ref) from None


def parse_server_frame(raw: str | bytes) -> ServerMessage:
    """Validate one frame from the server (for Python clients and tests).

    Unknown fields are ignored; raises :class:`ProtocolError` (``bad_json``,
    ``not_an_object``, ``unknown_type``, ``invalid_message``, ``unsupported_version``).
    """
    obj = _load(raw, None)
    if not isinstance(obj, dict):
        raise ProtocolError(
            "not_an_object", f"a message must be a JSON object, not {_json_type(obj)}"
        )
    if obj.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version", f"protocol version {_show(obj['v'])} is not supported"
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in SERVER_MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {_show(kind)}")
    try:
        return _SERVER.validate_python(obj)
    except ValidationError as exc:
        raise ProtocolError("invalid_message", _describe(exc)) from None


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


def protocol_json_schema() -> dict[str, Any]:
    """JSON Schemas of both directions: ``{"client": {...}, "server": {...}}``."""
    return {"client": _CLIENT.json_schema(), "server": _SERVER.json_schema()}


def _load(raw: str | bytes, max_bytes: int | None) -> Any:
    if isinstance(raw, str):
        if max_bytes is not None and len(raw) > max_bytes:
            raise ProtocolError("too_large", f"a message may not exceed {max_bytes} bytes")
        try:
            data = raw.encode()
        except UnicodeEncodeError:
            raise ProtocolError("bad_json", "the message is not valid Unicode text") from None
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        raise TypeError(f"a frame is str or bytes, not {type(raw).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ProtocolError(
            "too_large", f"a message may not exceed {max_bytes} bytes (got {len(data)})"
        )
    try:
        value = from_json(data, allow_inf_nan=False)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if _BIG_EXPONENT.search(data) is not None and not _finite(value):
        raise ProtocolError("bad_json", "not valid JSON: a number is out of range")
    return value


_BIG_EXPONENT: Final = re.compile(rb"[0-9][eE][+-]?[0-9]{3}")
"""A number that may overflow a float (1e400 parses as infinity)."""


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _ref_of(obj: dict[str, Any]) -> str | int | None:
    try:
        return _request_id(obj.get("id"))
    except ValueError:
        return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__  # pragma: no cover - JSON has no other types


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(exc: ValidationError, limit: int = 3) -> str:
    """``path: problem`` for the first errors, without echoing the input."""
    parts = []
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors[:limit]:
        loc = err["loc"][1:]  # the first element is the union tag (the message type)
        path = ""
        for key in loc:
            path += f"[{key}]" if isinstance(key, int) else (f".{key}" if path else str(key))
        if err["type"] == "extra_forbidden":
            problem = "unknown field"
        elif err["type"] == "missing":
            problem = "field required"
        else:
            problem = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {problem}" if path else problem)
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
