"""``file.view``: a file of any size as numbered lines or chunks, by byte range.

The file is read in large blocks in a worker thread (``anyio.to_thread.run_sync``) and
streamed in batches, in constant memory.
"""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import AsyncIterator
from typing import IO, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.policy import SandboxPolicy

from .._sandbox import check_path_param, param_of
from .._textio import ByteLineSplitter, check_encoding, check_errors, is_ascii_compatible
from .._values import fspath as _fspath
from .paths import _where

_KiB = 1024
_MiB = 1024 * 1024


class FileViewParams(BaseModel):
    """Params of ``file.view``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        description="Path of the file to view (relative to the working dir); it must lie "
        "inside the operator's file roots."
    )
    mode: Literal["lines", "chunks"] = Field(
        "lines",
        description="lines: numbered lines {line, offset, text}; chunks: blocks of the file "
        "{offset, size, data}.",
    )
    offset: int = Field(
        0,
        description="Byte offset to start at; a negative offset counts from the end of the "
        "file (-1000: the last 1000 bytes).",
    )
    length: int | None = Field(
        None, ge=0, description="Bytes to read from the offset (None: to the end of the file)."
    )
    chunk_size: int = Field(
        8 * _KiB,
        ge=1,
        le=64 * _MiB,
        description="Bytes per item in chunks mode. A pipeline bounds the items in flight, "
        "not their size: chunk_size x a few thousand items is the worst-case memory.",
    )
    encoding: str | None = Field(
        "utf-8",
        description="Text encoding; None (chunks mode only) yields the raw bytes. Lines mode "
        "needs an ASCII-compatible encoding (utf-8, latin-1, cp1252, ...).",
    )
    errors: str = Field(
        "replace",
        description="What to do with bytes that do not decode: replace (the default), "
        "strict (fail), ignore, backslashreplace or surrogateescape.",
    )
    line_numbers: Literal["absolute", "relative"] = Field(
        "absolute",
        description="With an offset: absolute numbers lines from the start of the file "
        "(counting the lines before the offset, in constant memory); relative numbers the "
        "first line at the offset 1.",
    )
    max_line_bytes: int = Field(
        8 * _KiB,
        ge=1,
        le=256 * _MiB,
        description="Longer lines come out in pieces of this many bytes, marked partial: "
        "true, so that memory stays bounded even for a file that is one huge line.",
    )
    block_size: int = Field(
        1 * _MiB, ge=1, le=64 * _MiB, description="Bytes read per worker-thread call."
    )

    _path = field_validator("path", mode="before")(_fspath)
    _path_allowed = field_validator("path")(check_path_param)

    @field_validator("encoding")
    @classmethod
    def _encoding_known(cls, value: str | None) -> str | None:
        return None if value is None else check_encoding(value)

    _errors = field_validator("errors")(check_errors)

    @model_validator(mode="after")
    def _lines_need_text(self) -> FileViewParams:
        if self.mode == "lines":
            if self.encoding is None:
                raise ValueError("mode lines needs an encoding (encoding: null is for chunks)")
            if not is_ascii_compatible(self.encoding):
                raise ValueError(
                    f"mode lines needs an ASCII-compatible encoding, not {self.encoding!r}; "
                    "use mode chunks"
                )
        return self


def _open_file(path: str, policy: SandboxPolicy, param: str) -> tuple[IO[bytes], os.stat_result]:
    """Open ``path`` for unbuffered binary reading inside the policy's roots; errors name
    the path (and ``param`` when the policy refuses it)."""
    real = os.path.expanduser(path)
    try:
        handle = policy.open_file(path, "rb", buffering=0, param=param)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path!r}{_where(real)}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path!r} is a directory, not a file{_where(real)}") from None
    except OSError as exc:
        raise type(exc)(f"cannot open {path!r}{_where(real)}: {exc.strerror or exc}") from exc
    return handle, os.fstat(handle.fileno())


def _count_newlines(handle: IO[bytes], end: int, block_size: int) -> int:
    """Number of ``\\n`` bytes in the first ``end`` bytes, reading block by block."""
    count = 0
    handle.seek(0)
    left = end
    while left > 0:
        data = handle.read(min(block_size, left))
        if not data:
            break
        count += data.count(b"\n")
        left -= len(data)
    return count


class _Viewer:
    """Blocking, block-wise reader behind ``file.view``; methods run in a worker thread."""

    def __init__(self, params: FileViewParams, policy: SandboxPolicy, param: str) -> None:
        self.params = params
        self.policy = policy
        self.param = param
        self.handle: IO[bytes] | None = None
        self.start = 0
        self.total: int | None = None
        """Bytes in the range (None: to the end of a file whose size is unknown)."""
        self.done = 0
        self.eof = False
        self.splitter: ByteLineSplitter | None = None
        self.decoder: codecs.IncrementalDecoder | None = None
        self.read_size = params.block_size
        if params.mode == "chunks":  # whole chunks per read
            chunk = params.chunk_size
            self.read_size = max(1, params.block_size // chunk) * chunk

    def open(self) -> None:
        """Open the file, resolve the byte range, count lines before it if asked."""
        p = self.params
        self.handle, info = _open_file(p.path, self.policy, self.param)
        regular = stat.S_ISREG(info.st_mode)
        size = info.st_size if regular else None
        if size is None:
            if p.offset != 0:
                raise ValueError(f"{p.path!r} is not a regular file: offset must be 0")
            start = 0
        elif p.offset < 0:
            start = max(0, size + p.offset)
        else:
            start = min(p.offset, size)
        end = size if p.length is None else (None if size is None else min(size, start + p.length))
        if p.length is not None and size is None:
            self.total = p.length
        else:
            self.total = None if end is None else end - start
        first_line = 1
        if p.mode == "lines" and start and p.line_numbers == "absolute":
            first_line += _count_newlines(self.handle, start, max(p.block_size, _MiB))
        if start:
            self.handle.seek(start)
        self.start = start
        if p.mode == "lines":
            assert p.encoding is not None
            self.splitter = ByteLineSplitter(
                p.encoding,
                p.errors,
                max_line_bytes=p.max_line_bytes,
                first_line=first_line,
                offset=start,
            )
        elif p.encoding is not None:
            self.decoder = codecs.getincrementaldecoder(p.encoding)(p.errors)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _read(self) -> bytes:
        assert self.handle is not None
        want = self.read_size
        if self.params.length is not None:
            want = min(want, self.params.length - self.done)
        data = self.handle.read(want) if want > 0 else b""
        self.done += len(data)
        if not data or (self.params.length is not None and self.done >= self.params.length):
            self.eof = True
        return data

    def read_batch(self) -> list[dict[str, Any]]:
        """Read one block and return its items."""
        position = self.start + self.done
        data = self._read()
        try:
            return self._items(data, position)
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{self.params.path!r} is not valid {self.params.encoding} near byte "
                f"{position + max(0, exc.start)}: {exc.reason} (set errors: replace to "
                "substitute bad bytes)"
            ) from exc

    def _items(self, data: bytes, position: int) -> list[dict[str, Any]]:
        if self.splitter is not None:
            items: list[dict[str, Any]] = []
            for line, offset, text, partial in self.splitter.feed(data, self.eof):
                item: dict[str, Any] = {"line": line, "offset": offset, "text": text}
                if partial:
                    item["partial"] = True
                items.append(item)
            return items
        chunk = self.params.chunk_size
        out: list[dict[str, Any]] = []
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            last = self.eof and i + chunk >= len(data)
            value: str | bytes = piece
            if self.decoder is not None:
                value = self.decoder.decode(piece, last)
            out.append({"offset": position + i, "size": len(piece), "data": value})
        if not data and self.decoder is not None:
            tail = self.decoder.decode(b"", True)  # an incomplete character at the very end
            if tail:
                out.append({"offset": position, "size": 0, "data": tail})
        return out


@headwater.action(
    "file.view",
    params=FileViewParams,
    output="lines mode: {line, offset, text[, partial]}; chunks mode: {offset, size, data}",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def file_view(params: FileViewParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """View a file of any size in constant memory: numbered lines or chunks, by byte range.

    ``offset`` / ``length`` select a byte range (a negative offset counts from the end).
    Lines carry their 1-based number and byte offset; lines longer than
    ``max_line_bytes`` come out in pieces marked ``partial``. Progress is in bytes of the
    range. The file is read in blocks in a worker thread.

    The file must lie inside the operator's file roots (see the Security page), checked
    again when it is opened.
    """
    viewer = _Viewer(params, ctx.policy, param_of(ctx))
    try:
        await anyio.to_thread.run_sync(viewer.open)
        while not viewer.eof:
            if ctx.cancelled:
                return
            items = await anyio.to_thread.run_sync(viewer.read_batch)
            total = viewer.total
            ctx.progress(viewer.done, None if total is None else max(total, viewer.done))
            if items:
                yield items
    finally:
        viewer.close()
