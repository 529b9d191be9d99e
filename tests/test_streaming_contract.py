"""The streaming manager's client contract, and which push raises a failed send.

A registered client (:class:`Subscription`) has an ``id``, ``is_active`` and
``wait_closed()``; a transport needs only ``send``: ``close`` (called when the manager
drops the client) and ``stream_closed`` (told when a subscription ends) are optional.
Clients are in-memory transports; every async test runs on asyncio and on trio.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from headwater.core.streaming import (
    CLOSE_SEND_FAILED,
    CLOSE_SLOW_CONSUMER,
    ClientTransport,
    ClosableClientTransport,
    Frame,
    StreamClosedListener,
    StreamError,
    StreamingConfig,
    StreamingManager,
)

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Upper bound of every wait: a correct implementation is orders of magnitude faster."""


class SendOnly:
    """The smallest transport: ``send`` and nothing else. Can be stalled or broken."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gate: anyio.Event | None = None
        self.broken = False
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[Any], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate(self):
                await self._changed.wait()

    async def send(self, frame: Frame) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise ConnectionResetError("gone")
        self.messages.append(json.loads(frame))
        self.changed()

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


class Listening(SendOnly):
    """A transport that can be closed and is told when its subscriptions end."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[tuple[str, str]] = []
        self.ended: list[tuple[str, str]] = []

    async def close(self, code: str, reason: str) -> None:
        self.closed.append((code, reason))
        self.changed()

    def stream_closed(self, stream_id: str, reason: str) -> None:
        self.ended.append((stream_id, reason))


def config(**overrides: Any) -> StreamingConfig:
    return StreamingConfig(**{"inactivity_timeout": None, **overrides})


def test_close_and_stream_closed_are_optional_parts_of_the_transport() -> None:
    assert isinstance(SendOnly(), ClientTransport)
    assert not isinstance(SendOnly(), ClosableClientTransport)
    assert not isinstance(SendOnly(), StreamClosedListener)
    assert isinstance(Listening(), ClosableClientTransport)
    assert isinstance(Listening(), StreamClosedListener)


async def test_a_registered_client_has_an_id_is_active_and_a_close_notification() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = Listening()
        sub = await mgr.register_client("s", "c1", client)
        assert (sub.id, sub.stream_id, sub.is_active, sub.close_reason) == ("c1", "s", True, None)
        await mgr.push("s", 1)
        await mgr.close_stream("s", "completed")
        assert not sub.is_active  # at once: no longer registered
        with anyio.fail_after(WAIT):
            assert await sub.wait_closed() == "completed"
        # the notification comes after the last message was handed to the transport
        assert client.types() == ["subscribed", "stream_update", "stream_complete"]
        assert client.ended == [("s", "completed")]
        assert client.closed == []  # a closed stream is not a dropped client


async def test_unsubscribing_ends_the_subscription_with_its_reason() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        await mgr.create_stream("t")
        client = Listening()
        on_s = await mgr.register_client("s", "c", client)
        on_t = await mgr.register_client("t", "c", client)
        await mgr.deregister_client("s", "c", notify=True)
        with anyio.fail_after(WAIT):
            assert await on_s.wait_closed() == "unsubscribed"
        assert on_t.is_active
        await mgr.deregister_all("c")  # the connection is gone
        with anyio.fail_after(WAIT):
            assert await on_t.wait_closed() == "disconnected"
        assert client.ended == [("s", "unsubscribed"), ("t", "disconnected")]


async def test_the_manager_closes_a_client_it_drops() -> None:
    async with StreamingManager(config(slow_consumer="disconnect", client_queue_size=2)) as mgr:
        await mgr.create_stream("s")
        slow = Listening()
        sub = await mgr.register_client("s", "slow", slow)
        await slow.wait_for(lambda c: "subscribed" in c.types())
        slow.gate = anyio.Event()  # stops taking messages
        for i in range(5):
            await mgr.push("s", i)
        with anyio.fail_after(WAIT):
            assert await sub.wait_closed() == CLOSE_SLOW_CONSUMER
        await slow.wait_for(lambda c: c.closed)
        assert slow.closed[0][0] == CLOSE_SLOW_CONSUMER
        assert slow.ended == [("s", CLOSE_SLOW_CONSUMER)]
        assert mgr.client_count("s") == 0


async def test_a_transport_without_close_is_dropped_all_the_same() -> None:
    async with StreamingManager(config(on_send_error="deregister_client")) as mgr:
        await mgr.create_stream("s")
        broken, good = SendOnly(), SendOnly()
        broken.broken = True
        sub = await mgr.register_client("s", "broken", broken)
        await mgr.register_client("s", "good", good)
        with anyio.fail_after(WAIT):
            assert await sub.wait_closed() == CLOSE_SEND_FAILED
        assert not sub.is_active
        assert mgr.client_count("s") == 1
        await mgr.push("s", 1)
        await mgr.close_stream("s")
    assert good.types() == ["subscribed", "stream_update", "stream_complete"]


async def test_a_raising_stream_closed_does_not_break_delivery() -> None:
    class Raising(Listening):
        def stream_closed(self, stream_id: str, reason: str) -> None:
            raise RuntimeError("listener bug")

    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        first = await mgr.register_client("s", "a", Raising())
        await mgr.deregister_client("s", "a")
        with anyio.fail_after(WAIT):
            assert await first.wait_closed() == "unsubscribed"
        again = Listening()
        await mgr.register_client("s", "a", again)
        await mgr.push("s", 1)
        await mgr.close_stream("s")
    assert again.types() == ["subscribed", "stream_update", "stream_complete"]


# -- on_send_error: raise (throw) ---------------------------------------------------------


def test_throw_is_another_name_of_raise() -> None:
    assert StreamingConfig(on_send_error="throw").on_send_error == "raise"
    assert StreamingConfig.model_validate({"on_send_error": "throw"}).on_send_error == "raise"
    with pytest.raises(ValidationError, match="on_send_error"):
        StreamingConfig(on_send_error="explode")


@pytest.mark.parametrize("name", ["raise", "throw"])
async def test_the_first_push_after_the_failure_raises_it(name: str) -> None:
    """The pushes that queued the failing message returned normally; the first push
    that starts after the failure was detected raises it, publishes nothing, and is the
    only one to raise it."""
    async with StreamingManager(config(on_send_error=name)) as mgr:
        await mgr.create_stream("s")
        broken, good = Listening(), Listening()
        sub = await mgr.register_client("s", "broken", broken)
        await mgr.register_client("s", "good", good)
        await broken.wait_for(lambda c: "subscribed" in c.types())
        broken.gate = anyio.Event()  # the next sends wait, then fail
        broken.broken = True
        assert [await mgr.push("s", i) for i in (1, 2, 3)] == [1, 2, 3]  # queued: no error
        broken.gate.set()
        with anyio.fail_after(WAIT):
            assert await sub.wait_closed() == CLOSE_SEND_FAILED
        with pytest.raises(StreamError) as error:
            await mgr.push("s", 4)
        assert (error.value.code, error.value.client_id) == ("client_send_failed", "broken")
        assert isinstance(error.value.__cause__, ConnectionResetError)
        assert await mgr.push_many("s", [5, 6]) == 5  # raised once; 4 was not published
        await mgr.close_stream("s")
        await good.wait_for(lambda c: "stream_complete" in c.types())
    assert [m["data"] for m in good.messages if m["type"] == "stream_update"] == [1, 2, 3, 5, 6]
    assert [code for code, _ in broken.closed] == [CLOSE_SEND_FAILED]


async def test_a_failure_is_never_raised_once_its_stream_closed() -> None:
    async with StreamingManager(config(on_send_error="raise")) as mgr:
        await mgr.create_stream("s")
        broken = Listening()
        broken.broken = True
        sub = await mgr.register_client("s", "broken", broken)
        with anyio.fail_after(WAIT):
            assert await sub.wait_closed() == CLOSE_SEND_FAILED
        await mgr.close_stream("s")
        await mgr.create_stream("s")  # the same id again: a new stream
        assert await mgr.push("s", 1) == 1
