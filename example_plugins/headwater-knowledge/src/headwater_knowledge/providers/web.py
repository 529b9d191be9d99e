"""``knowledge.web``: a JSON web search API with the Brave Search answer shape.

The operator gives the API's base URL and key in the pipeline (``${BRAVE_API_KEY}``
keeps the key out of the file and masked wherever headwater shows values). ``pages``
pages of ``count`` results are asked for at once; each page's hits are emitted as soon as
it arrives. A call that fails for a transient reason (a transport error, 429, 5xx) is
tried again with backoff (``retry``), within the provider's timeout.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import headwater
import httpx
from pydantic import Field

from ..events import HitEvent
from ..hosts import check_url
from ..http import async_client
from .base import Emit, ProviderSettings, provider_events
from .brave import SEARCH_PATH, BraveWebSearch

__all__ = ["WebParams", "WebSettings", "search_web", "web"]

TRANSIENT = frozenset({429, 500, 502, 503, 504})
_TAGS = re.compile(r"<[^>]+>")


class WebSettings(ProviderSettings):
    """Settings of the web search provider."""

    base_url: str = Field("https://api.search.brave.com", description="The search API's base URL.")
    api_key: str | None = Field(
        None, description="The API key, sent as X-Subscription-Token (use ${VAR})."
    )
    count: int = Field(10, ge=1, le=20, description="Results per page.")
    pages: int = Field(1, ge=1, le=10, description="Pages asked for at once.")
    retry: headwater.RetryPolicy = Field(
        default_factory=lambda: headwater.RetryPolicy(attempts=4, backoff=0.05),
        description="Retries of a call that failed for a transient reason.",
    )
    limit: int = Field(50, ge=1, le=200, description="Most hits to return.")
    timeout: float = Field(5.0, gt=0, le=300, description="Seconds the search may take.")


class WebParams(WebSettings):
    """Params of ``knowledge.web``."""

    query: str = Field(min_length=1, max_length=400, description="What to look for.")


def _plain(text: str) -> str:
    """The API marks matches with ``<strong>``: keep the text only."""
    return html.unescape(_TAGS.sub("", text)).strip()


async def _page(client: httpx.AsyncClient, params: WebParams, offset: int) -> BraveWebSearch:
    """One page of results, with retries of transient failures."""
    query: dict[str, str | int] = {"q": params.query, "count": params.count, "offset": offset}
    attempt = 0
    while True:
        attempt += 1
        try:
            response = await client.get(SEARCH_PATH, params=query)
        except httpx.TransportError:
            if attempt >= params.retry.attempts:
                raise
        else:
            if response.status_code == 200:
                return BraveWebSearch.model_validate_json(response.content)
            if response.status_code not in TRANSIENT or attempt >= params.retry.attempts:
                reason = response.reason_phrase or "error"
                raise RuntimeError(
                    f"the search API answered {response.status_code} {reason} "
                    f"(after {attempt} attempt{'s' if attempt > 1 else ''})"
                )
        await anyio.sleep(params.retry.delay(attempt))


async def search_web(params: WebParams, ctx: headwater.StreamContext, emit: Emit) -> str | None:
    """Hits of the search API, page by page as the pages arrive."""
    base = check_url(ctx.policy, params.base_url, param="base_url")
    headers = {"Accept": "application/json"}
    if params.api_key:
        headers["X-Subscription-Token"] = params.api_key
    failures: list[str] = []
    emitted = 0

    async def one(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal emitted
        try:
            page = await _page(client, params, offset)
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            if params.pages == 1:
                raise
            failures.append(f"page {offset + 1}: {exc}")
            return
        results = page.web.results if page.web is not None else []
        for i, result in enumerate(results):
            if emitted >= params.limit:
                return
            emitted += 1
            snippet = " ".join(
                _plain(s) for s in [result.description, *result.extra_snippets[:1]] if s
            )
            await emit(
                HitEvent(
                    provider="web",
                    rank=offset * params.count + i + 1,
                    url=result.url,
                    title=_plain(result.title) or result.url,
                    snippet=snippet[:500],
                )
            )

    limits = httpx.Limits(max_connections=params.pages + 2)
    async with (
        async_client(base_url=base, headers=headers, limits=limits) as client,
        anyio.create_task_group() as tg,
    ):
        for offset in range(params.pages):
            tg.start_soon(one, client, offset)
    if failures and len(failures) == params.pages:
        raise RuntimeError("; ".join(failures))
    return "; ".join(failures) or None


@headwater.action(
    "knowledge.web",
    params=WebParams,
    output="knowledge events: a started status, hit events page by page, a final status",
    capabilities=("streaming", "progress"),
)
async def web(params: WebParams, ctx: headwater.StreamContext) -> AsyncIterator[dict[str, Any]]:
    """Search the web through a JSON search API with the Brave Search answer shape,
    streaming each page's hits as it arrives; transient failures are retried."""
    async for event in provider_events("web", search_web, params, ctx):
        yield event
