"""Runtime behaviour: batching, fusion, backpressure, cancellation, timeouts, error policies.

Every async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

import headwater
from headwater.core.plugins import PluginManager

pytestmark = pytest.mark.anyio


class Probe:
    """Shared state the test components report into."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.produced = 0
        self.release = anyio.Event()
        self.first_write = anyio.Event()
        self.task_ids: dict[str, set[int]] = {}
        self.attempts: dict[int, int] = {}

    def seen_in(self, where: str) -> None:
        self.task_ids.setdefault(where, set()).add(anyio.get_current_task().id)


probe = Probe()


class ForeverParams(BaseModel):
    before: int = 3


@headwater.action("test.forever", params=ForeverParams)
async def forever(params: ForeverParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield a few items, then wait forever (until cancelled)."""
    try:
        for i in range(params.before):
            yield i
        await anyio.sleep_forever()
    finally:
        probe.log.append("source finally")


@headwater.action("test.counting")
async def counting(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield integers without end, counting how many were produced."""
    i = 0
    while True:
        probe.produced += 1
        yield i
        i += 1


@headwater.action("test.silent")
async def silent(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Never yield anything."""
    await anyio.sleep_forever()
    yield 0  # pragma: no cover


@headwater.action("test.sync_gen")
def sync_gen(ctx: headwater.StreamContext) -> Iterator[int]:
    """A sync generator: runs in a worker thread."""
    try:
        for i in range(1000):
            ctx.progress(i + 1, 1000)
            yield i
    finally:
        probe.log.append("sync finally")


@headwater.action("test.coro")
async def coro(ctx: headwater.StreamContext) -> dict[str, int]:
    """A plain coroutine: its value is a one-chunk stream."""
    await anyio.lowlevel.checkpoint()
    return {"answer": 42}


@headwater.action("test.func")
def func(ctx: headwater.StreamContext) -> str:
    """A plain function: its value is a one-chunk stream."""
    return "hello"


@headwater.action("test.boom")
async def boom(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Fail after two items."""
    yield 1
    yield 2
    raise RuntimeError("source exploded")


@headwater.transformer("test.guard", kind="stream")
async def guard(items: AsyncIterator[Any], ctx: headwater.StreamContext) -> AsyncIterator[Any]:
    """Pass items through; record cleanup."""
    try:
        async for item in items:
            probe.seen_in("stream")
            yield item
    finally:
        probe.log.append("transformer finally")


@headwater.transformer("test.tag_a", kind="map")
def tag_a(item: Any) -> Any:
    """Record the task running this item-wise step."""
    probe.seen_in("fused")
    return item


@headwater.transformer("test.tag_b", kind="map")
def tag_b(item: Any) -> Any:
    """Record the task running this item-wise step."""
    probe.seen_in("fused")
    return item


@headwater.transformer("test.flaky", kind="map")
def flaky(item: int) -> int:
    """Fail on item 5 for its first two attempts; fail on 7 always."""
    if item == 7:
        raise ValueError("seven is cursed")
    if item == 5:
        probe.attempts[5] = probe.attempts.get(5, 0) + 1
        if probe.attempts[5] < 3:
            raise ConnectionError("transient")
    return item


@headwater.sink("test.stalled")
class StalledSink:
    """Block on the first write until released."""

    async def write(self, batch: list[Any]) -> None:
        probe.first_write.set()
        await probe.release.wait()

    async def close(self, error: BaseException | None) -> None:
        probe.log.append(f"sink close {type(error).__name__ if error else None}")


@headwater.sink("test.recording")
class RecordingSink:
    """Collect items and record the close."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)
        probe.first_write.set()

    async def close(self, error: BaseException | None) -> list[Any]:
        probe.log.append(f"sink close {type(error).__name__ if error else None}")
        return self.items


@headwater.sink("test.unopenable")
class UnopenableSink:
    """Fail in open()."""

    def open(self) -> None:
        raise PermissionError("no access to the target")

    def write(self, batch: list[Any]) -> None:  # pragma: no cover - never reached
        pass


@headwater.sink("test.sync_fn")
def sync_fn_sink(batch: list[Any]) -> None:
    """A function sink, sync: runs in a worker thread."""
    probe.log.append(f"batch {len(batch)}")


class TestPlugin:
    """Registers the components above."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        for c in (forever, counting, silent, sync_gen, coro, func, boom):
            register(c)

    @staticmethod
    @headwater.hookimpl
    def register_transformers(register: Any) -> None:
        for c in (guard, tag_a, tag_b, flaky):
            register(c)

    @staticmethod
    @headwater.hookimpl
    def register_sinks(register: Any) -> None:
        for c in (StalledSink, RecordingSink, UnopenableSink, sync_fn_sink):
            register(c)


@pytest.fixture
def pm() -> PluginManager:
    global probe
    probe = Probe()
    manager = PluginManager().load()
    assert manager.register(TestPlugin, "test-plugin"), manager.failures
    return manager


async def test_range_map_filter_collect(pm: PluginManager) -> None:
    result = await (
        headwater.Pipeline("p")
        .source("range", stop=10_000, chunk=97)
        .map(lambda x: x * 2)
        .filter(lambda x: x % 3 != 0)
        .sink("collect")
        .run(plugins=pm)
    )
    assert result.state == "succeeded"
    assert result.output == [x * 2 for x in range(10_000) if (x * 2) % 3 != 0]
    stages = result.summary["stages"]
    assert stages["sources.range"]["items_out"] == 10_000
    assert stages["steps[1].filter"]["items_in"] == 10_000
    assert stages["sinks.collect"]["items_out"] == len(result.output)


async def test_itemwise_steps_are_fused_into_one_task(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("fusion")
        .source("range", stop=5000)
        .step("test.tag_a")
        .step("test.tag_b")
        .step("test.guard")
        .step("test.tag_a")
        .sink("null")
    )
    await spec.run(plugins=pm)
    # two fused stages (before and after the stream step) and one stream stage
    assert len(probe.task_ids["fused"]) == 2
    assert probe.task_ids["stream"].isdisjoint(probe.task_ids["fused"])


async def test_stalled_sink_stalls_the_source(pm: PluginManager) -> None:
    """Backpressure: with a sink that never finishes a write, production stops."""
    spec = (
        headwater.Pipeline("bp", batch_size=64, buffer=2)
        .source("test.counting")
        .map(lambda x: x + 1)
        .sink("test.stalled")
    )
    async with headwater.open_run(spec, plugins=pm) as handle:
        await probe.first_write.wait()
        # wait until the source stops producing (bounded)
        last = -1
        for _ in range(200):
            await anyio.sleep(0.01)
            if probe.produced == last:
                break
            last = probe.produced
        # two channels (source -> fused stage -> sink) of 128 items, plus what the two
        # consuming tasks hold (one taken batch each, at most a channel's worth)
        in_flight_bound = 4 * 128
        assert probe.produced <= in_flight_bound
        await anyio.sleep(0.05)
        assert probe.produced == last, "the source kept producing while the sink stalled"
        handle.cancel()
    result = await handle.wait()
    assert result.state == "cancelled"


async def test_cancel_stops_every_stage_and_runs_cleanup(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("cancel")
        .source("test.forever", before=3)
        .step("test.guard")
        .map(lambda x: x)
        .sink("test.recording")
    )
    async with headwater.open_run(spec, plugins=pm) as handle:
        await probe.first_write.wait()
        handle.cancel("user asked")
        result = await handle.wait()
    assert result.state == "cancelled"
    assert result.summary["cancel_reason"] == "user asked"
    # generators are closed before sinks, and every cleanup ran exactly once
    assert sorted(probe.log[:2]) == ["source finally", "transformer finally"]
    assert probe.log[2:] == ["sink close PipelineCancelled"]
    with pytest.raises(headwater.PipelineCancelled):
        result.raise_for_state()


async def test_leaving_open_run_cancels(pm: PluginManager) -> None:
    spec = headwater.Pipeline("leave").source("test.forever").sink("test.recording")
    async with headwater.open_run(spec, plugins=pm) as handle:
        await probe.first_write.wait()
    assert handle.done
    assert handle.state == "cancelled"
    assert "source finally" in probe.log


async def test_events_end_with_complete(pm: PluginManager) -> None:
    spec = headwater.Pipeline("ev").source("range", stop=50_000, chunk=1000).sink("null")
    events: list[headwater.Event] = []
    async with headwater.open_run(spec, plugins=pm) as handle:
        async for event in handle.events():
            events.append(event)
    assert isinstance(events[-1], headwater.Complete)
    assert events[-1].state == "succeeded"
    progress = [e for e in events if isinstance(e, headwater.Progress)]
    assert progress, "range reports progress"
    assert progress[-1].done == progress[-1].total == 50_000
    assert events[-1].summary["items_in"] == 50_000


@pytest.mark.parametrize(
    ("which", "timeouts", "source"),
    [
        ("first item", {"first_item": 0.05}, "test.silent"),
        ("idle", {"idle": 0.05}, "test.forever"),
        ("total", {"total": 0.1}, "test.forever"),
    ],
)
async def test_timeouts(
    pm: PluginManager, which: str, timeouts: dict[str, float], source: str
) -> None:
    spec = headwater.Pipeline("slow").source(source).sink("collect").timeouts(**timeouts)
    with pytest.raises(headwater.PipelineTimeout, match=which) as info:
        await spec.run(plugins=pm)
    assert info.value.which == which


async def test_failure_names_pipeline_stage_plugin_and_position(pm: PluginManager) -> None:
    def explode_on_7(x: int) -> int:
        if x == 7:
            raise KeyError("no such thing")
        return x

    spec = headwater.Pipeline("fails").source("range", stop=100).map(explode_on_7).sink("collect")
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.run(plugins=pm)
    error = info.value.errors[0]
    assert isinstance(error, headwater.StageError)
    assert (error.pipeline, error.stage, error.plugin, error.position) == (
        "fails",
        "steps[0].map",
        "headwater.transformers",
        7,
    )
    assert "pipeline 'fails', stage steps[0].map" in str(info.value)


async def test_source_error_fails_the_run(pm: PluginManager) -> None:
    spec = headwater.Pipeline("src").source("test.boom").sink("test.recording")
    result = await spec.run(plugins=pm, raise_on_error=False)
    assert result.state == "failed"
    error = result.errors[0]
    assert isinstance(error, headwater.StageError)
    assert error.stage == "sources.test.boom"
    assert "source exploded" in str(error)
    assert probe.log[-1] == "sink close StageError"


async def test_skip_and_retry_with_dead_letter(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("policies")
        .source("range", stop=10)
        .step("test.flaky", on_error="retry", retry={"attempts": 3, "backoff": 0, "then": "skip"})
        .sink("collect")
        .dead_letter("collect")
    )
    events: list[headwater.Event] = []
    async with headwater.open_run(spec.build(), plugins=pm) as handle:
        async for event in handle.events():
            events.append(event)
    result = await handle.wait()
    assert result.state == "succeeded"
    assert result.outputs["collect"] == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert probe.attempts[5] == 3
    dead = result.outputs["dead_letter"]
    assert len(dead) == 1
    assert dead[0]["item"] == 7
    assert dead[0]["position"] == 7
    assert dead[0]["error"] == "ValueError"
    handled = [e for e in events if isinstance(e, headwater.ErrorEvent)]
    assert all(e.handled for e in handled)
    assert len(handled) == 2 + 3  # two transient failures of 5, three of 7
    assert (
        result.summary["stages"]["test.flaky" if False else "steps[0].test.flaky"]["skipped"] == 1
    )


async def test_skip_policy_keeps_going(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("skip")
        .source("iterable", items=["1", "x", "3"])
        .map(int, on_error="skip")
        .sink("collect")
    )
    result = await spec.run(plugins=pm)
    assert result.output == [1, 3]


async def test_sync_generator_coroutine_and_function_sources(pm: PluginManager) -> None:
    r1 = await headwater.Pipeline("s").source("test.sync_gen").sink("collect").run(plugins=pm)
    assert r1.output == list(range(1000))
    assert "sync finally" in probe.log
    r2 = await headwater.Pipeline("c").source("test.coro").sink("collect").run(plugins=pm)
    assert r2.output == [{"answer": 42}]
    r3 = await headwater.Pipeline("f").source("test.func").sink("collect").run(plugins=pm)
    assert r3.output == ["hello"]


async def test_composition(pm: PluginManager) -> None:
    def base() -> headwater.Pipeline:
        return (
            headwater.Pipeline("compose")
            .source("iterable", name="a", items=[1, 2, 3])
            .source("iterable", name="b", items=["x", "y"])
        )

    zipped = await base().zip().sink("collect").run(plugins=pm)
    assert zipped.output == [(1, "x"), (2, "y")]
    concat = await base().concat("b", "a").sink("collect").run(plugins=pm)
    assert concat.output == ["x", "y", 1, 2, 3]
    merged = await base().merge().sink("collect").run(plugins=pm)
    assert sorted(map(str, merged.output)) == ["1", "2", "3", "x", "y"]


async def test_zip_stops_the_longer_source(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("zipinf")
        .source("test.counting", name="inf")
        .source("iterable", name="few", items="abc")
        .zip()
        .sink("collect")
    )
    result = await spec.run(plugins=pm)
    assert result.output == [(0, "a"), (1, "b"), (2, "c")]


async def test_fan_out_to_several_sinks(pm: PluginManager) -> None:
    spec = (
        headwater.Pipeline("fan")
        .source("range", stop=1000)
        .sink("collect", name="one")
        .sink("collect", name="two")
        .sink("null")
    )
    result = await spec.run(plugins=pm)
    assert result.outputs["one"] == result.outputs["two"] == list(range(1000))
    assert result.outputs["null"] == 1000


async def test_sink_that_cannot_open_fails_before_sources_run(pm: PluginManager) -> None:
    spec = headwater.Pipeline("open").source("test.counting").sink("test.unopenable")
    with pytest.raises(headwater.PipelineFailed, match="no access to the target") as info:
        await spec.run(plugins=pm)
    assert info.value.errors[0].stage == "sinks.test.unopenable"  # type: ignore[attr-defined]
    assert probe.produced == 0


async def test_sync_function_sink_runs(pm: PluginManager) -> None:
    await headwater.Pipeline("fn").source("range", stop=10).sink("test.sync_fn").run(plugins=pm)
    assert probe.log == ["batch 10"]


async def test_lifecycle_hooks_see_the_run(pm: PluginManager) -> None:
    seen: list[tuple[str, str]] = []

    class Listener:
        @staticmethod
        @headwater.hookimpl
        def pipeline_started(pipeline: headwater.PipelineSpec, run_id: str) -> None:
            seen.append(("started", pipeline.name))

        @staticmethod
        @headwater.hookimpl
        async def pipeline_finished(pipeline: headwater.PipelineSpec, state: str) -> None:
            await anyio.lowlevel.checkpoint()
            seen.append(("finished", state))

        @staticmethod
        @headwater.hookimpl
        def stream_error(error: headwater.StageError, handled: bool) -> None:
            seen.append(("error", f"{error.stage}:{handled}"))

    assert pm.register(Listener, "listener")
    spec = headwater.Pipeline("hooks").source("iterable", items=["1", "x"]).map(int).sink("collect")
    await spec.run(plugins=pm, raise_on_error=False)
    assert seen == [("started", "hooks"), ("error", "steps[0].map:False"), ("finished", "failed")]


def test_run_sync_on_trio() -> None:
    result = headwater.run_sync(
        {
            "name": "t",
            "sources": {"r": {"action": "range", "params": {"stop": 5}}},
            "sinks": [{"sink": "collect"}],
        },
        backend="trio",
    )
    assert result.output == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_ten_million_items_in_bounded_memory() -> None:
    """10M items through range -> map -> filter -> null keep peak RSS under 100 MB."""
    script = textwrap.dedent(
        """
        import headwater
        r = (headwater.Pipeline("mem").source("range", stop=10_000_000)
             .map(lambda x: x * 2).filter(lambda x: x % 3 != 0).sink("null").run_sync())
        assert r.output == 6_666_666, r.output
        # VmHWM is this process's own peak; ru_maxrss would include the parent's RSS at
        # fork time (Linux carries it over), i.e. the test runner's.
        with open("/proc/self/status") as status:
            hwm = next(line for line in status if line.startswith("VmHWM:"))
        print(int(hwm.split()[1]) * 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    peak = int(out.stdout.strip())
    assert peak < 100 * 1024 * 1024, f"peak RSS {peak / 2**20:.1f} MiB"
