"""Replies to one connection's requests arrive in request order, one per request.

Against a real :class:`headwater.server.Server` on 127.0.0.1, with the ``websockets``
client sending raw protocol frames (pipelined: a request does not wait for the reply to
the one before). The streams are written to while the requests go on, and their replay
buffers are full, so subscriptions with ``since`` queue long replays: an ``unsubscribe``
must then cancel only its own subscription's replay, never the ``subscribed`` reply of a
later ``subscribe`` of the same stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect

from test_server_helpers import WAIT, Served, config, running

pytestmark = pytest.mark.anyio

CHUNK = "x" * 1000
"""Chunk data: a full replay buffer is about 1 MB, more than a socket takes at once."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["serve", "asgi"])
def front(request: pytest.FixtureRequest) -> str:
    """The server's front end: ``headwater serve``'s websockets server, or the ASGI app."""
    return str(request.param)


def fast_config() -> Any:
    """No rate limit in the way of a burst of requests."""
    return config(limits={"rate": 1_000_000, "burst": 1_000_000})


@asynccontextmanager
async def fast_stream(server: Served, stream: str) -> AsyncIterator[None]:
    """``stream``, its replay buffer full, written to until the block ends."""
    manager = server.manager
    await manager.create_stream(stream, inactivity_timeout=None)
    await manager.push_many(stream, [CHUNK] * manager.config.replay_max_chunks)

    async def write() -> None:
        while True:
            await manager.push(stream, CHUNK)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def replies_until_pong(ws: ClientConnection, last: str) -> list[dict[str, Any]]:
    """Every reply (a message naming a request: ``ref`` or pong's ``id``) until the pong
    with id ``last``; chunks and other stream messages are skipped."""
    replies: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "pong" or message.get("ref") is not None:
                replies.append(message)
            if message["type"] == "pong" and message["id"] == last:
                return replies


def send(ws: ClientConnection, **message: Any) -> Any:
    return ws.send(json.dumps(message))


async def test_subscribe_then_unsubscribe_while_a_replay_is_queued_gets_every_reply(
    front: str,
) -> None:
    rounds = 50
    async with (
        running(fast_config(), front=front) as server,
        fast_stream(server, "fast"),
        connect(server.url, max_size=None) as ws,
    ):
        expected: list[tuple[str, str]] = []
        for r in range(rounds):
            for step, (kind, reply) in enumerate(
                [
                    ("subscribe", "subscribed"),
                    ("unsubscribe", "unsubscribed"),
                    ("subscribe", "subscribed"),
                    ("unsubscribe", "unsubscribed"),
                ]
            ):
                rid = f"{r}.{step}"
                extra = {"since": 0} if kind == "subscribe" else {}
                await send(ws, type=kind, id=rid, stream="fast", **extra)
                expected.append((reply, rid))
        await send(ws, type="ping", id="end")
        expected.append(("pong", "end"))
        replies = await replies_until_pong(ws, "end")
    got = [(m["type"], m.get("ref", m.get("id"))) for m in replies]
    assert got == expected


async def test_direct_replies_wait_for_queued_ones(front: str) -> None:
    """``pong`` and ``error`` (sent by the session) never overtake a ``subscribed`` or
    ``unsubscribed`` still queued behind a replay."""
    rounds = 30
    async with (
        running(fast_config(), front=front) as server,
        fast_stream(server, "fast"),
        connect(server.url, max_size=None) as ws,
    ):
        expected: list[tuple[str, str]] = []
        for r in range(rounds):
            await send(ws, type="subscribe", id=f"{r}.s", stream="fast", since=0)
            await send(ws, type="ping", id=f"{r}.p")
            await send(ws, type="subscribe", id=f"{r}.e", stream="fast")  # already
            await send(ws, type="unsubscribe", id=f"{r}.u", stream="fast")
            await send(ws, type="unsubscribe", id=f"{r}.x", stream="fast")  # not any more
            expected += [
                ("subscribed", f"{r}.s"),
                ("pong", f"{r}.p"),
                ("error", f"{r}.e"),
                ("unsubscribed", f"{r}.u"),
                ("error", f"{r}.x"),
            ]
        await send(ws, type="ping", id="end")
        expected.append(("pong", "end"))
        replies = await replies_until_pong(ws, "end")
    got = [(m["type"], m.get("ref", m.get("id"))) for m in replies]
    assert got == expected
