"""Built-in stream actions (sources)."""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext


class RangeParams(BaseModel):
    """Params of ``range``."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(0, description="First value.")
    stop: int = Field(description="End value (exclusive).")
    step: int = Field(1, description="Increment; may be negative, not zero.")
    chunk: int = Field(4096, ge=1, le=1_000_000, description="Values emitted per batch.")


@headwater.action(
    "range",
    params=RangeParams,
    output="integers from start to stop (exclusive)",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def range_source(params: RangeParams, ctx: StreamContext) -> AsyncIterator[list[int]]:
    """Count from ``start`` to ``stop`` like Python's range(), in batches."""
    if params.step == 0:
        raise ValueError("range step must not be zero")
    values = range(params.start, params.stop, params.step)
    total = len(values)
    chunk = params.chunk
    for offset in range(0, total, chunk):
        yield list(values[offset : offset + chunk])
        ctx.progress(min(offset + chunk, total), total)


class IterableParams(BaseModel):
    """Params of ``iterable``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    items: Any = Field(description="Any Python iterable or async iterable (embedding only).")


@headwater.action(
    "iterable",
    params=IterableParams,
    output="the items of the given iterable",
    capabilities=("streaming",),
)
async def iterable_source(params: IterableParams, ctx: StreamContext) -> AsyncIterator[Any]:
    """Stream the items of a Python iterable or async iterable (for embedding)."""
    items = params.items
    if hasattr(items, "__aiter__"):
        async for item in items:
            yield item
        return
    if not isinstance(items, Iterable):
        raise TypeError(f"iterable needs an iterable, got {type(items).__name__}")
    for item in items:
        yield item


def _fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` objects where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _check_encoding(value: str) -> str:
    """Raise ``ValueError`` for an encoding Python does not know."""
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None
    return value


def _check_errors(value: str) -> str:
    """Raise ``ValueError`` for an unknown codec error handler."""
    try:
        codecs.lookup_error(value)
    except LookupError:
        raise ValueError(
            f"unknown error handler {value!r} (use strict, replace, ignore, "
            "backslashreplace or surrogateescape)"
        ) from None
    return value


def _strip_eol(line: str) -> str:
    r"""Remove one trailing ``\n`` or ``\r\n``."""
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


class FileLinesParams(BaseModel):
    """Params of ``file.lines``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Path of the text file to read (relative to the working dir).")
    encoding: str = Field("utf-8", description="Text encoding of the file, e.g. utf-8, latin-1.")
    errors: str = Field(
        "strict",
        description="What to do with bytes that do not decode: strict (fail), replace, "
        "ignore, backslashreplace or surrogateescape.",
    )
    strip_newline: bool = Field(
        True, description="Remove the line terminator (\\n or \\r\\n) from each line."
    )
    start_line: int = Field(
        1, ge=1, description="1-based number of the first line to emit; earlier lines are skipped."
    )
    max_lines: int | None = Field(
        None, ge=0, description="Stop after emitting this many lines (None: read to the end)."
    )
    block_size: int = Field(
        256 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description="Bytes read from the file per block (one batch of lines per block).",
    )

    _path = field_validator("path", mode="before")(_fspath)
    _encoding = field_validator("encoding")(_check_encoding)
    _errors = field_validator("errors")(_check_errors)


class _LineReader:
    r"""Blocking, block-wise line splitter; every method runs in a worker thread.

    Reads ``block_size`` bytes at a time, decodes them incrementally (a multi-byte
    character cut by a block boundary is fine) and splits the text on ``\n``; the
    unfinished last line of a block is carried over to the next one. Memory is one block
    plus the longest line.
    """

    def __init__(self, params: FileLinesParams) -> None:
        self.path = params.path
        self.encoding = params.encoding
        self.block_size = params.block_size
        self.strip = params.strip_newline
        self.decoder = codecs.getincrementaldecoder(params.encoding)(params.errors)
        self.file: IO[bytes] | None = None
        self.size = 0
        self.bytes_read = 0
        self.eof = False
        self._carry: list[str] = []

    def open(self) -> None:
        """Open the file; errors name the path."""
        path = os.path.expanduser(self.path)
        where = "" if os.path.isabs(path) else f" (resolved to {os.path.abspath(path)!r})"
        try:
            self.file = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {self.path!r}{where}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{self.path!r} is a directory, not a file{where}") from None
        except OSError as exc:
            raise type(exc)(f"cannot open {self.path!r}{where}: {exc.strerror or exc}") from exc
        self.size = os.fstat(self.file.fileno()).st_size

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def read_block(self) -> list[str]:
        """Read one block and return the lines it completes (the last one at EOF)."""
        assert self.file is not None
        data = self.file.read(self.block_size)
        final = not data
        try:
            text = self.decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            where = self.bytes_read + max(0, exc.start)
            raise ValueError(
                f"{self.path!r} is not valid {self.encoding} near byte {where}: "
                f"{exc.reason} (set errors: replace to substitute bad bytes)"
            ) from exc
        self.bytes_read += len(data)
        if final:
            self.eof = True
        carry = self._carry
        if "\n" not in text:
            if text:
                carry.append(text)
            if final and carry:
                last = "".join(carry)
                carry.clear()
                return [last]
            return []
        parts = text.split("\n")
        if carry:
            parts[0] = "".join(carry) + parts[0]
            carry.clear()
        tail = parts.pop()
        if tail:
            carry.append(tail)
        if self.strip:
            if "\r" in text:
                parts = [p[:-1] if p.endswith("\r") else p for p in parts]
            elif parts[0].endswith("\r"):  # "\r" ended the previous block
                parts[0] = parts[0][:-1]
        else:
            parts = [p + "\n" for p in parts]
        if final and carry:
            parts.append("".join(carry))
            carry.clear()
        return parts


@headwater.action(
    "file.lines",
    params=FileLinesParams,
    output="the lines of a text file, as str (without line terminators by default)",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def file_lines_source(
    params: FileLinesParams, ctx: StreamContext
) -> AsyncIterator[list[str]]:
    r"""Stream the lines of a text file in constant memory, reporting progress in bytes.

    Lines end at ``\n``; a ``\r`` right before it belongs to the terminator, a lone
    ``\r`` is content. A last line without terminator is emitted too. The file is read
    in large blocks in a worker thread, so the event loop never blocks on disk.
    """
    reader = _LineReader(params)
    await anyio.to_thread.run_sync(reader.open)
    try:
        skip = params.start_line - 1
        remaining = params.max_lines
        while not reader.eof and remaining != 0:
            lines = await anyio.to_thread.run_sync(reader.read_block)
            ctx.progress(reader.bytes_read, max(reader.size, reader.bytes_read))
            if skip:
                if skip >= len(lines):
                    skip -= len(lines)
                    continue
                lines = lines[skip:]
                skip = 0
            if remaining is not None:
                if len(lines) > remaining:
                    lines = lines[:remaining]
                remaining -= len(lines)
            if lines:
                yield lines
    finally:
        reader.close()


class StdinParams(BaseModel):
    """Params of ``stdin``."""

    model_config = ConfigDict(extra="forbid")

    strip_newline: bool = Field(
        True, description="Remove the line terminator (\\n or \\r\\n) from each line."
    )
    encoding: str = Field("utf-8", description="Text encoding of the input.")
    errors: str = Field(
        "strict",
        description="What to do with bytes that do not decode: strict (fail), replace, "
        "ignore, backslashreplace or surrogateescape.",
    )

    _encoding = field_validator("encoding")(_check_encoding)
    _errors = field_validator("errors")(_check_errors)


@headwater.action(
    "stdin",
    params=StdinParams,
    output="the lines of standard input, as str, each as soon as it arrives",
    capabilities=("streaming",),
)
def stdin_source(params: StdinParams, ctx: StreamContext) -> Iterator[str]:
    """Stream the lines of standard input, each one as soon as it is complete.

    Runs in a worker thread (the runtime runs sync generators off the event loop), so a
    slow or interactive producer never blocks the pipeline, and every line is delivered
    at once rather than waiting for a full batch.
    """
    stream = sys.stdin
    if stream is None:
        raise RuntimeError("stdin: this process has no standard input")
    buffer = getattr(stream, "buffer", None)
    wrapper: io.TextIOWrapper | None = None
    if buffer is not None:
        # Our own text layer over the shared binary buffer: honours ``encoding`` and
        # splits on "\n" only; detached (not closed) at the end, so stdin stays open.
        wrapper = io.TextIOWrapper(
            buffer, encoding=params.encoding, errors=params.errors, newline="\n"
        )
    lines: Iterable[str] = wrapper if wrapper is not None else stream
    try:
        if params.strip_newline:
            for line in lines:
                yield _strip_eol(line)
        else:
            yield from lines
    finally:
        if wrapper is not None:
            with contextlib.suppress(ValueError):  # already detached or closed
                wrapper.detach()


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the built-in sources."""
    register(range_source)
    register(iterable_source)
    register(file_lines_source)
    register(stdin_source)
