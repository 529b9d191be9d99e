"""The WebSocket server over real sockets: fan-out, slow clients, resumption, limits,
runs, the ``websocket`` sink, HTTP endpoints and shutdown.

Every test that talks to a server runs against both front ends (the ``front`` fixture):
``headwater serve``'s :class:`Server` and the ASGI app under uvicorn. Every server
listens on 127.0.0.1, port 0. The server runs on asyncio only (websockets is
asyncio-based), so these tests do too. Waits are bounded (``fail_after``) and wait for
messages, never for time to pass.
"""

from __future__ import annotations

import json
import socket
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import headwater
from headwater.client import Client, ConnectFailed, RequestFailed
from headwater.server import NoServerRunning, Server
from headwater.server.protocol import (
    ErrorMessage,
    ServerMessage,
    StreamCompleteMessage,
    StreamUpdateMessage,
    parse_server_frame,
)
from test_server_helpers import (
    FRONTS,
    WAIT,
    Served,
    client_of,
    config,
    http_get,
    json_body,
    make_plugins,
    of_type,
    running,
    until,
    updates,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


async def read_stream(client: Client, stream: str) -> list[ServerMessage]:
    """Every message of ``stream`` until its ``stream_complete`` (included)."""
    return await until(client, of_type("stream_complete", stream))


# -- fan-out ----------------------------------------------------------------------------


async def test_many_clients_receive_the_same_ordered_chunks(front: str) -> None:
    async with running(front=front) as server:
        manager = server.manager
        await manager.create_stream("feed")
        n_clients, n_chunks = 20, 200
        results: dict[int, list[ServerMessage]] = {}
        subscribed = anyio.Event()
        ready = 0

        async def follow(i: int) -> None:
            nonlocal ready
            async with client_of(server) as client:
                await client.subscribe("feed")
                ready += 1
                if ready == n_clients:
                    subscribed.set()
                results[i] = await read_stream(client, "feed")

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for i in range(n_clients):
                    tg.start_soon(follow, i)
                await subscribed.wait()
                assert manager.client_count("feed") == n_clients
                for i in range(n_chunks):
                    await manager.push("feed", {"n": i, "text": f"chunk {i}"})
                await manager.close_stream("feed", "completed")

    expected = list(range(1, n_chunks + 1))
    for messages in results.values():
        assert updates(messages) == expected
        data = [m.data for m in messages if isinstance(m, StreamUpdateMessage)]
        assert data == [{"n": i, "text": f"chunk {i}"} for i in range(n_chunks)]
        assert isinstance(messages[-1], StreamCompleteMessage)
        assert messages[-1].reason == "completed"
        assert messages[-1].last_seq == n_chunks
    assert len(results) == n_clients


async def stalled_connection(server: Served, stream: str) -> Any:
    """A raw connection subscribed to ``stream`` that then stops reading.

    Its socket's receive buffer is tiny and websockets stops reading after one queued
    message, so the server's socket buffers fill up quickly, then its queue for it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    conn = await ws_connect(server.url, sock=sock, max_queue=1, compression=None)
    await conn.send(json.dumps({"type": "subscribe", "stream": stream}))
    reply = parse_server_frame(await conn.recv())
    assert reply.type == "subscribed"
    return conn


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
async def test_a_client_that_stops_reading_does_not_slow_the_others(
    policy: str, front: str
) -> None:
    cfg = config(
        streaming={"client_queue_size": 32, "slow_consumer": policy, "inactivity_timeout": None}
    )
    async with running(cfg, front=front) as server:
        manager = server.manager
        await manager.create_stream("feed")
        slow = await stalled_connection(server, "feed")
        fast = 3
        received = [0] * fast
        messages: list[list[ServerMessage]] = [[] for _ in range(fast)]
        progressed = anyio.Event()
        pad = "x" * 16_000
        counter = "dropped" if policy == "drop_oldest" else "disconnects"

        async def read_fast(i: int, client: Client) -> None:
            nonlocal progressed
            async for message in client:
                messages[i].append(message)
                if isinstance(message, StreamUpdateMessage):
                    received[i] = message.seq
                    progressed.set()
                    progressed = anyio.Event()
                if message.type == "stream_complete":
                    return

        with anyio.fail_after(WAIT):
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(client_of(server)) for _ in range(fast)]
                for client in clients:
                    await client.subscribe("feed")
                async with anyio.create_task_group() as tg:
                    for i, client in enumerate(clients):
                        tg.start_soon(read_fast, i, client)
                    seq = 0
                    # push until the stalled client's queue overflowed; the fast clients are
                    # kept within 8 chunks (well inside their queue of 32)
                    while manager.stats("feed")[counter] == 0:
                        seq = await manager.push("feed", {"pad": pad})
                        assert seq < 5_000, "the stalled client's queue never filled"
                        while min(received) < seq - 8:
                            await progressed.wait()
                    overflow_at = seq
                    for _ in range(10):
                        seq = await manager.push("feed", {"pad": pad})
                    await manager.close_stream("feed", "completed")

        # the fast clients received every chunk, in order, and were never told of a drop
        for client_messages in messages:
            assert updates(client_messages) == list(range(1, seq + 1))
            assert not [m for m in client_messages if m.type == "dropped"]
        assert overflow_at > 32  # the socket buffers filled first, then the queue

        # the stalled client, per policy
        frames: list[ServerMessage] = []
        try:
            with anyio.fail_after(WAIT):
                while True:
                    frames.append(parse_server_frame(await slow.recv()))
                    if frames[-1].type == "stream_complete":
                        break
        except ConnectionClosed:
            pass
        if policy == "drop_oldest":
            dropped = [m for m in frames if m.type == "dropped"]
            assert dropped
            assert sum(m.count for m in dropped) == manager.totals()["dropped"]  # type: ignore[union-attr]
            seqs = updates(frames)
            assert seqs == sorted(seqs)
            assert seqs[-1] == seq  # the newest chunks were kept
            assert frames[-1].type == "stream_complete"
            await slow.close()
        else:
            assert slow.close_code == 4001
            assert slow.close_reason.startswith("slow_consumer:")
            assert manager.totals()["disconnects"] == 1


# -- resumption -------------------------------------------------------------------------


async def test_reconnecting_with_since_misses_nothing_still_buffered(front: str) -> None:
    async with running(config(streaming={"replay_max_chunks": 100}), front=front) as server:
        manager = server.manager
        await manager.create_stream("feed")
        first: list[int] = []
        with anyio.fail_after(WAIT):
            async with client_of(server) as client:
                await client.subscribe("feed", since=0)
                for i in range(60):
                    await manager.push("feed", i)
                seen = await until(client, lambda m: m.type == "stream_update" and m.seq >= 30)
                first = updates(seen)
                position = client.position("feed")
            # disconnected (chunks 31.. may have been in flight: they are lost with the
            # connection); more chunks are pushed meanwhile
            for i in range(60, 90):
                await manager.push("feed", i)
            assert position is not None
            epoch, last = position
            assert last == first[-1]
            async with client_of(server) as client:
                sub = await client.subscribe("feed", since=last, epoch=epoch)
                assert sub.replayed == 90 - last
                for i in range(90, 120):  # live, after the replay
                    await manager.push("feed", i)
                second = updates(
                    await until(client, lambda m: m.type == "stream_update" and m.seq == 120)
                )
        assert first + second == list(range(1, 121))

        # too far behind: the chunks left the buffer (replay_max_chunks=100)
        for i in range(120, 150):
            await manager.push("feed", i)
        async with client_of(server) as client:
            await client.subscribe("feed", since=10, epoch=epoch)
            messages = await until(client, lambda m: m.type == "stream_update" and m.seq == 150)
        gap = messages[0]
        assert gap.type == "replay_gap"
        assert (gap.reason, gap.since, gap.first_available) == ("evicted", 10, 51)  # type: ignore[union-attr]
        assert updates(messages) == list(range(51, 151))


async def test_the_inactivity_timeout_closes_an_idle_stream(front: str) -> None:
    async with running(config(streaming={"inactivity_timeout": 0.2}), front=front) as server:
        await server.manager.create_stream("quiet")
        async with client_of(server) as client:
            await client.subscribe("quiet")
            await server.manager.push("quiet", "only chunk")
            messages = await read_stream(client, "quiet")
            assert updates(messages) == [1]
            assert messages[-1].reason == "inactive"  # type: ignore[union-attr]
            assert not server.manager.has_stream("quiet")
            with pytest.raises(RequestFailed) as info:
                await client.subscribe("quiet")
            assert info.value.code == "stream_closed"


# -- limits and errors ------------------------------------------------------------------


async def test_limits_produce_their_documented_error_codes(front: str) -> None:
    cfg = config(
        limits={"max_subscriptions": 2, "max_frame_bytes": 1024, "max_runs": 1},
        streaming={"max_clients_per_stream": 1, "max_streams": 3},
    )
    async with running(cfg, front=front) as server:
        manager = server.manager
        for name in ("a", "b", "c"):
            await manager.create_stream(name)

        async def fails(call: Any, code: str) -> None:
            with pytest.raises(RequestFailed) as info:
                await call
            assert info.value.code == code, info.value

        async with client_of(server) as one, client_of(server) as two:
            await one.subscribe("a")
            await one.subscribe("b")
            await fails(one.subscribe("c"), "limit_reached")  # max_subscriptions
            await fails(one.subscribe("a"), "already_subscribed")
            await fails(two.subscribe("a"), "limit_reached")  # max_clients_per_stream
            await fails(two.subscribe("nope"), "unknown_stream")
            await fails(two.unsubscribe("a"), "not_subscribed")
            await one.unsubscribe("b")
            await fails(one.run("nope"), "unknown_pipeline")
            await fails(one.run("count", {"stop": "many"}), "invalid_params")
            await fails(one.run("count", {"step": 2}), "invalid_params")
            await fails(one.run("count", stream="a"), "stream_exists")
            await fails(one.run("count"), "limit_reached")  # max_streams: 3 are open

            # a frame over the size limit is answered; the connection stays usable
            await two.send(json.dumps({"type": "ping", "id": "x" * 2000}))
            error = (await until(two, of_type("error")))[-1]
            assert isinstance(error, ErrorMessage)
            assert error.code == "too_large"
            assert await two.ping() > 0
            # ... but beyond 4x the limit the connection is closed (1009: message too big)
            await two.send(json.dumps({"type": "ping", "id": "x" * 5000}))
            with anyio.fail_after(WAIT), pytest.raises(ConnectionClosed):
                await two.receive()
            assert two.close_code == 1009
            assert await one.ping() > 0  # the other connection is unaffected


async def test_run_limit_and_stream_exists(front: str) -> None:
    async with (
        running(config(limits={"max_runs": 1}), front=front) as server,
        client_of(server) as client,
    ):
        started = await client.run("ticks", stream="mine")
        assert started.stream == "mine"
        with pytest.raises(RequestFailed) as info:
            await client.run("ticks")
        assert info.value.code == "limit_reached"
        await client.cancel(run=started.run)
        await read_stream(client, "mine")
        with anyio.fail_after(WAIT):
            while server.runs:  # the run's clean-up finishes right after its last event
                await anyio.lowlevel.checkpoint()
        await server.manager.create_stream("taken")
        with pytest.raises(RequestFailed) as info:
            await client.run("count", stream="taken")
        assert info.value.code == "stream_exists"


async def test_message_rate_is_limited_per_connection(front: str) -> None:
    async with (
        running(config(limits={"rate": 0.1, "burst": 3}), front=front) as server,
        client_of(server) as client,
        client_of(server) as other,
    ):
        for i in range(6):
            await client.send({"type": "ping", "id": i})
        messages = [await client.receive() for _ in range(6)]
        assert [m.type for m in messages[:3]] == ["pong"] * 3
        assert [getattr(m, "code", None) for m in messages[3:]] == ["rate_limited"] * 3
        assert await other.ping() > 0  # another connection has its own budget


async def test_bad_input_is_answered_and_changes_nothing(front: str) -> None:
    async with running(front=front) as server, client_of(server) as client:
        await server.manager.create_stream("feed")
        await client.subscribe("feed")
        cases = {
            "{": "bad_json",
            "[1, 2]": "not_an_object",
            '{"type": "shout"}': "unknown_type",
            '{"type": "subscribe"}': "invalid_message",
            '{"type": "ping", "v": 2}': "unsupported_version",
            '{"type": "cancel"}': "invalid_message",
        }
        for frame, code in cases.items():
            await client.send(frame)
            reply = await client.receive()
            assert isinstance(reply, ErrorMessage)
            assert reply.code == code
        await client.connection.send(b"\x00binary")
        reply = await client.receive()
        assert isinstance(reply, ErrorMessage)
        assert reply.code == "invalid_message"
        await client.send({"type": "cancel", "run": "nope", "id": 7})
        reply = await client.receive()
        assert isinstance(reply, ErrorMessage)
        assert (reply.code, reply.ref) == ("unknown_run", 7)
        await server.manager.push("feed", "still here")
        assert updates(await until(client, of_type("stream_update"))) == [1]


# -- runs -------------------------------------------------------------------------------


async def test_run_and_cancel_a_named_pipeline_with_progress_forwarded(front: str) -> None:
    async with running(front=front) as server, client_of(server) as client:
        started = await client.run("ticks")
        assert started.pipeline == "ticks"
        assert started.stream == f"ticks-{started.run}"
        assert [r.run_id for r in server.runs] == [started.run]
        seen = await until(client, lambda m: m.type == "stream_update" and m.seq >= 5)
        assert seen[0].type == "subscribed"
        progress = [m for m in seen if m.type == "progress"]
        assert progress
        assert progress[-1].stage == "sources.clock"  # type: ignore[union-attr]
        assert [m.data for m in seen if isinstance(m, StreamUpdateMessage)][:2] == [
            {"i": 1},
            {"i": 2},
        ]
        await client.cancel(stream=started.stream)
        end = (await read_stream(client, started.stream))[-1]
        assert isinstance(end, StreamCompleteMessage)
        assert end.reason == "cancelled"
        assert end.summary is not None
        assert end.summary["cancel_reason"] == "cancelled by client"

        # with params, to completion
        started = await client.run("count", {"stop": 3})
        messages = await read_stream(client, started.stream)
        data = [m.data for m in messages if isinstance(m, StreamUpdateMessage)]
        assert data == [0, 1, 2]
        assert messages[-1].reason == "succeeded"  # type: ignore[union-attr]
        statuses = [m for m in messages if m.type == "status"]
        assert statuses[0].state == "running"  # type: ignore[union-attr]


async def test_a_failing_run_reports_its_error(front: str) -> None:
    pipeline = {
        "pipeline": {
            "name": "boom",
            "sources": {"n": {"action": "range", "params": {"stop": 5}}},
            "steps": [{"transformer": "map", "params": {"fn": "operator:truediv"}}],
            "sinks": [{"sink": "websocket"}],
        }
    }
    async with (
        running(config(pipelines={"boom": pipeline}), front=front) as server,
        client_of(server) as client,
    ):
        started = await client.run("boom")
        messages = await read_stream(client, started.stream)
    errors = [m for m in messages if m.type == "stream_error"]
    assert errors
    assert errors[0].error["stage"] == "steps[0].map"  # type: ignore[union-attr]
    assert messages[-1].reason == "failed"  # type: ignore[union-attr]


# -- the websocket sink -----------------------------------------------------------------


async def test_websocket_sink_publishes_from_a_pipeline(front: str) -> None:
    async with running(front=front) as server, client_of(server) as client:
        assert server.engine.servers == [server.app]
        await server.manager.create_stream("events")
        await client.subscribe("events")
        spec = (
            headwater.Pipeline("publish")
            .source("range", stop=5)
            .map(lambda x: {"x": x})
            .sink("websocket", stream="events", close=True)
        )
        result = await server.engine.run(spec)
        assert result.output == {"stream": "events", "chunks": 5, "last_seq": 5}
        messages = await read_stream(client, "events")
        assert [m.data for m in messages if isinstance(m, StreamUpdateMessage)] == [
            {"x": i} for i in range(5)
        ]
        assert messages[-1].reason == "completed"  # type: ignore[union-attr]

        # no stream named: the pipeline's name; created by the sink, so closed by it
        result = await server.engine.run(
            headwater.Pipeline("numbers").source("range", stop=3).sink("websocket")
        )
        assert result.output["stream"] == "numbers"
        assert not server.manager.has_stream("numbers")

        # a stream the sink did not create stays open
        await server.manager.create_stream("kept")
        await server.engine.run(
            headwater.Pipeline("k").source("range", stop=2).sink("websocket", stream="kept")
        )
        assert server.manager.info("kept").seq == 2


async def test_websocket_sink_without_a_server_fails_clearly() -> None:
    spec = headwater.Pipeline("orphan").source("range", stop=2).sink("websocket")
    with pytest.raises(headwater.PipelineFailed, match="no headwater server is running"):
        await headwater.run(spec, plugins=make_plugins())
    async with headwater.Engine(plugin_manager=make_plugins()) as engine:
        with pytest.raises(
            headwater.PipelineFailed, match="no headwater server is running"
        ) as info:
            await engine.run(spec)
        cause = info.value.errors[0].cause  # type: ignore[attr-defined]
        assert isinstance(cause, NoServerRunning)
        assert engine.servers == []


# -- HTTP -------------------------------------------------------------------------------


async def test_http_endpoints_answer_on_the_websocket_port(front: str) -> None:
    async with running(front=front) as server, client_of(server) as client:
        await server.manager.create_stream("feed", metadata={"source": "test"})
        await server.manager.push("feed", 1)
        await client.subscribe("feed")
        started = await client.run("ticks")

        status, headers, body = await http_get(f"{server.http_url}/healthz")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json_body(body)["status"] == "ok"

        status, _, body = await http_get(f"{server.http_url}/api/streams")
        assert status == 200
        snapshot = json_body(body)
        assert snapshot["clients"] == 1
        streams = {s["stream"]: s for s in snapshot["streams"]}
        assert streams["feed"]["seq"] == 1
        assert streams["feed"]["clients"] == 1
        assert streams["feed"]["state"] == "open"
        assert streams["feed"]["metadata"] == {"source": "test"}
        run_stream = streams[started.stream]
        assert run_stream["state"] == "running"
        assert (run_stream["pipeline"], run_stream["run"]) == ("ticks", started.run)
        assert snapshot["pipelines"] == ["count", "ticks"]

        status, _, body = await http_get(f"{server.http_url}/api/components")
        assert status == 200
        components = {c["name"]: c for c in json_body(body)["components"]}
        assert components["websocket"]["kind"] == "sink"
        assert components["range"]["params_schema"]["type"] == "object"
        assert components["test.ticks"]["plugin"] == "server-tests"

        status, headers, body = await http_get(f"{server.http_url}/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"headwater" in body

        status, _, body = await http_get(f"{server.http_url}/nope")
        assert status == 404
        assert json_body(body)["message"] == "no such endpoint: /nope"

        with pytest.raises(InvalidStatus) as info:
            await ws_connect(f"ws://127.0.0.1:{server.port}/elsewhere")
        assert info.value.response.status_code == 404


# -- shutdown ---------------------------------------------------------------------------


async def test_shutdown_notifies_every_client(front: str) -> None:
    async with running(front=front) as server:
        manager = server.manager
        await manager.create_stream("a")
        await manager.create_stream("b")
        async with client_of(server) as one, client_of(server) as two, client_of(server) as idle:
            await one.subscribe("a")
            await one.subscribe("b")
            await two.subscribe("b")
            started = await two.run("ticks")
            await until(two, of_type("stream_update", started.stream))
            await manager.push("a", "last words")
            await server.shutdown()
            assert not server.running
            with anyio.fail_after(WAIT):
                got_one = [m async for m in one]
                got_two = [m async for m in two]
                got_idle = [m async for m in idle]
            ends = {(m.stream, m.reason) for m in got_one if isinstance(m, StreamCompleteMessage)}
            assert ends == {("a", "shutdown"), ("b", "shutdown")}
            assert updates([m for m in got_one if getattr(m, "stream", None) == "a"]) == [1]
            ends = {(m.stream, m.reason) for m in got_two if isinstance(m, StreamCompleteMessage)}
            assert ends == {("b", "shutdown"), (started.stream, "shutdown")}
            assert got_idle == []
            for client in (one, two, idle):
                assert client.close_code == 1001
                assert client.close_reason == "server shutting down"
        with pytest.raises((OSError, ConnectFailed)), anyio.fail_after(WAIT):
            async with client_of(server):
                pass  # pragma: no cover - refused
    assert server.engine.servers == []


async def test_a_server_refuses_to_start_twice_and_reports_a_taken_port() -> None:
    async with running() as server:
        with pytest.raises(RuntimeError, match="only once"):
            await server.start()
        with pytest.raises(OSError, match="address already in use"):
            async with Server(config(port=server.port), plugins=make_plugins(), environ={}):
                pass  # pragma: no cover - never reached
