"""StreamingManager's direct path: idle clients written with ``try_send``, no task wake-up.

A transport with ``try_send`` gets the frames of a push written at once while its client
is idle (nothing queued, no send in progress), in one call per ``push_many``; when it is
behind, or ``try_send`` declines, the frames go through the queue and the drain task as
before. Every async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from headwater.core.streaming import (
    CLOSE_SEND_FAILED,
    BatchClientTransport,
    ClientTransport,
    DirectClientTransport,
    Frame,
    StreamError,
    StreamingConfig,
    StreamingManager,
)

pytestmark = pytest.mark.anyio

WAIT = 5.0


class Recorder:
    """A transport that records every message in arrival order, whichever way it came."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.via: list[str] = []
        """How each message arrived: ``direct``, ``batch`` or ``send``."""
        self.closed: tuple[str, str] | None = None
        self.gate: anyio.Event | None = None
        """While set to an unset event, ``send``/``send_batch`` wait on it."""
        self.in_send = 0
        self._changed = anyio.Event()

    def _record(self, frame: Frame, via: str) -> None:
        assert isinstance(frame, bytes)
        self.messages.append(json.loads(frame))
        self.via.append(via)
        self._changed.set()
        self._changed = anyio.Event()

    async def send(self, frame: Frame) -> None:
        self.in_send += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            self._record(frame, "send")
        finally:
            self.in_send -= 1

    async def close(self, code: str, reason: str) -> None:
        self.closed = (code, reason)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(WAIT):
            while len(self.messages) < count:
                await self._changed.wait()

    async def wait_closed(self) -> None:
        with anyio.fail_after(WAIT):
            while self.closed is None:
                await self._changed.wait()

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages if m["type"] == "stream_update"]


class BatchRecorder(Recorder):
    """Also takes batches (like the WebSocket transport)."""

    async def send_batch(self, frames: Sequence[Frame]) -> None:
        self.in_send += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            for frame in frames:
                self._record(frame, "batch")
        finally:
            self.in_send -= 1


class DirectRecorder(BatchRecorder):
    """Writes without waiting unless ``accepting`` is False or a send is in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.accepting = True
        self.calls: list[int] = []
        """Size of every accepted ``try_send``."""
        self.declined = 0
        self.fail: Exception | None = None

    def try_send(self, frames: Sequence[Frame]) -> bool:
        # the manager must never call try_send while one of its own sends is in progress
        assert self.in_send == 0, "try_send during a send in progress"
        if self.fail is not None:
            raise self.fail
        if not self.accepting:
            self.declined += 1
            return False
        self.calls.append(len(frames))
        for frame in frames:
            self._record(frame, "direct")
        return True


def config(**overrides: Any) -> StreamingConfig:
    return StreamingConfig(**{"inactivity_timeout": None, **overrides})


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


def test_protocols() -> None:
    assert isinstance(DirectRecorder(), DirectClientTransport)
    assert isinstance(DirectRecorder(), BatchClientTransport)
    assert not isinstance(BatchRecorder(), DirectClientTransport)
    assert not isinstance(Recorder(), DirectClientTransport)
    assert isinstance(Recorder(), ClientTransport)


async def test_subscribed_is_written_at_registration() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", [1, 2, 3])
        client = DirectRecorder()
        await mgr.register_client("s", "c", client, since=1, ref="r1")
        # no suspension yet: `subscribed` and the replay were written synchronously
        assert client.types() == ["subscribed", "stream_update", "stream_update"]
        assert client.seqs() == [2, 3]
        assert client.messages[0]["ref"] == "r1"
        assert client.via == ["direct"] * 3
        assert client.calls == [3]
        await mgr.push("s", 4)  # the drain task has not run yet: it sends this one
        await client.wait_for(4)
        await settle()
        await mgr.push("s", 5)  # now parked: direct
        assert client.seqs() == [2, 3, 4, 5]
        assert client.via[3:] == ["send", "direct"]
        assert mgr.stats("s")["messages_sent"] == 5


async def test_long_replay_is_written_in_coalesce_max_slices() -> None:
    async with StreamingManager(config(coalesce_max=4)) as mgr:
        await mgr.create_stream("s")
        await mgr.push_many("s", range(10))
        client = DirectRecorder()
        await mgr.register_client("s", "c", client, since=0)
        assert client.calls == [4, 4, 3]
        assert client.seqs() == list(range(1, 11))


async def test_one_try_send_per_push_many() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        clients = [DirectRecorder() for _ in range(3)]
        for i, client in enumerate(clients):
            await mgr.register_client("s", f"c{i}", client)
        await settle()  # the drain tasks park: the clients are idle
        for client in clients:
            client.calls.clear()
        await mgr.push_many("s", range(20))
        await mgr.push("s", 20)
        await mgr.push_many("s", [])
        for client in clients:
            assert client.calls == [20, 1]
            assert client.seqs() == list(range(1, 22))
            assert set(client.via) == {"direct"}
        stats = mgr.stats("s")
        assert stats["messages_sent"] == 3 * 22
        assert stats["queued"] == 0


async def test_control_messages_go_direct_too() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        await mgr.register_client("s", "c", client)
        await settle()
        await mgr.handle_stream_error("s", {"error": "E"}, terminate=False)
        assert client.types() == ["subscribed", "stream_error"]
        assert client.via == ["direct", "direct"]


async def test_transport_without_try_send_uses_the_drain_task() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        plain, batching, direct = Recorder(), BatchRecorder(), DirectRecorder()
        for name, client in (("p", plain), ("b", batching), ("d", direct)):
            await mgr.register_client("s", name, client)
        await settle()
        await mgr.push_many("s", range(5))
        assert direct.seqs() == [1, 2, 3, 4, 5]  # already written
        assert plain.seqs() == []  # not yet: their drain tasks send
        assert batching.seqs() == []
        await plain.wait_for(6)
        await batching.wait_for(6)
        for client in (plain, batching, direct):
            assert client.types() == ["subscribed"] + ["stream_update"] * 5
            assert client.seqs() == [1, 2, 3, 4, 5]
        assert set(plain.via) == {"send"}
        assert "direct" not in batching.via


async def test_declined_try_send_falls_back_to_the_queue() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        client.accepting = False
        await mgr.register_client("s", "c", client)  # `subscribed` declined: queued
        assert client.messages == []
        await client.wait_for(1)
        assert client.via == ["send"]  # sent by the drain task instead
        await settle()
        await mgr.push_many("s", range(3))
        assert client.declined == 2
        await client.wait_for(4)
        assert client.seqs() == [1, 2, 3]
        assert client.via[1:] == ["batch"] * 3
        client.accepting = True
        await settle()
        await mgr.push_many("s", range(2))
        assert client.seqs() == [1, 2, 3, 4, 5]
        assert client.via[4:] == ["direct", "direct"]
        assert mgr.stats("s")["messages_sent"] == 6


async def test_order_when_a_client_goes_idle_behind_idle() -> None:
    """No frame overtakes queued ones: direct writes resume only once the queue is empty."""
    async with StreamingManager(config(client_queue_size=1000)) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        await mgr.register_client("s", "c", client)
        await settle()
        await mgr.push_many("s", range(3))  # idle: direct
        assert client.seqs() == [1, 2, 3]

        # behind: try_send declines (socket buffer full), the drain task takes over and
        # stalls inside send_batch (a send in progress)
        client.accepting = False
        client.gate = anyio.Event()
        await mgr.push_many("s", range(2))
        await settle()
        assert client.in_send == 1
        client.accepting = True  # the socket could take data again, but a send is in
        for i in range(4):  # progress and more frames are queued: no direct write
            await mgr.push("s", i)
        await mgr.push_many("s", range(3))
        assert client.seqs() == [1, 2, 3]
        assert mgr.stats("s")["queued"] == 7

        # the send completes; the drain task empties the queue, then parks: idle again
        client.gate.set()
        client.gate = None
        await client.wait_for(1 + 12)
        await settle()
        before = len(client.calls)
        await mgr.push_many("s", range(2))
        assert len(client.calls) == before + 1
        assert client.seqs() == list(range(1, 15))
        assert client.via[-2:] == ["direct", "direct"]
        assert "batch" in client.via[4:13]


async def test_order_with_several_pushers_and_a_flaky_transport() -> None:
    """Interleaved pushers, a transport accepting one call in three: gap-free, in order."""
    async with StreamingManager(config(client_queue_size=10_000)) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        real = client.try_send
        count = 0

        def flaky(frames: Sequence[Frame]) -> bool:
            nonlocal count
            count += 1
            return count % 3 == 0 and real(frames)

        client.try_send = flaky  # type: ignore[method-assign]
        await mgr.register_client("s", "c", client)

        async def pusher(k: int) -> None:
            for i in range(50):
                if i % 2:
                    await mgr.push_many("s", [k] * (i % 5 + 1))
                else:
                    await mgr.push("s", k)
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(pusher, k)
        total = mgr.info("s").seq
        await client.wait_for(1 + total)
        assert client.seqs() == list(range(1, total + 1))
        assert {"direct", "batch"} <= set(client.via)


async def test_predecessor_keeps_its_order() -> None:
    """unsubscribe then subscribe again at once: `unsubscribed` comes before `subscribed`."""
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        await mgr.register_client("s", "c", client, ref=1)
        await settle()
        client.accepting = False
        client.gate = anyio.Event()
        await mgr.push("s", "a")  # declined: the drain task sends it and stalls
        await settle()
        await mgr.deregister_client("s", "c", notify=True, ref=2)
        client.accepting = True
        await mgr.register_client("s", "c", client, ref=3)  # waits for its predecessor
        await mgr.push("s", "b")
        assert client.messages == [client.messages[0]]  # nothing overtook "a"
        client.gate.set()
        client.gate = None
        await client.wait_for(5)
        await settle()
        assert client.types() == [
            "subscribed",
            "stream_update",
            "unsubscribed",
            "subscribed",
            "stream_update",
        ]
        assert [m.get("ref") for m in client.messages] == [1, None, 2, 3, None]
        await mgr.push("s", "c")
        assert client.via[-1] == "direct"


async def test_drop_oldest_and_block_still_apply_when_behind() -> None:
    async with StreamingManager(config(client_queue_size=4)) as mgr:
        await mgr.create_stream("s")
        dropper = DirectRecorder()
        blocker = DirectRecorder()
        await mgr.register_client("s", "d", dropper)
        await mgr.register_client("s", "b", blocker, slow_consumer="block")
        await settle()
        for client in (dropper, blocker):
            client.accepting = False
            client.gate = anyio.Event()
        await mgr.push("s", 0)  # both drain tasks now stall in a send
        await settle()
        for i in range(1, 5):
            await mgr.push("s", i)  # fills the queues (size 4)
        with anyio.move_on_after(0.2) as scope:
            await mgr.push("s", 5)  # the block client is full: the pusher waits
        assert scope.cancelled_caught
        for client in (dropper, blocker):
            assert client.gate is not None
            client.gate.set()
            client.gate = None
            client.accepting = True
        await mgr.push("s", 6)
        await blocker.wait_for(1 + 6)
        await settle()
        assert blocker.seqs() == [1, 2, 3, 4, 5, 6]
        assert "dropped" not in dropper.types()
        assert dropper.seqs() == [1, 2, 3, 4, 5, 6]


async def test_drop_oldest_when_behind_then_direct_again() -> None:
    async with StreamingManager(config(client_queue_size=2)) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        other = DirectRecorder()  # stays idle and direct throughout
        await mgr.register_client("s", "c", client)
        await mgr.register_client("s", "o", other)
        await settle()
        client.accepting = False
        client.gate = anyio.Event()
        await mgr.push("s", 1)  # declined: the drain task stalls sending it
        await settle()
        for i in range(2, 7):
            await mgr.push("s", i)  # queue of 2: 4 of these are dropped for `client`
        client.gate.set()
        client.gate = None
        client.accepting = True
        await client.wait_for(1 + 1 + 1 + 2)
        await settle()
        await mgr.push("s", 7)
        assert client.types() == ["subscribed", "stream_update", "dropped"] + ["stream_update"] * 3
        assert client.messages[2]["count"] == 3
        assert client.seqs() == [1, 5, 6, 7]
        assert client.via[-1] == "direct"
        assert other.seqs() == list(range(1, 8))
        assert set(other.via) == {"direct"}


@pytest.mark.parametrize("policy", ["deregister_client", "raise"])
async def test_try_send_error_deregisters(policy: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "headwater.streaming")
    async with StreamingManager(config(on_send_error=policy)) as mgr:
        await mgr.create_stream("s")
        client, other = DirectRecorder(), DirectRecorder()
        await mgr.register_client("s", "c", client)
        await mgr.register_client("s", "o", other)
        await settle()
        client.fail = ConnectionResetError("gone")
        await mgr.push_many("s", range(3))
        assert mgr.client_count("s") == 1
        await client.wait_closed()
        assert client.closed is not None
        assert client.closed[0] == CLOSE_SEND_FAILED
        stats = mgr.stats("s")
        assert stats["send_errors"] == 1
        if policy == "raise":
            with pytest.raises(StreamError) as info:
                await mgr.push("s", 3)
            assert info.value.code == "client_send_failed"
            assert info.value.client_id == "c"
        await mgr.push("s", 4)
        assert other.seqs() == [1, 2, 3, 4]
        await settle()
        assert client.types() == ["subscribed"]
    assert "deregistering it" in caplog.text


async def test_try_send_error_log_and_continue() -> None:
    async with StreamingManager(config(on_send_error="log_and_continue")) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        await mgr.register_client("s", "c", client)
        await settle()
        client.fail = ConnectionResetError("flaky")
        await mgr.push_many("s", range(3))  # lost
        client.fail = None
        await mgr.push_many("s", range(2))
        assert client.seqs() == [4, 5]
        assert mgr.client_count("s") == 1
        assert mgr.stats("s")["send_errors"] == 1
        assert client.closed is None


async def test_try_send_error_at_registration() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        client.fail = ConnectionResetError("gone")
        await mgr.register_client("s", "c", client)
        await client.wait_closed()
        assert mgr.client_count("s") == 0
        await mgr.push("s", 1)
        await settle()
        assert client.messages == []


async def test_close_and_shutdown_after_direct_writes() -> None:
    async with StreamingManager(config()) as mgr:
        await mgr.create_stream("s")
        client = DirectRecorder()
        await mgr.register_client("s", "c", client)
        await settle()
        await mgr.push_many("s", range(3))
        await mgr.close_stream("s", "completed")
        await client.wait_for(5)
        assert client.types() == ["subscribed"] + ["stream_update"] * 3 + ["stream_complete"]
        assert client.messages[-1]["last_seq"] == 3
