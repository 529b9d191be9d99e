"""Built-in stream actions (sources)."""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import stat
import sys
from collections.abc import AsyncIterator, Iterable
from threading import Event, Thread
from typing import IO, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext

from ._sandbox import check_path_param, param_of
from ._textio import check_encoding, check_errors
from ._values import fspath as _fspath


class RangeParams(BaseModel):
    """Params of ``range``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    start: int = Field(0, description="First value.")
    stop: int = Field(description="End value (exclusive).")
    step: int = Field(1, description="Increment; may be negative, not zero.")
    chunk: int = Field(4096, ge=1, le=1_000_000, description="Values emitted per batch.")


@headwater.action(
    "range",
    params=RangeParams,
    output="integers from start to stop (exclusive)",
    capabilities=("streaming", "progress", "resumable"),
    batched=True,
    sample_params={"stop": 10},
)
async def range_source(params: RangeParams, ctx: StreamContext) -> AsyncIterator[list[int]]:
    """Count from ``start`` to ``stop`` like Python's range(), in batches.

    Resumable: the position is the number of values emitted.
    """
    if params.step == 0:
        raise ValueError("range step must not be zero")
    values = range(params.start, params.stop, params.step)
    total = len(values)
    chunk = params.chunk
    first = _resume_index(ctx.resume_position, total)
    ctx.checkpoint(first)
    for offset in range(first, total, chunk):
        end = min(offset + chunk, total)
        yield list(values[offset:end])
        ctx.checkpoint(end)
        ctx.progress(end, total)


def _resume_index(position: Any, total: int) -> int:
    """The index a resumed ``range`` continues from."""
    if position is None:
        return 0
    if not isinstance(position, int) or isinstance(position, bool) or not 0 <= position <= total:
        raise ValueError(
            f"range cannot resume from position {position!r}: expected an index in 0..{total}"
        )
    return position


class IterableParams(BaseModel):
    """Params of ``iterable``."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

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


class FileLinesParams(BaseModel):
    """Params of ``file.lines``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        description="Path of the text file to read (relative to the working dir); it must "
        "lie inside the operator's file roots."
    )
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
    _path_allowed = field_validator("path")(check_path_param)
    _encoding = field_validator("encoding")(check_encoding)
    _errors = field_validator("errors")(check_errors)


class _LineSplitter:
    r"""Incremental decoding and line splitting, fed with blocks of any size.

    Bytes are decoded incrementally (a multi-byte character cut by a block boundary is
    fine) and the text is split on ``\n``; the unfinished last line of a block is carried
    over to the next one. Memory is one block plus the longest line.
    """

    def __init__(self, encoding: str, errors: str, strip_newline: bool) -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors)
        self.encoding = encoding
        self.errors = errors
        self.strip = strip_newline
        self._carry: list[str] = []

    def pending(self) -> tuple[int, bool]:
        """Bytes fed but not yet returned as lines (decoder buffer + unfinished line)."""
        buffered, _ = self._decoder.getstate()
        carried = "".join(self._carry).encode(self.encoding, self.errors) if self._carry else b""
        return len(buffered) + len(carried), bool(self._carry)

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        """Decode ``data``; return the lines it completes (and the last one if ``final``)."""
        return self.feed_text(self._decoder.decode(data, final), final)

    def feed_text(self, text: str, final: bool = False) -> list[str]:
        """Like :meth:`feed`, for input that is already text."""
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
            elif parts[0].endswith("\r"):  # the "\r" ended the previous block
                parts[0] = parts[0][:-1]
        else:
            parts = [p + "\n" for p in parts]
        if final and carry:
            parts.append("".join(carry))
            carry.clear()
        return parts


def _decode_error(what: str, encoding: str, offset: int, exc: UnicodeDecodeError) -> ValueError:
    """A readable error for undecodable input, with the approximate byte offset."""
    return ValueError(
        f"{what} is not valid {encoding} near byte {offset + max(0, exc.start)}: "
        f"{exc.reason} (set errors: replace to substitute bad bytes)"
    )


class _LineReader:
    """Blocking, block-wise reader of a file's lines; every method runs in a worker thread."""

    def __init__(self, params: FileLinesParams, ctx: StreamContext) -> None:
        self.path = params.path
        self.policy = ctx.policy
        self.param = param_of(ctx)
        self.encoding = params.encoding
        self.block_size = params.block_size
        self.splitter = _LineSplitter(params.encoding, params.errors, params.strip_newline)
        self.file: IO[bytes] | None = None
        self.size: int | None = 0
        """Size of a regular file at open (None for pipes and devices)."""
        self.bytes_read = 0
        self.eof = False

    def open(self) -> None:
        """Open the file; errors name the path."""
        path = os.path.expanduser(self.path)
        where = "" if os.path.isabs(path) else f" (resolved to {os.path.abspath(path)!r})"
        try:
            # unbuffered: one read() syscall per block, which also returns promptly with
            # what is there on a FIFO or a character device
            self.file = self.policy.open_file(path, "rb", buffering=0, param=self.param)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {self.path!r}{where}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"{self.path!r} is a directory, not a file{where}") from None
        except OSError as exc:
            raise type(exc)(f"cannot open {self.path!r}{where}: {exc.strerror or exc}") from exc
        info = os.fstat(self.file.fileno())
        self.size = info.st_size if stat.S_ISREG(info.st_mode) else None

    def resume(self, position: Any) -> int:
        """Seek to a committed position; returns the number of lines read before it."""
        if (
            not isinstance(position, dict)
            or not isinstance(position.get("offset"), int)
            or not isinstance(position.get("line"), int)
        ):
            raise ValueError(
                f"file.lines cannot resume from position {position!r}: expected "
                '{"offset": int, "line": int}'
            )
        assert self.file is not None
        offset = position["offset"]
        if self.size is not None and offset > self.size:
            raise ValueError(
                f"{self.path!r} is shorter ({self.size} bytes) than the committed position "
                f"({offset} bytes): the file was truncated or replaced since the checkpoint; "
                "reset the checkpoint to read it from the start"
            )
        self.file.seek(offset)
        self.bytes_read = offset
        return int(position["line"])

    def line_offset(self) -> int:
        """Byte offset just after the last complete line returned so far."""
        pending, _ = self.splitter.pending()
        return self.bytes_read - pending

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
            lines = self.splitter.feed(data, final)
        except UnicodeDecodeError as exc:
            raise _decode_error(repr(self.path), self.encoding, self.bytes_read, exc) from exc
        self.bytes_read += len(data)
        self.eof = final
        return lines


@headwater.action(
    "file.lines",
    params=FileLinesParams,
    output="the lines of a text file, as str (without line terminators by default)",
    capabilities=("streaming", "progress", "resumable"),
    batched=True,
)
async def file_lines_source(
    params: FileLinesParams, ctx: StreamContext
) -> AsyncIterator[list[str]]:
    r"""Stream the lines of a text file in constant memory, reporting progress in bytes.

    Lines end at ``\n``; a ``\r`` right before it belongs to the terminator, a lone
    ``\r`` is content. A last line without terminator is emitted too. The file is read
    in large blocks in a worker thread, so the event loop never blocks on disk.

    Resumable: the position is ``{"offset": byte offset after the last whole line read,
    "line": lines read so far}``; resuming seeks there (exact for encodings whose text
    re-encodes to the same bytes, such as UTF-8 read with ``errors: strict``).
    """
    reader = _LineReader(params, ctx)
    await anyio.to_thread.run_sync(reader.open)
    try:
        consumed = 0
        if ctx.resume_position is not None:
            consumed = await anyio.to_thread.run_sync(reader.resume, ctx.resume_position)
        skip = max(0, params.start_line - 1 - consumed)
        remaining = params.max_lines
        if remaining is not None:
            remaining = max(0, remaining - max(0, consumed - (params.start_line - 1)))
        ctx.checkpoint({"offset": reader.line_offset(), "line": consumed})
        while not reader.eof and remaining != 0:
            lines = await anyio.to_thread.run_sync(reader.read_block)
            consumed += len(lines)
            size = reader.size
            ctx.progress(reader.bytes_read, None if size is None else max(size, reader.bytes_read))
            if skip:
                if skip >= len(lines):
                    skip -= len(lines)
                    ctx.checkpoint({"offset": reader.line_offset(), "line": consumed})
                    continue
                lines = lines[skip:]
                skip = 0
            if remaining is not None:
                if len(lines) > remaining:
                    lines = lines[:remaining]
                remaining -= len(lines)
            if lines:
                yield lines
            ctx.checkpoint({"offset": reader.line_offset(), "line": consumed})
    finally:
        reader.close()


_EOF = object()
"""Sentinel: the reader thread reached the end of the input."""

_STDIN_CHUNK = 64 * 1024
"""Most bytes taken from standard input at once (``read1``: whatever is available)."""


def _read_stdin(
    stream: Any, splitter: _LineSplitter, encoding: str, out: queue.Queue[Any], stop: Event
) -> None:
    """Reader thread: put lists of lines, then ``_EOF`` or the exception, into ``out``."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.25)
            except queue.Full:
                continue
            return True
        return False

    try:
        buffer = getattr(stream, "buffer", None)
        read1 = getattr(buffer, "read1", None)
        offset = 0
        while not stop.is_set():
            if read1 is not None:
                # read1 returns as soon as *some* input is there: a line typed at a
                # terminal, or a pipe's pending bytes; b"" only at the end of the input.
                data = read1(_STDIN_CHUNK)
                final = not data
                try:
                    lines = splitter.feed(data, final)
                except UnicodeDecodeError as exc:
                    raise _decode_error("stdin", encoding, offset, exc) from exc
                offset += len(data)
            else:  # a text stream without binary buffer (e.g. io.StringIO)
                text = stream.readline()
                final = not text
                lines = splitter.feed_text(text, final)
            if lines and not put(lines):
                return
            if final:
                put(_EOF)
                return
    except BaseException as exc:  # handed over to the event loop side
        put(exc)


def _take(chunks: queue.Queue[Any]) -> Any:
    """Block (in a worker thread) until the reader thread hands something over."""
    return chunks.get()


class StdinParams(BaseModel):
    """Params of ``stdin``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    strip_newline: bool = Field(
        True, description="Remove the line terminator (\\n or \\r\\n) from each line."
    )
    encoding: str = Field("utf-8", description="Text encoding of the input.")
    errors: str = Field(
        "strict",
        description="What to do with bytes that do not decode: strict (fail), replace, "
        "ignore, backslashreplace or surrogateescape.",
    )

    _encoding = field_validator("encoding")(check_encoding)
    _errors = field_validator("errors")(check_errors)


@headwater.action(
    "stdin",
    params=StdinParams,
    output="the lines of standard input, as str, each as soon as it arrives",
    capabilities=("streaming",),
    batched=True,
)
async def stdin_source(params: StdinParams, ctx: StreamContext) -> AsyncIterator[list[str]]:
    r"""Stream the lines of standard input, each one as soon as it is complete.

    Lines are split like ``file.lines`` does. A typed line is delivered at once (no
    waiting for a full batch); piped input is taken in large chunks, so it is fast too.
    Input is read by a daemon thread: a run that is cancelled while stdin is idle ends at
    once and never keeps the process from exiting.
    """
    stream = sys.stdin
    if stream is None:
        raise RuntimeError("this process has no standard input")
    splitter = _LineSplitter(params.encoding, params.errors, params.strip_newline)
    chunks: queue.Queue[Any] = queue.Queue(maxsize=4)
    stop = Event()
    reader = Thread(
        target=_read_stdin,
        args=(stream, splitter, params.encoding, chunks, stop),
        name="headwater-stdin",
        daemon=True,
    )
    reader.start()
    try:
        while True:
            # abandon_on_cancel: cancellation does not wait for input; the abandoned
            # worker is released by the sentinel put below.
            item = await anyio.to_thread.run_sync(_take, chunks, abandon_on_cancel=True)
            if item is _EOF:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Full):
            chunks.put_nowait(_EOF)
