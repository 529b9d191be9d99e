"""Parsing frames of protocol v1 into validated messages, for both directions.

:func:`parse_client_frame` turns any bytes or text into a validated
:data:`~headwater.server.protocol.ClientMessage` or raises
:class:`~headwater.server.protocol.ProtocolError` with one of the documented codes;
:func:`parse_server_frame` does the same, tolerantly, for frames from the server.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from headwater.core.streaming.wire import PROTOCOL_VERSION

from .client_messages import CLIENT_MESSAGE_TYPES, ClientMessage
from .errors import ProtocolError
from .fields import _request_id
from .server_messages import SERVER_MESSAGE_TYPES, ServerMessage

__all__ = [
    "MAX_CLIENT_FRAME_BYTES",
    "parse_client_frame",
    "parse_server_frame",
    "protocol_json_schema",
]

MAX_CLIENT_FRAME_BYTES: Final = 64 * 1024
"""Default size limit of one client frame, in bytes of UTF-8."""

_CLIENT: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


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
