"""``http``: a sink POSTing each batch to an HTTP endpoint, as a JSON array or NDJSON.

Each batch (split into requests of at most ``max_batch`` items) is sent with an
``Idempotency-Key`` header, a fresh key per request that its retries repeat, so a
receiver that remembers keys stores a batch once even when an answer was lost and the
batch sent again. Transport errors and 429/5xx answers are retried with backoff
(honouring ``Retry-After``; :mod:`._retry`); any other non-2xx answer, or the retries
exhausted, fails the write, which the sink's ``on_error`` then handles. ``write``
returns once the receiver answered 2xx: delivery is at-least-once.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

import headwater
from headwater.core.context import StreamContext
from headwater.core.optional import require
from headwater.core.reconnect import Backoff

from .._checks.web import check_http_head
from ._hosts import check_url_param, guard_requests
from ._retry import RETRY_ON, HttpStatusError, RetryPolicy, send_with_retries

__all__ = ["HttpSink", "HttpSinkParams"]


class HttpSinkParams(BaseModel):
    """Params of the ``http`` sink."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    url: str = Field(description="Where batches are sent (host allowed by the sandbox).")
    method: Literal["POST", "PUT"] = "POST"
    format: Literal["json", "ndjson"] = Field(
        "json", description="json: one JSON array per request; ndjson: one item per line."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers of every request (use ${VAR} for secrets)."
    )
    idempotency_header: str | None = Field(
        "Idempotency-Key",
        min_length=1,
        description="Header carrying the request's key (None: no key).",
    )
    max_batch: int = Field(1000, ge=1, description="Items per request at most.")
    timeout: float = Field(30.0, gt=0, description="Seconds per attempt.")
    retries: int = Field(5, ge=0, le=100, description="Retries per request after the first.")
    retry_on: list[int] = Field(
        default_factory=lambda: list(RETRY_ON), description="Statuses that are retried."
    )
    backoff: float = Field(0.1, gt=0, description="Pause before the first retry (doubles).")
    max_backoff: float = Field(10.0, gt=0, description="Longest pause between two attempts.")
    max_retry_after: float = Field(
        60.0, ge=0, description="Longest Retry-After honoured (a longer one is capped)."
    )

    _check_url = field_validator("url")(check_url_param)


_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson"}


def encode(items: list[Any], fmt: str) -> bytes:
    """A request body: a JSON array, or one JSON value per line."""
    if fmt == "json":
        return to_json(items, inf_nan_mode="null")
    return b"".join(to_json(item, inf_nan_mode="null") + b"\n" for item in items)


@headwater.sink("http", params=HttpSinkParams, check=check_http_head)
class HttpSink:
    """POST each batch (JSON array or NDJSON) with an idempotency key; retry 429/5xx.

    The output is ``{"url", "requests", "items", "retries"}``.
    """

    def __init__(self, params: HttpSinkParams, ctx: StreamContext) -> None:
        self.params = params
        self.ctx = ctx
        self.client: Any = None
        self.requests = 0
        self.items = 0
        self.retries = 0
        self.policy = RetryPolicy(
            params.retries,
            tuple(params.retry_on),
            Backoff(initial=params.backoff, cap=params.max_backoff),
            params.max_retry_after,
        )

    async def open(self) -> None:
        """Create the HTTP client (connections are kept between batches)."""
        httpx = require("httpx", "http", "http sink")
        params = self.params
        headers = {"content-type": _TYPES[params.format], **params.headers}
        self.client = httpx.AsyncClient(
            timeout=params.timeout,
            follow_redirects=True,
            headers=headers,
            event_hooks={"request": [guard_requests(self.ctx.policy, "url")]},
        )

    def _retrying(self, attempt: int, why: str) -> None:
        self.retries += 1

    async def write(self, batch: list[Any]) -> None:
        """Send the batch; returns once every request of it was answered 2xx."""
        params = self.params
        for start in range(0, len(batch), params.max_batch):
            part = batch[start : start + params.max_batch]
            body = encode(part, params.format)
            headers = {}
            if params.idempotency_header is not None:
                headers[params.idempotency_header] = uuid.uuid4().hex

            async def send(body: bytes = body, headers: dict[str, str] = headers) -> Any:
                return await self.client.request(
                    params.method, params.url, content=body, headers=headers
                )

            response = await send_with_retries(send, self.policy, on_retry=self._retrying)
            if not 200 <= response.status_code < 300:
                raise HttpStatusError(
                    params.method, params.url, response.status_code, response.text[:200]
                )
            self.requests += 1
            self.items += len(part)

    async def close(self, error: BaseException | None) -> dict[str, Any]:
        """Close the client; returns ``{"url", "requests", "items", "retries"}``."""
        if self.client is not None:
            await self.client.aclose()
        return {
            "url": self.params.url,
            "requests": self.requests,
            "items": self.items,
            "retries": self.retries,
        }
