"""StreamingManager: lifecycles, limits, fan-out, slow consumers, send errors, replay.

Clients are in-memory transports (real sockets come with the server). Every async test
runs on asyncio and on trio (see conftest.py). Waits are bounded (``fail_after``) and
wait for events rather than asserting durations.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ValidationError

import headwater
from headwater.core.plugins import PluginManager
from headwater.core.streaming import (
    CLOSE_SEND_FAILED,
    CLOSE_SLOW_CONSUMER,
    BatchClientTransport,
    ClientTransport,
    Frame,
    ReplayGap,
    StreamError,
    StreamingConfig,
    StreamingManager,
    encode_json,
    error_details,
)

pytestmark = pytest.mark.anyio

WAIT = 5.0
"""Upper bound of every wait: a correct implementation is orders of magnitude faster."""


class MemoryClient:
    """An in-memory transport: records messages; can be stalled or made to fail."""

    def __init__(self, name: str = "client") -> None:
        self.name = name
        self.frames: list[Frame] = []
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[str, str] | None = None
        self.gate: anyio.Event | None = None
        """While set to an unset event, ``send`` waits on it (a stalled connection)."""
        self.fail_on: Callable[[dict[str, Any]], bool] = lambda message: False
        self.sends = 0
        self.abandoned = 0
        """Sends cancelled while stalled."""
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def stall(self) -> None:
        self.gate = anyio.Event()

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()
            self.gate = None

    async def send(self, frame: Frame) -> None:
        self.sends += 1
        assert isinstance(frame, bytes)
        message = json.loads(frame)
        if self.gate is not None:
            try:
                await self.gate.wait()
            except anyio.get_cancelled_exc_class():
                self.abandoned += 1
                self._notify()
                raise
        if self.fail_on(message):
            raise ConnectionResetError(f"{self.name} is gone")
        self.frames.append(frame)
        self.messages.append(message)
        self._notify()

    async def close(self, code: str, reason: str) -> None:
        self.closed = (code, reason)
        self._notify()

    async def wait_for(self, predicate: Callable[[MemoryClient], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate(self):
                await self._changed.wait()

    async def wait_type(self, kind: str, count: int = 1) -> dict[str, Any]:
        await self.wait_for(lambda c: len(c.of_type(kind)) >= count)
        return self.of_type(kind)[count - 1]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.of_type("stream_update")]

    def data(self) -> list[Any]:
        return [m["data"] for m in self.of_type("stream_update")]


class BatchingClient(MemoryClient):
    """A transport that also takes batches of pending messages."""

    def __init__(self, name: str = "batching") -> None:
        super().__init__(name)
        self.batches: list[int] = []

    async def send_batch(self, frames: Sequence[Frame]) -> None:
        self.batches.append(len(frames))
        for frame in frames:
            await self.send(frame)


def config(**overrides: Any) -> StreamingConfig:
    return StreamingConfig(**{"inactivity_timeout": None, **overrides})


async def settle() -> None:
    """Let every task run until all are blocked."""
    await anyio.wait_all_tasks_blocked()


# -- configuration and lifecycle --------------------------------------------------------


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="max_stream"):
        StreamingConfig(max_stream=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        StreamingConfig(slow_consumer="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        StreamingConfig(client_queue_size=0)
    assert StreamingConfig().on_send_error == "deregister_client"


def test_transports_satisfy_the_protocols() -> None:
    assert isinstance(MemoryClient(), ClientTransport)
    assert not isinstance(MemoryClient(), BatchClientTransport)
    assert isinstance(BatchingClient(), BatchClientTransport)


def test_stream_error_is_a_headwater_error() -> None:
    error = StreamError("nope", code="unknown_stream", stream_id="s", client_id="c")
    assert isinstance(error, headwater.HeadwaterError)
    assert (error.code, error.stream_id, error.client_id, str(error)) == (
        "unknown_stream",
        "s",
        "c",
        "nope",
    )


async def test_not_started_and_after_shutdown() -> None:
    mgr = StreamingManager(config())
    with pytest.raises(StreamError) as info:
        await mgr.create_stream()
    assert info.value.code == "not_running"
    async with mgr:
        assert mgr.running
        await mgr.create_stream("s")
    assert not mgr.running
    with pytest.raises(StreamError) as info:
        await mgr.create_stream()
    assert info.value.code == "shutting_down"
    with pytest.raises(StreamError) as info:
        await mgr.push("s", 1)
    assert info.value.code == "shutting_down"
    with pytest.raises(RuntimeError):
        async with mgr:
            pass  # pragma: no cover


async def test_body_exception_propagates_unwrapped() -> None:
    async def body() -> None:
        async with StreamingManager(config()) as mgr:
            await mgr.create_stream("s")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await body()


async def test_create_streams() -> None:
    async with StreamingManager(config()) as mgr:
        generated = await mgr.create_stream()
        assert isinstance(generated, str)
        assert generated
        assert await mgr.create_stream("errors", metadata={"pipeline": "p"}) == "errors"
        assert mgr.active_streams() == [generated, "errors"]
        assert mgr.has_stream("errors")
        assert not mgr.has_stream("nope")
        info = mgr.info("errors")
        assert info.metadata == {"pipeline": "p"}
        assert (info.seq, info.first_buffered, info.clients) == (0, 1, 0)
        with pytest.raises(StreamError) as error:
            await mgr.create_stream("errors")
        assert error.value.code == "stream_exists"
        assert error.value.stream_id == "errors"
        for bad in ["", "x" * 257, "\ud800"]:
            with pytest.raises(StreamError) as error:
                await mgr.create_stream(bad)
            assert error.value.code == "invalid_stream_id"


async def test_max_streams() -> None:
    async with StreamingManager(config(max_streams=2)) as mgr:
        await mgr.create_stream("a")
        await mgr.create_stream("b")
        with pytest.raises(StreamError) as error:
            await mgr.create_stream("c")
        assert error.value.code == "too_many_streams"
        await mgr.close_stream("a")
        await mgr.create_stream("c")
        assert mgr.active_streams() == ["b", "c"]


async def test_recreated_stream_gets_a_new_epoch() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        first = mgr.info("s").epoch
        await mgr.push("s", 1)
        await mgr.close_stream("s")
        await mgr.create_stream("s")
        assert mgr.info("s").epoch != first
        assert mgr.info("s").seq == 0


async def test_unknown_and_closed_streams() -> None:
    async with StreamingManager(config()) as mgr:
        client = MemoryClient()
        calls: list[Callable[[], Any]] = [
            lambda: mgr.push("s", 1),
            lambda: mgr.push_many("s", [1]),
            lambda: mgr.close_stream("s"),
            lambda: mgr.handle_stream_error("s", ValueError("x")),
            lambda: mgr.register_client("s", "c", client),
            lambda: mgr.deregister_client("s", "c"),
            lambda: mgr.forward_event("s", headwater.Progress("st", 1)),
        ]
        for call in calls:
            with pytest.raises(StreamError) as error:
                await call()
            assert error.value.code == "unknown_stream"
        for query in (mgr.client_count, mgr.info, mgr.stats):
            with pytest.raises(StreamError) as error:
                query("s")
            assert error.value.code == "unknown_stream"
        await mgr.create_stream("s")
        await mgr.close_stream("s", "done")
        for call in calls:
            with pytest.raises(StreamError) as error:
                await call()
            assert error.value.code == "stream_closed"
            assert "done" in str(error.value)


# -- clients ----------------------------------------------------------------------------


async def test_register_and_deregister() -> None:
    async with StreamingManager(config(max_clients_per_stream=2)) as mgr:
        await mgr.create_stream("s")
        await mgr.create_stream("t")
        a, b, c = MemoryClient("a"), MemoryClient("b"), MemoryClient("c")
        sub = await mgr.register_client("s", "a", a, ref="r1")
        assert (sub.stream_id, sub.client_id, sub.seq, sub.replayed, sub.gap) == (
            "s",
            "a",
            0,
            0,
            None,
        )
        await mgr.register_client("s", "b", b)
        await mgr.register_client("t", "a", a)
        assert mgr.client_count("s") == 2
        assert mgr.subscriptions("a") == ["s", "t"]
        with pytest.raises(StreamError) as error:
            await mgr.register_client("s", "a", MemoryClient())
        assert (error.value.code, error.value.client_id) == ("client_exists", "a")
        with pytest.raises(StreamError) as error:
            await mgr.register_client("s", "c", c)
        assert error.value.code == "too_many_clients"
        await a.wait_type("subscribed", 2)  # one per stream, in any order
        subscribed = next(m for m in a.of_type("subscribed") if m["stream"] == "s")
        assert subscribed == {
            "type": "subscribed",
            "v": 1,
            "stream": "s",
            "epoch": mgr.info("s").epoch,
            "seq": 0,
            "replayed": 0,
            "ref": "r1",
        }

        await mgr.deregister_client("s", "b", ref=7)
        assert await b.wait_type("unsubscribed") == {
            "type": "unsubscribed",
            "v": 1,
            "stream": "s",
            "ref": 7,
        }
        assert mgr.client_count("s") == 1
        await mgr.register_client("s", "c", c)  # the slot is free again
        with pytest.raises(StreamError) as error:
            await mgr.deregister_client("s", "b")
        assert error.value.code == "unknown_client"
        await mgr.push("s", "after")
        await c.wait_type("stream_update")
        await settle()
        assert b.of_type("stream_update") == []

        assert await mgr.deregister_all("a") == ["s", "t"]
        assert mgr.subscriptions("a") == []
        assert mgr.client_count("s") == 1
        assert mgr.client_count("t") == 0
        assert await mgr.deregister_all("a") == []


async def test_resubscribing_keeps_messages_in_order() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        client.stall()
        await mgr.register_client("s", "c", client, ref="first")
        await settle()  # stuck sending the first `subscribed`
        await mgr.deregister_client("s", "c", ref="bye")
        await mgr.register_client("s", "c", client, ref="again")
        await mgr.push("s", 1)
        client.release()
        await client.wait_for(lambda c: c.seqs() == [1])
        assert client.types() == ["subscribed", "unsubscribed", "subscribed", "stream_update"]
        assert [m["ref"] for m in client.messages[:3]] == ["first", "bye", "again"]
        with pytest.raises(ValueError, match="queue_size"):
            await mgr.register_client("s", "d", MemoryClient(), queue_size=0)
        with pytest.raises(ValueError, match="since"):
            await mgr.register_client("s", "d", MemoryClient(), since=-1)


async def test_silent_deregistration_cancels_a_stalled_send() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        stuck = MemoryClient()
        stuck.stall()
        await mgr.register_client("s", "stuck", stuck)
        await mgr.push("s", 1)
        await settle()
        await mgr.deregister_client("s", "stuck", notify=False)
        assert mgr.client_count("s") == 0
        stuck.release()
        await settle()
        assert stuck.messages == []  # the send in progress was cancelled


# -- fan-out ----------------------------------------------------------------------------


async def test_fan_out_order_to_many_clients() -> None:
    calls = 0

    def counting_encoder(value: Any) -> bytes:
        nonlocal calls
        calls += 1
        return encode_json(value)

    async with StreamingManager(config(), encoder=counting_encoder) as mgr:
        await mgr.create_stream("s")
        clients = [MemoryClient(f"c{i}") for i in range(50)]
        for i, client in enumerate(clients):
            await mgr.register_client("s", f"c{i}", client)
        for i in range(100):
            assert await mgr.push("s", {"i": i}) == i + 1
        assert await mgr.push_many("s", [{"i": i} for i in range(100, 200)]) == 200
        assert await mgr.push_many("s", []) == 200
        for client in clients:
            await client.wait_for(lambda c: len(c.seqs()) == 200)
            assert client.seqs() == list(range(1, 201))
            assert client.data() == [{"i": i} for i in range(200)]
        assert calls == 200  # each chunk encoded once, whatever the number of clients
        # every client received the very same frame object
        firsts = {id(c.frames[1]) for c in clients}
        assert len(firsts) == 1
        stats = mgr.stats("s")
        assert stats["clients"] == 50
        assert stats["seq"] == 200
        assert stats["messages_sent"] == 50 * 201
        assert stats["bytes_sent"] == sum(len(f) for c in clients for f in c.frames)
        assert stats["queued"] == 0
        assert mgr.totals()["messages_sent"] == 50 * 201


async def test_unencodable_chunk() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        with pytest.raises(StreamError) as error:
            await mgr.push("s", object())
        assert error.value.code == "unencodable_chunk"
        assert error.value.__cause__ is not None
        assert mgr.info("s").seq == 0
        assert await mgr.push("s", {"x": float("nan")}) == 1


async def test_batch_transport_receives_backlogs_in_batches() -> None:
    async with StreamingManager(config(coalesce_max=10)) as mgr:
        await mgr.create_stream("s")
        client = BatchingClient()
        await mgr.register_client("s", "b", client)
        await settle()
        await mgr.push_many("s", range(25))
        await client.wait_for(lambda c: len(c.seqs()) == 25)
        assert client.seqs() == list(range(1, 26))
        assert client.batches[-3:] == [10, 10, 5]


async def test_close_stream_notifies_clients() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        a, b = MemoryClient(), MemoryClient()
        await mgr.register_client("s", "a", a)
        await mgr.register_client("s", "b", b)
        await mgr.push_many("s", ["x", "y"])
        await mgr.close_stream("s", "finished", summary={"items": 2})
        assert not mgr.has_stream("s")
        for client in (a, b):
            done = await client.wait_type("stream_complete")
            assert done == {
                "type": "stream_complete",
                "v": 1,
                "stream": "s",
                "reason": "finished",
                "last_seq": 2,
                "summary": {"items": 2},
            }
            assert client.types() == [
                "subscribed",
                "stream_update",
                "stream_update",
                "stream_complete",
            ]
        assert mgr.totals()["streams_closed"] == 1


async def test_handle_stream_error() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        await mgr.register_client("s", "c", client)
        await mgr.handle_stream_error("s", ValueError("bad row"), terminate=False)
        error = await client.wait_type("stream_error")
        assert error["error"] == {"error": "ValueError", "message": "bad row"}
        assert mgr.has_stream("s")
        await mgr.handle_stream_error("s", {"error": "Custom", "message": "it broke"})
        done = await client.wait_type("stream_complete")
        assert done["reason"] == "error"
        assert client.types()[-2:] == ["stream_error", "stream_complete"]
        assert client.messages[-2]["error"] == {"error": "Custom", "message": "it broke"}
        assert not mgr.has_stream("s")


def test_error_details() -> None:
    stage = headwater.StageError(
        pipeline="p", stage="steps[0].map", plugin="x", position=3, cause=KeyError("k")
    )
    assert error_details(stage)["position"] == 3
    coded = StreamError("gone", code="unknown_stream")
    assert error_details(coded) == {
        "error": "StreamError",
        "message": "gone",
        "code": "unknown_stream",
    }


async def test_unserialisable_error_details_are_sent_as_text() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        await mgr.register_client("s", "c", client)
        await mgr.handle_stream_error("s", {"error": "E", "obj": object()}, terminate=False)
        message = await client.wait_type("stream_error")
        assert message["error"]["error"] == "E"
        assert message["error"]["obj"].startswith("<object")


# -- inactivity -------------------------------------------------------------------------


async def test_inactive_stream_is_closed() -> None:
    async with StreamingManager(config(inactivity_timeout=0.05)) as mgr:
        await mgr.create_stream("idle")
        client = MemoryClient()
        await mgr.register_client("idle", "c", client)
        await mgr.push("idle", 1)
        done = await client.wait_type("stream_complete")
        assert done["reason"] == "inactive"
        assert done["last_seq"] == 1
        assert not mgr.has_stream("idle")
        with pytest.raises(StreamError) as error:
            await mgr.push("idle", 2)
        assert error.value.code == "stream_closed"


async def test_pushes_keep_a_stream_alive() -> None:
    async with StreamingManager(config(inactivity_timeout=0.4)) as mgr:
        await mgr.create_stream("busy")
        await mgr.create_stream("forever", inactivity_timeout=None)
        for i in range(12):  # 0.6 s in all, never idle for 0.4 s
            await mgr.push("busy", i)
            await anyio.sleep(0.05)
        assert mgr.has_stream("busy")
        client = MemoryClient()
        await mgr.register_client("busy", "c", client)
        await client.wait_type("stream_complete")  # once pushes stop, it is closed
        assert mgr.active_streams() == ["forever"]


# -- send errors ------------------------------------------------------------------------


async def test_send_error_log_and_continue(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="headwater.streaming")
    async with StreamingManager(config(on_send_error="log_and_continue")) as mgr:
        await mgr.create_stream("s")
        flaky, good = MemoryClient("flaky"), MemoryClient("good")
        flaky.fail_on = lambda m: m.get("data") in (2, 3)
        await mgr.register_client("s", "flaky", flaky)
        await mgr.register_client("s", "good", good)
        for i in range(1, 6):
            await mgr.push("s", i)
            await settle()
        await flaky.wait_for(lambda c: c.data() == [1, 4, 5])
        await good.wait_for(lambda c: c.data() == [1, 2, 3, 4, 5])
        assert mgr.client_count("s") == 2
        assert flaky.closed is None
        assert mgr.stats("s")["send_errors"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # later failures of the same client are logged at DEBUG
    assert "flaky" in warnings[0].getMessage()


async def test_send_error_deregisters_client() -> None:
    async with StreamingManager(config(on_send_error="deregister_client")) as mgr:
        await mgr.create_stream("s")
        broken, good = MemoryClient("broken"), MemoryClient("good")
        broken.fail_on = lambda m: m["type"] == "stream_update"
        await mgr.register_client("s", "broken", broken)
        await mgr.register_client("s", "good", good)
        await mgr.push("s", 1)
        await broken.wait_for(lambda c: c.closed is not None)
        assert broken.closed is not None
        assert broken.closed[0] == CLOSE_SEND_FAILED
        assert "ConnectionResetError" in broken.closed[1]
        assert mgr.client_count("s") == 1
        assert mgr.subscriptions("broken") == []
        await mgr.push("s", 2)  # no error for the pusher
        await good.wait_for(lambda c: c.data() == [1, 2])


async def test_send_error_raise() -> None:
    async with StreamingManager(config(on_send_error="raise")) as mgr:
        await mgr.create_stream("s")
        broken, good = MemoryClient("broken"), MemoryClient("good")
        broken.fail_on = lambda m: m["type"] == "stream_update"
        await mgr.register_client("s", "broken", broken)
        await mgr.register_client("s", "good", good)
        await mgr.push("s", 1)
        await broken.wait_for(lambda c: c.closed is not None)
        with pytest.raises(StreamError) as error:
            await mgr.push("s", 2)
        assert error.value.code == "client_send_failed"
        assert error.value.client_id == "broken"
        assert isinstance(error.value.__cause__, ConnectionResetError)
        assert mgr.client_count("s") == 1
        assert await mgr.push("s", 3) == 2  # raised once; the failed push was not published
        await good.wait_for(lambda c: c.data() == [1, 3])


async def test_send_timeout_counts_as_a_failure() -> None:
    async with StreamingManager(config(send_timeout=0.05)) as mgr:
        await mgr.create_stream("s")
        stuck = MemoryClient("stuck")
        stuck.stall()
        await mgr.register_client("s", "stuck", stuck)
        await stuck.wait_for(lambda c: c.closed is not None)
        assert stuck.closed is not None
        assert stuck.closed[0] == CLOSE_SEND_FAILED
        assert "timed out" in stuck.closed[1]
        assert mgr.client_count("s") == 0
        assert mgr.stats("s")["send_errors"] == 1


async def test_send_timeout_with_log_and_continue() -> None:
    settings = config(send_timeout=0.05, on_send_error="log_and_continue")
    async with StreamingManager(settings) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        await mgr.register_client("s", "c", client)
        await client.wait_type("subscribed")
        client.stall()  # the next send hangs, and is abandoned after 0.05 s
        await mgr.push("s", 1)
        await client.wait_for(lambda c: c.abandoned == 1)
        assert mgr.stats("s")["send_errors"] == 1
        client.release()
        await mgr.push("s", 2)
        await client.wait_for(lambda c: c.data() == [2])
        assert mgr.client_count("s") == 1
        assert client.closed is None


# -- slow consumers ---------------------------------------------------------------------


async def test_drop_oldest_keeps_fast_clients_fast() -> None:
    async with StreamingManager(config(slow_consumer="drop_oldest", client_queue_size=4)) as mgr:
        await mgr.create_stream("s")
        slow, fast = MemoryClient("slow"), MemoryClient("fast")
        slow.stall()
        await mgr.register_client("s", "slow", slow)
        await mgr.register_client("s", "fast", fast)
        await settle()  # the slow client is stuck sending `subscribed`
        for i in range(1, 51):
            await mgr.push("s", i)  # never suspends, except to let clients catch up
        # the fast client got everything while the slow one is still stuck
        await fast.wait_for(lambda c: c.data() == list(range(1, 51)))
        assert slow.messages == []
        assert mgr.stats("s")["queued"] == 4
        slow.release()
        await slow.wait_for(lambda c: len(c.seqs()) == 4)
        assert slow.types() == ["subscribed", "dropped", *["stream_update"] * 4]
        assert slow.of_type("dropped")[0] == {"type": "dropped", "v": 1, "stream": "s", "count": 46}
        assert slow.seqs() == [47, 48, 49, 50]  # the gap is visible in seq
        assert mgr.stats("s")["dropped"] == 46
        assert mgr.client_count("s") == 2


async def test_disconnect_slow_consumer() -> None:
    async with StreamingManager(config(slow_consumer="disconnect", client_queue_size=3)) as mgr:
        await mgr.create_stream("s")
        slow, fast = MemoryClient("slow"), MemoryClient("fast")
        slow.stall()
        await mgr.register_client("s", "slow", slow)
        await mgr.register_client("s", "fast", fast)
        for i in range(1, 21):
            await mgr.push("s", i)
        await slow.wait_for(lambda c: c.closed is not None)
        assert slow.closed is not None
        assert slow.closed[0] == CLOSE_SLOW_CONSUMER
        assert mgr.client_count("s") == 1
        assert mgr.subscriptions("slow") == []
        await fast.wait_for(lambda c: c.data() == list(range(1, 21)))
        assert mgr.stats("s")["disconnects"] == 1
        slow.release()
        await settle()
        assert slow.seqs() == []


async def test_block_applies_backpressure_to_the_pusher() -> None:
    async with StreamingManager(config(slow_consumer="block", client_queue_size=2)) as mgr:
        await mgr.create_stream("s")
        slow, other = MemoryClient("slow"), MemoryClient("other")
        slow.stall()
        await mgr.register_client("s", "slow", slow)
        await mgr.register_client("s", "other", other, slow_consumer="drop_oldest")
        await settle()
        pushed: list[int] = []

        async def producer() -> None:
            for i in range(1, 11):
                await mgr.push("s", i)
                pushed.append(i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            # the queue of 2 is full (the stalled send holds `subscribed`): push waits
            assert pushed == [1, 2]
            await other.wait_for(lambda c: c.data() == [1, 2])
            slow.release()
        assert pushed == list(range(1, 11))
        await slow.wait_for(lambda c: len(c.seqs()) == 10)
        assert slow.seqs() == list(range(1, 11))
        assert mgr.stats("s")["dropped"] == 0


async def test_blocked_push_fails_when_the_stream_closes() -> None:
    async with StreamingManager(config(slow_consumer="block", client_queue_size=1)) as mgr:
        await mgr.create_stream("s")
        slow = MemoryClient("slow")
        slow.stall()
        await mgr.register_client("s", "slow", slow)
        await settle()  # the drain task is stuck sending `subscribed`
        await mgr.push("s", 1)
        errors: list[StreamError] = []

        async def producer() -> None:
            try:
                await mgr.push("s", 2)
            except StreamError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            assert errors == []
            await mgr.close_stream("s")
        assert [e.code for e in errors] == ["stream_closed"]
        slow.release()
        await slow.wait_type("stream_complete")
        assert slow.seqs() == [1]


async def test_blocked_push_resumes_when_the_slow_client_leaves() -> None:
    async with StreamingManager(config(slow_consumer="block", client_queue_size=1)) as mgr:
        await mgr.create_stream("s")
        slow = MemoryClient("slow")
        slow.stall()
        await mgr.register_client("s", "slow", slow)
        await settle()
        await mgr.push("s", 1)
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(mgr.push, "s", 2)
                await settle()
                await mgr.deregister_client("s", "slow", notify=False)
        assert mgr.info("s").seq == 2


# -- replay -----------------------------------------------------------------------------


async def test_resume_inside_the_buffer() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", range(1, 11))
        epoch = mgr.info("s").epoch
        client = MemoryClient()
        sub = await mgr.register_client("s", "c", client, since=4, epoch=epoch)
        assert (sub.seq, sub.replayed, sub.gap) == (10, 6, None)
        await mgr.push("s", 11)
        await client.wait_for(lambda c: len(c.seqs()) == 7)
        assert client.seqs() == list(range(5, 12))
        assert client.data() == list(range(5, 12))
        assert client.messages[0]["replayed"] == 6
        stats = mgr.stats("s")
        assert (stats["replay_hits"], stats["replay_misses"], stats["replayed"]) == (1, 0, 6)

        everything = MemoryClient()
        await mgr.register_client("s", "all", everything, since=0)
        await everything.wait_for(lambda c: len(c.seqs()) == 11)
        up_to_date = MemoryClient()
        sub = await mgr.register_client("s", "now", up_to_date, since=11, epoch=epoch)
        assert (sub.replayed, sub.gap) == (0, None)
        live = MemoryClient()
        sub = await mgr.register_client("s", "live", live)
        assert sub.replayed == 0
        await mgr.push("s", 12)
        for client in (up_to_date, live):
            await client.wait_for(lambda c: c.seqs() == [12])


async def test_resume_outside_the_buffer() -> None:
    async with StreamingManager(config(replay_max_chunks=5)) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", range(1, 21))
        assert mgr.info("s").first_buffered == 16
        client = MemoryClient()
        sub = await mgr.register_client("s", "c", client, since=3, epoch=mgr.info("s").epoch)
        assert sub.gap == ReplayGap(since=3, first_available=16, reason="evicted")
        await client.wait_for(lambda c: len(c.seqs()) == 5)
        assert client.types()[:2] == ["subscribed", "replay_gap"]
        gap = client.messages[1]
        assert gap == {
            "type": "replay_gap",
            "v": 1,
            "stream": "s",
            "since": 3,
            "first_available": 16,
            "reason": "evicted",
            "epoch": mgr.info("s").epoch,
        }
        assert client.seqs() == [16, 17, 18, 19, 20]
        assert mgr.stats("s")["replay_misses"] == 1


async def test_replay_buffer_is_bounded_in_bytes() -> None:
    async with StreamingManager(config(replay_max_bytes=1000)) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", ["x" * 100] * 50)
        stats = mgr.stats("s")
        assert 0 < stats["buffered_bytes"] <= 1000
        assert stats["buffered"] < 10
        assert mgr.info("s").first_buffered == 51 - stats["buffered"]


async def test_replay_disabled() -> None:
    async with StreamingManager(config(replay_max_chunks=0)) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", [1, 2])
        assert mgr.stats("s")["buffered"] == 0
        sub = await mgr.register_client("s", "a", MemoryClient(), since=2)
        assert sub.gap is None
        sub = await mgr.register_client("s", "b", MemoryClient(), since=1)
        assert sub.gap == ReplayGap(1, 3, "evicted")


async def test_stale_epoch_is_told_its_history_is_gone() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", range(10))
        old_epoch = mgr.info("s").epoch
        await mgr.close_stream("s")
        await mgr.create_stream("s")
        await mgr.push_many("s", ["a", "b", "c"])
        client = MemoryClient()
        sub = await mgr.register_client("s", "c", client, since=10, epoch=old_epoch)
        assert sub.gap == ReplayGap(since=10, first_available=1, reason="epoch_changed")
        assert sub.epoch != old_epoch
        await client.wait_for(lambda c: len(c.seqs()) == 3)
        assert client.messages[0]["epoch"] == sub.epoch
        assert client.messages[1]["reason"] == "epoch_changed"
        assert client.data() == ["a", "b", "c"]
        # the same with an old seq but no epoch: `since` is ahead of the stream
        other = MemoryClient()
        sub = await mgr.register_client("s", "o", other, since=10)
        assert sub.gap == ReplayGap(since=10, first_available=1, reason="ahead")


async def test_subscribe_is_atomic_with_concurrent_pushes() -> None:
    rng = random.Random(1234)
    total = 400
    async with StreamingManager(config(replay_max_chunks=total)) as mgr:
        await mgr.create_stream("s")
        epoch = mgr.info("s").epoch
        live: list[tuple[int, MemoryClient]] = []
        resumer = MemoryClient("resumer")
        resumer_sessions = 0

        async def pusher() -> None:
            for i in range(1, total + 1):
                await mgr.push("s", i)
                for _ in range(rng.randint(0, 2)):
                    await anyio.lowlevel.checkpoint()

        async def subscriber() -> None:
            for n in range(20):
                client = MemoryClient(f"live{n}")
                sub = await mgr.register_client("s", f"live{n}", client)
                live.append((sub.seq, client))
                for _ in range(rng.randint(1, 30)):
                    await anyio.lowlevel.checkpoint()

        async def resume() -> None:
            nonlocal resumer_sessions
            seen = 0
            while seen < total:
                resumer_sessions += 1
                await mgr.register_client("s", "r", resumer, since=seen, epoch=epoch)
                for _ in range(rng.randint(1, 40)):
                    await anyio.lowlevel.checkpoint()
                await mgr.deregister_client("s", "r", notify=False)
                seen = resumer.seqs()[-1] if resumer.seqs() else 0

        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pusher)
                tg.start_soon(subscriber)
                tg.start_soon(resume)
        await mgr.close_stream("s")
        for start, client in live:
            await client.wait_type("stream_complete")
            assert client.seqs() == list(range(start + 1, total + 1)), client.name
        # across all its sessions, the resuming client saw every chunk exactly once
        assert resumer.seqs() == list(range(1, total + 1))
        assert resumer_sessions > 1


# -- control events ---------------------------------------------------------------------


async def test_forward_events() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        await mgr.register_client("s", "c", client)

        async def events() -> AsyncIterator[headwater.Event]:
            yield headwater.Status("running", None, "started")
            yield headwater.Progress("sources.a", 5, 10, "half")
            yield headwater.ErrorEvent("steps[0].map", {"error": "KeyError"}, handled=True)
            yield headwater.Complete("succeeded", {"items_in": 10})
            yield headwater.Progress("sources.a", 10, 10)  # after the end: not forwarded

        await mgr.forward_events("s", events())
        await client.wait_type("stream_complete")
        assert client.messages[1:] == [
            {
                "type": "status",
                "v": 1,
                "stream": "s",
                "state": "running",
                "stage": None,
                "message": "started",
            },
            {
                "type": "progress",
                "v": 1,
                "stream": "s",
                "stage": "sources.a",
                "done": 5,
                "total": 10,
                "message": "half",
            },
            {
                "type": "stream_error",
                "v": 1,
                "stream": "s",
                "error": {"stage": "steps[0].map", "error": "KeyError", "handled": True},
            },
            {
                "type": "stream_complete",
                "v": 1,
                "stream": "s",
                "reason": "succeeded",
                "last_seq": 0,
                "summary": {"items_in": 10},
            },
        ]


class ToStreamParams(BaseModel):
    stream: str


CURRENT: dict[str, StreamingManager] = {}


@headwater.sink("test.to_stream", params=ToStreamParams)
class ToStream:
    """Push every batch into a stream of the test's StreamingManager."""

    def __init__(self, params: ToStreamParams) -> None:
        self.stream = params.stream

    async def write(self, batch: list[Any]) -> None:
        await CURRENT["manager"].push_many(self.stream, batch)


class StreamPlugin:
    @staticmethod
    @headwater.hookimpl
    def register_sinks(register: Any) -> None:
        register(ToStream)


async def test_a_pipeline_run_streams_to_clients() -> None:
    pm = PluginManager().load()
    assert pm.register(StreamPlugin, "stream-test-plugin"), pm.failures
    spec = headwater.Pipeline("live").source("range", stop=300, chunk=50)
    spec = spec.map(lambda x: x * 2).sink("test.to_stream", stream="live")
    async with StreamingManager(config(client_queue_size=10_000)) as mgr:
        CURRENT["manager"] = mgr
        await mgr.create_stream("live", metadata={"pipeline": "live"})
        client = MemoryClient()
        await mgr.register_client("live", "c", client)
        async with headwater.open_run(spec, plugins=pm) as handle:
            await mgr.forward_events("live", handle.events())
        done = await client.wait_type("stream_complete")
        assert done["reason"] == "succeeded"
        assert done["last_seq"] == 300
        assert client.data() == [x * 2 for x in range(300)]
        assert client.seqs() == list(range(1, 301))


# -- shutdown ---------------------------------------------------------------------------


async def test_shutdown_notifies_every_client() -> None:
    clients: list[MemoryClient] = []
    async with StreamingManager(config()) as mgr:
        for s in range(3):
            await mgr.create_stream(f"s{s}")
            for c in range(2):
                client = MemoryClient(f"s{s}c{c}")
                clients.append(client)
                await mgr.register_client(f"s{s}", f"c{c}", client)
            await mgr.push(f"s{s}", s)
    for client in clients:
        assert client.types() == ["subscribed", "stream_update", "stream_complete"]
        assert client.messages[-1]["reason"] == "shutdown"
    assert mgr.active_streams() == []
    assert mgr.totals()["streams_closed"] == 3


async def test_shutdown_gives_up_on_stalled_clients() -> None:
    stuck = MemoryClient("stuck")
    stuck.stall()
    with anyio.fail_after(WAIT):
        async with StreamingManager(config(shutdown_grace=0.05, send_timeout=None)) as mgr:
            await mgr.create_stream("s")
            await mgr.register_client("s", "stuck", stuck)
            await mgr.push("s", 1)
    assert stuck.messages == []


async def test_cancelling_the_enclosing_scope() -> None:
    stuck = MemoryClient("stuck")
    stuck.stall()
    with anyio.fail_after(WAIT), anyio.CancelScope() as scope:
        async with StreamingManager(config(shutdown_grace=0.05)) as mgr:
            await mgr.create_stream("s")
            await mgr.register_client("s", "stuck", stuck)
            await mgr.push("s", 1)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not mgr.running


async def test_explicit_shutdown_is_idempotent() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = MemoryClient()
        await mgr.register_client("s", "c", client)
        await mgr.shutdown("maintenance")
        await mgr.shutdown()
        assert client.messages[-1]["reason"] == "maintenance"
        with pytest.raises(StreamError) as error:
            await mgr.create_stream("t")
        assert error.value.code == "shutting_down"
