"""``headwater.client``: requests and replies, ordering, positions, errors (asyncio only)."""

from __future__ import annotations

import json

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from headwater.client import ConnectFailed, RequestFailed, connect
from headwater.server.protocol import (
    PongMessage,
    StreamUpdateMessage,
    SubscribedMessage,
    UnsubscribedMessage,
)
from test_server_helpers import WAIT, client_of, config, of_type, running, until, updates

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_requests_return_their_replies_and_keep_other_messages_in_order() -> None:
    async with running() as server, client_of(server) as client:
        await server.manager.create_stream("feed")
        subscribed = await client.subscribe("feed")
        assert isinstance(subscribed, SubscribedMessage)
        assert (subscribed.stream, subscribed.seq, subscribed.replayed) == ("feed", 0, 0)
        for i in range(3):
            await server.manager.push("feed", {"i": i})
        # the chunks arrive before the pong: ping() keeps them for the iteration
        assert await client.ping() >= 0
        with anyio.fail_after(WAIT):
            messages = [await client.receive() for _ in range(3)]
        assert [m.data for m in messages if isinstance(m, StreamUpdateMessage)] == [
            {"i": 0},
            {"i": 1},
            {"i": 2},
        ]
        assert client.position("feed") == (subscribed.epoch, 3)
        assert isinstance(await client.unsubscribe("feed"), UnsubscribedMessage)
        await server.manager.push("feed", {"i": 3})
        await server.manager.push("feed", {"i": 4})
        # resume continues right after the last chunk received
        resumed = await client.resume("feed")
        assert resumed.replayed == 2
        assert updates(await until(client, lambda m: getattr(m, "seq", 0) == 5)) == [4, 5]


async def test_request_errors_carry_the_protocol_code() -> None:
    async with running() as server, client_of(server) as client:
        with pytest.raises(RequestFailed) as info:
            await client.subscribe("nope")
        assert info.value.code == "unknown_stream"
        assert info.value.message == "no stream 'nope'"
        assert str(info.value) == "unknown_stream: no stream 'nope'"
        with pytest.raises(RequestFailed) as info:
            await client.run("count", {"stop": "x"})
        assert info.value.code == "invalid_params"
        assert "sources.numbers.params.stop" in info.value.message
        # a run: the reply, then its stream in the iteration
        started = await client.run("count", {"stop": 2})
        messages = await until(client, of_type("stream_complete", started.stream))
        assert messages[0].type == "subscribed"
        assert updates(messages) == [1, 2]


async def test_run_and_resume_on_a_new_connection() -> None:
    async with running(config(streaming={"inactivity_timeout": None})) as server:
        await server.manager.create_stream("feed")
        async with client_of(server) as first:
            await first.subscribe("feed")
            await server.manager.push("feed", "a")
            await until(first, of_type("stream_update"))
            position = first.position("feed")
        assert position is not None
        await server.manager.push("feed", "b")
        async with client_of(server) as second:
            epoch, seq = position
            sub = await second.subscribe("feed", since=seq, epoch=epoch)
            assert sub.replayed == 1
            (update,) = await until(second, of_type("stream_update"))
            assert isinstance(update, StreamUpdateMessage)
            assert (update.seq, update.data) == (2, "b")


async def test_unknown_message_types_are_skipped() -> None:
    async def handler(conn: ServerConnection) -> None:
        async for raw in conn:
            request = json.loads(raw)
            await conn.send(json.dumps({"type": "from_the_future", "v": 1, "x": 1}))
            await conn.send(json.dumps({"type": "pong", "v": 1, "id": request["id"], "new": 1}))

    async with serve(handler, "127.0.0.1", 0) as fake:
        port = fake.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as client:
            assert await client.ping() >= 0
            await client.send({"type": "ping", "id": "raw"})
            message = await client.receive()
            assert isinstance(message, PongMessage)
            assert message.id == "raw"


async def test_refused_connections_raise_connect_failed() -> None:
    async with running(config(auth={"tokens": {"t": "alice"}})) as server:
        with pytest.raises(ConnectFailed) as info:
            async with connect(server.url):
                pass  # pragma: no cover - refused
        assert info.value.status == 401
        assert "HTTP 401" in str(info.value)
        async with connect(server.url, token="t") as client:
            assert client.close_code is None
            assert await client.ping() >= 0
        assert client.close_code == 1000
