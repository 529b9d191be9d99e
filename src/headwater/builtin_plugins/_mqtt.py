"""One MQTT connection (paho-mqtt 2) shared by the ``mqtt`` source and sink.

paho runs its network loop in a thread of its own (``loop_start``), which works under
any event loop (asyncio and trio alike) and reconnects by itself, with its own delays,
after a lost connection. Its callbacks run in that thread; they only record state and
hand messages to an :class:`Inbox`, which wakes the run's event loop. The run's side
decides everything else: a component's operations raise :class:`NotConnected` while the
connection is down, so that :func:`~headwater.core.reconnect.retry` on the component's
:class:`~headwater.core.reconnect.Link` logs the outage once, waits, and fails the run
past ``outage_deadline``; a broker that refuses the connection (bad credentials, a
client id it bans) fails it at once.
"""

from __future__ import annotations

import ssl
import threading
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.lowlevel

from headwater.core.cancel import _set_soon

from ._brokers import require

__all__ = ["Inbox", "MqttConnection", "NotConnected", "Refused", "paho"]


def paho(component: str) -> Any:
    """The ``paho.mqtt.client`` module, or ``MissingDependency`` naming the extra."""
    return require("paho.mqtt.client", "mqtt", component)


class NotConnected(ConnectionError):
    """The connection is down (paho is reconnecting); retried by the link."""


class Refused(ConnectionError):
    """The broker refused the connection (CONNACK with a failure reason): not retried."""


class Inbox:
    """Messages from paho's thread to the run's event loop, and state-change wake-ups.

    :meth:`put` never blocks paho's thread: a blocked network thread would send none of
    the PUBACKs the run queues meanwhile (nor keepalive pings). QoS 1 messages are
    bounded by the broker: by its window of unacknowledged messages and its queue per
    client (``max_queued_messages``). QoS 0 messages that arrive while ``capacity``
    messages wait are dropped and counted in :attr:`dropped` (QoS 0 is at-most-once).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self._ready = anyio.Event()
        self._state = anyio.Event()
        self._token = anyio.lowlevel.current_token().native_token

    def put(self, item: Any) -> None:
        """From paho's thread: queue ``item`` and wake the reader."""
        with self._lock:
            if len(self._items) >= self.capacity and getattr(item, "qos", 1) == 0:
                self.dropped += 1
                return
            self._items.append(item)
            ready = self._ready
        _set_soon(ready, self._token)

    def wake(self) -> None:
        """From any thread: wake the reader and every :meth:`wait_state` (the
        connection's state changed)."""
        with self._lock:
            ready, state = self._ready, self._state
        _set_soon(ready, self._token)
        _set_soon(state, self._token)

    async def wait(self, seconds: float) -> None:
        """Return when something is waiting or a wake-up came, or after ``seconds``."""
        with self._lock:
            ready = None if self._items else self._ready
        if ready is None:
            await anyio.lowlevel.checkpoint()
            return
        with anyio.move_on_after(seconds):
            await ready.wait()
        with self._lock:
            if self._ready is ready and ready.is_set():
                self._ready = anyio.Event()

    async def wait_state(self, seconds: float) -> None:
        """Return after a :meth:`wake` (whatever is waiting), or after ``seconds``."""
        with self._lock:
            state = self._state
        with anyio.move_on_after(seconds):
            await state.wait()
        with self._lock:
            if self._state is state and state.is_set():
                self._state = anyio.Event()

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` waiting items, oldest first, without waiting."""
        with self._lock:
            items = self._items
            return [items.popleft() for _ in range(min(count, len(items)))]


class MqttConnection:
    """A paho client for one component: connect, state, publish, acknowledge, close.

    ``session_expiry`` > 0 asks for a persistent session (MQTT 5: clean start off and a
    session expiry interval; 3.1.1: clean session off): the broker keeps the
    subscriptions and the QoS 1 messages that arrive while the client is away, and
    delivers again, after a reconnection, those it sent without receiving a PUBACK.
    ``session_epoch`` counts the connections on which the broker had no session for us:
    packet ids of an earlier epoch mean nothing any more.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        protocol: str,
        session_expiry: int,
        keepalive: int,
        username: str | None,
        password: str | None,
        inbox: Inbox,
        component: str,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
    ) -> None:
        mqtt = paho(component)
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(f"{component}: {url!r} is not an mqtt:// or mqtts:// URL")
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
        self.v5 = protocol == "5"
        self.inbox = inbox
        self.component = component
        self.connected = False
        self._gone = threading.Event()
        self.refused: Refused | None = None
        self.last_error = "not connected yet"
        self.session_epoch = 0
        self.subscribe_to: list[tuple[str, int]] = []
        kwargs: dict[str, Any] = {}
        if not self.v5:
            kwargs["clean_session"] = session_expiry == 0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            manual_ack=manual_ack,
            **kwargs,
        )
        client = self.client
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        user = username if username is not None else unquote(parts.username or "") or None
        secret = password if password is not None else unquote(parts.password or "") or None
        if user is not None:
            client.username_pw_set(user, secret)
        if parts.scheme in ("mqtts", "ssl"):
            client.tls_set_context(ssl.create_default_context())
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_unsubscribe = self._on_unsubscribe
        self._barrier: tuple[int, threading.Event] | None = None
        self._connect_args: dict[str, Any] = {"keepalive": keepalive}
        if self.v5:
            props_mod = require("paho.mqtt.properties", "mqtt", component)
            types = require("paho.mqtt.packettypes", "mqtt", component)
            props = props_mod.Properties(types.PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            self._connect_args["clean_start"] = session_expiry == 0
            self._connect_args["properties"] = props

    # -- paho's thread -----------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = Refused(f"{self.component}: the broker refused the connection: {reason}")
            self.inbox.wake()
            return
        if not flags.session_present:
            self.session_epoch += 1
            for topic, qos in self.subscribe_to:
                client.subscribe(topic, qos=qos)
        self.connected = True
        self.inbox.wake()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.last_error = "connection failed"
        self.inbox.wake()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False
        self.last_error = f"disconnected: {reason}"
        self._gone.set()
        self.inbox.wake()

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        barrier = self._barrier
        if barrier is not None and barrier[0] == mid:
            barrier[1].set()
            self.inbox.wake()

    # -- the run's side ----------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start paho's thread (it keeps reconnecting)."""
        self.client.connect_async(self.host, self.port, **self._connect_args)
        self.client.loop_start()

    def check(self) -> None:
        """Raise :class:`Refused` when the broker refused us, :class:`NotConnected` while
        the connection is down."""
        if self.refused is not None:
            raise self.refused
        if not self.connected:
            raise NotConnected(f"{self.host}:{self.port} {self.last_error}")

    async def wait_connected(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the connection (or a refusal)."""
        with anyio.move_on_after(seconds):
            while not self.connected and self.refused is None:
                await self.inbox.wait_state(seconds)

    async def flush(self, seconds: float = 5.0) -> bool:
        """Wait until the broker processed everything sent so far (the PUBACKs): one
        round trip (an UNSUBSCRIBE of a topic never subscribed to), since a broker
        handles a connection's packets in order. False if it did not answer in time.

        paho closes its socket as soon as DISCONNECT is written; with messages still
        arriving, the kernel then resets the connection, and the broker may drop what
        it had not read yet: PUBACKs included.
        """
        if not self.connected:
            return False
        done = threading.Event()
        topic = f"headwater/flush/{id(self)}"
        rc, mid = self.client.unsubscribe(topic)
        if rc != 0:
            return False
        self._barrier = (mid, done)
        with anyio.move_on_after(seconds):
            while not done.is_set() and self.connected:
                await self.inbox.wait_state(0.2)
        self._barrier = None
        return done.is_set()

    async def close(self) -> None:
        """Disconnect cleanly (a persistent session stays on the broker) and stop the
        thread."""
        client = self.client
        gone = self._gone

        def stop() -> None:
            try:
                if self.connected:
                    gone.clear()
                    client.disconnect()
                    # paho's thread writes what is queued (PUBACKs), then DISCONNECT:
                    # stopping it before would close the socket with them unsent
                    gone.wait(5.0)
            finally:
                client.loop_stop()

        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await anyio.to_thread.run_sync(stop, abandon_on_cancel=True)


def transient(exc: BaseException) -> bool:
    """Errors of a connection that paho is re-establishing."""
    return isinstance(exc, NotConnected | OSError) and not isinstance(exc, Refused)
