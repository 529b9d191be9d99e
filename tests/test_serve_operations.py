"""Operating ``headwater serve``: readiness, the drain on SIGTERM, the reload on SIGHUP.

Real ``headwater serve`` subprocesses on free ports, the protocol client and httpx:

* SIGTERM drains: ``/readyz`` answers 503, a new ``run`` gets ``draining``, the run
  going on finishes (its clients get every chunk and ``stream_complete``), then every
  client is closed with 1001 and the exit status is 143; a run that outlives
  ``shutdown.drain_seconds`` is cancelled.
* ``/readyz`` follows the bridge's Redis (a ``redis-server`` of the test's own, killed
  and started again): 503 during start-up and while Redis is down, 200 after; the
  bridge's connection is in ``/metrics``.
* SIGHUP reloads the configuration: a new pipeline and new tokens apply at once, open
  connections and streams go on; an invalid file changes nothing and is logged.

In process, on both front ends: the checks of ``/readyz`` (lifecycle, strict plugins),
the drain, and :meth:`BaseServer.reload`.

The run that must last until the test lets it end reads a FIFO (``file.lines``): it
ends when the test closes its end, so nothing waits on time.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process

import headwater
from broker_servers import RedisServer, free_port, redis_server
from headwater.client import Client, ConnectFailed, RequestFailed, connect
from headwater.server import ServerConfigError
from headwater.server.protocol import StreamCompleteMessage, StreamUpdateMessage
from headwater.types import HttpRoute
from test_server_cli import headwater as headwater_process
from test_server_helpers import (
    FRONTS,
    WAIT,
    config,
    count_pipeline,
    make_plugins,
    of_type,
    running,
    until,
)

__all__ = ["redis_server"]

pytestmark = pytest.mark.anyio

LONG_WAIT = 3 * WAIT
"""Bound of the waits that span a Redis outage (the bridge retries every 5 s at most)."""

TAIL = """\
    pipeline:
      name: tail
      batch_size: 1
      sources: {lines: {action: file.lines, params: {path: feed.fifo}}}
      sinks: [{sink: websocket}]
"""
"""A pipeline that reads the FIFO ``feed.fifo`` until the test closes it."""

SLOW = """\
    name: slow
    batch_size: 1
    sources: {n: {action: range, params: {stop: 1000000}}}
    steps: [{transformer: throttle, params: {rate: 50, burst: 1}}]
    sinks: [{sink: websocket}]
"""
"""A pipeline that goes on until it is cancelled."""

COUNT = """\
    name: count
    sources: {n: {action: range, params: {stop: 3}}}
    sinks: [{sink: websocket}]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Log:
    """A subprocess's stderr, line by line: each wait looks at the lines after the last
    line an earlier wait matched."""

    def __init__(self, process: Process) -> None:
        assert process.stderr is not None
        self.stream = process.stderr
        self.lines: list[str] = []
        self.seen = 0
        self._buffer = b""

    async def next(self, pattern: str, limit: float = WAIT) -> re.Match[str]:
        """The first new line matching ``pattern`` (bounded by ``limit`` seconds)."""
        regex = re.compile(pattern)
        with anyio.fail_after(limit):
            while True:
                for index in range(self.seen, len(self.lines)):
                    found = regex.search(self.lines[index])
                    if found:
                        self.seen = index + 1
                        return found
                self.seen = len(self.lines)
                try:
                    self._buffer += await self.stream.receive()
                except anyio.EndOfStream:
                    raise AssertionError(
                        f"stderr ended before {pattern!r}:\n" + "\n".join(self.lines)
                    ) from None
                *complete, self._buffer = self._buffer.split(b"\n")
                self.lines.extend(part.decode() for part in complete)

    async def rest(self) -> str:
        """Everything until the end of the stream."""
        with anyio.fail_after(WAIT):
            try:
                while True:
                    self._buffer += await self.stream.receive()
            except anyio.EndOfStream:
                pass
        return "\n".join(self.lines) + "\n" + self._buffer.decode()


@asynccontextmanager
async def serving(
    folder: Path, *args: str, port: int | None = None
) -> AsyncIterator[tuple[Process, Log, str]]:
    """``headwater serve --config serve.yaml`` in ``folder``: the process, its stderr and
    its base URL (once it serves, unless ``port`` is given: then at once)."""
    chosen = "0" if port is None else str(port)
    async with headwater_process(
        "serve", "--config", "serve.yaml", "--port", chosen, *args, cwd=folder
    ) as process:
        log = Log(process)
        if port is None:
            port = int((await log.next(r"serving on http://127\.0\.0\.1:(\d+)")).group(1))
        yield process, log, f"http://127.0.0.1:{port}"


async def get(url: str, **kwargs: Any) -> httpx.Response:
    """``GET url`` (no exception for 5xx)."""
    async with httpx.AsyncClient(timeout=WAIT) as http:
        return await http.get(url, **kwargs)


async def exits_with(process: Process, status: int) -> None:
    with anyio.fail_after(WAIT):
        assert await process.wait() == status


async def closed(client: Client) -> list[Any]:
    """The messages until the server closes the connection."""
    with anyio.fail_after(WAIT):
        return [message async for message in client]


def fifo(folder: Path) -> int:
    """``folder/feed.fifo``, opened for writing without waiting for its reader (Linux:
    O_RDWR on a FIFO does not block); closing it ends the ``tail`` run."""
    path = folder / "feed.fifo"
    os.mkfifo(path)
    return os.open(path, os.O_RDWR)


# -- the drain on SIGTERM ---------------------------------------------------------------


async def test_sigterm_drains_a_run_then_closes_clients_with_1001(tmp_path: Path) -> None:
    (tmp_path / "serve.yaml").write_text(
        f"shutdown: {{drain_seconds: 300}}\npipelines:\n  tail:\n{TAIL}  count:\n{COUNT}"
    )
    feed = fifo(tmp_path)
    try:
        async with serving(tmp_path) as (server, log, base):
            ready = await get(f"{base}/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready", "not_ready": {}})
            async with connect(base.replace("http", "ws") + "/") as client:
                started = await client.run("tail")
                os.write(feed, b"first\n")
                await until(client, lambda m: getattr(m, "data", None) == "first")

                server.send_signal(signal.SIGTERM)
                await log.next(r"SIGTERM: shutting down: draining for up to 300s .*1 run going")
                ready = await get(f"{base}/readyz")
                assert ready.status_code == 503
                assert ready.json()["status"] == "not_ready"
                assert ready.json()["not_ready"]["lifecycle"].startswith("draining")
                assert (await get(f"{base}/healthz")).status_code == 200  # alive all the same
                with pytest.raises(RequestFailed) as refused:
                    await client.run("count")
                assert refused.value.code == "draining"

                # the run goes on to its end, and its client gets all of it
                os.write(feed, b"second\nlast\n")
                os.close(feed)
                feed = -1
                messages = await until(client, of_type("stream_complete", started.stream))
                data = [m.data for m in messages if isinstance(m, StreamUpdateMessage)]
                assert data == ["second", "last"]
                complete = messages[-1]
                assert isinstance(complete, StreamCompleteMessage)
                assert complete.reason == "succeeded"
                await log.next(r"drained: every run has ended")
                await closed(client)
                assert client.close_code == 1001
            await exits_with(server, 143)
            text = await log.rest()
        assert "Traceback" not in text
    finally:
        if feed >= 0:
            os.close(feed)


async def test_the_drain_stops_broker_sources_which_commit_and_acknowledge(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    for n in range(3):
        client.xadd("orders", {"data": str(n)})
    (tmp_path / "serve.yaml").write_text(
        "shutdown: {drain_seconds: 300}\n"
        "pipelines:\n"
        "  orders:\n"
        "    pipeline:\n"
        "      name: orders\n"
        "      sources:\n"
        "        in:\n"
        "          action: redis.stream\n"
        f"          params: {{url: '{redis_server.url}', stream: orders, group: g}}\n"
        "      sinks: [{sink: websocket}]\n"
        "      checkpoint: {store: memory, every_seconds: 0.2}\n"
    )
    async with serving(tmp_path) as (server, log, base):
        async with connect(base.replace("http", "ws") + "/") as ws:
            started = await ws.run("orders")
            messages: list[Any] = []
            while len([m for m in messages if isinstance(m, StreamUpdateMessage)]) < 3:
                messages += await until(ws, of_type("stream_update", started.stream))
            server.send_signal(signal.SIGTERM)
            # a source that never ends by itself: the drain ends it, long before 300 s
            await log.next(r"drained: every run has ended")
            messages = await until(ws, of_type("stream_complete", started.stream))
            assert messages[-1].reason == "succeeded"  # type: ignore[union-attr]
            await closed(ws)
        await exits_with(server, 143)
    assert client.xpending("orders", "g")["pending"] == 0  # every message acknowledged
    client.close()


async def test_a_run_outliving_the_drain_deadline_is_cancelled(tmp_path: Path) -> None:
    (tmp_path / "serve.yaml").write_text(
        f"shutdown: {{drain_seconds: 0.5}}\npipelines:\n  slow:\n{SLOW}"
    )
    async with serving(tmp_path) as (server, log, base):
        async with connect(base.replace("http", "ws") + "/") as client:
            started = await client.run("slow")
            await until(client, of_type("stream_update", started.stream))
            server.send_signal(signal.SIGTERM)
            await log.next(r"drain deadline \(0\.5s\) passed")
            messages = await until(client, of_type("stream_complete", started.stream))
            complete = messages[-1]
            assert isinstance(complete, StreamCompleteMessage)
            assert complete.reason == "cancelled"
            await closed(client)
            assert client.close_code == 1001
        await exits_with(server, 143)


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    (tmp_path / "serve.yaml").write_text(f"pipelines:\n  slow:\n{SLOW}")
    async with serving(tmp_path) as (server, log, base):
        async with connect(base.replace("http", "ws") + "/") as client:
            started = await client.run("slow")
            await until(client, of_type("stream_update", started.stream))
            server.send_signal(signal.SIGTERM)
            await log.next(r"draining for up to 20s")  # the default drain_seconds
            server.send_signal(signal.SIGINT)
            await log.next(r"SIGINT: shutting down now")
            await closed(client)
            assert client.close_code == 1001
        await exits_with(server, 143)  # the first signal's


# -- readiness and the bridge -------------------------------------------------------------


def metric(text: str, name: str, role: str) -> float:
    """The value of series ``name`` whose ``role`` label is ``role``."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'role="{role}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} series of role {role} in:\n{text}")


async def test_readiness_follows_the_bridge_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    (tmp_path / "serve.yaml").write_text(
        f'bridge: {{redis: "{url}", block_ms: 100, heartbeat_interval: 0.2}}\n'
    )
    redis_server.kill()  # down from the start
    port = free_port()
    lost = rf"stream bridge: connection to {re.escape(url)} lost"
    async with serving(tmp_path, port=port) as (server, log, base):
        await log.next(lost, LONG_WAIT)  # listening since before the bridge's first try
        alive = await get(f"{base}/healthz")
        assert (alive.status_code, alive.json()["status"]) == (200, "starting")
        starting = await get(f"{base}/readyz")
        assert starting.status_code == 503
        assert starting.json()["not_ready"]["lifecycle"] == "starting"
        assert url in starting.json()["not_ready"]["bridge"]
        with pytest.raises(ConnectFailed) as refused:
            async with connect(f"ws://127.0.0.1:{port}/"):
                pass
        assert refused.value.status == 503

        redis_server.start()
        await log.next(rf"serving on http://127\.0\.0\.1:{port}", LONG_WAIT)
        ready = await get(f"{base}/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")

        redis_server.kill()
        await log.next(lost, LONG_WAIT)
        down = await get(f"{base}/readyz")
        assert down.status_code == 503
        assert set(down.json()["not_ready"]) == {"bridge"}
        assert (await get(f"{base}/healthz")).status_code == 200
        metrics = (await get(f"{base}/metrics")).text
        assert metric(metrics, "headwater_broker_connected", "bridge") == 0

        redis_server.start()
        await log.next(rf"stream bridge: reconnected to {re.escape(url)}", LONG_WAIT)
        back = await get(f"{base}/readyz")
        assert (back.status_code, back.json()["not_ready"]) == (200, {})
        metrics = (await get(f"{base}/metrics")).text
        assert metric(metrics, "headwater_broker_connected", "bridge") == 1
        # one outage at start-up, one since
        assert metric(metrics, "headwater_broker_reconnects_total", "bridge") == 2

        server.send_signal(signal.SIGTERM)
        await exits_with(server, 143)


# -- the reload on SIGHUP -----------------------------------------------------------------


async def test_sighup_reloads_pipelines_and_tokens_streams_go_on(tmp_path: Path) -> None:
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text(f"pipelines:\n  slow:\n{SLOW}")
    async with serving(tmp_path) as (server, log, base):
        ws = base.replace("http", "ws") + "/"
        async with connect(ws) as old:
            live = await old.run("slow", stream="live")
            await until(old, of_type("stream_update", live.stream))
            with pytest.raises(RequestFailed) as unknown:
                await old.run("count")
            assert unknown.value.code == "unknown_pipeline"

            serve_yaml.write_text(f"pipelines:\n  slow:\n{SLOW}  count:\n{COUNT}")
            server.send_signal(signal.SIGHUP)
            await log.next(r"SIGHUP: configuration reloaded from .*: 2 pipelines \(added count\)")
            await until(old, of_type("stream_update", live.stream))  # the stream goes on
            started = await old.run("count")  # on the connection opened before
            messages = await until(old, of_type("stream_complete", started.stream))
            assert [m.data for m in messages if isinstance(m, StreamUpdateMessage)] == [0, 1, 2]
            listed = (await get(f"{base}/api/pipelines")).json()["pipelines"]
            assert sorted(p["name"] for p in listed) == ["count", "slow"]

            serve_yaml.write_text(
                f"auth: {{tokens: {{s3cret: ada}}}}\npipelines:\n  slow:\n{SLOW}  count:\n{COUNT}"
            )
            server.send_signal(signal.SIGHUP)
            await log.next(r"SIGHUP: configuration reloaded from .*: 2 pipelines$")
            with pytest.raises(ConnectFailed) as refused:
                async with connect(ws):
                    pass
            assert refused.value.status == 401
            async with connect(ws, token="s3cret") as ada:
                started = await ada.run("count")
                await until(ada, of_type("stream_complete", started.stream))
            await until(old, of_type("stream_update", live.stream))  # still going

        server.send_signal(signal.SIGINT)
        await exits_with(server, 130)
        assert "Traceback" not in await log.rest()


async def test_sighup_with_an_invalid_file_keeps_the_configuration(tmp_path: Path) -> None:
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text(f"pipelines:\n  count:\n{COUNT}")
    async with serving(tmp_path) as (server, log, base):
        ws = base.replace("http", "ws") + "/"
        async with connect(ws) as client:
            serve_yaml.write_text(f"limits: {{rate: 0}}\npipelines:\n  more:\n{COUNT}")
            server.send_signal(signal.SIGHUP)
            await log.next(r"error: SIGHUP: configuration not reloaded, the current one stays")
            await log.next(r"limits\.rate: Input should be greater than 0")

            # valid as a file, but a pipeline does not resolve against the components
            serve_yaml.write_text(
                "pipelines:\n  more:\n"
                "    {name: more, sources: {n: {action: range}}, sinks: [{sink: websockt}]}\n"
            )
            server.send_signal(signal.SIGHUP)
            await log.next(r"error: SIGHUP: configuration not reloaded")
            await log.next(r"pipelines\.more\.sinks\[0\]\.sink: .*websockt")

            serve_yaml.write_text("pipelines: [count\n")  # not even YAML
            server.send_signal(signal.SIGHUP)
            await log.next(r"error: SIGHUP: configuration not reloaded")

            # the configuration it started with, on the connection it had
            started = await client.run("count")
            messages = await until(client, of_type("stream_complete", started.stream))
            assert [m.data for m in messages if isinstance(m, StreamUpdateMessage)] == [0, 1, 2]
            with pytest.raises(RequestFailed) as unknown:
                await client.run("more")
            assert unknown.value.code == "unknown_pipeline"
        server.send_signal(signal.SIGINT)
        await exits_with(server, 130)


# -- in process, on both front ends ---------------------------------------------------------


@pytest.mark.parametrize("front", FRONTS)
async def test_readyz_and_the_drain_on_both_fronts(front: str) -> None:
    async with running(front=front) as served, connect(served.url) as client:
        ready = await get(f"{served.http_url}/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        ticking = await client.run("ticks")
        await until(client, of_type("stream_update", ticking.stream))
        outcome: list[bool] = []

        async def drain() -> None:
            outcome.append(await served.app.drain(WAIT * 10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            draining = await get(f"{served.http_url}/readyz")
            assert draining.status_code == 503
            assert "1 run going on" in draining.json()["not_ready"]["lifecycle"]
            with pytest.raises(RequestFailed) as refused:
                await client.run("count")
            assert refused.value.code == "draining"
            async with connect(served.url) as other:  # connections and subscriptions go on
                await other.subscribe(ticking.stream, since=0)
                await until(other, of_type("stream_update", ticking.stream))
            await client.cancel(stream=ticking.stream)
        assert outcome == [True]  # the run ended within the deadline
        assert served.app.draining
        messages = await until(client, of_type("stream_complete", ticking.stream))
        assert messages[-1].reason == "cancelled"  # type: ignore[union-attr]


class BrokenRoutes:
    """A plugin whose ``register_routes`` raises."""

    @headwater.hookimpl
    def register_routes(self, register: Any) -> None:
        register(HttpRoute("GET", "/fine", body=b"ok"))
        raise RuntimeError("no routes today")


async def test_readyz_names_plugins_that_failed_in_strict_mode() -> None:
    async with running(plugins=make_plugins((BrokenRoutes(), "broken-routes"))) as served:
        answer = await get(f"{served.http_url}/readyz")
    assert answer.status_code == 503
    problem = answer.json()["not_ready"]["plugins"]
    assert "broken-routes" in problem
    assert "no routes today" in problem


async def test_reload_is_all_or_nothing() -> None:
    async with running() as served:
        server = served.app
        before = server.pipelines
        broken = config(
            pipelines={
                "count": count_pipeline(),
                "bad": {"name": "bad", "sources": {"n": {"action": "nope"}}, "sinks": []},
            },
            limits={"rate": 1},
        )
        with pytest.raises(ServerConfigError) as invalid:
            server.reload(broken)
        assert "pipelines.bad" in str(invalid.value)
        assert server.pipelines == before
        assert server.config.limits.rate == 50  # unchanged

        change = server.reload(
            config(port=1, pipelines={"count": count_pipeline(7)}, limits={"rate": 1})
        )
        assert change.removed == ("ticks",)
        assert change.changed == ("count",)
        assert change.ignored == ("port",)  # read at start only
        assert server.config.port == 0
        assert server.config.limits.rate == 1
        assert sorted(server.pipelines) == ["count"]
