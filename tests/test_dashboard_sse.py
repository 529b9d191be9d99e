"""A browser's ``EventSource`` following a stream through a dropped connection and a
server restart (Debian's Chromium through Playwright).

The server runs in this process, on an event loop of its own (an anyio blocking portal),
and serves the test page through a plugin route. The page records every event; the test
waits on the page's state (``wait_for_function``), never on time.

1. The page follows ``feed``; chunks arrive with ``id: EPOCH:SEQ``.
2. The server ends the page's response (as a broken connection would) and publishes more
   chunks meanwhile: the browser reconnects by itself with ``Last-Event-ID`` and gets
   exactly the chunks it missed, then the live ones: no gap, no duplicate.
3. The server restarts on the same port (the stream is created anew: a new epoch): the
   page reconnects with its old id and is told its history is gone (``replay_gap``,
   ``epoch_changed``), then follows the new epoch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

import headwater
from dashboard_support import browser_or_skip, missing
from headwater.server import Server
from test_server_helpers import config, make_plugins

PAGE = """<!doctype html>
<meta charset="utf-8"><title>events</title>
<pre id="log"></pre>
<script>
const state = { seqs: [], ids: [], subs: [], gaps: [], completes: [], opens: 0 };
window.hwState = () => JSON.parse(JSON.stringify(state));
const source = new EventSource("/api/streams/feed/events");
source.onopen = () => { state.opens += 1; };
source.addEventListener("subscribed", (e) => state.subs.push(JSON.parse(e.data)));
source.addEventListener("replay_gap", (e) => state.gaps.push(JSON.parse(e.data)));
source.addEventListener("stream_complete", (e) => state.completes.push(JSON.parse(e.data)));
source.addEventListener("stream_update", (e) => {
  state.seqs.push(JSON.parse(e.data).seq);
  state.ids.push(e.lastEventId);
  document.getElementById("log").textContent = state.seqs.join(" ");
});
</script>
"""

WAIT_MS = 15_000


class PagePlugin:
    @headwater.hookimpl
    def register_routes(self, register: Any) -> None:
        register(headwater.HttpRoute.page("/plugins/sse-test/page", PAGE))


@asynccontextmanager
async def feed_server(port: int) -> AsyncIterator[Server]:
    """A server with the test page whose stream ``feed`` exists before any request is
    read (nothing suspends between listening and creating it)."""
    cfg = config(port=port, sse={"retry": 200}, streaming={"inactivity_timeout": None})
    plugins = make_plugins((PagePlugin(), "sse-test-page"))
    async with Server(cfg, plugins=plugins, environ={}) as server:
        await server.manager.create_stream("feed")
        yield server


async def push(server: Server, seqs: range) -> None:
    for i in seqs:
        assert await server.manager.push("feed", {"i": i}) == i


async def drop_then_push(server: Server, seqs: range) -> int:
    """End every event stream (the browser sees a broken connection), publish more."""
    dropped = server.event_streams
    for connection in dropped:
        connection.drop()
    await push(server, seqs)
    return len(dropped)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = browser_or_skip(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


def wait_for(page: Any, condition: str) -> Any:
    """Wait until ``condition`` (JavaScript over ``s``, the page's state) holds."""
    page.wait_for_function(
        f"(() => {{ const s = window.hwState(); return {condition}; }})()", timeout=WAIT_MS
    )
    return page.evaluate("window.hwState()")


def test_event_source_resumes_with_last_event_id_and_learns_of_a_new_epoch(
    browser: Any, portal: BlockingPortal
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    first = portal.wrap_async_context_manager(feed_server(0))
    server = first.__enter__()
    port = server.port
    try:
        page.goto(f"{server.http_url}/plugins/sse-test/page")
        wait_for(page, "s.subs.length === 1")
        portal.call(push, server, range(1, 6))
        state = wait_for(page, "s.seqs.length === 5")
        epoch = state["subs"][0]["epoch"]
        assert state["ids"] == [f"{epoch}:{i}" for i in range(1, 6)]

        # the connection breaks while the server keeps publishing
        assert portal.call(drop_then_push, server, range(6, 11)) == 1
        state = wait_for(page, "s.opens === 2 && s.seqs.length >= 10")
        portal.call(push, server, range(11, 13))
        state = wait_for(page, "s.seqs.length >= 12")
        assert state["seqs"] == list(range(1, 13))  # no gap, no duplicate
        assert state["subs"][1]["epoch"] == epoch
        assert state["gaps"] == []
    finally:
        first.__exit__(None, None, None)

    # a restart on the same port: the stream's history is gone
    second = portal.wrap_async_context_manager(feed_server(port))
    server = second.__enter__()
    try:
        state = wait_for(page, "s.gaps.length === 1")
        gap = state["gaps"][0]
        assert gap["reason"] == "epoch_changed"
        assert gap["since"] == 12
        new_epoch = state["subs"][-1]["epoch"]
        assert new_epoch != epoch
        assert [c["reason"] for c in state["completes"]] == ["shutdown"]
        portal.call(push, server, range(1, 3))
        state = wait_for(page, "s.seqs.length >= 14")
        assert state["seqs"][12:] == [1, 2]
        assert state["ids"][12:] == [f"{new_epoch}:1", f"{new_epoch}:2"]
    finally:
        second.__exit__(None, None, None)
        page.close()
    assert errors == []
