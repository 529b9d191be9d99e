"""Protocol v1 between headwater's server and its clients: message models and parsing.

Every message is one JSON object in one *text* frame, with a ``type`` and a protocol
version ``v`` (optional from clients, 1 when absent; always present from the server).
``docs/protocol.md`` is the reference for client authors; this package is the reference
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

Its modules: ``client_messages`` (client -> server models), ``server_messages`` (server ->
client models and :func:`encode_message`), ``errors`` (:data:`ErrorCode`,
:class:`ProtocolError`), ``parsing`` (the frame parsers and the JSON Schemas) and
``fields`` (the field types both directions share). Import from this package.
"""

from __future__ import annotations

from headwater.core.streaming.wire import PROTOCOL_VERSION

from .client_messages import (
    CLIENT_MESSAGE_TYPES,
    CancelMessage,
    ClientMessage,
    PingMessage,
    RunMessage,
    SubscribeMessage,
    UnsubscribeMessage,
)
from .errors import ERROR_CODES, PARSE_ERROR_CODES, ErrorCode, ProtocolError
from .fields import RequestId
from .parsing import (
    MAX_CLIENT_FRAME_BYTES,
    parse_client_frame,
    parse_server_frame,
    protocol_json_schema,
)
from .server_messages import (
    SERVER_MESSAGE_TYPES,
    DroppedMessage,
    ErrorMessage,
    PongMessage,
    ProgressMessage,
    ReplayGapMessage,
    RunStartedMessage,
    ServerMessage,
    StatusMessage,
    StreamCompleteMessage,
    StreamErrorMessage,
    StreamUpdateMessage,
    SubscribedMessage,
    UnsubscribedMessage,
    encode_message,
)

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
