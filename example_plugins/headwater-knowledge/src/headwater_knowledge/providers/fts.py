"""``knowledge.fts``: full-text search of a local SQLite FTS5 index, ranked by BM25."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import headwater
from pydantic import Field

from ..events import HitEvent
from ..index import open_index, search_rows
from ..text import fts_query
from .base import Emit, ProviderSettings, provider_events

__all__ = ["FtsParams", "FtsSettings", "fts", "search_fts"]


class FtsSettings(ProviderSettings):
    """Settings of the full-text provider."""

    index: str = Field(
        "knowledge.db",
        description="The index file built by `headwater-knowledge index` (inside the "
        "operator's file roots).",
    )
    content_chars: int = Field(
        20_000,
        ge=0,
        le=1_000_000,
        description="Characters of each document's text sent "
        "with its hit (the enricher then needs no fetch).",
    )
    timeout: float = Field(2.0, gt=0, le=300, description="Seconds the search may take.")


class FtsParams(FtsSettings):
    """Params of ``knowledge.fts``."""

    query: str = Field(min_length=1, max_length=1000, description="What to look for.")


def _next_rows(rows: Iterator[tuple[Any, ...]], n: int) -> list[tuple[Any, ...]]:
    return [row for _, row in zip(range(n), rows, strict=False)]


async def search_fts(params: FtsParams, ctx: headwater.StreamContext, emit: Emit) -> str | None:
    """Hits of the index for ``params.query``, best BM25 first, 25 rows per step."""
    match = fts_query(params.query)
    if match is None:
        return "no word to look for"
    path = str(ctx.policy.check_path(params.index, param="index"))
    conn = await anyio.to_thread.run_sync(open_index, path)
    try:
        rows = search_rows(conn, match, params.limit, params.content_chars)
        rank = 0
        while chunk := await anyio.to_thread.run_sync(_next_rows, rows, 25):
            for url, title, snippet, score, body in chunk:
                rank += 1
                hit = HitEvent(
                    provider="fts",
                    rank=rank,
                    url=url,
                    title=title,
                    snippet=snippet,
                    score=round(score, 4),
                    content=body or None,
                )
                await emit(hit)
    finally:
        conn.close()
    return None


@headwater.action(
    "knowledge.fts",
    params=FtsParams,
    output="knowledge events: a started status, hit events (best first), a final status",
    capabilities=("streaming", "progress"),
)
async def fts(params: FtsParams, ctx: headwater.StreamContext) -> AsyncIterator[dict[str, Any]]:
    """Search a local full-text index (SQLite FTS5, BM25 ranking), streaming its hits.

    The query's words (stop words aside) are looked up with OR, so documents with more
    and rarer words come first; words in a title count four times. Hits carry the
    document's text, so the enricher needs no fetch.
    """
    async for event in provider_events("fts", search_fts, params, ctx):
        yield event
