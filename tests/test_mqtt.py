"""The MQTT plugin against a real Mosquitto: the subscriber source (persistent session,
PUBACK after every sink committed, QoS 0 and 1) and the publisher sink (QoS 1,
retained)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

import headwater
from connector_services import MosquittoServer, mosquitto_server, mqtt_url
from services import unique

__all__ = ["mosquitto_server", "mqtt_url"]


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """paho runs in a thread of its own: both event loops are supported."""
    return str(request.param)


class Sessions:
    """Client ids and topics for a test; the broker's sessions of those client ids are
    ended (a clean connection with no expiry) and retained messages cleared afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[str] = []
        self.retained: list[str] = []

    def client(self) -> str:
        name = unique("client")
        self.clients.append(name)
        return name

    def topic(self) -> str:
        return f"hwtest/{uuid.uuid4().hex[:12]}"

    def cleanup(self) -> None:
        import paho.mqtt.client as mqtt

        parts = urlsplit(self.url)
        for client_id in self.clients:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
            )
            client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
            client.disconnect()
        if self.retained:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
            client.loop_start()
            for topic in self.retained:
                client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def sessions(mqtt_url: str) -> Iterator[Sessions]:
    made = Sessions(mqtt_url)
    try:
        yield made
    finally:
        made.cleanup()


def source(url: str, topic: str, client_id: str, **params: Any) -> dict[str, Any]:
    return {
        "name": unique("sub"),
        "sources": {
            "in": {
                "action": "mqtt",
                "params": {
                    "url": url,
                    "topics": [topic],
                    "client_id": client_id,
                    "idle_exit": 0.7,
                    **params,
                },
            }
        },
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"store": "memory", "every_items": 100, "every_seconds": 0.1},
    }


def publish(url: str, topic: str, items: list[Any], **params: Any) -> dict[str, Any]:
    spec = {
        "name": unique("pub"),
        "sources": {"items": {"action": "iterable", "params": {"items": items}}},
        "sinks": [{"sink": "mqtt", "params": {"url": url, "topic": topic, **params}}],
    }
    return dict(headwater.run_sync(spec).output)


def test_plugin_imports_without_paho_and_explains_when_used() -> None:
    code = """
import sys
sys.modules["paho"] = None
sys.modules["paho.mqtt"] = None
sys.modules["paho.mqtt.client"] = None
import headwater
result = headwater.run_sync(
    {"name": "p", "sources": {"s": {"action": "mqtt", "params": {"topics": ["t"]}}},
     "sinks": [{"sink": "collect"}], "checkpoint": {"store": "memory"}}, raise_on_error=False)
print(result.state, result.errors[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'headwater[mqtt]'" in proc.stdout


def test_messages_sent_while_the_worker_is_away_arrive_when_it_returns(
    mqtt_url: str, sessions: Sessions, backend: str
) -> None:
    topic, client_id = sessions.topic(), sessions.client()
    spec = source(mqtt_url, topic, client_id)
    assert headwater.run_sync(spec, backend=backend).output == []  # the session exists now
    sent = publish(mqtt_url, topic, [{"n": i} for i in range(700)])
    assert sent == {"topic": topic, "published": 700}
    got = headwater.run_sync(spec, backend=backend).output
    assert [m["n"] for m in got] == list(range(700))  # in order, none lost
    assert headwater.run_sync(spec, backend=backend).output == []  # all acknowledged


def test_a_clean_session_forgets_what_came_while_away(mqtt_url: str, sessions: Sessions) -> None:
    topic, client_id = sessions.topic(), sessions.client()
    spec = source(mqtt_url, topic, client_id, session_expiry=0)
    assert headwater.run_sync(spec).output == []
    publish(mqtt_url, topic, [1, 2, 3])
    assert headwater.run_sync(spec).output == []


def test_uncommitted_messages_are_delivered_again(mqtt_url: str, sessions: Sessions) -> None:
    topic, client_id = sessions.topic(), sessions.client()
    window = 200
    spec = source(mqtt_url, topic, client_id, receive_maximum=window, batch=50)
    assert headwater.run_sync(spec).output == []
    publish(mqtt_url, topic, list(range(1000)))
    seen: list[int] = []

    @headwater.sink("test.fail_after")
    def fail_after(batch: list[Any]) -> None:
        for item in batch:
            if len(seen) >= 450:
                raise RuntimeError("sink down")
            seen.append(item)

    class Plugin:
        @headwater.hookimpl
        def register_sinks(self, register: Any) -> None:
            register(fail_after)

    pm = headwater.PluginManager(strict=True).load()
    pm.register(Plugin(), "test-fail-after")
    failing = {**spec, "sinks": [{"sink": "test.fail_after"}]}
    assert headwater.run_sync(failing, plugins=pm, raise_on_error=False).state == "failed"
    rest = headwater.run_sync(spec).output
    got = seen + rest
    assert set(got) == set(range(1000))  # nothing lost
    assert 0 <= len(got) - 1000 <= window  # at most the unacknowledged window again
    assert rest == sorted(rest)


def test_qos_0_and_an_envelope(mqtt_url: str, sessions: Sessions) -> None:
    """QoS 0 messages reach a connected subscriber (the broker keeps none for it while
    it is away)."""
    topic, client_id = sessions.topic(), sessions.client()
    spec = source(mqtt_url, topic + "/#", client_id, qos=0, envelope=True, decode="text")
    assert headwater.run_sync(spec).output == []
    publish(mqtt_url, topic + "/a", ["away"], qos=0, encode="text")
    spec["sources"]["in"]["params"].update(idle_exit=None, max_messages=1)
    done = threading.Event()

    def keep_publishing() -> None:  # until the subscriber got one (bounded)
        for _ in range(400):
            publish(mqtt_url, topic + "/a", ["x"], qos=0, encode="text")
            if done.wait(0.05):
                return

    worker = threading.Thread(target=keep_publishing)
    worker.start()
    try:
        [message] = headwater.run_sync(spec).output
    finally:
        done.set()
        worker.join(30)
    assert message == {"topic": topic + "/a", "qos": 0, "retain": False, "dup": False, "data": "x"}


def test_retained_messages_reach_a_new_subscriber(mqtt_url: str, sessions: Sessions) -> None:
    topic = sessions.topic()
    sessions.retained.append(topic)
    publish(mqtt_url, topic, [{"v": 1}, {"v": 2}], retain=True)
    spec = source(mqtt_url, topic, sessions.client(), envelope=True)
    [message] = headwater.run_sync(spec).output
    assert message["data"] == {"v": 2}  # the last one is kept
    assert message["retain"] is True


@pytest.mark.anyio
async def test_the_source_rides_out_a_broker_restart(
    mosquitto_server: MosquittoServer, sessions: Sessions
) -> None:
    """Mosquitto stopped and started again while the source reads: the persistent session
    (saved on disk) brings what was published meanwhile, and nothing is lost."""
    url = mosquitto_server.url
    sessions.url = url
    topic, client_id = sessions.topic(), sessions.client()
    first = await anyio.to_thread.run_sync(headwater.run_sync, source(url, topic, client_id))
    assert first.output == []  # the session exists now
    spec = source(url, topic, client_id, idle_exit=None, outage_deadline=60)
    spec["sinks"] = []

    def outage() -> None:
        publish(url, topic, list(range(100)))
        mosquitto_server.stop()
        mosquitto_server.start()
        publish(url, topic, list(range(100, 300)))

    got: set[int] = set()
    worker = threading.Thread(target=outage)
    async with headwater.Engine() as engine, engine.stream(spec) as items:
        worker.start()
        try:
            with anyio.fail_after(120):
                async for item in items:
                    got.add(item)
                    if len(got) == 300:
                        break
        finally:
            await anyio.to_thread.run_sync(worker.join, 60)
    assert got == set(range(300))


def test_a_refused_connection_fails_at_once(tmp_path: Path) -> None:
    """A broker that refuses the client (here: no anonymous clients) fails the run with
    its reason, instead of retrying until the outage deadline."""
    from connector_services import mosquitto_binary

    server = MosquittoServer(mosquitto_binary(), tmp_path, allow_anonymous="false")
    server.start()
    try:
        spec = source(server.url, "t", "hwtest-refused", idle_exit=None)
        result = headwater.run_sync(spec, raise_on_error=False)
    finally:
        server.stop()
    assert result.state == "failed"
    assert "the broker refused the connection: Not authorized" in str(result.errors[0])
