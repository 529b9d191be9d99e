"""The error codes of protocol v1 and :class:`ProtocolError`, which carries one."""

from __future__ import annotations

from typing import Final, Literal, Self, get_args

from headwater.core.errors import HeadwaterError
from headwater.core.streaming import StreamError

from .server_messages import ErrorMessage

__all__ = ["ERROR_CODES", "PARSE_ERROR_CODES", "ErrorCode", "ProtocolError"]

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
    "draining",
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
