"""``knowledge.search``: one query to several providers at once, their events merged.

The first items go out before any provider starts (the ``query`` event and a
``started`` status per provider); then every provider runs concurrently with its own
timeout, and its hits and statuses are streamed as they come. A provider that fails or
overruns its timeout ends with that status; the others go on.

**Sessions.** A query may name a ``session``. A new query in a session cancels the
query still going on in it: the run started by a server is cancelled (its stream ends
with ``stream_complete`` reason ``cancelled``), and a run elsewhere (embedded) stops its
providers and ends with their ``cancelled`` statuses. Sessions of different principals
never meet.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import headwater
from pydantic import BaseModel, ConfigDict, Field

from .background import Send, stream_from
from .events import QueryEvent, StatusEvent
from .providers.base import ProviderSettings, Search, run_provider
from .providers.files import FilesParams, FilesSettings, search_files
from .providers.fts import FtsParams, FtsSettings, search_fts
from .providers.web import WebParams, WebSettings, search_web
from .state import EngineState

__all__ = ["SearchParams", "search"]


class SearchParams(BaseModel):
    """Params of ``knowledge.search``: the query, its session, and the providers' settings
    (a provider left out, or null, is not asked)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    query: str = Field(min_length=1, max_length=400, description="What to look for.")
    session: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The session this query belongs to: a new query in the same session "
        "cancels this one.",
    )
    fts: FtsSettings | None = Field(None, description="The full-text index provider.")
    files: FilesSettings | None = Field(None, description="The file-tree provider.")
    web: WebSettings | None = Field(None, description="The web search API provider.")


_PROVIDERS: dict[str, tuple[type[ProviderSettings], Search]] = {
    "fts": (FtsParams, search_fts),
    "files": (FilesParams, search_files),
    "web": (WebParams, search_web),
}


def _owner(ctx: headwater.StreamContext) -> str | None:
    """The principal that started this run through a server (None elsewhere)."""
    run = _server_run(ctx)
    owner = getattr(run, "owner", None)
    return None if owner is None else str(owner)


def _server_run(ctx: headwater.StreamContext) -> Any:
    """The server's record of this run, when a server started it (its ``handle`` cancels
    it). Servers expose it by stream; the run's own context knows only its run id."""
    server = ctx.services.own_publisher
    if server is None:
        return None
    stream = server.stream_of_run(ctx.run_id)
    run_of_stream = getattr(server, "run_of_stream", None)
    return run_of_stream(stream) if stream is not None and run_of_stream else None


@headwater.action(
    "knowledge.search",
    params=SearchParams,
    output="knowledge events: query, then status and hit events of every provider",
    capabilities=("streaming", "progress"),
)
async def search(
    params: SearchParams, ctx: headwater.StreamContext
) -> AsyncIterator[dict[str, Any]]:
    """Ask every configured provider at once and stream their statuses and hits as they
    come; a failed or slow provider never holds up the others. A new query in the same
    ``session`` cancels this one."""
    providers = [name for name in _PROVIDERS if getattr(params, name) is not None]
    yield QueryEvent(
        query=params.query, session=params.session, providers=providers, started=time.time()
    ).item()
    for name in providers:
        yield StatusEvent(provider=name, state="started").item()
    if not providers:
        return
    scopes = {name: anyio.CancelScope() for name in providers}
    sessions = EngineState.of(ctx).sessions
    key = (_owner(ctx), params.session) if params.session else None

    def supersede(reason: str) -> None:
        run = _server_run(ctx)
        if run is not None:
            run.handle.cancel(reason)
        for scope in scopes.values():
            scope.cancel()

    token = sessions.claim(key, supersede) if key is not None else None
    done = 0

    async def work(send: Send) -> None:
        async def one(name: str) -> None:
            nonlocal done
            kind, fn = _PROVIDERS[name]
            settings = getattr(params, name)
            provider_params = kind.model_validate({**settings.model_dump(), "query": params.query})
            final = await run_provider(name, fn, provider_params, ctx, send, scopes[name])
            done += 1
            ctx.progress(done, len(providers), f"{name} {final.state}")

        async with anyio.create_task_group() as tg:
            for name in providers:
                tg.start_soon(one, name)

    try:
        async with aclosing(stream_from(work)) as events:
            async for event in events:
                yield event
    finally:
        if key is not None:
            sessions.release(key, token)
