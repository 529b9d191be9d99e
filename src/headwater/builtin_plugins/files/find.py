"""``file.find``: search a directory tree for text or a regex, like ``grep -rn``.

Files are read in blocks in a worker thread. A block of complete lines is searched at
once first; only the blocks that match are split into lines. Binary files are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.policy import SandboxError, SandboxPolicy

from .._sandbox import check_path_param, param_of
from .._textio import check_errors, check_line_encoding, pull
from .._values import fspath as _fspath
from .paths import _where
from .walk import _BATCH_SECONDS, _close_iterator, _Entry, _matches, _Walker

_MiB = 1024 * 1024


class FileFindParams(BaseModel):
    """Params of ``file.find``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(
        ".",
        description="Directory to search recursively, or a single file; it must lie inside "
        "the operator's file roots.",
    )
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
        description="Follow symlinks met in the tree (like grep -R; loops are not entered, "
        "and symlinks out of the file roots are skipped); by default they are skipped "
        "(like grep -r).",
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
    _path_allowed = field_validator("path")(check_path_param)
    _errors = field_validator("errors")(check_errors)

    @field_validator("encoding")
    @classmethod
    def _encoding_ascii(cls, value: str) -> str:
        return check_line_encoding(value, "file.find")

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

    def __init__(self, params: FileFindParams, policy: SandboxPolicy, param: str) -> None:
        self.params = params
        self.policy = policy
        self.param = param
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
        if entry.kind != "file" or entry.error is not None:
            return False
        return not include or _matches(include, entry.name, entry.rel)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        """Yield one item per matching line; None after each file (a heartbeat)."""
        p = self.params
        root = os.path.expanduser(p.path)
        real = self.policy.check_path(p.path, param=self.param)
        if real.is_file():
            try:
                handle = self.policy.open_file(p.path, "rb", buffering=0, param=self.param)
            except OSError:
                self.errors += 1
                return
            yield from self._search_file(handle, p.path)
            return
        if not real.exists():
            raise FileNotFoundError(f"no such file or directory: {p.path!r}{_where(root)}")
        self.walker = _Walker(
            p.path,
            policy=self.policy,
            param=self.param,
            max_depth=p.max_depth,
            follow_symlinks=p.follow_symlinks,
            exclude=p.exclude,
            hidden=p.hidden,
        )
        for entry in self.walker:
            if entry is None or not self._wanted(entry):
                yield None
                continue
            try:
                handle = self.walker.open_file(entry)
            except (OSError, SandboxError):  # gone, or changed into a symlink: skipped
                self.errors += 1
                yield None
                continue
            yield from self._search_file(handle, entry.path)
            if self.truncated:
                return
        self.errors += self.walker.errors

    def _search_file(self, handle: IO[bytes], shown: str) -> Iterator[dict[str, Any] | None]:
        """Search one opened file (closed at the end)."""
        p = self.params
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

    The search stays inside the operator's file roots (see the Security page): the path
    must lie inside them, and with ``follow_symlinks`` symlinks out of them are skipped.
    """
    searcher = _Searcher(params, ctx.policy, param_of(ctx))
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
        refused = searcher.walker.refused if searcher.walker is not None else 0
        if refused:
            errors += f", {refused} entries out of the file roots skipped"
        ctx.status(
            f"{searcher.matches} matching lines in {searcher.files} files{skipped}{errors}{more}"
        )
    finally:
        # never running in a worker thread here: run_sync waits for the thread to return
        _close_iterator(walk)
