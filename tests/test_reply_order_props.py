"""Property: one connection's requests each get exactly one reply, in request order.

A hypothesis state machine drives one WebSocket connection to a real
:class:`headwater.server.Server` (127.0.0.1, in a background event loop) with interleaved
``subscribe``, ``unsubscribe``, ``run``, ``cancel`` and ``ping`` requests, sent without
waiting for replies, while a fast stream is written to (its replay buffer full, so
``since: 0`` queues a long replay). At the end of each example a last ``ping`` is sent and
everything up to its ``pong`` is read: every request must have exactly one reply of an
expected kind (a successful ``cancel`` has none, as the protocol says; a ``run`` is
answered by ``run_started`` then ``subscribed``), and the replies must come in the order
of the requests.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from websockets.sync.client import ClientConnection, connect

from test_server_helpers import WAIT, Served, config, running

FAST = "fast"
"""The stream written to all the time."""

REPLY_TYPES = {"subscribed", "unsubscribed", "run_started", "pong", "error"}

Expected = set[tuple[str, ...]]
"""The reply sequences a request may get."""

NONE = "none"
"""Expected "reply" of a request the protocol does not answer (a successful cancel)."""


@dataclass
class Live:
    """The server in a background event loop."""

    server: Served
    portal: anyio.from_thread.BlockingPortal


async def write_fast(server: Served) -> None:
    """Fill ``FAST``'s replay buffer, then keep writing to it (paced: a few per ms)."""
    manager = server.manager
    await manager.create_stream(FAST, inactivity_timeout=None)
    chunk = "x" * 200
    await manager.push_many(FAST, [chunk] * manager.config.replay_max_chunks)
    while True:
        await manager.push_many(FAST, [chunk] * 5)
        await anyio.sleep(0.001)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    cfg = config(limits={"rate": 1_000_000, "burst": 1_000_000, "max_runs": 10_000})
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running(cfg)) as server,
    ):
        future = portal.start_task_soon(write_fast, server)
        try:
            yield Live(server, portal)
        finally:
            future.cancel()


class OneConnection(RuleBasedStateMachine):
    """One connection; the model says which replies each request may get."""

    live: Live

    def __init__(self) -> None:
        super().__init__()
        self.exit = ExitStack()
        # max_queue=None: the client's reader thread never stops reading, so closing
        # does not wait behind the fast stream's backlog
        self.ws: ClientConnection = self.exit.enter_context(
            connect(self.live.server.url, max_size=None, max_queue=None)
        )
        self.ids = itertools.count(1)
        self.prefix = uuid.uuid4().hex[:8]
        self.sent: list[tuple[str, frozenset[tuple[str, ...]]]] = []
        """Request ids in order, each with the reply sequences it may get."""
        self.subscribed: dict[str, str] = {}
        """Stream -> ``in``, ``out`` or ``unknown`` (a cancelled run's stream closes on
        its own, at a time the client does not know)."""
        self.runs: dict[str, bool] = {}
        """Run stream -> cancel requested."""

    def send(self, expected: Expected, **message: Any) -> None:
        rid = f"{self.prefix}-{next(self.ids)}"
        self.ws.send(json.dumps({**message, "id": rid}))
        self.sent.append((rid, frozenset(expected)))

    def streams(self) -> list[str]:
        return [FAST, "nope", *self.runs]

    @rule(data=st.data(), since=st.sampled_from([None, 0]))
    def subscribe(self, data: st.DataObject, since: int | None) -> None:
        stream = data.draw(st.sampled_from(self.streams()))
        state = self.subscribed.get(stream, "out")
        expected: Expected
        if stream == "nope" or state == "in":
            expected = {("error",)}
        elif state == "unknown" or self.runs.get(stream):
            expected = {("error",), ("subscribed",)}
            state = "unknown"
        else:
            expected = {("subscribed",)}
            state = "in"
        self.subscribed[stream] = state
        extra = {} if since is None else {"since": since}
        self.send(expected, type="subscribe", stream=stream, **extra)

    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from(self.streams()))
        state = self.subscribed.get(stream, "out")
        answers: dict[str, Expected] = {
            "in": {("unsubscribed",)},
            "out": {("error",)},
            "unknown": {("unsubscribed",), ("error",)},
        }
        expected = answers[state]
        if state != "unknown":
            self.subscribed[stream] = "out"
        self.send(expected, type="unsubscribe", stream=stream)

    @precondition(lambda self: len(self.runs) < 3)
    @rule()
    def run(self) -> None:
        stream = f"run-{self.prefix}-{len(self.runs)}"
        self.runs[stream] = False
        self.subscribed[stream] = "in"
        self.send({("run_started", "subscribed")}, type="run", pipeline="ticks", stream=stream)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from(["nope", *self.runs]))
        expected: Expected
        if stream == "nope":
            expected = {("error",)}
        elif self.runs[stream]:
            expected = {(NONE,), ("error",)}  # unknown_run once it ended
        else:
            expected = {(NONE,)}
            self.runs[stream] = True
            self.subscribed[stream] = "unknown"
        self.send(expected, type="cancel", stream=stream)

    @rule()
    def ping(self) -> None:
        self.send({("pong",)}, type="ping")

    def teardown(self) -> None:
        try:
            for stream, cancelled in self.runs.items():
                if not cancelled:
                    self.send({(NONE,)}, type="cancel", stream=stream)
            self.send({("pong",)}, type="ping")
            self.check(self.replies(self.sent[-1][0]))
        finally:
            self.exit.close()

    def replies(self, last: str) -> list[tuple[str, str]]:
        """``(request id, reply type)`` of every reply, in arrival order, up to the pong
        answering ``last``."""
        out: list[tuple[str, str]] = []
        while True:
            message = json.loads(self.ws.recv(timeout=WAIT))
            kind = message["type"]
            if kind not in REPLY_TYPES:
                continue
            rid = message["id"] if kind == "pong" else message.get("ref")
            if rid is None:
                continue
            out.append((rid, kind))
            if kind == "pong" and rid == last:
                return out

    def check(self, replies: list[tuple[str, str]]) -> None:
        # group the replies by request, keeping arrival order; a request's replies must
        # come together (a run's run_started and subscribed)
        order: list[str] = []
        got: dict[str, list[str]] = {}
        for rid, kind in replies:
            if order and order[-1] == rid:
                got[rid].append(kind)
                continue
            assert rid not in got, f"replies to {rid} are split: {replies}"
            order.append(rid)
            got[rid] = [kind]
        answered = [rid for rid, _ in self.sent if rid in got]
        assert order == answered, f"replies out of request order:\n{order}\n{answered}"
        assert set(got) <= {rid for rid, _ in self.sent}
        for rid, expected in self.sent:
            seq = tuple(got.get(rid, [NONE]))
            assert seq in expected, f"request {rid}: got {seq}, expected one of {expected}"


def test_every_request_gets_one_reply_in_order(live: Live) -> None:
    OneConnection.live = live
    run_state_machine_as_test(
        OneConnection,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
