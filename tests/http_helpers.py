"""Real HTTP servers on 127.0.0.1 for the HTTP connector tests, and their plugin set.

:class:`ThreadedApp` serves an ASGI app with uvicorn in a thread of its own (its own
asyncio loop), so that tests on trio can call it too and a slow handler never blocks the
test's loop. The apps count what they see (requests, concurrent requests, bodies) with
plain attributes: every handler runs on the server's one thread.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

import headwater
from headwater.builtin_plugins.catalogue import http as builtin_http
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import stores as builtin_stores
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def free_port() -> int:
    """A port nothing listens on right now (for a source that binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_plugins(*extra: object) -> headwater.PluginManager:
    """Built-in sources, transformers, sinks, stores and the HTTP connectors, plus
    ``extra`` test plugins."""
    pm = headwater.PluginManager(load_entry_points=False, strict=True)
    for name, module in (
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", builtin_sinks),
        ("headwater.stores", builtin_stores),
        ("headwater.http", builtin_http),
    ):
        assert pm.register(module, name, distribution="headwater", version="0.2.0")
    for i, plugin in enumerate(extra):
        assert pm.register(plugin, f"http-tests-{i}")
    return pm


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(
    send: Send,
    status: int,
    value: Any = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = b"" if value is None else json.dumps(value).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class ThreadedApp:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Callable[[Message, Receive, Send], Awaitable[None]]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app, interface="asgi3", lifespan="off", log_config=None, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedApp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@contextmanager
def serving(app: Any) -> Iterator[ThreadedApp]:
    with ThreadedApp(app) as served:
        yield served


class FlakyApi:
    """``GET /users/{id}``: answers ``{"id", "name"}`` -- unless it fails.

    * a share ``fail_rate`` of calls answer 500 (seeded, so a run is repeatable);
    * ids in ``always_fail`` always answer 503;
    * more than ``rate`` calls within ``window`` seconds answer 429 ``Retry-After: 1``;
    * a call with ``?redirect=URL`` answers 302 to URL.

    It counts calls, 429s and the most calls it ever had in progress at once.
    """

    def __init__(
        self,
        fail_rate: float = 0.3,
        always_fail: frozenset[int] = frozenset(),
        rate: int | None = None,
        window: float = 0.1,
        delay: float = 0.005,
        seed: int = 7,
    ) -> None:
        self.fail_rate = fail_rate
        self.always_fail = always_fail
        self.rate = rate
        self.window = window
        self.delay = delay
        self.random = random.Random(seed)
        self.calls = 0
        self.limited = 0
        self.failed = 0
        self.current = 0
        self.peak = 0
        self._recent: list[float] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.calls += 1
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await self._handle(scope, send)
        finally:
            self.current -= 1

    async def _handle(self, scope: Message, send: Send) -> None:
        query = scope["query_string"].decode()
        if query.startswith("redirect="):
            target = query.partition("=")[2].encode()
            await answer(send, 302, None, [(b"location", target)])
            return
        now = time.monotonic()
        if self.rate is not None:
            self._recent = [t for t in self._recent if now - t < self.window]
            if len(self._recent) >= self.rate:
                self.limited += 1
                await answer(send, 429, {"error": "slow down"}, [(b"retry-after", b"1")])
                return
            self._recent.append(now)
        await asyncio.sleep(self.delay)  # the API's own work
        user = scope["path"].rpartition("/")[2]
        if int(user) in self.always_fail or self.random.random() < self.fail_rate:
            self.failed += 1
            await answer(send, 500 if int(user) not in self.always_fail else 503, {"e": 1})
            return
        await answer(send, 200, {"id": int(user), "name": f"user-{user}"})


class RecordingSink:
    """``POST /``: stores each body under its ``Idempotency-Key``; the first attempt of
    every ``fail_every``-th request answers 503 (``Retry-After: 0``)."""

    def __init__(self, fail_every: int = 3) -> None:
        self.fail_every = fail_every
        self.attempts: list[tuple[str | None, bytes, str]] = []
        self.stored: dict[str, bytes] = {}
        self.seen = 0
        self._failed: set[str] = set()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = dict(scope["headers"])
        key = headers.get(b"idempotency-key", b"").decode() or None
        kind = headers.get(b"content-type", b"").decode()
        self.attempts.append((key, body, kind))
        assert key is not None
        if key not in self.stored and key not in self._failed:
            self.seen += 1
            if self.seen % self.fail_every == 0:
                self._failed.add(key)
                await answer(send, 503, {"error": "busy"}, [(b"retry-after", b"0")])
                return
        self.stored.setdefault(key, body)
        await answer(send, 200, {"ok": True})
