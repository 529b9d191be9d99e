"""A client that stops reading, under the ``disconnect`` slow-consumer policy, loses its
connection: the server tries a close handshake for a bounded time, then aborts the TCP
connection, instead of keeping it (and its buffers) open for as long as the client does
not read.

A real ``headwater serve`` server (in this process, on 127.0.0.1) and a real
``websockets`` client that subscribes and then never reads: its library stops reading the
socket once its small queue is full, so the kernel's buffers and then the server's fill.
"""

from __future__ import annotations

import json

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from test_server_helpers import WAIT, Served, config, running

pytestmark = pytest.mark.anyio

CHUNK = "y" * 16_384
"""Chunk data: big enough to fill the socket buffers in a few hundred chunks."""

MAX_PUSHES = 20_000
"""Upper bound of the chunks pushed before the client must count as slow (about 320 MB)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def flood_until_disconnected(server: Served, stream: str) -> int:
    """Push chunks until the manager disconnected a slow client; the chunks pushed."""
    manager = server.manager
    for pushed in range(1, MAX_PUSHES + 1):
        await manager.push(stream, CHUNK)
        await anyio.lowlevel.checkpoint()
        if manager.stats(stream)["disconnects"]:
            return pushed
    raise AssertionError(f"the stalled client was not disconnected after {MAX_PUSHES} chunks")


def server_side(server: Served) -> ServerConnection:
    """The server's end of the only connection it has."""
    (session,) = server.app._sessions
    conn = getattr(session.conn, "conn", None)  # the websockets front end's connection
    assert isinstance(conn, ServerConnection)
    return conn


async def read_until_closed(ws: ClientConnection) -> ConnectionClosed:
    """Read (bounded) until the connection closes; how it closed."""
    with anyio.fail_after(WAIT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as closed:
            return closed


async def test_a_stalled_client_is_aborted_after_a_bounded_close_handshake() -> None:
    cfg = config(
        streaming={
            "slow_consumer": "disconnect",
            "client_queue_size": 8,
            "send_timeout": None,  # the slow-consumer policy, not a send timeout, drops it
            "inactivity_timeout": None,
        },
        ping_interval=None,  # no keepalive: only the slow-consumer policy may drop it
    )
    async with running(cfg) as server:
        await server.manager.create_stream("flood")
        async with connect(server.url, max_queue=1, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "stream": "flood", "id": 1}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            ours = server_side(server)
            # from here on the client reads nothing
            assert await flood_until_disconnected(server, "flood") > 1
            with anyio.fail_after(2 * WAIT):  # the handshake's timeout, then the abort
                await ours.wait_closed()
            # the server's end is gone while the client still had not read: reading now
            # ends with the connection closed, not with a live connection
            await read_until_closed(ws)
        assert server.manager.client_count("flood") == 0
        assert server.connections == 0


async def test_a_reading_client_still_gets_the_close_code() -> None:
    """The handshake comes first: a client that reads receives 4001 ``slow_consumer``."""
    cfg = config(
        streaming={
            "slow_consumer": "disconnect",
            "client_queue_size": 1,
            "send_timeout": None,
            "inactivity_timeout": None,
        }
    )
    async with running(cfg) as server:
        await server.manager.create_stream("burst")
        async with connect(server.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "stream": "burst", "id": 1}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            manager = server.manager
            with anyio.fail_after(WAIT):
                while not manager.stats("burst")["disconnects"]:
                    await manager.push_many("burst", [CHUNK] * 64)  # never yields: overflows
            closed = await read_until_closed(ws)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 4001
        assert closed.rcvd.reason.startswith("slow_consumer")
