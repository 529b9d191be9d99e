"""``sse``: following headwater's own event stream (``/api/streams/{stream}/events``),
and resuming from the checkpoint with ``Last-Event-ID``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

import headwater
from http_helpers import FlakyApi, make_plugins, serving
from test_server_helpers import running

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # headwater serve runs on asyncio


def engine(**policy: Any) -> headwater.Engine:
    return headwater.Engine(plugin_manager=make_plugins(), policy=headwater.SandboxPolicy(**policy))


def follow(url: str, tmp_path: Path, **params: Any) -> dict[str, Any]:
    return {
        "name": "follow",
        "sources": {
            "feed": {
                "action": "sse",
                "params": {"url": url, "events": ["stream_update"], **params},
            }
        },
        "sinks": [{"sink": "collect"}],
        "checkpoint": {
            "store": "sqlite",
            "params": {"path": str(tmp_path / "ck.db")},
            "every_items": 1,
        },
    }


class Counted:
    """What the ``test.count`` sink received, and an event once it has ``want`` items."""

    def __init__(self, want: int) -> None:
        self.items: list[Any] = []
        self.want = want
        self.reached = anyio.Event()


COUNTED: dict[str, Counted] = {}


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@headwater.sink("test.count", params=CountParams)
class CountSink:
    def __init__(self, params: CountParams, ctx: headwater.StreamContext) -> None:
        self.counted = COUNTED[params.name]

    def write(self, batch: list[Any]) -> None:
        self.counted.items.extend(batch)
        if len(self.counted.items) >= self.counted.want:
            self.counted.reached.set()


class TestSink:
    @headwater.hookimpl
    def register_sinks(self, register: Any) -> None:
        register(CountSink)


async def test_a_resumed_run_continues_after_the_last_committed_event(tmp_path: Path) -> None:
    """The first run follows the stream and is stopped after 8 events; the second,
    resumed, gets the events pushed since, from the checkpoint's Last-Event-ID, up to
    the end of the stream."""
    counted = COUNTED["sse"] = Counted(want=8)
    async with running() as server:
        manager = server.manager
        await manager.create_stream("feed")
        for i in range(8):
            await manager.push("feed", {"n": i})
        url = f"{server.http_url}/api/streams/feed/events?since=0"
        pipeline = follow(url, tmp_path, until=["stream_complete"])
        pipeline["sinks"] = [{"sink": "test.count", "params": {"name": "sse"}}]
        async with (
            headwater.Engine(
                plugin_manager=make_plugins(TestSink()),
                policy=headwater.SandboxPolicy(roots=(tmp_path,)),
            ) as eng,
            anyio.create_task_group() as tg,
        ):
            handle = eng.create_run(*eng.prepare(pipeline))
            results: list[Any] = []

            async def first() -> None:
                results.append(await handle.start())

            tg.start_soon(first)
            with anyio.fail_after(20):
                await counted.reached.wait()
            handle.cancel("enough")  # a clean stop commits what the sink has
        assert results[0].state == "cancelled"
        before = [frame["data"]["n"] for frame in counted.items]
        for i in range(8, 13):
            await manager.push("feed", {"n": i})
        again = COUNTED["sse"] = Counted(want=5)
        async with (
            headwater.Engine(
                plugin_manager=make_plugins(TestSink()),
                policy=headwater.SandboxPolicy(roots=(tmp_path,)),
            ) as eng,
            anyio.create_task_group() as tg,
        ):
            results = []

            async def second() -> None:
                results.append(await eng.run(pipeline, resume=True))

            tg.start_soon(second)
            with anyio.fail_after(20):
                await again.reached.wait()
            await manager.close_stream("feed", "completed")  # stream_complete ends it
    rest = results[0]
    after = [frame["data"]["n"] for frame in again.items]
    assert before == list(range(8))
    assert after == list(range(8, 13))  # from the committed event on: no gap, no repeat
    assert rest.summary["checkpoint"]["resumed"] is True


async def test_the_sse_url_obeys_the_sandbox_at_validation_and_on_redirect(
    tmp_path: Path,
) -> None:
    pipeline = follow("https://events.example.com/stream", tmp_path)
    with pytest.raises(headwater.PipelineValidationError, match=r"sources\.feed\.params\.url"):
        engine(roots=(tmp_path,)).prepare(pipeline)
    api = FlakyApi(fail_rate=0.0)
    with serving(api) as served:
        url = served.url + "/users/1?redirect=http://events.example.com/stream"
        async with engine(roots=(tmp_path,)) as eng:
            with pytest.raises(headwater.PipelineFailed, match=r"events\.example\.com"):
                await eng.run(follow(url, tmp_path))
    assert api.calls == 1
