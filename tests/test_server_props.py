"""Property-based tests: arbitrary frames thrown at one shared server (per module and
front end: ``headwater serve``'s :class:`Server`, and the ASGI app under uvicorn).

The server runs in a background thread (its own asyncio loop, through an anyio blocking
portal); the tests talk to it with websockets' synchronous client. For every frame, the
server answers with valid protocol messages: exactly the ``error`` that
:func:`~headwater.server.protocol.parse_client_frame` predicts for a frame it rejects,
valid replies otherwise. It never closes the connection, and another client's stream is
unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anyio.abc import TaskStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

import headwater
from headwater.server.protocol import (
    CLIENT_MESSAGE_TYPES,
    ERROR_CODES,
    ErrorMessage,
    PongMessage,
    ProtocolError,
    ServerMessage,
    parse_client_frame,
    parse_server_frame,
)
from test_server_helpers import FRONTS, WAIT, Served, config, make_plugins, running

MAX_FRAME = 2048


@dataclass
class Shared:
    """The module's server, the portal to its loop, and a watcher of its stream."""

    portal: anyio.from_thread.BlockingPortal
    server: Served
    watcher: ClientConnection

    def push(self, data: Any) -> int:
        return int(self.portal.call(self.server.manager.push, "feed", data))


@pytest.fixture(scope="module", params=FRONTS)
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    cfg = config(
        limits={"rate": 1e9, "burst": 10**9, "max_frame_bytes": MAX_FRAME},
        streaming={"inactivity_timeout": None},
    )

    async def serve(task_status: TaskStatus[Served]) -> None:
        async with running(cfg, make_plugins(), {}, front=request.param) as server:
            await server.manager.create_stream("feed")
            task_status.started(server)
            await server.app.serve_forever()

    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        future, server = portal.start_task(serve)
        try:
            with sync_connect(server.url, open_timeout=WAIT) as watcher:
                watcher.send(json.dumps({"type": "subscribe", "stream": "feed"}))
                assert parse_server_frame(watcher.recv(timeout=WAIT)).type == "subscribed"
                yield Shared(portal, server, watcher)
        finally:
            portal.call(server.shutdown)
            future.result(timeout=WAIT)


# -- strategies -------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.sampled_from(["feed", "count", "nope", ""]) | st.text(max_size=8)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from([*CLIENT_MESSAGE_TYPES, "shout", ""]) | json_values},
    optional={
        "v": st.sampled_from([1, 2, "1", None]),
        "id": st.integers(-5, 5) | st.text(max_size=6) | json_values,
        "stream": names | json_values,
        "since": st.integers(-2, 10) | json_values,
        "epoch": st.text(max_size=8) | json_values,
        "pipeline": names | json_values,
        "params": st.dictionaries(st.sampled_from(["stop", "x"]), st.integers(0, 5) | json_values)
        | json_values,
        "run": names,
        "extra": json_values,
    },
)
frames = st.one_of(
    message_like.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
    st.integers(MAX_FRAME, 3 * MAX_FRAME).map(
        lambda n: json.dumps({"type": "ping", "id": "x" * n})
    ),
)


# -- helpers ----------------------------------------------------------------------------


def expected_error(frame: str | bytes) -> str | None:
    """The error code the server must answer ``frame`` with, if it rejects it outright."""
    if isinstance(frame, bytes):
        return "invalid_message"
    try:
        parse_client_frame(frame, MAX_FRAME)
    except ProtocolError as exc:
        return exc.code
    return None


def exchange(conn: ClientConnection, frame: str | bytes, marker: str) -> list[ServerMessage]:
    """Send ``frame`` then a ``ping``; every message received until its ``pong``."""
    conn.send(frame)
    conn.send(json.dumps({"type": "ping", "id": marker}))
    received: list[ServerMessage] = []
    while True:
        message = parse_server_frame(conn.recv(timeout=WAIT))  # raises if not valid
        if isinstance(message, PongMessage) and message.id == marker:
            return received
        received.append(message)


def check_messages(messages: list[ServerMessage]) -> None:
    for message in messages:
        if isinstance(message, ErrorMessage):
            assert message.code in ERROR_CODES, message
            assert message.code != "internal_error", message


def feed_still_works(shared: Shared) -> None:
    """The watcher receives new chunks of ``feed``, in order, without a gap."""
    first = shared.push({"check": 0})
    last = first
    for i in range(1, 20):
        last = shared.push({"check": i})
    seqs = []
    while not seqs or seqs[-1] < last:
        message = parse_server_frame(shared.watcher.recv(timeout=WAIT))
        if message.type == "stream_update" and message.seq >= first:  # type: ignore[union-attr]
            seqs.append(message.seq)  # type: ignore[union-attr]
    assert seqs == list(range(first, last + 1))


# -- properties -------------------------------------------------------------------------


def test_every_frame_gets_a_valid_answer_and_the_server_survives(shared: Shared) -> None:
    with sync_connect(shared.server.url, open_timeout=WAIT, max_size=2**22) as conn:
        counter = iter(range(10**9))

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(frame=frames)
        def answer(frame: str | bytes) -> None:
            marker = f"marker-{next(counter)}"
            messages = exchange(conn, frame, marker)
            check_messages(messages)
            code = expected_error(frame)
            if code is not None:
                # a rejected frame is answered at once, with exactly the predicted code
                first = messages[0]
                assert isinstance(first, ErrorMessage), messages
                assert first.code == code

        answer()
        # the connection is still open and usable
        conn.send(json.dumps({"type": "ping", "id": "end"}))
        while True:
            message = parse_server_frame(conn.recv(timeout=WAIT))
            if isinstance(message, PongMessage) and message.id == "end":
                break
    feed_still_works(shared)


def test_sequences_of_frames_never_break_other_clients(shared: Shared) -> None:
    with sync_connect(shared.server.url, open_timeout=WAIT, max_size=2**22) as conn:
        counter = iter(range(10**9))

        @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(batch=st.lists(frames, min_size=1, max_size=6))
        def answer_all(batch: list[str | bytes]) -> None:
            for frame in batch[:-1]:
                conn.send(frame)
            check_messages(exchange(conn, batch[-1], f"seq-{next(counter)}"))

        answer_all()
    feed_still_works(shared)
    assert shared.server.running


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_websocket_sink_publishes_from_a_pipeline_in_another_thread(
    shared: Shared, backend: str
) -> None:
    """A pipeline running on another event loop (even trio) reaches the server's loop."""
    stream = f"crossed-{backend}"
    shared.portal.call(shared.server.manager.create_stream, stream)
    with sync_connect(shared.server.url, open_timeout=WAIT) as conn:
        conn.send(json.dumps({"type": "subscribe", "stream": stream}))
        messages = [parse_server_frame(conn.recv(timeout=WAIT))]
        assert messages[0].type == "subscribed"
        spec = (
            headwater.Pipeline("crossing")
            .source("range", stop=5)
            .sink("websocket", stream=stream, close=True)
        )
        result = headwater.run_sync(spec, engine=shared.server.engine, backend=backend)
        assert result.output == {"stream": stream, "chunks": 5, "last_seq": 5}
        while messages[-1].type != "stream_complete":
            messages.append(parse_server_frame(conn.recv(timeout=WAIT)))
    assert [m.type for m in messages] == ["subscribed"] + ["stream_update"] * 5 + [
        "stream_complete"
    ]
    assert [m.data for m in messages[1:6]] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
