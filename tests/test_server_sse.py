"""Server-Sent Events (``GET /api/streams/{stream}/events``) on both front ends.

Every test runs against ``headwater serve``'s :class:`Server` (its own HTTP path beside
websockets) and the ASGI app under uvicorn, with ``httpx`` streaming responses over real
sockets. Waits are bounded and wait for events, never for time to pass.
"""

from __future__ import annotations

import json
import logging
import socket
import string
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.core.streaming import wire
from headwater.server.protocol import parse_server_frame
from headwater.server.sse import parse_event_id, sse_event
from test_server_helpers import FRONTS, WAIT, Served, client_of, config, running, until

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-sse-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    """Which front end serves: ``serve`` or ``asgi``."""
    return str(request.param)


@dataclass
class Event:
    """One SSE event (or comment) as received."""

    event: str | None = None
    id: str | None = None
    data: Any = None
    comment: str | None = None

    @property
    def seq(self) -> int | None:
        return self.data.get("seq") if isinstance(self.data, dict) else None


_LINES: weakref.WeakKeyDictionary[httpx.Response, AsyncIterator[str]] = weakref.WeakKeyDictionary()


def lines_of(response: httpx.Response) -> AsyncIterator[str]:
    """The one line iterator of a streamed response (httpx streams a body once)."""
    lines = _LINES.get(response)
    if lines is None:
        lines = _LINES[response] = response.aiter_lines()
    return lines


async def read_events(
    response: httpx.Response, stop: Callable[[Event], bool], limit: int = 10_000
) -> list[Event]:
    """Events (comments included) up to the first matching ``stop`` (or the end)."""
    out: list[Event] = []
    current = Event()
    fields = False
    with anyio.fail_after(WAIT):
        async for line in lines_of(response):
            if line == "":
                if fields:
                    out.append(current)
                    if stop(current) or len(out) >= limit:
                        return out
                current, fields = Event(), False
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields = True
            if name == "":
                current.comment = value
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data = json.loads(value)
    return out


def updates(events: list[Event]) -> list[int]:
    """The ``seq`` of every chunk event."""
    return [e.seq for e in events if e.event == "stream_update" and e.seq is not None]


def is_update(seq: int) -> Callable[[Event], bool]:
    return lambda e: e.event == "stream_update" and e.seq == seq


def of_kind(kind: str) -> Callable[[Event], bool]:
    return lambda e: e.event == kind


def events_url(server: Served, stream: str) -> str:
    return f"{server.http_url}/api/streams/{stream}/events"


async def test_chunks_arrive_as_events_with_epoch_ids_then_the_stream_completes(
    front: str,
) -> None:
    async with running(front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        manager = server.manager
        await manager.create_stream("feed")
        async with http.stream("GET", events_url(server, "feed")) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first = await read_events(response, of_kind("subscribed"))
            epoch = first[-1].data["epoch"]
            assert first[-1].id is None
            await manager.push("feed", {"n": 1})
            await manager.forward_event("feed", _progress())
            await manager.push("feed", {"n": 2})
            await manager.handle_stream_error("feed", {"message": "boom"}, terminate=False)
            await manager.close_stream("feed", "completed")
            events = await read_events(response, of_kind("stream_complete"))
            rest = [line async for line in lines_of(response)]
    kinds = [e.event for e in events]
    assert kinds == [
        "stream_update",
        "progress",
        "stream_update",
        "stream_error",
        "stream_complete",
    ]
    assert [e.id for e in events] == [f"{epoch}:1", None, f"{epoch}:2", None, None]
    # data is the WebSocket frame itself
    assert events[0].data == json.loads(wire.stream_update("feed", 1, {"n": 1}))
    assert parse_server_frame(json.dumps(events[-1].data)).type == "stream_complete"
    assert rest == []  # the response ended after stream_complete


def _progress() -> Any:
    from headwater import Progress

    return Progress(stage="sources.n", done=1, total=2)


@pytest.mark.parametrize("how", ["last_event_id", "bare_seq", "since"])
async def test_resuming_misses_nothing_and_repeats_nothing(front: str, how: str) -> None:
    async with running(front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        manager = server.manager
        await manager.create_stream("feed")
        for i in range(10):
            await manager.push("feed", i)
        epoch = manager.info("feed").epoch
        headers, params = {}, {}
        if how == "last_event_id":
            headers["Last-Event-ID"] = f"{epoch}:4"
        elif how == "bare_seq":
            headers["Last-Event-ID"] = "4"
        else:
            params["since"] = "4"
        url = events_url(server, "feed")
        async with http.stream("GET", url, headers=headers, params=params) as response:
            assert response.status_code == 200
            replayed = await read_events(response, is_update(10))
            for i in range(10, 15):
                await manager.push("feed", i)
            live = await read_events(response, is_update(15))
    subscribed = replayed[0]
    assert subscribed.event == "subscribed"
    assert subscribed.data["replayed"] == 6
    assert not [e for e in replayed if e.event == "replay_gap"]
    assert updates(replayed) + updates(live) == list(range(5, 16))
    assert [e.id for e in live if e.event == "stream_update"] == [
        f"{epoch}:{seq}" for seq in range(11, 16)
    ]


async def test_a_foreign_epoch_is_told_its_history_is_gone_as_over_websocket(front: str) -> None:
    async with running(front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        manager = server.manager
        await manager.create_stream("feed")
        for i in range(3):
            await manager.push("feed", i)
        headers = {"Last-Event-ID": "0123456789abcdef:2"}
        async with http.stream("GET", events_url(server, "feed"), headers=headers) as response:
            events = await read_events(response, is_update(3))
        async with client_of(server) as client:
            await client.send(
                {"type": "subscribe", "stream": "feed", "since": 2, "epoch": "0123456789abcdef"}
            )
            frames = await until(client, lambda m: m.type == "replay_gap")
    gap = events[1]
    assert gap.event == "replay_gap"
    assert gap.data["reason"] == "epoch_changed"
    assert gap.data == json.loads(frames[-1].model_dump_json())
    assert updates(events) == [1, 2, 3]  # everything still buffered, after the gap


async def test_bad_requests_get_clear_http_errors(front: str) -> None:
    async with running(front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        await server.manager.create_stream("gone")
        await server.manager.close_stream("gone")
        cases = [
            ("nope", {}, {}, 404, "no stream 'nope'"),
            ("gone", {}, {}, 410, "closed"),
            ("gone", {"Last-Event-ID": "x:y"}, {}, 400, "Last-Event-ID"),
            ("gone", {}, {"since": "-1"}, 400, "since"),
        ]
        for stream, headers, params, status, text in cases:
            response = await http.get(events_url(server, stream), headers=headers, params=params)
            assert response.status_code == status, (stream, response.text)
            assert text in response.json()["message"]
        response = await http.get(
            events_url(server, "gone"), headers={"Origin": "http://evil.example"}
        )
        assert response.status_code == 403


async def test_idle_streams_get_heartbeat_comments(front: str) -> None:
    cfg = config(sse={"heartbeat": 0.05, "retry": 1500})
    async with running(cfg, front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        await server.manager.create_stream("quiet")
        async with http.stream("GET", events_url(server, "quiet")) as response:
            raw = []
            with anyio.fail_after(WAIT):
                async for line in lines_of(response):
                    raw.append(line)
                    if raw.count(": hb") == 2:
                        break
    assert raw[0] == "retry: 1500"
    assert "event: subscribed" in raw


async def test_tokens_come_from_the_query_or_the_cookie_and_are_never_logged(
    front: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = config(auth={"tokens": {TOKEN: {"principal": "alice", "streams": ["feed"]}}})
    async with running(cfg, front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        await server.manager.create_stream("feed")
        await server.manager.create_stream("other")
        url = events_url(server, "feed")
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, params={"token": "wrong"})).status_code == 401
        response = await http.get(events_url(server, "other"), params={"token": TOKEN})
        assert response.status_code == 403  # authenticated, not authorized
        for params, cookies in (({"token": TOKEN}, None), (None, {"headwater_token": TOKEN})):
            async with (
                httpx.AsyncClient(timeout=WAIT, cookies=cookies) as authed,
                authed.stream("GET", url, params=params) as response,
            ):
                assert response.status_code == 200
                await server.manager.push("feed", "hello")
                events = await read_events(response, of_kind("stream_update"))
                assert events[-1].data["data"] == "hello"
    logged = [
        r.getMessage() + repr(r.args) + (r.exc_text or "")
        for r in caplog.records
        # the server's loggers; uvicorn's access log prints request targets (docs/asgi.md)
        if r.name.split(".")[0] in ("headwater", "websockets", "asyncio")
        or r.name == "uvicorn.error"
    ]
    assert logged  # the server did log (so the check below means something)
    assert not [line for line in logged if TOKEN in line]


async def stalled_events(server: Served, stream: str) -> socket.socket:
    """A raw connection that asks for a stream's events, then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    request = f"GET /api/streams/{stream}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    sock.sendall(request.encode())
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
async def test_a_slow_event_stream_gets_the_slow_consumer_policy(front: str, policy: str) -> None:
    cfg = config(
        streaming={"client_queue_size": 16, "slow_consumer": policy, "inactivity_timeout": None}
    )
    counter = "dropped" if policy == "drop_oldest" else "disconnects"
    async with running(cfg, front=front) as server, httpx.AsyncClient(timeout=WAIT) as http:
        manager = server.manager
        await manager.create_stream("feed")
        slow = await stalled_events(server, "feed")
        try:
            with anyio.fail_after(WAIT):
                while manager.client_count("feed") < 1:
                    await anyio.lowlevel.checkpoint()
            pad = "x" * 16_000
            async with http.stream("GET", events_url(server, "feed")) as fast:
                await read_events(fast, of_kind("subscribed"))
                seq = 0
                with anyio.fail_after(WAIT):
                    while manager.stats("feed")[counter] == 0:
                        seq = await manager.push("feed", {"pad": pad})
                        assert seq < 5_000, "the stalled client's queue never filled"
                        await read_events(fast, is_update(seq))  # the fast one keeps up
                await manager.close_stream("feed", "completed")
                events = await read_events(fast, of_kind("stream_complete"))
                assert not [e for e in events if e.event == "dropped"]
            assert seq > 16
            if policy == "disconnect":
                assert manager.totals()["disconnects"] == 1
            else:
                assert manager.totals()["dropped"] > 0
        finally:
            slow.close()


# -- the event encoding and Last-Event-ID, property-based -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
epochs = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)


@settings(max_examples=300, deadline=None)
@given(stream=st.text(min_size=1), seq=st.integers(1, 2**53), data=json_values, epoch=epochs)
def test_a_chunk_event_carries_the_frame_and_its_epoch_and_seq(
    stream: str, seq: int, data: Any, epoch: str
) -> None:
    frame = wire.stream_update(stream, seq, data)
    event = sse_event(frame, epoch)
    assert event.endswith(b"\n\n")
    lines = event[:-2].split(b"\n")  # a frame never holds a line break
    assert lines == [f"id: {epoch}:{seq}".encode(), b"event: stream_update", b"data: " + frame]
    assert parse_event_id(f"{epoch}:{seq}") == (seq, epoch)
    assert parse_event_id(str(seq)) == (seq, None)


@settings(max_examples=300, deadline=None)
@given(stream=st.text(min_size=1), reason=st.text(), last=st.integers(0, 2**53))
def test_other_messages_are_events_without_an_id(stream: str, reason: str, last: int) -> None:
    frame = wire.stream_complete(stream, reason, last, None)
    assert sse_event(frame, "0123456789abcdef") == b"event: stream_complete\ndata: %b\n\n" % frame


@settings(max_examples=500, deadline=None)
@given(value=st.text(max_size=100))
def test_any_last_event_id_parses_or_is_refused_with_a_clear_error(value: str) -> None:
    epoch, sep, seq = value.strip().rpartition(":")
    allowed = set(string.ascii_letters + string.digits + "_-")
    valid = seq.isascii() and seq.isdigit() and len(seq) <= 19
    valid = valid and (not sep or (0 < len(epoch) <= 64 and set(epoch) <= allowed))
    if not valid:
        with pytest.raises(ValueError, match="Last-Event-ID"):
            parse_event_id(value)
        return
    assert parse_event_id(value) == (int(seq), epoch if sep else None)
