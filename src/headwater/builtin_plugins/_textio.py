"""Helpers shared by the file and command built-ins: byte-level line splitting, validators.

Private to :mod:`headwater.builtin_plugins`; not part of the public API.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Iterator
from typing import TypeVar

__all__ = [
    "ByteLineSplitter",
    "LinePiece",
    "check_encoding",
    "check_errors",
    "check_line_encoding",
    "is_ascii_compatible",
    "pull",
]

T = TypeVar("T")

LinePiece = tuple[int, int, str, bool]
"""``(line number, byte offset, text, partial)`` as produced by :class:`ByteLineSplitter`.

``partial`` is True when the line goes on in the next piece (it was longer than the
splitter's limit); the last piece of a line has ``partial`` False.
"""


def check_encoding(value: str) -> str:
    """Raise ``ValueError`` for an encoding Python does not know."""
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None
    return value


def check_errors(value: str) -> str:
    """Raise ``ValueError`` for an unknown codec error handler."""
    try:
        codecs.lookup_error(value)
    except LookupError:
        raise ValueError(
            f"unknown error handler {value!r} (use strict, replace, ignore, "
            "backslashreplace or surrogateescape)"
        ) from None
    return value


def check_line_encoding(value: str, component: str) -> str:
    """``value`` if it is a known encoding whose line breaks are single ASCII bytes
    (what byte-level line splitting needs); ``ValueError`` naming ``component`` otherwise."""
    check_encoding(value)
    if not is_ascii_compatible(value):
        raise ValueError(f"{component} needs an ASCII-compatible encoding, not {value!r}")
    return value


def is_ascii_compatible(encoding: str) -> bool:
    r"""True when ``\n`` and ``\r`` are single bytes of their own in ``encoding``.

    Only then can bytes be split into lines before decoding (UTF-8, Latin-1, cp1252, ...;
    not UTF-16 or UTF-32).
    """
    try:
        return "\n\r".encode(encoding) == b"\n\r"
    except (LookupError, UnicodeError):
        return False


class ByteLineSplitter:
    r"""Split a stream of byte blocks into decoded lines, with line numbers and offsets.

    Lines end at ``\n``; a ``\r`` right before it is part of the terminator. Memory is
    bounded by ``max_line_bytes``: a longer line comes out in pieces of at most that many
    bytes, all with the same line number, every piece but the last marked ``partial``.
    A multi-byte character cut by a piece boundary is carried over to the next piece.
    Works for ASCII-compatible encodings (see :func:`is_ascii_compatible`).
    """

    def __init__(
        self,
        encoding: str = "utf-8",
        errors: str = "replace",
        *,
        max_line_bytes: int = 1024 * 1024,
        first_line: int = 1,
        offset: int = 0,
    ) -> None:
        self.encoding = encoding
        self.errors = errors
        self.max_line_bytes = max_line_bytes
        self.line = first_line
        """Number of the line the next byte belongs to."""
        self.offset = offset
        """Byte offset of the first byte not emitted yet (the start of ``carry``)."""
        self._carry = b""
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self._in_piece = False  # the current line was already partly emitted

    def _decode_line(self, data: bytes) -> str:
        if self._in_piece:
            text = self._decoder.decode(data, True)
            self._decoder.reset()
            self._in_piece = False
            return text
        return data.decode(self.encoding, self.errors)

    def feed(self, data: bytes, final: bool = False) -> list[LinePiece]:
        """Take the next block; return the pieces it completes (everything if ``final``)."""
        out: list[LinePiece] = []
        buf = self._carry + data if self._carry else data
        size = len(buf)
        limit = self.max_line_bytes
        find = buf.find
        start = 0
        while True:
            end = find(b"\n", start, start + limit + 1)
            if end >= 0:
                raw = buf[start:end]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                out.append((self.line, self.offset, self._decode_line(raw), False))
                self.line += 1
                self.offset += end + 1 - start
                start = end + 1
            elif size - start > limit:
                # no line end within the limit: emit a piece, the line goes on
                text = self._decoder.decode(buf[start : start + limit], False)
                self._in_piece = True
                out.append((self.line, self.offset, text, True))
                self.offset += limit
                start += limit
            else:
                break
        self._carry = buf[start:]
        if final and (self._carry or self._in_piece):
            out.append((self.line, self.offset, self._decode_line(self._carry), False))
            self.offset += len(self._carry)
            self.line += 1
            self._carry = b""
        return out


def pull(it: Iterator[T | None], max_items: int, max_seconds: float) -> tuple[list[T], bool]:
    """Take items from ``it`` (in a worker thread) until enough, too long, or exhausted.

    ``it`` may yield ``None`` as a heartbeat: it counts towards nothing but lets the time
    budget end the call while the iterator works without producing items. Returns the
    items and whether the iterator is exhausted.
    """
    items: list[T] = []
    deadline = time.monotonic() + max_seconds
    for item in it:
        if item is not None:
            items.append(item)
            if len(items) >= max_items:
                return items, False
        if time.monotonic() >= deadline:
            return items, False
    return items, True
