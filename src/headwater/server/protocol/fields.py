"""Field types both directions of protocol v1 share: stream ids, request ids, seqs."""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

from pydantic import Field, PlainValidator, StringConstraints

__all__ = ["RequestId", "Seq", "StreamName"]

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
