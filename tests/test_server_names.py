"""A principal limited to some streams learns nothing of the others, and cannot take
their names.

``bob``'s static token reaches streams ``a-*`` and the pipeline ``count``; ``alice`` may do
everything and runs ``ticks`` on stream ``b-secret``. Whatever bob asks about
``b-secret`` (subscribe, unsubscribe, run on it, cancel its run, follow its events) gets
the same answer as for ``b-nothing``, a name nobody uses: ``unauthorized``, with the
same message but for the name. ``/metrics``, ``/api/streams`` and ``/api/pipelines``
never show him a name he may not reach. Both front ends, real sockets.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from test_server_helpers import FRONTS, WAIT, Served, config, http_get, json_body, running

pytestmark = pytest.mark.anyio

TOKENS: dict[str, Any] = {
    "alice-token": "alice",
    "bob-token": {"principal": "bob", "streams": ["a-*"], "pipelines": ["count"]},
    "carol-token": {"principal": "carol", "streams": ["c-*"], "pipelines": ["cx"]},
    "scraper-token": {"principal": "scraper", "streams": ["$metrics"], "pipelines": []},
}

SECRET, UNUSED = "b-secret", "b-nothing"

_REFS = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


@asynccontextmanager
async def as_user(server: Served, token: str) -> AsyncIterator[ClientConnection]:
    """A raw WebSocket connection with ``token``."""
    headers = {"Authorization": f"Bearer {token}"}
    async with ws_connect(server.url, additional_headers=headers) as ws:
        yield ws


async def ask(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` (with an id) and return the server's reply to it; a ``ping``
    sent after it tells when there is none (replies come in request order)."""
    ref = f"r{next(_REFS)}"
    await ws.send(json.dumps({**message, "id": ref}))
    await ws.send(json.dumps({"type": "ping", "id": f"{ref}-after"}))
    with anyio.fail_after(WAIT):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame.get("ref") == ref and frame["type"] != "stream_update":
                return frame
            if frame["type"] == "pong" and frame.get("id") == f"{ref}-after":
                return {"type": "no reply"}


def differences(secret: dict[str, Any], unused: dict[str, Any]) -> str | None:
    """How the answers about ``b-secret`` and ``b-nothing`` differ (None: alike, both
    ``unauthorized`` with the same message but for the name)."""
    if not (secret["type"] == unused["type"] == "error"):
        return f"{secret} / {unused}"
    if not (secret["code"] == unused["code"] == "unauthorized"):
        return f"{secret['code']}: {secret['message']} / {unused['code']}: {unused['message']}"
    if secret["message"].replace(SECRET, "NAME") != unused["message"].replace(UNUSED, "NAME"):
        return f"{secret['message']} / {unused['message']}"
    return None


async def test_a_restricted_principal_gets_the_same_answer_for_existing_and_unused_names(
    front: str,
) -> None:
    async with (
        running(config(auth={"tokens": TOKENS}), front=front) as server,
        as_user(server, "alice-token") as alice,
        as_user(server, "bob-token") as bob,
    ):
        started = await ask(alice, {"type": "run", "pipeline": "ticks", "stream": SECRET})
        assert started["type"] == "run_started", started

        requests: dict[str, dict[str, Any]] = {
            "subscribe": {"type": "subscribe"},
            "unsubscribe": {"type": "unsubscribe"},
            # naming a stream for a run: neither squatting a free name nor learning
            # that a name is taken
            "run": {"type": "run", "pipeline": "count"},
            "cancel": {"type": "cancel"},
        }
        problems = {}
        for kind, request in requests.items():
            secret = await ask(bob, {**request, "stream": SECRET})
            unused = await ask(bob, {**request, "stream": UNUSED})
            problem = differences(secret, unused)
            if problem is not None:
                problems[kind] = problem
            if started["run"] in json.dumps(secret):
                problems[f"{kind}: run id"] = json.dumps(secret)
        # event streams: 403 alike
        secret_sse = await http_get(f"{server.http_url}/api/streams/{SECRET}/events", "bob-token")
        unused_sse = await http_get(f"{server.http_url}/api/streams/{UNUSED}/events", "bob-token")
        if (secret_sse[0], unused_sse[0]) != (403, 403) or secret_sse[2].decode().replace(
            SECRET, "NAME"
        ) != unused_sse[2].decode().replace(UNUSED, "NAME"):
            problems["events"] = (
                f"{secret_sse[0]} {secret_sse[2]!r} / {unused_sse[0]} {unused_sse[2]!r}"
            )
        assert problems == {}
        assert not server.manager.has_stream(UNUSED)
        assert server.run_of_stream(SECRET) is not None  # still running

        # his own names work
        mine = await ask(bob, {"type": "run", "pipeline": "count", "stream": "a-mine"})
        assert mine["type"] == "run_started", mine


async def test_the_http_api_lists_only_what_the_principal_may_reach(front: str) -> None:
    async with (
        running(config(auth={"tokens": TOKENS}), front=front) as server,
        as_user(server, "alice-token") as alice,
    ):
        started = await ask(alice, {"type": "run", "pipeline": "ticks", "stream": SECRET})
        assert started["type"] == "run_started", started
        base = server.http_url

        # alice sees everything: the test can see the names when they are there
        status, _, body = await http_get(f"{base}/metrics", "alice-token")
        assert status == 200
        assert SECRET in body.decode()
        listing = json_body((await http_get(f"{base}/api/streams", "alice-token"))[2])
        assert SECRET in [s["stream"] for s in listing["streams"]]
        assert (listing["pipelines"], listing["runs"]) == (["count", "ticks"], 1)

        # bob: /metrics is refused, the listings leave out what he may not reach
        status, _, body = await http_get(f"{base}/metrics", "bob-token")
        assert status == 403
        assert SECRET not in body.decode()
        assert json_body(body)["message"] == "not allowed to read the metrics ($metrics)"
        status, _, body = await http_get(f"{base}/api/streams", "bob-token")
        assert status == 200
        assert SECRET not in body.decode()
        assert "ticks" not in body.decode()
        listing = json_body(body)
        assert (listing["streams"], listing["pipelines"], listing["runs"]) == ([], ["count"], 0)
        status, _, body = await http_get(f"{base}/api/pipelines", "bob-token")
        assert [p["name"] for p in json_body(body)["pipelines"]] == ["count"]
        assert (await http_get(f"{base}/api/dashboard", "bob-token"))[0] == 403

        # the metrics are granted by the reserved name $metrics
        status, _, body = await http_get(f"{base}/metrics", "scraper-token")
        assert status == 200
        assert SECRET in body.decode()

        # an unknown pipeline's error lists only the pipelines the requester may run
        async with as_user(server, "carol-token") as carol:
            reply = await ask(carol, {"type": "run", "pipeline": "cx"})
        assert reply["code"] == "unknown_pipeline", reply
        assert reply["message"] == "no pipeline 'cx' (known: none)"
        reply = await ask(alice, {"type": "run", "pipeline": "cx"})
        assert "known: count, ticks" in reply["message"]


async def test_without_authentication_every_name_is_reachable(front: str) -> None:
    async with running(front=front) as server, ws_connect(server.url) as ws:
        started = await ask(ws, {"type": "run", "pipeline": "count", "stream": "anything"})
        assert started["type"] == "run_started", started
        assert (await http_get(f"{server.http_url}/metrics"))[0] == 200
