"""The run history over HTTP: ``GET /api/runs`` and ``GET /api/runs/{id}``.

Both answer only what the principal may see: a run is visible to whoever started it and
to whoever may subscribe to its stream (the ``authorize`` hook, action ``subscribe``, as
``/api/streams`` asks). A run the principal may not see is answered as a run that does
not exist (404), so that ids cannot be probed.

``GET /api/runs`` query parameters: ``pipeline``, ``state``, ``since`` and ``until``
(seconds since the epoch, on the start time), ``limit`` (1 to 200, default 50) and
``cursor`` (the ``next`` of the previous page). Runs come newest first.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, Final

from headwater.types import HttpRequest, HttpResponse

from ..http import error_response, json_response
from .records import MAX_PAGE, RunQuery, RunRecord

if TYPE_CHECKING:
    from ..base import BaseServer

__all__ = ["api_run", "api_runs", "may_see", "parse_query"]

_STATES: Final = frozenset(
    {"pending", "running", "succeeded", "failed", "cancelled", "interrupted"}
)


async def may_see(server: BaseServer, principal: Any, record: RunRecord) -> bool:
    """May ``principal`` see ``record`` (its owner, or allowed to subscribe to its stream)?"""
    from ..auth import principal_name

    name = principal_name(principal)
    if name is not None and record.owner == name:
        return True
    return await server.allowed(principal, "subscribe", record.stream)


def _number(request: HttpRequest, name: str) -> float | None:
    value = request.query_value(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"{name}: {value[:40]!r} is not a number (seconds since the epoch)"
        ) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: {value[:40]!r} is not a finite number")
    return number


def encode_cursor(cursor: tuple[float, str] | None) -> str | None:
    """A page cursor as an opaque URL-safe string."""
    if cursor is None:
        return None
    raw = json.dumps([cursor[0], cursor[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    """The cursor a page gave; raises ``ValueError`` naming the parameter."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        started, run_id = json.loads(raw)
        return float(started), str(run_id)
    except (ValueError, TypeError, binascii.Error):
        raise ValueError(f"cursor: {text[:40]!r} is not a cursor of this API") from None


def parse_query(request: HttpRequest) -> RunQuery:
    """The filter of ``GET /api/runs``; raises ``ValueError`` naming the bad parameter."""
    state = request.query_value("state") or None
    if state is not None and state not in _STATES:
        raise ValueError(f"state: {state[:40]!r} is not one of {', '.join(sorted(_STATES))}")
    limit_text = request.query_value("limit")
    limit = 50
    if limit_text:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
            raise ValueError(
                f"limit: {limit_text[:40]!r} is not a whole number from 1 to {MAX_PAGE}"
            )
        limit = int(limit_text)
    cursor = request.query_value("cursor")
    return RunQuery(
        pipeline=request.query_value("pipeline") or None,
        state=state,
        since=_number(request, "since"),
        until=_number(request, "until"),
        before=decode_cursor(cursor) if cursor else None,
        limit=limit,
    )


async def api_runs(server: BaseServer, request: HttpRequest) -> HttpResponse:
    """``GET /api/runs``: recorded runs the principal may see, newest first."""
    try:
        query = parse_query(request)
    except ValueError as exc:
        return error_response(400, str(exc))
    history = server.history
    page = await history.query(query)
    rows = [r.row() for r in page.runs if await may_see(server, request.principal, r)]
    secrets = server.engine.services.secrets
    return json_response(
        secrets.mask_data(
            {
                "runs": rows,
                "next": encode_cursor(page.next),
                "recording": history.enabled,
            }
        )
    )


async def api_run(server: BaseServer, request: HttpRequest) -> HttpResponse:
    """``GET /api/runs/{id}``: one run with everything recorded about it."""
    run_id = request.path_params.get("run", "")
    record = await server.history.get(run_id) if len(run_id) <= 128 else None
    if record is None or not await may_see(server, request.principal, record):
        return error_response(404, f"no run {run_id[:128]!r}")
    body = record.to_dict()
    body["live"] = record.live
    if record.live:
        body["queue_depth"] = _queue_depth(server, record.pipeline)
    why_not = await _why_not_run_again(server, request, record)
    body["can_run_again"] = why_not is None
    body["run_again_blocked"] = why_not
    return json_response(server.engine.services.secrets.mask_data(body))


async def _why_not_run_again(
    server: BaseServer, request: HttpRequest, record: RunRecord
) -> str | None:
    """Why this server cannot start ``record``'s pipeline again with its params (None: it
    can). Only a client's run has the pipeline's own params: a run of the command line
    recorded ``--set`` paths, against a file this server may not have."""
    if record.origin not in (None, "client"):
        started = f"job {record.job!r} of a jobs file" if record.job else "the command line"
        return (
            f"started from {started} ({record.origin}): its params are --set overrides of "
            "a pipeline file; run it again with headwater run"
        )
    if server.pipelines.get(record.pipeline) is None:
        return f"this server has no pipeline named {record.pipeline!r}"
    if not await server.allowed(request.principal, "run", record.pipeline):
        return f"this token may not run {record.pipeline!r}"
    return None


def _queue_depth(server: BaseServer, pipeline: str) -> dict[str, int]:
    """Items waiting before each stage of ``pipeline``, over its runs going on."""
    depth: dict[str, int] = {}
    for stage in server.engine.metrics.snapshot().get("stages", ()):
        if stage.get("pipeline") == pipeline:
            depth[str(stage.get("stage"))] = int(stage.get("queue_depth", 0) or 0)
    return depth
