"""Shared helpers of the server tests (this module has no tests of its own).

Servers run on real sockets on 127.0.0.1 with port 0, with a private plugin manager that
holds the built-in plugins (registered by hand, as in ``test_plugins.py``) plus the test
components below. Every wait is bounded (``WAIT``) and waits for messages, never for
time to pass.

:func:`running` starts either front end (``FRONTS``): ``serve`` (:class:`Server`, the
websockets-based ``headwater serve``) or ``asgi`` (:class:`AsgiApp` under uvicorn, on
the same event loop), and yields a :class:`Served`: its base URLs, and the app.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
from pydantic import BaseModel, ConfigDict

import headwater
from headwater.builtin_plugins import auth as builtin_auth
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers
from headwater.client import Client, connect
from headwater.hookspecs import Register
from headwater.server import AsgiApp, Server, ServerConfig
from headwater.server.base import BaseServer
from headwater.server.protocol import ServerMessage

WAIT = 10.0
"""Upper bound of every wait in the server tests."""

FRONTS: Final = ("serve", "asgi")
"""The server's front ends: ``headwater serve`` and the ASGI app under uvicorn."""


class TickParams(BaseModel):
    """Params of ``test.ticks``."""

    model_config = ConfigDict(extra="forbid")

    stop: int | None = None
    """None: tick until cancelled."""
    pause: float = 0.002
    """Pacing between items (the source's own rhythm, not a synchronisation)."""


@headwater.action("test.ticks", params=TickParams, capabilities=("progress",))
async def ticks(params: TickParams, ctx: headwater.StreamContext) -> AsyncIterator[dict[str, int]]:
    """Yield ``{"i": n}`` with progress, until ``stop`` (or forever)."""
    i = 0
    while params.stop is None or i < params.stop:
        i += 1
        ctx.progress(i, params.stop, f"tick {i}")
        yield {"i": i}
        await anyio.sleep(params.pause)


class ServerTestPlugin:
    """The throwaway plugin of the server tests."""

    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(ticks)


def make_plugins(*extra: tuple[object, str]) -> headwater.PluginManager:
    """A private plugin manager: built-ins (auth included), the test plugin, ``extra``."""
    pm = headwater.PluginManager(load_entry_points=False, strict=True)
    for name, module in (
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", builtin_sinks),
        ("headwater.auth", builtin_auth),
    ):
        assert pm.register(module, name, distribution="headwater", version="0.1.0")
    assert pm.register(ServerTestPlugin(), "server-tests")
    for plugin, name in extra:
        assert pm.register(plugin, name)
    return pm


def count_pipeline(stop: int = 5) -> dict[str, Any]:
    """``count``: ``range(stop)`` to the run's stream; clients may set ``stop``."""
    return {
        "pipeline": {
            "name": "count",
            "sources": {"numbers": {"action": "range", "params": {"stop": stop}}},
            "sinks": [{"sink": "websocket"}],
        },
        "params": {"stop": "sources.numbers.params.stop"},
    }


def ticks_pipeline() -> dict[str, Any]:
    """``ticks``: ``test.ticks`` until cancelled (or ``stop``), with progress."""
    return {
        "pipeline": {
            "name": "ticks",
            "sources": {"clock": {"action": "test.ticks"}},
            "sinks": [{"sink": "websocket"}],
            "batch_size": 1,
        },
        "params": {"stop": "sources.clock.params.stop"},
    }


def config(**fields: Any) -> ServerConfig:
    """A server configuration on a free port, with ``count`` and ``ticks``, and its run
    history in memory."""
    fields.setdefault("port", 0)
    fields.setdefault("pipelines", {"count": count_pipeline(), "ticks": ticks_pipeline()})
    fields.setdefault("history", {"store": "memory"})  # no file in the working directory
    return ServerConfig.model_validate(fields)


@dataclass
class Served:
    """A running server, whichever its front end: its URLs, and the app itself."""

    app: BaseServer
    port: int
    front: str
    uvicorn: Any = None

    @property
    def url(self) -> str:
        """The WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        """The base URL of the HTTP endpoints."""
        return f"http://127.0.0.1:{self.port}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


@asynccontextmanager
async def serve_asgi(app: Any, port: int = 0) -> AsyncIterator[Any]:
    """``app`` under uvicorn on 127.0.0.1 (lifespan on), on this event loop; yields the
    uvicorn server (its port: ``server.servers[0].sockets[0].getsockname()[1]``)."""
    import uvicorn

    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", ws="auto"
    )
    server = uvicorn.Server(cfg)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(WAIT):
            while not server.started:
                if server.should_exit:
                    raise RuntimeError("uvicorn could not start")
                await anyio.sleep(0.01)  # uvicorn offers no event to wait on
        try:
            yield server
        finally:
            server.should_exit = True


def uvicorn_port(server: Any) -> int:
    """The port a started uvicorn server listens on."""
    return int(server.servers[0].sockets[0].getsockname()[1])


@asynccontextmanager
async def running(
    cfg: ServerConfig | None = None,
    plugins: headwater.PluginManager | None = None,
    environ: dict[str, str] | None = None,
    *,
    front: str = "serve",
) -> AsyncIterator[Served]:
    """A started server of front end ``front`` (shut down at the end)."""
    kwargs: dict[str, Any] = {
        "plugins": plugins if plugins is not None else make_plugins(),
        "environ": environ if environ is not None else {},
    }
    cfg = cfg if cfg is not None else config()
    if front == "serve":
        async with Server(cfg, **kwargs) as server:
            yield Served(server, server.port, front)
        return
    assert front == "asgi", front
    app = AsgiApp(cfg, **kwargs)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    async with serve_asgi(app) as uv:
        yield Served(app, uvicorn_port(uv), front, uv)


@asynccontextmanager
async def client_of(server: Served | Server, **kwargs: Any) -> AsyncIterator[Client]:
    """A protocol client connected to ``server``."""
    async with connect(server.url, **kwargs) as client:
        yield client


async def until(
    client: Client, predicate: Callable[[ServerMessage], bool], limit: int = 100_000
) -> list[ServerMessage]:
    """Messages up to and including the first one matching ``predicate`` (bounded)."""
    seen: list[ServerMessage] = []
    with anyio.fail_after(WAIT):
        for _ in range(limit):
            message = await client.receive()
            seen.append(message)
            if predicate(message):
                return seen
    raise AssertionError(f"no matching message in {limit} messages: {seen[-5:]}")


def of_type(kind: str, stream: str | None = None) -> Callable[[ServerMessage], bool]:
    """A predicate: a message of this type (for this stream)."""
    return lambda m: m.type == kind and (stream is None or getattr(m, "stream", None) == stream)


def updates(messages: list[ServerMessage]) -> list[Any]:
    """The ``seq`` of every ``stream_update`` among ``messages``."""
    return [m.seq for m in messages if m.type == "stream_update"]  # type: ignore[union-attr]


async def http_get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """``GET url`` in a worker thread: status, headers (lower-case names), body."""

    def get() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, headers, response.read()
        except urllib.error.HTTPError as exc:
            headers = {k.lower(): v for k, v in exc.headers.items()}
            return exc.code, headers, exc.read()

    return await anyio.to_thread.run_sync(get)


def json_body(body: bytes) -> Any:
    """Parse a JSON response body."""
    return json.loads(body)
