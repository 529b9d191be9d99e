"""Two engines in one process never see each other's streams, runs, metrics or plugins.

Each engine runs a real server on 127.0.0.1; a run started on engine A (by a client of
A's server, and from code) publishes to A's subscribers only, and each server's
``/metrics`` shows only its own pipelines and streams.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import headwater
from headwater.client import Client
from headwater.server import Server
from headwater.server.protocol import StreamCompleteMessage, StreamUpdateMessage
from test_server_helpers import WAIT, client_of, config, make_plugins

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


PUBLISH = {
    "name": "publish-a",
    "sources": {"n": {"action": "range", "params": {"stop": 5}}},
    "sinks": [{"sink": "websocket", "params": {"stream": "shared-name", "close": True}}],
}


async def _updates(client: Client, stream: str) -> list[Any]:
    """Every update of ``stream`` until it completes."""
    out: list[Any] = []
    with anyio.fail_after(WAIT):
        async for message in client:
            if isinstance(message, StreamUpdateMessage) and message.stream == stream:
                out.append(message.data)
            if isinstance(message, StreamCompleteMessage) and message.stream == stream:
                return out
    raise AssertionError("the connection ended before the stream completed")


def _metrics(server: Server) -> str:
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=WAIT) as response:
        return str(response.read().decode())


async def test_two_engines_with_a_server_each_are_isolated() -> None:
    engine_a = headwater.Engine(plugin_manager=make_plugins())
    engine_b = headwater.Engine(plugin_manager=make_plugins())
    async with (
        engine_a,
        engine_b,
        Server(config(), engine=engine_a, environ={}) as server_a,
        Server(config(), engine=engine_b, environ={}) as server_b,
        client_of(server_a) as client_a,
        client_of(server_b) as client_b,
    ):
        assert engine_a.servers == [server_a]
        assert engine_b.servers == [server_b]
        # the same stream name exists on both: each engine's run must find its own
        await server_a.manager.create_stream("shared-name")
        await server_b.manager.create_stream("shared-name")
        await client_a.subscribe("shared-name")
        await client_b.subscribe("shared-name")

        result = await engine_a.run(PUBLISH)
        assert result.output == {"stream": "shared-name", "chunks": 5, "last_seq": 5}
        assert await _updates(client_a, "shared-name") == [0, 1, 2, 3, 4]

        # B's stream saw nothing and is still open; B's subscriber got no update
        assert server_b.manager.info("shared-name").seq == 0
        await server_b.manager.push("shared-name", "b-only")
        await server_b.manager.close_stream("shared-name")
        assert await _updates(client_b, "shared-name") == ["b-only"]

        # metrics: each engine counts its own pipelines, each /metrics shows its own
        pipelines_a = {p["pipeline"] for p in engine_a.metrics.snapshot()["pipelines"]}
        pipelines_b = {p["pipeline"] for p in engine_b.metrics.snapshot()["pipelines"]}
        assert "publish-a" in pipelines_a
        assert "publish-a" not in pipelines_b
        text_a, text_b = await anyio.to_thread.run_sync(
            lambda: (_metrics(server_a), _metrics(server_b))
        )
        assert 'pipeline="publish-a"' in text_a
        assert 'pipeline="publish-a"' not in text_b


async def test_a_run_started_by_a_client_publishes_to_that_server_only() -> None:
    """The run's own stream and an explicitly named one: both on the starting server."""
    pipelines = {"pub": {**PUBLISH, "name": "pub"}}
    engine_a = headwater.Engine(plugin_manager=make_plugins())
    engine_b = headwater.Engine(plugin_manager=make_plugins())
    async with (
        Server(config(pipelines=pipelines), engine=engine_a, environ={}) as server_a,
        Server(config(pipelines=pipelines), engine=engine_b, environ={}) as server_b,
        client_of(server_a) as client_a,
        client_of(server_b) as client_b,
    ):
        await server_b.manager.create_stream("shared-name")
        await client_b.subscribe("shared-name")
        await server_a.manager.create_stream("shared-name")
        await client_a.subscribe("shared-name")
        await client_a.run("pub")
        assert await _updates(client_a, "shared-name") == [0, 1, 2, 3, 4]
        assert server_b.manager.info("shared-name").seq == 0
        assert server_b.manager.client_count("shared-name") == 1


async def test_plugins_of_one_engine_are_not_seen_by_another() -> None:
    class Extra:
        @headwater.hookimpl
        def register_actions(self, register: Any) -> None:
            register(_only_in_a)

    async with (
        headwater.Engine(plugin_manager=make_plugins((Extra(), "extra"))) as engine_a,
        headwater.Engine(plugin_manager=make_plugins()) as engine_b,
    ):
        spec = {
            "name": "p",
            "sources": {"s": {"action": "test.only-in-a"}},
            "sinks": [{"sink": "collect"}],
        }
        assert (await engine_a.run(spec)).output == ["a"]
        with pytest.raises(headwater.PipelineValidationError, match="only-in-a"):
            await engine_b.run(spec)


async def test_drain_of_one_engine_does_not_reach_another() -> None:
    async with (
        headwater.Engine(plugin_manager=make_plugins()) as engine_a,
        headwater.Engine(plugin_manager=make_plugins()) as engine_b,
    ):
        engine_a.request_drain()
        assert engine_a.services.drain.draining("any-run")
        assert not engine_b.services.drain.draining("any-run")


async def test_leaving_an_engine_cancels_its_runs() -> None:
    spec = {
        "name": "forever",
        "sources": {"t": {"action": "test.ticks", "params": {"pause": 0.001}}},
        "sinks": [{"sink": "null"}],
    }
    async with headwater.Engine(plugin_manager=make_plugins()) as engine:
        resolved, pm = engine.prepare(spec)
        handle = engine.create_run(resolved, pm)
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.start)
            with anyio.fail_after(WAIT):
                async for event in handle.events():
                    if isinstance(event, headwater.Progress):
                        break  # the source is producing
            await engine.aclose()
            assert handle.done
            assert handle.state == "cancelled"


@headwater.action("test.only-in-a")
async def _only_in_a(ctx: headwater.StreamContext) -> AsyncIterator[str]:
    yield "a"
