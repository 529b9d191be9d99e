"""Small helpers shared by the built-in plugins' params and error messages."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["column_rows", "encode_payload", "fspath", "type_name"]


def fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` objects where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def type_name(obj: object) -> str:
    """``set`` for builtins, ``module.Class`` otherwise (for error messages)."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def column_rows(
    batch: Sequence[Any],
    columns: Sequence[str],
    *,
    table: str,
    first_index: int,
    strict: bool,
    sink: str,
) -> list[Sequence[Any]]:
    """Items as value sequences in ``columns`` order, for the database sinks.

    A mapping gives its values by column (a missing key is NULL; with ``strict``, a key
    that is no column is an error), a sequence is taken as the row itself (it must have
    one value per column); anything else is an error. Errors name the item by its
    position in the stream (``first_index`` is the position of ``batch[0]``).
    """
    width = len(columns)
    known = frozenset(columns)
    rows: list[Sequence[Any]] = []
    append = rows.append
    for index, item in enumerate(batch, first_index):
        if isinstance(item, Mapping):
            if strict and not known.issuperset(item):
                extra = ", ".join(repr(k) for k in item if k not in known)
                raise ValueError(
                    f"item {index} has key(s) {extra} that are not columns of {table!r} "
                    f"({', '.join(columns)}); pass the columns param to choose the columns "
                    "and ignore other keys"
                )
            get = item.get
            append([get(c) for c in columns])
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes | bytearray):
            if len(item) != width:
                raise ValueError(
                    f"item {index} has {len(item)} values, expected {width} ({', '.join(columns)})"
                )
            append(item)
        else:
            raise TypeError(
                f"item {index} is a {type_name(item)}; {sink} needs dicts or sequences of "
                "column values"
            )
    return rows


def encode_payload(item: Any, mode: str, component: str) -> bytes:
    """The message body of ``item`` for the broker sinks: ``json`` (NaN and infinities
    as null), ``bytes`` (bytes, or text as UTF-8) or anything else as ``str(item)``.
    ``component`` names the sink in errors."""
    if mode == "json":
        from pydantic_core import to_json

        return to_json(item, inf_nan_mode="null")
    if mode == "bytes":
        if isinstance(item, str):
            return item.encode()
        if not isinstance(item, bytes | bytearray):
            raise TypeError(f"{component} with encode: bytes needs bytes or str, got {item!r}")
        return bytes(item)
    return str(item).encode()
