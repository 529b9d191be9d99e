"""``knowledge.enrich``: fetch each hit's content, extract its text, split it into passages.

Hits pass through at once (the ranker must not wait for fetches); each new URL is
queued, and queued hits are dispatched in batches (those that arrived together) to at
most ``concurrency`` fetches at a time. A hit that carries its text (the full-text
index) needs no fetch; ``file:`` URLs are read through the operator's sandbox, web pages
fetched with httpx (only from hosts the sandbox allows, each redirect checked). Each
fetch ends with an ``enrichment`` event: the best passages for the query, or ``ok``
false and the error.

Figures go to the engine's metrics (``ctx.metrics``): while a query runs, its batches,
fetches, failures, bytes and fetch times under ``knowledge_enrich``; the engine's totals
under ``knowledge``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import headwater
import httpx
from pydantic import BaseModel, ConfigDict, Field

from .background import Send, stream_from
from .events import EnrichmentEvent, Passage
from .hosts import check_url
from .http import async_client
from .state import EngineState
from .text import (
    bm25_scores,
    content_hash,
    html_to_text,
    markdown_to_text,
    normalize_url,
    passages,
    result_id,
    terms,
    words,
)

__all__ = ["EnrichParams", "Enricher", "enrich", "extract"]

METRICS_GROUP = "knowledge_enrich"


class EnrichParams(BaseModel):
    """Params of ``knowledge.enrich``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    concurrency: int = Field(8, ge=1, le=64, description="Fetches going on at once.")
    batch_size: int = Field(8, ge=1, le=256, description="Most hits dispatched together.")
    max_fetch: int = Field(30, ge=0, le=1000, description="Most URLs enriched per query.")
    timeout: float = Field(5.0, gt=0, le=120, description="Seconds one fetch may take.")
    max_bytes: int = Field(
        2 * 1024 * 1024, ge=1024, description="Most bytes read of one page or file."
    )
    passage_chars: int = Field(600, ge=100, le=5000, description="Size of a passage.")
    max_passages: int = Field(6, ge=1, le=100, description="Best passages kept per result.")


def _decode(data: bytes, content_type: str) -> str:
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def extract(data: str, kind: str) -> tuple[str | None, str]:
    """``(title, text)`` of a page or file: HTML and Markdown as their prose, anything
    else as it is."""
    if "html" in kind:
        return html_to_text(data)
    if "markdown" in kind:
        return None, markdown_to_text(data)
    return None, data


class Enricher:
    """The fetching and splitting of one query's hits (no concurrency of its own)."""

    def __init__(self, params: EnrichParams, ctx: headwater.StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.query_terms: list[str] = []
        self.seen: set[str] = set()
        self.figures: dict[str, float] = dict.fromkeys(
            (
                "batches",
                "fetches",
                "failed",
                "bytes",
                "fetch_seconds",
                "fetch_seconds_max",
                "in_flight",
            ),
            0,
        )

    def wants(self, hit: dict[str, Any]) -> bool:
        """True for the first hit of a URL, while fewer than ``max_fetch`` were taken."""
        url = normalize_url(hit["url"])
        if url in self.seen or len(self.seen) >= self.params.max_fetch:
            return False
        self.seen.add(url)
        return True

    def _read_file(self, url: str) -> tuple[str, str]:
        path = unquote(urlsplit(url).path)
        with self.ctx.policy.open_file(path, "rb") as handle:
            data = handle.read(self.params.max_bytes)
        suffix = Path(path).suffix.lower()
        kind = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}
        return data.decode("utf-8", "replace"), kind.get(suffix, "text")

    async def _fetch(self, client: httpx.AsyncClient, url: str) -> tuple[str, str]:
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            kind = response.headers.get("content-type", "text/html")
            if not any(k in kind for k in ("html", "text/plain", "markdown")):
                raise ValueError(f"cannot extract text from {kind.split(';')[0]!r}")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) >= self.params.max_bytes:
                    break
        self.figures["bytes"] += len(data)
        return _decode(bytes(data[: self.params.max_bytes]), kind), kind

    async def content(
        self, client: httpx.AsyncClient, hit: dict[str, Any]
    ) -> tuple[str | None, str]:
        """``(title, text)`` of a hit: its own text, its file, or its page."""
        if hit.get("content"):
            return None, str(hit["content"])
        url = str(hit["url"])
        scheme = urlsplit(url).scheme
        if scheme == "file":
            data, kind = await anyio.to_thread.run_sync(self._read_file, url)
            self.figures["bytes"] += len(data)
        elif scheme in ("http", "https"):
            data, kind = await self._fetch(client, url)
        else:
            raise ValueError(f"cannot fetch {scheme}: URLs")
        return extract(data, kind)

    def event(
        self, hit: dict[str, Any], title: str | None, text: str, elapsed: float
    ) -> EnrichmentEvent:
        """The enrichment of ``hit`` from its text: the best passages for the query."""
        rid = result_id(hit["url"])
        pieces = passages(text, self.params.passage_chars)
        scores = bm25_scores(self.query_terms, [words(p) for p in pieces])
        order = sorted(range(len(pieces)), key=lambda i: (-scores[i], i))
        best = [
            Passage(id=f"{rid}:{i}", text=pieces[i], score=round(scores[i], 4))
            for i in order[: self.params.max_passages]
        ]
        return EnrichmentEvent(
            id=rid,
            url=hit["url"],
            ok=True,
            content_hash=content_hash(text),
            chars=len(text),
            title=title,
            passages=best,
            elapsed=round(elapsed, 4),
        )

    async def enrich(self, client: httpx.AsyncClient, hit: dict[str, Any]) -> dict[str, Any]:
        """Fetch, extract and split one hit; failures become an ``ok: false`` event."""
        started = time.monotonic()
        self.figures["in_flight"] += 1
        try:
            with anyio.fail_after(self.params.timeout):
                title, text = await self.content(client, hit)
            event = self.event(hit, title, text, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - any failure is the fetch's outcome
            self.figures["failed"] += 1
            message = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            event = EnrichmentEvent(
                id=result_id(hit["url"]),
                url=hit["url"],
                ok=False,
                elapsed=round(time.monotonic() - started, 4),
                error=message[:300],
            )
        finally:
            self.figures["in_flight"] -= 1
        elapsed = time.monotonic() - started
        self.figures["fetches"] += 1
        self.figures["fetch_seconds"] += elapsed
        self.figures["fetch_seconds_max"] = max(self.figures["fetch_seconds_max"], elapsed)
        return event.item()


async def _work(
    items: AsyncIterator[Any], params: EnrichParams, ctx: headwater.StreamContext, send: Send
) -> None:
    enricher = Enricher(params, ctx)
    state = EngineState.of(ctx)
    key = f"{ctx.run_id}/{ctx.stage}"
    ctx.metrics.add_member(
        METRICS_GROUP, key, lambda: {"pipeline": ctx.pipeline, **enricher.figures}
    )
    queue: deque[dict[str, Any]] = deque()
    wake = anyio.Event()
    ended = False
    limiter = anyio.CapacityLimiter(params.concurrency)

    async def fetch(client: httpx.AsyncClient, hit: dict[str, Any]) -> None:
        async with limiter:
            await send.send(await enricher.enrich(client, hit))

    async def dispatch(client: httpx.AsyncClient, tg: Any) -> None:
        nonlocal wake
        while queue or not ended:
            if not queue:
                await wake.wait()
                wake = anyio.Event()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), params.batch_size))]
            enricher.figures["batches"] += 1
            for hit in batch:
                tg.start_soon(fetch, client, hit)
            # the next batch waits for a free slot, so batches form from what queued meanwhile
            async with limiter:
                pass

    timeout = httpx.Timeout(params.timeout)
    redirect_check = _redirect_guard(ctx)
    try:
        async with (
            async_client(
                timeout=timeout,
                follow_redirects=True,
                max_redirects=5,
                event_hooks={"request": [redirect_check]},
            ) as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(dispatch, client, tg)
            async for item in items:
                await send.send(item)
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "query":
                    enricher.query_terms = terms(str(item.get("query", "")))
                elif kind == "hit" and enricher.wants(item):
                    queue.append(item)
                    wake.set()
            ended = True
            wake.set()
    finally:
        ctx.metrics.remove_member(METRICS_GROUP, key)
        f = enricher.figures
        state.add(
            enrich_batches=f["batches"],
            enrich_fetches=f["fetches"],
            enrich_failed=f["failed"],
            enrich_bytes=f["bytes"],
            enrich_seconds=f["fetch_seconds"],
        )


def _redirect_guard(ctx: headwater.StreamContext) -> Any:
    async def check(request: httpx.Request) -> None:
        check_url(ctx.policy, str(request.url))

    return check


@headwater.transformer(
    "knowledge.enrich",
    kind="stream",
    params=EnrichParams,
    output="every item passed on at once, plus an enrichment event per hit URL fetched",
)
async def enrich(
    items: AsyncIterator[Any], params: EnrichParams, ctx: headwater.StreamContext
) -> AsyncIterator[Any]:
    """Fetch and extract the content of each hit (batched, at most ``concurrency`` at a
    time), split it into passages and keep the best ones for the query."""
    async with aclosing(stream_from(lambda send: _work(items, params, ctx, send))) as out:
        async for item in out:
            yield item
