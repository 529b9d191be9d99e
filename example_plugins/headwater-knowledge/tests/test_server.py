"""The query pipeline served over the WebSocket protocol v1, on a real socket: the run,
the page's route, sessions cancelling older queries, resuming after a reconnection."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import headwater
import httpx
import pytest
from headwater.client import Client, RequestFailed, connect
from headwater.server import Server, ServerConfig
from support import corpus_pipeline

from headwater_knowledge.events import parse_event
from headwater_knowledge.pipeline import server_config
from headwater_knowledge.standin import StandIn


async def _until_complete(client: Client, stream: str) -> tuple[list[Any], str]:
    """The stream's chunks (data) and its ``stream_complete`` reason."""
    chunks: list[Any] = []
    async for message in client:
        if getattr(message, "stream", None) != stream:
            continue
        if message.type == "stream_update":
            chunks.append(message.data)
        elif message.type == "stream_complete":
            return chunks, message.reason
    raise AssertionError("the connection closed before the stream completed")


def _config(pipe: dict[str, Any]) -> ServerConfig:
    return ServerConfig.model_validate({**server_config(pipe), "port": 0})


@pytest.mark.anyio
async def test_a_query_runs_over_the_protocol_and_the_page_is_served(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    pipe = corpus_pipeline(corpus, standin.url)
    async with (
        engine,
        Server(_config(pipe), engine=engine) as server,
        connect(server.url) as client,
    ):
        started = await client.run("knowledge", {"query": "river delta", "session": "t1"})
        chunks, reason = await _until_complete(client, started.stream)
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            page = await http.get("/plugins/knowledge/")
            script = await http.get("/plugins/knowledge/knowledge.js")
            with pytest.raises(RequestFailed) as refused:
                await client.run("knowledge", {"query": "x", "sources": "evil"})
    assert reason == "succeeded"
    kinds = [c["type"] for c in chunks]
    assert kinds[0] == "query" and kinds[1] == "status" and kinds[-1] == "complete"
    assert kinds.index("status") < kinds.index("result") < kinds.index("answer")
    for chunk in chunks:
        parse_event(chunk)
    assert page.status_code == 200 and "knowledge.js" in page.text
    assert script.status_code == 200 and "requestAnimationFrame" in script.text
    assert refused.value.error.code == "invalid_params"


@pytest.mark.anyio
async def test_a_new_query_in_the_same_session_cancels_the_one_going_on(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    standin.configure(hang_rate=1.0, hang_seconds=30)
    pipe = corpus_pipeline(corpus, standin.url, web={"timeout": 60})
    async with (
        engine,
        Server(_config(pipe), engine=engine) as server,
        connect(server.url) as alice,
        connect(server.url) as bob,
    ):
        first = await alice.run("knowledge", {"query": "river", "session": "a"})
        other = await bob.run("knowledge", {"query": "river", "session": "b"})
        # a query of session b does not touch session a's, and vice versa
        third = await bob.run("knowledge", {"query": "lakes", "session": "b"})
        _, reason_other = await _until_complete(bob, other.stream)
        assert reason_other == "cancelled"
        assert server.run_of_stream(first.stream) is not None  # still going
        second = await alice.run("knowledge", {"query": "delta", "session": "a"})
        _, reason_first = await _until_complete(alice, first.stream)
        assert reason_first == "cancelled"
        standin.configure(hang_rate=0.0)
        for client, run in ((alice, second), (bob, third)):
            await client.cancel(stream=run.stream)  # the web provider still hangs: stop
            _, reason = await _until_complete(client, run.stream)
            assert reason == "cancelled"


@pytest.mark.anyio
async def test_a_client_that_reconnects_resumes_without_gap_or_repeat(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    standin.configure(latency=0.2, page_latency=0.1)
    pipe = corpus_pipeline(corpus, standin.url, web={"pages": 3, "count": 5})
    async with engine, Server(_config(pipe), engine=engine) as server, AsyncExitStack() as stack:
        first = await stack.enter_async_context(connect(server.url))
        run = await first.run("knowledge", {"query": "river headwater", "session": "r"})
        before: list[tuple[int, Any]] = []
        async for message in first:
            if message.type == "stream_update":
                before.append((message.seq, message.data))
                if message.data["type"] == "result":
                    break
        epoch, seq = first.position(run.stream) or ("", 0)
        await first.close()  # the connection drops; the query goes on
        second = await stack.enter_async_context(connect(server.url))
        await second.subscribe(run.stream, since=seq, epoch=epoch)
        after: list[tuple[int, Any]] = []
        async for message in second:
            if message.type == "replay_gap":
                raise AssertionError(f"gap: {message}")
            if message.type == "stream_update":
                after.append((message.seq, message.data))
            elif message.type == "stream_complete":
                break
        whole = await stack.enter_async_context(connect(server.url))
        await whole.subscribe(run.stream, since=0)
        everything = [(m.seq, m.data) async for m in _updates_until_complete(whole, run.stream)]
    assert [s for s, _ in before + after] == list(range(1, len(before) + len(after) + 1))
    assert before + after == everything
    assert after and after[-1][1]["type"] == "complete"


async def _updates_until_complete(client: Client, stream: str):  # type: ignore[no-untyped-def]
    async for message in client:
        if message.type == "stream_update" and message.stream == stream:
            yield message
        elif message.type == "stream_complete" and message.stream == stream:
            return
