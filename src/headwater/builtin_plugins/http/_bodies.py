"""Request bodies of the webhook: a JSON document or NDJSON lines, to items.

* JSON (``application/json``): an array is its elements, one item each; any other value
  is one item.
* NDJSON (``application/x-ndjson``, ``application/jsonl``...): one JSON value per line;
  ``\\r\\n`` endings and blank lines are accepted, the last line needs no ``\\n``.

A body that does not parse raises :class:`BodyError` saying where (``line 3: ...``), and
no item of it is kept: a request is taken whole or not at all.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

__all__ = ["NDJSON_TYPES", "BodyError", "BodyFormat", "parse_body", "parse_json", "parse_ndjson"]

BodyFormat = Literal["auto", "json", "ndjson"]

NDJSON_TYPES: Final = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)
"""Media types taken as NDJSON by ``format: auto``."""


class BodyError(ValueError):
    """A request body that is not valid JSON / NDJSON; the message says where."""


def _describe(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg} at column {exc.colno}"


def parse_json(body: bytes) -> list[Any]:
    """The items of a JSON body: an array's elements, or the value itself."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    return value if isinstance(value, list) else [value]


def parse_ndjson(body: bytes) -> list[Any]:
    """The items of an NDJSON body, one per non-blank line."""
    loads = json.loads
    try:
        # the fast path: every line parses
        return [loads(line) for line in body.split(b"\n") if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    for number, line in enumerate(body.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            loads(line)
        except json.JSONDecodeError as exc:
            raise BodyError(f"line {number} is not JSON: {_describe(exc)}") from None
        except UnicodeDecodeError as exc:
            raise BodyError(f"line {number} is not UTF-8: {exc.reason}") from None
    raise BodyError("body is not NDJSON")  # pragma: no cover - some line failed above


def media_type(content_type: str | None) -> str:
    """``application/json`` of ``application/json; charset=utf-8``."""
    return (content_type or "").partition(";")[0].strip().lower()


def parse_body(body: bytes, content_type: str | None, mode: BodyFormat = "auto") -> list[Any]:
    """The items of a request body. ``auto`` reads NDJSON media types as NDJSON and
    anything else as JSON."""
    if mode == "ndjson" or (mode == "auto" and media_type(content_type) in NDJSON_TYPES):
        return parse_ndjson(body)
    return parse_json(body)
