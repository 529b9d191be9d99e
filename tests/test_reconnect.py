"""The reconnect policy every broker connection shares (:mod:`headwater.core.reconnect`),
driven directly with a fake clock: backoff bounds, one log line per change of state,
the outage deadline, the figures, and the retry loops."""

from __future__ import annotations

import logging

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.core.reconnect import (
    Backoff,
    BrokerUnavailable,
    Link,
    display_address,
    retry,
    retry_sync,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0.0, max_value=1.0),
    initial=st.floats(min_value=0.001, max_value=10.0),
    cap=st.floats(min_value=0.001, max_value=60.0),
)
def test_backoff_stays_between_half_and_all_of_the_capped_delay(
    attempt: int, rand: float, initial: float, cap: float
) -> None:
    backoff = Backoff(initial=initial, cap=cap)
    ceiling = min(cap, initial * 2 ** min(attempt - 1, 64))
    pause = backoff.pause(attempt, lambda: rand)
    assert ceiling / 2 - 1e-9 <= pause <= ceiling + 1e-9


def test_one_log_line_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    link = Link(
        "redis.stream source",
        "redis://:secret@127.0.0.1:6390/0",
        deadline=10,
        log=logging.getLogger("test.reconnect"),
        clock=clock,
    )
    caplog.set_level(logging.WARNING, logger="test.reconnect")
    link.succeeded()
    assert link.connected
    for _ in range(5):
        clock.now += 1
        link.failed(ConnectionError("refused"))
    clock.now += 1
    link.failed(ConnectionError("loading"))
    assert link.figures()["disconnected_seconds"] == 5.0
    clock.now += 1.5
    link.succeeded()
    link.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "redis.stream source: connection to redis://127.0.0.1:6390/0 lost "
        "(ConnectionError: refused); reconnecting for up to 10s",
        "redis.stream source: redis://127.0.0.1:6390/0 still unreachable after 5.0s "
        "(ConnectionError: loading)",
        "redis.stream source: reconnected to redis://127.0.0.1:6390/0 after 6.5s "
        "(6 failed attempts)",
    ]
    assert "secret" not in caplog.text
    figures = link.figures()
    assert figures["connected"] is True
    assert (figures["reconnects"], figures["outages"]) == (1, 1)
    assert figures["disconnected_seconds"] == 6.5


def test_the_deadline_ends_the_outage_with_a_clear_error() -> None:
    clock = Clock()
    link = Link(
        "nats.jetstream sink",
        "nats://127.0.0.1:4333",
        deadline=3,
        log=logging.getLogger("t"),
        clock=clock,
    )
    assert link.failed(OSError("refused")) <= 0.1
    clock.now += 2.9
    assert link.failed(OSError("refused")) <= 0.1 + 1e-9  # never past the deadline
    clock.now += 0.1
    with pytest.raises(BrokerUnavailable) as caught:
        link.failed(OSError("refused"))
    message = str(caught.value)
    assert message.startswith("nats.jetstream sink: nats://127.0.0.1:4333 unreachable for 3.0s")
    assert "outage deadline (3s; param outage_deadline)" in message
    assert message.endswith("last error: OSError: refused")


def test_retry_loops_reconnect_and_stop_at_what_is_not_transient() -> None:
    link = Link(
        "x",
        "redis://127.0.0.1:1",
        deadline=None,
        log=logging.getLogger("t"),
        backoff=Backoff(initial=0.001, cap=0.001),
    )
    calls: list[str] = []

    def flaky() -> str:
        calls.append("op")
        if len(calls) < 5:
            raise ConnectionError("down")
        return "done"

    def reconnect() -> None:
        calls.append("reconnect")

    assert (
        retry_sync(
            link, flaky, transient=lambda e: isinstance(e, ConnectionError), reconnect=reconnect
        )
        == "done"
    )
    assert calls == ["op", "reconnect", "op", "reconnect", "op"]
    assert link.reconnects == 1

    async def broken() -> None:
        raise ValueError("a bug, not an outage")

    async def main() -> None:
        await retry(link, broken, transient=lambda e: isinstance(e, ConnectionError))

    with pytest.raises(ValueError, match="a bug"):
        anyio.run(main)


def test_addresses_lose_their_credentials() -> None:
    assert display_address("redis://user:pw@h:6379/2") == "redis://h:6379/2"
    assert display_address("nats://[::1]:4222") == "nats://[::1]:4222"
    assert display_address("tok@host") == "host"
