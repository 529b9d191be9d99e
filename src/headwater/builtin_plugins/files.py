"""Built-in file streaming actions: ``file.view``, ``file.find`` and ``dir.tree``.

All three read in large blocks in worker threads (``anyio.to_thread.run_sync``), so the
event loop never waits on the disk, and stream their results in batches: memory stays
constant whatever the size of the file or of the tree. Each checks ``ctx.cancelled``
between blocks and closes what it opened in a ``finally``.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext

from ._textio import ByteLineSplitter, check_encoding, check_errors, is_ascii_compatible, pull

__all__ = [
    "DirTreeParams",
    "FileFindParams",
    "FileViewParams",
    "dir_tree",
    "file_find",
    "file_view",
    "register_actions",
]

_KiB = 1024
_MiB = 1024 * 1024
_BATCH_SECONDS = 0.1
"""Longest a worker-thread call of ``file.find`` / ``dir.tree`` runs before it reports."""


def _fspath(value: Any) -> Any:
    """Accept ``os.PathLike`` objects where a path string is expected."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _where(path: str) -> str:
    """`` (resolved to '/abs/path')`` for relative paths, for error messages."""
    return "" if os.path.isabs(path) else f" (resolved to {os.path.abspath(path)!r})"


# ---------------------------------------------------------------------------------------
# file.view
# ---------------------------------------------------------------------------------------


class FileViewParams(BaseModel):
    """Params of ``file.view``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(description="Path of the file to view (relative to the working dir).")
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


def _open_file(path: str) -> tuple[IO[bytes], os.stat_result]:
    """Open ``path`` for unbuffered binary reading; errors name the path."""
    real = os.path.expanduser(path)
    try:
        handle = open(real, "rb", buffering=0)  # noqa: SIM115 - closed by the caller
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

    def __init__(self, params: FileViewParams) -> None:
        self.params = params
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
        self.handle, info = _open_file(p.path)
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
    """
    viewer = _Viewer(params)
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


# ---------------------------------------------------------------------------------------
# Walking a tree (shared by file.find and dir.tree)
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """One entry met while walking a tree."""

    path: str
    rel: str
    name: str
    kind: str
    depth: int
    size: int
    link: str | None = None
    loop: bool = False
    error: str | None = None

    def to_item(self) -> dict[str, Any]:
        """The ``dir.tree`` item: optional keys only when they say something."""
        item: dict[str, Any] = {
            "path": self.path,
            "name": self.name,
            "type": self.kind,
            "size": self.size,
            "depth": self.depth,
        }
        if self.link is not None:
            item["link"] = self.link
        if self.loop:
            item["loop"] = True
        if self.error is not None:
            item["error"] = self.error
        return item


def _matches(patterns: list[str], name: str, rel: str) -> bool:
    """Does a glob match the entry? Patterns with a ``/`` match the relative path."""
    for pattern in patterns:
        target = rel if "/" in pattern else name
        if fnmatch.fnmatchcase(target, pattern):
            return True
    return False


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


class _Walker:
    """Depth-first, name-ordered walk of a directory tree; safe from symlink loops.

    Symlinks are not followed unless ``follow_symlinks``; when they are, a directory that
    is its own ancestor (a loop) is reported with ``loop`` set and not entered. Memory is
    one directory listing per level of the current path.
    """

    def __init__(
        self,
        root: str,
        *,
        max_depth: int | None,
        follow_symlinks: bool,
        exclude: list[str],
        hidden: bool,
    ) -> None:
        self.root = root
        self.max_depth = max_depth
        self.follow = follow_symlinks
        self.exclude = exclude
        self.hidden = hidden
        self.errors = 0
        self.entries = 0

    @staticmethod
    def _list(path: str) -> tuple[list[os.DirEntry[str]], str | None]:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name), None
        except OSError as exc:
            return [], exc.strerror or str(exc)

    def _classify(self, entry: os.DirEntry[str], path: str, rel: str, depth: int) -> _Entry:
        link: str | None = None
        try:
            if entry.is_symlink():
                link = os.readlink(path)
                if not self.follow:
                    info = entry.stat(follow_symlinks=False)
                    return _Entry(path, rel, entry.name, "symlink", depth, info.st_size, link)
            info = entry.stat(follow_symlinks=True)
        except OSError as exc:
            kind = "symlink" if link is not None else "other"
            message = "broken link" if link is not None else (exc.strerror or str(exc))
            return _Entry(path, rel, entry.name, kind, depth, 0, link, error=message)
        return _Entry(path, rel, entry.name, _kind(info.st_mode), depth, info.st_size, link)

    def __iter__(self) -> Iterator[_Entry | None]:
        """Yield entries in pre-order (a directory before its content); None: heartbeat."""
        root = os.path.expanduser(self.root)
        try:
            info = os.stat(root)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such directory: {self.root!r}{_where(root)}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(f"{self.root!r} is not a directory{_where(root)}")
        children, error = self._list(root)
        if error is not None:
            raise PermissionError(f"cannot list {self.root!r}: {error}")
        root_key = (info.st_dev, info.st_ino)
        active = {root_key}
        stack: list[tuple[Iterator[os.DirEntry[str]], str, str, int, tuple[int, int]]] = [
            (iter(children), self.root, "", 1, root_key)
        ]
        while stack:
            it, dir_path, dir_rel, depth, key = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                active.discard(key)
                yield None
                continue
            name = entry.name
            if not self.hidden and name.startswith("."):
                continue
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if self.exclude and _matches(self.exclude, name, rel):
                continue
            item = self._classify(entry, os.path.join(dir_path, name), rel, depth)
            self.entries += 1
            descend: tuple[list[os.DirEntry[str]], tuple[int, int]] | None = None
            if item.kind == "dir" and (self.max_depth is None or depth < self.max_depth):
                try:
                    sub = os.stat(item.path)
                    sub_key = (sub.st_dev, sub.st_ino)
                except OSError as exc:
                    item.error = exc.strerror or str(exc)
                    sub_key = None
                if sub_key is not None and sub_key in active:
                    item.loop = True
                elif sub_key is not None:
                    listing, error = self._list(item.path)
                    if error is not None:
                        item.error = error
                    else:
                        descend = (listing, sub_key)
                if item.error is not None:
                    self.errors += 1
            yield item
            if descend is not None:
                active.add(descend[1])
                stack.append((iter(descend[0]), item.path, rel, depth + 1, descend[1]))


# ---------------------------------------------------------------------------------------
# dir.tree
# ---------------------------------------------------------------------------------------


class DirTreeParams(BaseModel):
    """Params of ``dir.tree``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(".", description="Directory to walk (relative to the working dir).")
    max_depth: int | None = Field(
        None, ge=1, description="Deepest level to show: 1 is the directory's own entries."
    )
    follow_symlinks: bool = Field(
        False,
        description="Enter symlinked directories (loops are detected and not entered); "
        "otherwise symlinks are listed as type symlink.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns of entries to leave out (a directory's content too); a "
        "pattern with a / matches the path relative to the root, others the name.",
    )
    hidden: bool = Field(True, description="Include entries whose name starts with a dot.")
    dirs_only: bool = Field(False, description="Only list directories.")

    _path = field_validator("path", mode="before")(_fspath)


def _tree_batch(walk: Iterator[_Entry | None], dirs_only: bool) -> tuple[list[Any], bool]:
    items, done = pull(walk, 1000, _BATCH_SECONDS)
    return [e.to_item() for e in items if not dirs_only or e.kind == "dir"], done


@headwater.action(
    "dir.tree",
    params=DirTreeParams,
    output="{path, name, type (file|dir|symlink|other), size, depth[, link, loop, error]}",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def dir_tree(params: DirTreeParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Stream the entries of a directory tree, depth first, in name order.

    Each entry has its path (the root joined with the relative path), name, type, size
    and depth (1 for the root's own entries). Symlinks are not followed unless asked,
    and a symlink loop is never entered. Progress counts the entries seen.
    """
    walker = _Walker(
        params.path,
        max_depth=params.max_depth,
        follow_symlinks=params.follow_symlinks,
        exclude=params.exclude,
        hidden=params.hidden,
    )
    walk = iter(walker)
    try:
        done = False
        while not done:
            if ctx.cancelled:
                return
            items, done = await anyio.to_thread.run_sync(_tree_batch, walk, params.dirs_only)
            ctx.progress(walker.entries, None)
            if items:
                yield items
        if walker.errors:
            ctx.status(f"{walker.errors} entries could not be read")
    finally:
        # never running in a worker thread here: run_sync waits for the thread to return
        _close_iterator(walk)


def _close_iterator(it: Iterator[Any]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------------------------
# file.find
# ---------------------------------------------------------------------------------------


class FileFindParams(BaseModel):
    """Params of ``file.find``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(".", description="Directory to search recursively, or a single file.")
    pattern: str = Field(min_length=1, description="Text to look for (a regex with regex: true).")
    regex: bool = Field(False, description="Treat the pattern as a Python regular expression.")
    ignore_case: bool = Field(False, description="Match without regard to case.")
    include: list[str] = Field(
        default_factory=list,
        description="Only search files matching one of these globs (e.g. '*.py'); a "
        "pattern with a / matches the path relative to the root, others the file name.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Skip files and directories matching one of these globs (e.g. "
        "'node_modules', '*.min.js').",
    )
    hidden: bool = Field(True, description="Search entries whose name starts with a dot.")
    follow_symlinks: bool = Field(
        False,
        description="Follow symlinks met in the tree (like grep -R; loops are not entered); "
        "by default they are skipped (like grep -r).",
    )
    max_depth: int | None = Field(
        None, ge=1, description="Deepest directory level to search (1: the root's own files)."
    )
    max_matches: int | None = Field(
        None, ge=1, description="Stop after this many matching lines (None: no limit)."
    )
    encoding: str = Field("utf-8", description="Text encoding of the files (ASCII-compatible).")
    errors: str = Field(
        "replace", description="What to do with bytes that do not decode (default replace)."
    )
    max_line_bytes: int = Field(
        1 * _MiB,
        ge=1,
        le=256 * _MiB,
        description="Longer lines are searched in pieces of this many bytes (bounded memory).",
    )
    block_size: int = Field(
        1 * _MiB, ge=1, le=64 * _MiB, description="Bytes read per block of a file."
    )

    _path = field_validator("path", mode="before")(_fspath)
    _errors = field_validator("errors")(check_errors)

    @field_validator("encoding")
    @classmethod
    def _encoding_ascii(cls, value: str) -> str:
        check_encoding(value)
        if not is_ascii_compatible(value):
            raise ValueError(f"file.find needs an ASCII-compatible encoding, not {value!r}")
        return value

    @model_validator(mode="after")
    def _pattern_compiles(self) -> FileFindParams:
        if self.regex:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        return self


_NO_PREFILTER = re.compile(r"\(\?[=!<]|\(\?[aiLmsux-]+[:)]|\\[AZz]")
"""Regex features whose result on a block of lines may differ from that on each line."""


class _Searcher:
    """The blocking search behind ``file.find``: a generator of match items."""

    def __init__(self, params: FileFindParams) -> None:
        self.params = params
        flags = re.IGNORECASE if params.ignore_case else 0
        source = params.pattern if params.regex else re.escape(params.pattern)
        self.rx = re.compile(source, flags)
        # A block of complete lines is searched at once first; only blocks that match are
        # split into lines. Skipped when a pattern could see across line ends.
        self.block_rx = None
        if not params.regex or not _NO_PREFILTER.search(params.pattern):
            self.block_rx = re.compile(source, flags | re.MULTILINE)
        self.needle: bytes | None = None
        if not params.regex and not params.ignore_case:
            try:
                self.needle = params.pattern.encode(params.encoding)
            except UnicodeError:
                self.needle = None
        self.files = 0
        self.binary = 0
        self.errors = 0
        self.matches = 0
        self.truncated = False
        self.walker: _Walker | None = None

    @property
    def entries(self) -> int:
        """Entries of the tree seen so far."""
        return self.walker.entries if self.walker is not None else self.files

    def _wanted(self, entry: _Entry) -> bool:
        include = self.params.include
        return entry.kind == "file" and (not include or _matches(include, entry.name, entry.rel))

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        """Yield one item per matching line; None after each file (a heartbeat)."""
        p = self.params
        root = os.path.expanduser(p.path)
        if os.path.isfile(root):
            yield from self._search_file(root, p.path)
            return
        if not os.path.exists(root):
            raise FileNotFoundError(f"no such file or directory: {p.path!r}{_where(root)}")
        self.walker = _Walker(
            p.path,
            max_depth=p.max_depth,
            follow_symlinks=p.follow_symlinks,
            exclude=p.exclude,
            hidden=p.hidden,
        )
        for entry in self.walker:
            if entry is None or not self._wanted(entry):
                yield None
                continue
            yield from self._search_file(entry.path, entry.path)
            if self.truncated:
                return
        self.errors += self.walker.errors

    def _search_file(self, path: str, shown: str) -> Iterator[dict[str, Any] | None]:
        p = self.params
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError:
            self.errors += 1
            yield None
            return
        self.files += 1
        try:
            line = 1
            col_base = 0  # characters of the current line already searched (long lines)
            carry = b""
            first = True
            limit = p.max_line_bytes
            while True:
                block = handle.read(p.block_size)
                if b"\0" in block:
                    # binary: skipped when it starts so, abandoned when it turns out so
                    if first:
                        self.binary += 1
                    return
                first = False
                final = not block
                buf = carry + block if carry else block
                cut = len(buf) if final else buf.rfind(b"\n") + 1
                complete, carry = buf[:cut], buf[cut:]
                if complete:
                    yield from self._search_lines(complete, shown, line, col_base)
                    if self.truncated:
                        return
                    line += complete.count(b"\n")
                    col_base = 0
                while len(carry) > limit:  # a very long line: search it piece by piece
                    piece, carry = carry[:limit], carry[limit:]
                    text = piece.decode(p.encoding, p.errors)
                    yield from self._search_text(text, shown, line, col_base)
                    if self.truncated:
                        return
                    col_base += len(text)
                yield None
                if final:
                    return
        finally:
            handle.close()

    def _search_lines(
        self, data: bytes, shown: str, line: int, col_base: int
    ) -> Iterator[dict[str, Any]]:
        p = self.params
        if self.needle is not None and self.needle not in data:
            return
        text = data.decode(p.encoding, p.errors)
        if self.block_rx is not None and self.block_rx.search(text) is None:
            return
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        for i, content in enumerate(lines):
            yield from self._search_text(content, shown, line + i, col_base if i == 0 else 0)
            if self.truncated:
                return

    def _search_text(
        self, content: str, shown: str, line: int, col_base: int
    ) -> Iterator[dict[str, Any]]:
        if content.endswith("\r"):
            content = content[:-1]
        found = self.rx.search(content)
        if found is None:
            return
        self.matches += 1
        yield {
            "file": shown,
            "line": line,
            "column": col_base + found.start() + 1,
            "text": content,
            "match": found.group(0),
        }
        limit = self.params.max_matches
        if limit is not None and self.matches >= limit:
            self.truncated = True


@headwater.action(
    "file.find",
    params=FileFindParams,
    output="one item per matching line: {file, line, column, text, match}",
    capabilities=("streaming", "progress"),
    batched=True,
)
async def file_find(params: FileFindParams, ctx: StreamContext) -> AsyncIterator[list[Any]]:
    """Search a directory tree for text or a regex, streaming matching lines as found.

    Like ``grep -rn``: one item per matching line with its file, 1-based line number,
    1-based column of the first match, the line's text and the matched text. Files are
    walked depth first in name order; ``include`` / ``exclude`` globs select them; binary
    files (a NUL byte) are skipped; symlinks are skipped unless ``follow_symlinks``, and
    symlink loops are never entered. Progress counts the files searched.
    """
    searcher = _Searcher(params)
    walk = iter(searcher)
    try:
        done = False
        while not done:
            if ctx.cancelled:
                return
            items, done = await anyio.to_thread.run_sync(pull, walk, 1000, _BATCH_SECONDS)
            ctx.progress(searcher.files, None, f"{searcher.matches} matches")
            if items:
                yield items
        skipped = f", {searcher.binary} binary skipped" if searcher.binary else ""
        errors = f", {searcher.errors} unreadable" if searcher.errors else ""
        more = " (stopped at max_matches)" if searcher.truncated else ""
        ctx.status(
            f"{searcher.matches} matching lines in {searcher.files} files{skipped}{errors}{more}"
        )
    finally:
        # never running in a worker thread here: run_sync waits for the thread to return
        _close_iterator(walk)


@headwater.hookimpl
def register_actions(register: Any) -> None:
    """Register the file streaming actions."""
    register(file_view)
    register(file_find)
    register(dir_tree)
