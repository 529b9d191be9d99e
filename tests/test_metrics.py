"""The core's metrics: exact counts in snapshots, the on/off switch, the stream and scheduler
providers, grouped sources and the exporter lifecycle (``headwater.core.metrics``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import headwater
from headwater.builtin_plugins.exporters import collect_samples
from headwater.core import metrics
from headwater.core.metrics import (
    Histogram,
    create_exporter,
    metrics_registry,
    running_exporters,
    snapshot,
)
from headwater.core.scheduler import Scheduler
from headwater.core.streaming import Frame, StreamingConfig, StreamingManager


def unique(prefix: str) -> str:
    """A pipeline name no other test uses (the registry is process-wide)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def known_pipeline(name: str, n: int = 1000) -> dict[str, Any]:
    """``range(n) -> filter(bool) -> null``: the filter drops exactly the 0."""
    return {
        "name": name,
        "sources": {"numbers": {"action": "range", "params": {"stop": n, "chunk": 100}}},
        "steps": [{"transformer": "filter", "params": {"fn": "builtins:bool"}}],
        "sinks": [{"sink": "null"}],
    }


def stages_of(snap: dict[str, Any], pipeline: str) -> dict[str, dict[str, Any]]:
    return {s["stage"]: s for s in snap["stages"] if s["pipeline"] == pipeline}


def pipeline_of(snap: dict[str, Any], pipeline: str) -> dict[str, Any]:
    return next(p for p in snap["pipelines"] if p["pipeline"] == pipeline)


@pytest.fixture
def metrics_on() -> Iterator[None]:
    """Instruments on for the test, whatever HEADWATER_METRICS says; restored after."""
    previous = metrics.enabled()
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(previous)


# -- exact counts -----------------------------------------------------------------------


def test_a_known_pipeline_is_counted_exactly(metrics_on: None) -> None:
    name = unique("known")
    for _ in range(2):
        assert headwater.run_sync(known_pipeline(name)).output == 999
    snap = snapshot()
    json.dumps(snap)  # JSON-serialisable
    stages = stages_of(snap, name)
    assert set(stages) == {"sources.numbers", "steps[0].filter", "sinks.null"}
    assert stages["sources.numbers"]["items_out"] == 2000
    assert stages["steps[0].filter"]["items_in"] == 2000
    assert stages["steps[0].filter"]["items_out"] == 1998
    assert stages["sinks.null"]["items_in"] == 1998
    assert stages["sinks.null"]["items_out"] == 1998
    sink = stages["sinks.null"]
    assert sink["batches_in"] == sink["batches_out"] >= 2
    assert sink["latency"]["count"] == sink["batches_out"]
    assert sink["latency"]["buckets"][-1] == ["+Inf", sink["latency"]["count"]]
    assert sink["queue_depth"] == 0
    p = pipeline_of(snap, name)
    assert p["runs"] == {"succeeded": 2}
    assert p["running"] == 0
    assert p["time_to_first_item"]["count"] == 2


def test_errors_are_counted_by_kind(metrics_on: None) -> None:
    name = unique("errors")
    model = {
        "name": name,
        "sources": {"numbers": {"action": "range", "params": {"stop": 10}}},
        "steps": [
            {"transformer": "map", "params": {"fn": "math:log"}, "on_error": "skip"},
        ],
        "sinks": [{"sink": "null"}],
    }
    assert headwater.run_sync(model).output == 9  # log(0) raised ValueError, skipped
    stage = stages_of(snapshot(), name)["steps[0].map"]
    assert stage["errors_by_kind"] == {"ValueError": 1}
    assert stage["skipped"] == 1


def test_a_live_run_is_in_the_snapshot_while_it_runs(metrics_on: None) -> None:
    name = unique("live")
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        model = {
            "name": name,
            "sources": {"numbers": {"action": "iterable", "params": {"items": [1, 2, 3]}}},
            "sinks": [{"sink": "null"}],
        }
        async with headwater.open_run(model) as handle:
            await handle.wait()
        seen.append(snapshot())

    async def watch() -> None:
        # a run that waits: snapshot while it is running
        model = {
            "name": name,
            "sources": {"numbers": {"action": "range", "params": {"stop": 5, "chunk": 1}}},
            "steps": [{"transformer": "throttle", "params": {"rate": 20}}],
            "sinks": [{"sink": "null"}],
        }
        async with headwater.open_run(model) as handle:
            with anyio.fail_after(10):
                while pipeline_of(snapshot(), name)["running"] != 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            seen.append(snapshot())
            await handle.wait()

    anyio.run(main)
    anyio.run(watch)
    during = seen[1]
    assert pipeline_of(during, name)["running"] == 1
    after = snapshot()
    assert pipeline_of(after, name)["running"] == 0
    assert pipeline_of(after, name)["runs"] == {"succeeded": 2}
    assert stages_of(after, name)["sinks.null"]["items_in"] == 8


def test_counters_never_dip_while_runs_finish(metrics_on: None) -> None:
    import threading

    name = unique("monotonic")
    stop = threading.Event()
    seen: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            stage = stages_of(snapshot(), name).get("sinks.null")
            seen.append(stage["items_in"] if stage else 0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for _ in range(20):
            headwater.run_sync(known_pipeline(name, 200))
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert seen == sorted(seen)
    assert stages_of(snapshot(), name)["sinks.null"]["items_in"] == 20 * 199


# -- the switch -------------------------------------------------------------------------


def test_switched_off_runs_keep_their_counters_but_report_nothing() -> None:
    name = unique("off")
    previous = metrics.enabled()
    metrics.set_enabled(False)
    try:
        result = headwater.run_sync(known_pipeline(name))
    finally:
        metrics.set_enabled(previous)
    assert result.output == 999
    assert result.summary["stages"]["steps[0].filter"]["items_out"] == 999
    assert result.summary["stages"]["sinks.null"]["batches_out"] >= 1
    snap = snapshot()
    assert stages_of(snap, name) == {}
    assert all(p["pipeline"] != name for p in snap["pipelines"])


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("off", False), ("1", True)])
def test_the_environment_variable_is_read_at_import(value: str, expected: bool) -> None:
    code = "from headwater.core import metrics; print(metrics.enabled())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "HEADWATER_METRICS": value},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.strip() == str(expected)


# -- histogram ----------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_merge() -> None:
    h = Histogram()
    for value in (0.00005, 0.0003, 0.0003, 100.0):
        h.observe(value)
    data = h.to_dict()
    buckets = dict((str(le), n) for le, n in data["buckets"])
    assert buckets["0.0001"] == 1
    assert buckets["0.0005"] == 3
    assert buckets["30.0"] == 3
    assert buckets["+Inf"] == 4 == data["count"] == h.count
    assert data["sum"] == pytest.approx(100.00065)
    other = Histogram()
    other.merge(h)
    other.merge(h)
    assert other.count == 8
    assert other.sum == pytest.approx(2 * h.sum)


# -- sources and groups -----------------------------------------------------------------


def test_members_of_a_group_are_listed_and_a_broken_one_is_reported() -> None:
    registry = metrics.MetricsRegistry()
    registry.add_member("things", "b", lambda: {"n": 2})
    registry.add_member("things", "a", lambda: {"n": 1})

    def broken() -> dict[str, Any]:
        raise RuntimeError("nope")

    registry.add_member("things", "c", broken)
    registry.add_source("extra", lambda: {"x": 1})
    snap = registry.snapshot()
    assert snap["things"] == [
        {"id": "a", "n": 1},
        {"id": "b", "n": 2},
        {"id": "c", "error": "RuntimeError: nope"},
    ]
    assert snap["extra"] == {"x": 1}
    registry.remove_member("things", "c")
    registry.remove_member("things", "missing")
    registry.remove_source("extra")
    snap = registry.snapshot()
    assert [m["id"] for m in snap["things"]] == ["a", "b"]
    assert "extra" not in snap


@pytest.mark.anyio
async def test_a_scheduler_reports_while_it_is_entered(metrics_on: None) -> None:
    def entry(sid: str) -> dict[str, Any] | None:
        return next((s for s in snapshot().get("schedulers", []) if s["id"] == sid), None)

    gate = anyio.Event()
    observed: dict[str, Any] = {}

    def on_change(run: Any, old: str, new: str) -> None:
        if new == "waiting" and run.name == "queued":  # "slow" holds the only slot
            observed.update(entry(scheduler.metrics_id) or {})
            gate.set()

    scheduler = Scheduler(concurrency=1, resources={"db": 2}, on_change=on_change)
    assert entry(scheduler.metrics_id) is None
    async with scheduler:
        scheduler.submit(
            "slow",
            {
                "name": unique("sched"),
                "sources": {"n": {"action": "range", "params": {"stop": 3}}},
                "sinks": [{"sink": "null"}],
            },
            resources={"db": 1},
        )
        scheduler.submit(
            "queued",
            {
                "name": unique("sched"),
                "sources": {"n": {"action": "range", "params": {"stop": 3}}},
                "sinks": [{"sink": "null"}],
            },
        )
        with anyio.fail_after(10):
            await gate.wait()
    assert observed["running"] == 1
    assert observed["queue_depth"] == 1
    assert observed["runs_by_state"]["running"] == 1
    assert observed["runs_by_state"]["waiting"] == 1
    assert observed["resources_in_use"] == {"db": 1}
    assert observed["capacity"] == {"db": 2}
    assert observed["concurrency"] == 1
    assert entry(scheduler.metrics_id) is None  # gone once the scheduler exited


class Sink:
    """A client transport that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    async def send(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def close(self, code: str, reason: str) -> None:
        pass


@pytest.mark.anyio
async def test_streams_are_counted_and_counters_outlive_their_manager() -> None:
    registry = metrics.MetricsRegistry()  # a manager counts in its engine's registry only

    def totals() -> dict[str, int]:
        data = registry.snapshot().get("streams") or {"totals": {}}
        return dict(data["totals"])

    before = totals()
    stream_id = unique("stream")
    client = Sink()
    async with StreamingManager(
        StreamingConfig(inactivity_timeout=None), metrics=registry
    ) as manager:
        await manager.create_stream(stream_id)
        await manager.register_client(stream_id, "c1", client)
        for i in range(5):
            await manager.push(stream_id, {"i": i})
        with anyio.fail_after(10):
            # 5 updates + "subscribed"
            while manager.stats(stream_id)["messages_sent"] < 5 + 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        data = registry.snapshot()["streams"]
        mine = next(s for s in data["streams"] if s["stream"] == stream_id)
        assert mine["clients"] == 1
        assert mine["seq"] == 5
        assert mine["messages_sent"] == len(client.frames)
        assert mine["bytes_sent"] == sum(len(f) for f in client.frames)
        assert mine["subscriptions"] == 1
        during = totals()
        assert during["streams"] >= 1
        sent = during["messages_sent"] - before.get("messages_sent", 0)
        assert sent >= mine["messages_sent"]
    after = totals()
    assert all(s["stream"] != stream_id for s in registry.snapshot()["streams"]["streams"])
    # counters never go down when a manager stops
    for key in ("messages_sent", "bytes_sent", "streams_created", "subscriptions"):
        assert after[key] >= during[key], key
    assert after["streams_closed"] - before.get("streams_closed", 0) >= 1


# -- samples ------------------------------------------------------------------------------


def test_collect_samples_adds_up_duplicates_and_skips_errors() -> None:
    info = {"stream": "s", "clients": 1, "seq": 3, "messages_sent": 3, "bytes_sent": 30}
    snap = {
        "stages": [],
        "pipelines": [],
        "streams": {"totals": {"streams": 2, "messages_sent": 6}, "streams": [info, info]},
        "schedulers": [
            {"id": "1", "error": "RuntimeError: boom"},
            {"id": "2", "queue_depth": 4, "runs_by_state": {"waiting": 4}, "concurrency": 2},
        ],
    }
    samples = collect_samples(snap)
    assert samples["headwater_stream_messages_sent_total"] == {("s",): 6}
    assert samples["headwater_stream_clients"] == {("s",): 2}
    assert samples["headwater_streams_open"] == {(): 2}
    assert samples["headwater_scheduler_queue_depth"] == {("2",): 4}
    assert samples["headwater_scheduler_runs"] == {("2", "waiting"): 4}
    broken = collect_samples({"streams": {"error": "RuntimeError: x"}})
    assert broken["headwater_streams_open"] == {}


# -- exporter lifecycle -----------------------------------------------------------------


class Recorder:
    """An exporter recording its calls (sync start, async stop)."""

    calls: list[str]

    def __init__(self, name: str, calls: list[str], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def start(self) -> None:
        if self.fail:
            raise OSError("port taken")
        self.calls.append(f"start {self.name}")

    async def stop(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.calls.append(f"stop {self.name}")


@pytest.mark.anyio
async def test_running_exporters_starts_in_order_and_stops_in_reverse() -> None:
    calls: list[str] = []
    async with running_exporters([Recorder("a", calls), Recorder("b", calls)]) as started:
        assert len(started) == 2
        calls.append("body")
    assert calls == ["start a", "start b", "body", "stop b", "stop a"]

    calls.clear()
    with pytest.raises(OSError, match="port taken"):
        async with running_exporters([Recorder("a", calls), Recorder("b", calls, fail=True)]):
            calls.append("body")  # pragma: no cover - never reached
    assert calls == ["start a", "stop a"]


def test_create_exporter_validates_params() -> None:
    from pydantic import BaseModel, ValidationError

    class Params(BaseModel):
        every: float = 1.0

    @headwater.exporter("test.p", params=Params)
    class WithParams:
        def __init__(self, params: Params, snapshot_fn: Any) -> None:
            self.params, self.snapshot_fn = params, snapshot_fn

    @headwater.exporter("test.np")
    class WithoutParams:
        def __init__(self, snapshot_fn: Any) -> None:
            self.snapshot_fn = snapshot_fn

    made = create_exporter(WithParams, {"every": 2})
    assert made.params.every == 2.0
    assert made.snapshot_fn is snapshot
    assert create_exporter(WithParams).params.every == 1.0
    with pytest.raises(ValidationError):
        create_exporter(WithParams, {"every": "often"})
    mine = create_exporter(WithoutParams, None, lambda: {"x": 1})
    assert mine.snapshot_fn() == {"x": 1}
    with pytest.raises(TypeError, match="takes no params"):
        create_exporter(WithoutParams, {"a": 1})
    with pytest.raises(TypeError, match="not a metrics exporter"):
        create_exporter(headwater.sink("test.s")(lambda batch: None))


def test_registry_reset_keeps_sources() -> None:
    registry = metrics.MetricsRegistry()
    registry.add_source("s", lambda: 1)
    registry.reset()
    assert registry.snapshot()["s"] == 1
    assert metrics_registry() is metrics_registry()
