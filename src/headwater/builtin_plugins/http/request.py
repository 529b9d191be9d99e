"""``http.request``: enrich items by calling an HTTP API, several calls at a time.

For each item the URL template is filled from the item's fields, the call is made (its
body the item itself with ``body: item``), retried on transport errors and on 429/5xx
(honouring ``Retry-After``; :mod:`._retry`), and the answer is put into the item
(``into``, ``fields`` or ``merge``). Up to ``concurrency`` calls are in flight; the
output keeps the input's order.

An item whose call fails for good (an error status, the retries exhausted, a refused
host, the circuit breaker open, a missing field) goes to the step's ``on_error``: with
``on_error: skip`` it is dead-lettered with its error and the run goes on; with the
default ``fail`` the run fails. No item is dropped silently.

The calls run as helper tasks of the stage (``ctx.start_soon``); checkpoint markers are
held until every item before them is out (``ctx.hold_markers``), so a checkpoint never
covers an item whose call is still in flight.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

import headwater
from headwater.core.context import StreamContext
from headwater.core.optional import require
from headwater.core.reconnect import Backoff

from .._checks.web import check_http_head
from ..transformers.fields import field_getter
from ._hosts import check_url_param, guard_requests
from ._retry import RETRY_ON, CircuitBreaker, HttpStatusError, RetryPolicy, send_with_retries
from ._template import UrlTemplate

__all__ = ["RequestParams", "http_request"]


class RequestParams(BaseModel):
    """Params of the ``http.request`` transformer."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(
        description="URL template: {field} (or {a.b}) is replaced by the item's field, "
        "percent-encoded. Its host must be allowed by the sandbox (loopback by default)."
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers of every call (use ${VAR} for secrets)."
    )
    body: Literal["none", "item"] = Field(
        "none", description="item: send the item as the JSON body of the call."
    )
    into: str = Field(
        "response", min_length=1, description="Field of the item receiving the answer."
    )
    fields: dict[str, str] | None = Field(
        None,
        description="Instead of `into`: item field -> path in the JSON answer ({name: data.name}).",
    )
    merge: bool = Field(False, description="Merge the JSON object answered into the item.")
    decode: Literal["json", "text"] = Field("json", description="How the answer is read.")
    concurrency: int = Field(8, ge=1, le=1000, description="Calls in flight at most.")
    timeout: float = Field(10.0, gt=0, description="Seconds per call attempt.")
    retries: int = Field(3, ge=0, le=100, description="Retries per item after the first call.")
    retry_on: list[int] = Field(
        default_factory=lambda: list(RETRY_ON), description="Statuses that are retried."
    )
    backoff: float = Field(0.1, gt=0, description="Pause before the first retry (doubles).")
    max_backoff: float = Field(10.0, gt=0, description="Longest pause between two attempts.")
    max_retry_after: float = Field(
        60.0, ge=0, description="Longest Retry-After honoured (a longer one is capped)."
    )
    breaker_failures: int | None = Field(
        5,
        ge=1,
        description="Open the circuit after this many items in a row failed (None: never).",
    )
    breaker_reset: float = Field(
        30.0, gt=0, description="Seconds the circuit stays open before one probe call."
    )

    _check_url = field_validator("url")(check_url_param)

    @field_validator("url")
    @classmethod
    def _template(cls, value: str) -> str:
        UrlTemplate(value)
        return value


@dataclass(slots=True, eq=False)
class _Call:
    """One item and the outcome of its call."""

    item: Any
    position: int
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None


class _Caller:
    """Makes one item's call: template, breaker, retries, answer into the item."""

    def __init__(self, params: RequestParams, ctx: StreamContext, client: Any) -> None:
        self.params = params
        self.ctx = ctx
        self.client = client
        self.template = UrlTemplate(params.url)
        self.policy = RetryPolicy(
            params.retries,
            tuple(params.retry_on),
            Backoff(initial=params.backoff, cap=params.max_backoff),
            params.max_retry_after,
        )
        limit = params.breaker_failures
        self.breaker = None if limit is None else CircuitBreaker(limit, params.breaker_reset)
        self.getters = {k: field_getter(v) for k, v in (params.fields or {}).items()}
        self.retried = 0

    def _retrying(self, attempt: int, why: str) -> None:
        self.retried += 1

    async def __call__(self, item: Any) -> Any:
        params = self.params
        url = self.template.fill(item)
        breaker = self.breaker
        was = 0 if breaker is None else breaker.opened
        if breaker is not None:
            breaker.check("http.request")
        kwargs: dict[str, Any] = {}
        if params.body == "item":
            kwargs["json"] = item
        client = self.client

        async def send() -> Any:
            return await client.request(params.method, url, **kwargs)

        try:
            response = await send_with_retries(send, self.policy, on_retry=self._retrying)
        except Exception:
            self._failed(was)
            raise
        status = response.status_code
        if status >= 500 or status == 429:
            self._failed(was)
        elif breaker is not None:
            breaker.succeeded()
        if not 200 <= status < 300:
            raise HttpStatusError(params.method, url, status, response.text[:200])
        return self._into(item, response)

    def _failed(self, opened_before: int) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        breaker.failed()
        if breaker.opened > opened_before:
            self.ctx.status(
                f"circuit open after {breaker.failures} failed calls in a row; items fail "
                f"at once for {breaker.reset:g}s",
                "warning",
            )

    def _into(self, item: Any, response: Any) -> Any:
        params = self.params
        if params.decode == "text":
            answer: Any = response.text
        else:
            try:
                answer = response.json() if response.content else None
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{response.request.url} answered no JSON: {exc}") from None
        if not isinstance(item, Mapping):
            raise TypeError(
                f"http.request puts the answer into dict items; got a {type(item).__name__}"
            )
        out = dict(item)
        if self.getters:
            for name, get in self.getters.items():
                out[name] = get(answer)
        elif params.merge:
            if not isinstance(answer, Mapping):
                raise TypeError(f"merge: the answer is a {type(answer).__name__}, not an object")
            out.update(answer)
        else:
            out[params.into] = answer
        return out


@headwater.transformer(
    "http.request",
    kind="stream",
    params=RequestParams,
    output="each item with the API's answer in `into` (or `fields`, or merged), in order",
    check=check_http_head,
)
async def http_request(
    items: AsyncIterator[Any], params: RequestParams, ctx: StreamContext
) -> AsyncIterator[Any]:
    """Call an HTTP API per item and put the answer into it, ``concurrency`` at a time.

    Retries transport errors and 429/5xx answers with backoff (honouring Retry-After);
    a circuit breaker stops calling a failing API for a while. Items whose call fails
    for good go to the step's ``on_error`` (``skip``: dead-lettered).
    """
    httpx = require("httpx", "http", "http.request")
    client = httpx.AsyncClient(
        timeout=params.timeout,
        follow_redirects=True,
        headers=params.headers,
        event_hooks={"request": [guard_requests(ctx.policy, "url")]},
        limits=httpx.Limits(
            max_connections=params.concurrency, max_keepalive_connections=params.concurrency
        ),
    )
    caller = _Caller(params, ctx, client)
    window = anyio.Semaphore(params.concurrency)
    send, receive = anyio.create_memory_object_stream[_Call](params.concurrency)
    counts = {"taken": 0, "settled": 0}
    progressed = anyio.Event()

    async def call(slot: _Call) -> None:
        try:
            slot.result = await caller(slot.item)
        except Exception as exc:
            slot.error = exc
        finally:
            slot.done.set()

    async def read() -> None:
        async with send:
            async for item in items:
                await window.acquire()
                slot = _Call(item, counts["taken"])
                counts["taken"] += 1
                ctx.start_soon(call, slot)
                try:
                    await send.send(slot)
                except anyio.BrokenResourceError:
                    return  # the transformer stopped (it failed or was closed)

    async def settled() -> None:
        while counts["settled"] < counts["taken"]:
            await progressed.wait()

    ctx.hold_markers(settled)
    ctx.start_soon(read)
    try:
        async with receive:
            async for slot in receive:
                await slot.done.wait()
                window.release()
                if slot.error is None:
                    yield slot.result
                else:
                    await ctx.reject([slot.item], slot.error, slot.position)
                counts["settled"] += 1
                progressed.set()
                progressed = anyio.Event()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await client.aclose()
