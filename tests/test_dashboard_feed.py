"""The dashboard's server side, without a browser: assets, ``/api/pipelines``,
``/api/dashboard`` and the ``$dashboard`` feed.

Servers run in-process on 127.0.0.1, port 0 (asyncio only, like every server test). The
feed's interval is shortened so that the tests wait for messages, not for time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import anyio
import pytest

from headwater.client import Client, RequestFailed
from headwater.server import Server
from headwater.server.dashboard import DASHBOARD_STREAM, quantile
from headwater.server.protocol import StreamCompleteMessage, StreamUpdateMessage
from test_server_helpers import (
    WAIT,
    client_of,
    config,
    count_pipeline,
    http_get,
    json_body,
    running,
    ticks_pipeline,
)

pytestmark = pytest.mark.anyio

FAILING = {
    "pipeline": {
        "name": "boom",
        "sources": {"n": {"action": "range", "params": {"stop": 5}}},
        "steps": [{"transformer": "map", "params": {"fn": "operator:truediv"}}],
        "sinks": [{"sink": "websocket"}],
    }
}

STATIC = resources.files("headwater.server") / "static"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fast(server: Server, interval: float = 0.05, idle_timeout: float = 60.0) -> None:
    """Make the server's feed tick faster (the tests wait for what it reports)."""
    server.dashboard.interval = interval
    server.dashboard.idle_timeout = idle_timeout


async def summary_until(
    client: Client, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The first ``$dashboard`` summary matching ``predicate`` (bounded)."""
    with anyio.fail_after(WAIT):
        while True:
            message = await client.receive()
            if (
                isinstance(message, StreamUpdateMessage)
                and message.stream == DASHBOARD_STREAM
                and predicate(message.data)
            ):
                return dict(message.data)


# -- assets -----------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_served_with_types_and_a_strict_csp() -> None:
    async with running() as server:
        base = server.http_url
        status, headers, body = await http_get(base + "/")
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert b'<script type="module" src="./static/dashboard.js">' in body  # relative
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self';" in csp
        assert f"connect-src 'self' ws://127.0.0.1:{server.port}" in csp
        assert "'unsafe-inline'" not in csp
        assert "'unsafe-eval'" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        # every asset the page and its modules refer to is served, with its type
        text = body.decode()
        names = set(re.findall(r'"\./static/([a-z0-9-]+\.[a-z]+)"', text))
        for module in STATIC.iterdir():
            if module.name.endswith(".js"):
                source = module.read_text(encoding="utf-8")
                names |= set(re.findall(r'from "\./([a-z0-9-]+\.js)"', source))
        assert {"dashboard.js", "dashboard.css", "favicon.svg", "chart.js"} <= names
        types = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        for name in sorted(names):
            status, headers, _ = await http_get(f"{base}/static/{name}")
            assert status == 200, name
            assert headers["content-type"].startswith(types[name.rsplit(".", 1)[1]]), name
        for bad in ("/static/nope.js", "/static/../app.py", "/static/%2e%2e/app.py", "/static/"):
            status, _, _ = await http_get(base + bad)
            assert status == 404, bad


def test_the_assets_make_no_request_to_another_machine() -> None:
    for asset in STATIC.iterdir():
        if asset.name.rsplit(".", 1)[-1] in ("html", "js", "css"):
            text = asset.read_text(encoding="utf-8")
            assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), asset.name
            assert "@import" not in text, asset.name


# -- /api/pipelines ---------------------------------------------------------------------


async def test_api_pipelines_gives_each_param_its_json_schema() -> None:
    pipelines = {"count": count_pipeline(7), "ticks": ticks_pipeline(), "boom": FAILING}
    async with running(config(pipelines=pipelines)) as server:
        status, _, body = await http_get(server.http_url + "/api/pipelines")
    assert status == 200
    listing = {p["name"]: p for p in json_body(body)["pipelines"]}
    assert sorted(listing) == ["boom", "count", "ticks"]
    stop = listing["count"]["params"]["properties"]["stop"]
    assert stop["type"] == "integer"
    assert stop["default"] == 7  # the pipeline's value, not the model's
    assert stop["x-path"] == "sources.numbers.params.stop"
    assert stop["x-component"] == "action:range"
    assert listing["count"]["params"]["required"] == []
    assert listing["count"]["sources"] == ["numbers"]
    ticks = listing["ticks"]["params"]["properties"]["stop"]
    assert {"type": "integer"} in ticks["anyOf"]
    assert {"type": "null"} in ticks["anyOf"]
    assert listing["boom"]["params"]["properties"] == {}


async def test_api_pipelines_and_the_feed_follow_authorization() -> None:
    tokens = {
        "a-token": "alice",
        "b-token": {"principal": "bob", "streams": ["count*"], "pipelines": ["count"]},
    }
    async with running(config(auth={"tokens": tokens})) as server:
        url = server.http_url
        assert (await http_get(url + "/api/pipelines"))[0] == 401
        assert (await http_get(url + "/api/dashboard"))[0] == 401
        status, _, body = await http_get(url + "/api/pipelines", token="b-token")
        assert status == 200
        assert [p["name"] for p in json_body(body)["pipelines"]] == ["count"]
        status, _, body = await http_get(url + "/api/pipelines", token="a-token")
        assert [p["name"] for p in json_body(body)["pipelines"]] == ["count", "ticks"]
        assert (await http_get(url + "/api/dashboard", token="b-token"))[0] == 403
        assert (await http_get(url + "/api/dashboard", token="a-token"))[0] == 200
        async with client_of(server, token="b-token") as bob:
            with pytest.raises(RequestFailed) as failed:
                await bob.subscribe(DASHBOARD_STREAM)
            assert failed.value.code == "unauthorized"
        async with client_of(server, token="a-token") as alice:
            subscribed = await alice.subscribe(DASHBOARD_STREAM)
            assert subscribed.stream == DASHBOARD_STREAM


# -- the feed ---------------------------------------------------------------------------


async def test_the_feed_reports_runs_progress_throughput_latency_and_errors() -> None:
    pipelines = {"count": count_pipeline(), "ticks": ticks_pipeline(), "boom": FAILING}
    async with running(config(pipelines=pipelines)) as server, client_of(server) as client:
        fast(server)
        await client.subscribe(DASHBOARD_STREAM)
        ticking = await client.run("ticks", {"stop": 100_000})
        summary = await summary_until(
            client,
            lambda s: (
                any(
                    r["run"] == ticking.run and r["progress"].get("sources.clock")
                    for r in s["runs"]
                )
                and s["throughput"]["items"] > 0
            ),
        )
        run = next(r for r in summary["runs"] if r["run"] == ticking.run)
        assert run["state"] == "running"
        assert run["pipeline"] == "ticks"
        assert run["stream"] == ticking.stream
        assert run["progress"]["sources.clock"]["total"] == 100_000
        assert run["progress"]["sources.clock"]["done"] >= 1
        assert summary["throughput"]["by_pipeline"]["ticks"] > 0
        assert summary["throughput"]["chunks"] > 0
        stream = next(s for s in summary["streams"] if s["stream"] == ticking.stream)
        assert stream["state"] == "running"
        assert stream["clients"] == 1
        assert stream["seq"] >= 1
        assert DASHBOARD_STREAM not in {s["stream"] for s in summary["streams"]}
        assert {p["pipeline"] for p in summary["pipelines"]} >= {"count", "ticks", "boom"}
        summary = await summary_until(client, lambda s: s["latency"]["count"] > 0)
        assert 0 <= summary["latency"]["p50"] <= summary["latency"]["p99"]
        await client.cancel(stream=ticking.stream)

        failing = await client.run("boom")
        summary = await summary_until(
            client,
            lambda s: (
                any(e["stream"] == failing.stream for e in s["errors"])
                and any(r["run"] == failing.run and r["state"] == "failed" for r in s["runs"])
            ),
        )
        error = next(e for e in summary["errors"] if e["stream"] == failing.stream)
        assert error["error"] == "TypeError"
        assert error["stage"] == "steps[0].map"
        assert error["pipeline"] == "boom"
        assert error["run"] == failing.run
        ended = {r["run"]: r for r in summary["runs"]}
        assert ended[ticking.run]["state"] == "cancelled"
        assert ended[failing.run]["items"] == 5

        status, _, body = await http_get(server.http_url + "/api/dashboard")
        history = json_body(body)
        assert status == 200
        assert history["active"] is True
        assert history["points"]
        assert {"time", "items", "chunks", "p50", "p99"} <= set(history["points"][-1])
        assert history["summary"]["runs"]


async def test_the_feed_closes_when_nobody_watches_and_reopens_on_demand() -> None:
    async with running() as server, client_of(server) as client:
        fast(server, interval=0.02, idle_timeout=0.1)
        first = await client.subscribe(DASHBOARD_STREAM)
        await summary_until(client, lambda s: True)
        await client.unsubscribe(DASHBOARD_STREAM)
        with anyio.fail_after(WAIT):
            while server.dashboard.active or server.manager.has_stream(DASHBOARD_STREAM):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        again = await client.subscribe(DASHBOARD_STREAM)
        assert again.epoch != first.epoch  # a new stream
        await summary_until(client, lambda s: True)
        assert server.dashboard.active
    # the server stopped promptly with the feed going, and the feed with it
    assert not server.dashboard.active


async def test_the_feed_ends_with_the_server_for_its_subscribers() -> None:
    async with running() as server, client_of(server) as client:
        fast(server)
        await client.subscribe(DASHBOARD_STREAM)
        await summary_until(client, lambda s: True)
        with anyio.fail_after(WAIT):
            await server.shutdown()
            while True:
                message = await client.receive()
                if isinstance(message, StreamCompleteMessage):
                    break
        assert message.stream == DASHBOARD_STREAM
        assert message.reason == "shutdown"


async def test_a_failing_summary_stops_neither_the_feed_nor_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running() as server, client_of(server) as client:
        fast(server)
        real = server.dashboard.tick
        calls = 0

        def flaky() -> dict[str, Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in a summary")
            return real()

        monkeypatch.setattr(server.dashboard, "tick", flaky)
        await client.subscribe(DASHBOARD_STREAM)
        await summary_until(client, lambda s: True)
        assert calls >= 2
        assert server.running


async def test_a_run_may_not_use_a_reserved_stream_id() -> None:
    async with running() as server, client_of(server) as client:
        for stream in (DASHBOARD_STREAM, "$mine"):
            with pytest.raises(RequestFailed) as failed:
                await client.run("count", stream=stream)
            assert failed.value.code == "invalid_message"
            assert "reserved" in str(failed.value)
        assert not server.runs


def test_quantiles_interpolate_inside_buckets() -> None:
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, [0, 0, 0, 0], bounds) is None
    assert quantile(0.5, [10, 0, 0, 0], bounds) == pytest.approx(0.05)
    assert quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(0.15)
    assert quantile(0.99, [50, 50, 0, 0], bounds) == pytest.approx(0.198)
    assert quantile(0.5, [0, 0, 0, 3], bounds) == 0.4  # +Inf: the largest finite bound
    assert quantile(1.0, [1, 1, 1, 0], bounds) == pytest.approx(0.4)
