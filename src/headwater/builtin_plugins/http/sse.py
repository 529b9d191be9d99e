"""``sse``: a source following a Server-Sent Events endpoint, resumable by event id.

Installed with ``pip install 'headwater[http]'`` (``httpx-sse``). Each event becomes an
item (its ``data``, JSON-decoded by default; with ``envelope`` the whole ``{"id",
"event", "data"}``). ``events`` keeps only some event types, ``until`` names the types
that end the source (headwater's own endpoint ends a stream with ``stream_complete``).

**Resuming.** The checkpoint position is ``{"last_event_id": ID}``, the id of the last
event handed on: a run resumed from a checkpoint sends ``Last-Event-ID: ID`` and the
server continues after it. Within a run, a dropped connection is made again with the
same header (backoff; the server's ``retry:`` is honoured), through outages of up to
``outage_deadline`` seconds (:class:`headwater.core.reconnect.Link`). A 4xx answer
(401, 404) fails the run at once; 204 No Content ends it (the SSE way to say "no more").
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.optional import require
from headwater.core.reconnect import DEFAULT_OUTAGE_DEADLINE, Backoff, Link

from .._brokers import stage_logger
from .._checks.web import check_http_head
from ._hosts import check_url_param, guard_requests
from ._retry import HttpStatusError

__all__ = ["SseParams", "sse_source"]


class SseParams(BaseModel):
    """Params of the ``sse`` source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(description="The event stream's URL (host allowed by the sandbox).")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Request headers (use ${VAR} for tokens)."
    )
    events: list[str] | None = Field(
        None, description="Only events of these types become items (None: every event)."
    )
    until: list[str] = Field(
        default_factory=list, description="An event of one of these types ends the source."
    )
    decode: Literal["json", "text"] = Field("json", description="How `data` is read.")
    envelope: bool = Field(
        False, description='Emit {"id", "event", "data"} instead of the data alone.'
    )
    reconnect: bool = Field(
        True, description="Connect again (resuming) when the server ends the response."
    )
    max_events: int | None = Field(None, ge=1, description="End after this many items.")
    idle_exit: float | None = Field(
        None, gt=0, description="End after this many seconds without an event (None: never)."
    )
    timeout: float = Field(10.0, gt=0, description="Seconds to connect.")
    outage_deadline: float = Field(
        DEFAULT_OUTAGE_DEADLINE,
        gt=0,
        description="Seconds the server may stay unreachable (reconnecting) before the run fails.",
    )

    _check_url = field_validator("url")(check_url_param)


def _transient(exc: BaseException) -> bool:
    httpx = require("httpx", "http", "sse")
    if isinstance(exc, HttpStatusError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, httpx.TransportError)


def _item(sse: Any, params: SseParams) -> Any:
    data: Any = sse.data
    if params.decode == "json":
        try:
            data = json.loads(data) if data else None
        except ValueError as exc:
            raise ValueError(
                f"event {sse.id or '(no id)'} ({sse.event}) is not JSON ({exc}); use decode: text"
            ) from None
    if params.envelope:
        return {"id": sse.id or None, "event": sse.event, "data": data}
    return data


@headwater.action(
    "sse",
    params=SseParams,
    output="the data of each event (JSON-decoded), or {id, event, data} with envelope",
    capabilities=("streaming", "resumable"),
    check=check_http_head,
)
async def sse_source(params: SseParams, ctx: StreamContext) -> AsyncIterator[Any]:
    """Follow a Server-Sent Events endpoint; resume with ``Last-Event-ID``.

    The position is the id of the last event handed on; on resume (and on every
    reconnection) it is sent as ``Last-Event-ID``.
    """
    httpx = require("httpx", "http", "sse")
    httpx_sse = require("httpx_sse", "http", "sse")
    logger = stage_logger("headwater.http", ctx)
    link = Link(
        "sse source",
        params.url,
        deadline=params.outage_deadline,
        log=logger,
        backoff=Backoff(initial=0.2, cap=10.0),
    )
    resume = ctx.resume_position
    last_id: str | None = resume.get("last_event_id") if isinstance(resume, dict) else None
    if last_id:
        ctx.status(f"resuming after event {last_id}")
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(params.timeout, read=None),
        follow_redirects=True,
        headers=params.headers,
        event_hooks={"request": [guard_requests(ctx.policy, "url")]},
    )
    emitted = 0
    retry_ms: int | None = None
    idle_since = time.monotonic()
    wanted = None if params.events is None else frozenset(params.events)
    until = frozenset(params.until)
    try:
        ended = False
        while not ended and not ctx.cancelled:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                async with httpx_sse.aconnect_sse(
                    client, "GET", params.url, headers=headers
                ) as source:
                    response = source.response
                    if response.status_code == 204:  # the server says: no more events
                        break
                    if response.status_code != 200:
                        await response.aread()
                        raise HttpStatusError(
                            "GET", params.url, response.status_code, response.text[:200]
                        )
                    link.succeeded()
                    async for event in _events(source, params.idle_exit):
                        if event is None:  # idle_exit passed without an event
                            ended = True
                            break
                        if event.retry is not None:
                            retry_ms = event.retry
                        if event.event in until:
                            ended = True
                            break
                        if wanted is not None and event.event not in wanted:
                            continue
                        item = _item(event, params)
                        if event.id:
                            last_id = event.id
                        yield item
                        emitted += 1
                        idle_since = time.monotonic()
                        if last_id:
                            ctx.checkpoint({"last_event_id": last_id})
                        ctx.progress(emitted, message=f"last event id {last_id}")
                        if params.max_events is not None and emitted >= params.max_events:
                            ended = True
                            break
            except Exception as exc:
                if not _transient(exc):
                    raise
                pause = link.failed(exc)
                if retry_ms is not None:
                    pause = max(pause, retry_ms / 1000)
                await anyio.sleep(pause)
                continue
            if not params.reconnect:
                break
            if not ended:
                if (
                    params.idle_exit is not None
                    and time.monotonic() - idle_since >= params.idle_exit
                ):
                    break
                await anyio.sleep(0 if retry_ms is None else retry_ms / 1000)
        if last_id:
            ctx.checkpoint({"last_event_id": last_id})
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await client.aclose()


async def _events(source: Any, idle: float | None) -> AsyncIterator[Any]:
    """The events of ``source``; None once ``idle`` seconds passed without one."""
    events = source.aiter_sse()
    try:
        while True:
            if idle is None:
                try:
                    yield await anext(events)
                except StopAsyncIteration:
                    return
                continue
            with anyio.move_on_after(idle) as scope:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught:
                yield None
                return
            yield event
    finally:
        await events.aclose()
