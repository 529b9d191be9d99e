"""``knowledge.files``: the files of a folder that mention the query's words.

The search itself is headwater's built-in ``file.find`` (the ``grep -rn`` of the file
tools, with the operator's sandbox), streamed through the public embedding API
(:meth:`headwater.Engine.stream_action`) of a small engine holding only the built-in
file tools and sharing the run's sandbox policy. Matching lines are grouped by file:
one hit per file, as soon as its matches are read, the file's first matching line as
the snippet.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import headwater
from pydantic import Field

from ..events import HitEvent
from ..text import terms
from .base import Emit, ProviderSettings, provider_events

__all__ = ["FilesParams", "FilesSettings", "files", "search_files"]

FILE_TOOLS = "headwater.files"
"""The entry point of headwater's built-in file tools (``file.find`` and friends)."""


class FilesSettings(ProviderSettings):
    """Settings of the file-tree provider."""

    path: str = Field(".", description="The folder to search (inside the file roots).")
    include: list[str] = Field(
        default_factory=lambda: ["*.md", "*.txt", "*.rst", "*.html"],
        description="Globs of the files to search.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: [".git", "node_modules", "__pycache__"],
        description="Globs of files and folders to skip.",
    )
    max_matches: int = Field(5000, ge=1, description="Stop reading after this many matching lines.")
    timeout: float = Field(3.0, gt=0, le=300, description="Seconds the search may take.")


class FilesParams(FilesSettings):
    """Params of ``knowledge.files``."""

    query: str = Field(min_length=1, max_length=1000, description="What to look for.")


@functools.cache
def _file_tools() -> object:
    """headwater's file tools plugin, found by its entry point like any plugin."""
    (entry,) = importlib.metadata.entry_points(group="headwater", name=FILE_TOOLS)
    return entry.load()


def word_pattern(query: str) -> str | None:
    """A regex matching any of the query's words as a whole word (None: no word)."""
    found = terms(query)
    if not found:
        return None
    return r"\b(?:" + "|".join(re.escape(t) for t in found) + r")\b"


async def search_files(params: FilesParams, ctx: headwater.StreamContext, emit: Emit) -> str | None:
    """One hit per file with lines matching the query, in the order ``file.find`` walks."""
    pattern = word_pattern(params.query)
    if pattern is None:
        return "no word to look for"
    engine = headwater.Engine(plugins=[_file_tools()], policy=ctx.policy)
    rank = 0
    current: str | None = None
    first: dict[str, Any] = {}
    lines = 0

    async def flush() -> None:
        nonlocal rank
        if current is None:
            return
        rank += 1
        path = Path(current).resolve()
        await emit(
            HitEvent(
                provider="files",
                rank=rank,
                url=path.as_uri(),
                title=path.name,
                snippet=str(first["text"]).strip()[:300],
                score=float(lines),
            )
        )

    chunks = engine.stream_action(
        "file.find",
        path=params.path,
        pattern=pattern,
        regex=True,
        ignore_case=True,
        include=params.include,
        exclude=params.exclude,
        max_matches=params.max_matches,
    )
    async with chunks:
        async for match in chunks:
            if match["file"] != current:
                await flush()
                if rank >= params.limit:
                    return None
                current, first, lines = match["file"], match, 0
            lines += 1
    if rank < params.limit:
        await flush()
    return None


@headwater.action(
    "knowledge.files",
    params=FilesParams,
    output="knowledge events: a started status, one hit per matching file, a final status",
    capabilities=("streaming", "progress"),
)
async def files(params: FilesParams, ctx: headwater.StreamContext) -> AsyncIterator[dict[str, Any]]:
    """Search a folder's text files for the query's words (with ``file.find``), one hit
    per matching file, streamed as the tree is walked."""
    async for event in provider_events("files", search_files, params, ctx):
        yield event
