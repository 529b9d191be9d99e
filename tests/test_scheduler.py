"""The priority scheduler: ordering, dependencies, resources, aging, cancellation, events.

Every rule is tested deterministically: runs wait on anyio Events the test sets, and
scheduling decisions are synchronous, so the start order is exact (no sleeps). Every
async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import headwater
from headwater.core.plugins import PluginManager
from headwater.core.scheduler import (
    FINAL_STATES,
    RunRejected,
    RunRequest,
    RunSkipped,
    RunStateChanged,
    ScheduledRun,
    ScheduledState,
    Scheduler,
    SchedulerError,
)

pytestmark = pytest.mark.anyio


# -- controllable test components ---------------------------------------------------------


class Gates:
    """Runs started (in order) and the events that let gated runs finish."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release_events: dict[str, anyio.Event] = {}
        self.started_events: dict[str, anyio.Event] = {}
        self.hooks: list[tuple[str, str, str | None]] = []

    def _event(self, table: dict[str, anyio.Event], key: str) -> anyio.Event:
        if key not in table:
            table[key] = anyio.Event()
        return table[key]

    def mark_started(self, key: str) -> None:
        self.started.append(key)
        self._event(self.started_events, key).set()

    async def wait_started(self, key: str) -> None:
        with anyio.fail_after(5):
            await self._event(self.started_events, key).wait()

    def release(self, key: str) -> None:
        self._event(self.release_events, key).set()

    async def wait_released(self, key: str) -> None:
        await self._event(self.release_events, key).wait()


gates = Gates()


class KeyParams(BaseModel):
    key: str
    fail: bool = False


@headwater.action("t.gate", params=KeyParams)
async def gate(params: KeyParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Record the start, wait until the test releases this key, then yield it (or fail)."""
    gates.mark_started(params.key)
    await gates.wait_released(params.key)
    if params.fail:
        raise RuntimeError(f"{params.key} was told to fail")
    yield params.key


@headwater.action("t.now", params=KeyParams)
async def now(params: KeyParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Record the start and finish at once (or fail)."""
    gates.mark_started(params.key)
    if params.fail:
        raise RuntimeError(f"{params.key} was told to fail")
    yield params.key


class TestComponents:
    """The throwaway plugin."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(gate)
        register(now)
        register(work)

    @staticmethod
    @headwater.hookimpl
    def pipeline_started(pipeline: headwater.PipelineSpec, run_id: str) -> None:
        gates.hooks.append(("started", run_id, None))

    @staticmethod
    @headwater.hookimpl
    def pipeline_finished(
        pipeline: headwater.PipelineSpec, run_id: str, state: str, summary: dict[str, Any]
    ) -> None:
        gates.hooks.append(("finished", run_id, state))


@pytest.fixture
def pm() -> PluginManager:
    global gates
    gates = Gates()
    manager = PluginManager().load()
    assert manager.register(TestComponents, "scheduler-test-plugin"), manager.failures
    return manager


def job(action: str, key: str, *, fail: bool = False, sink: str = "collect") -> dict[str, Any]:
    """A one-source pipeline in the YAML shape."""
    return {
        "name": key,
        "sources": {"s": {"action": action, "params": {"key": key, "fail": fail}}},
        "sinks": [{"sink": sink}],
    }


def gated(key: str, *, fail: bool = False) -> dict[str, Any]:
    return job("t.gate", key, fail=fail)


def instant(key: str, *, fail: bool = False) -> dict[str, Any]:
    return job("t.now", key, fail=fail)


class Recorder:
    """An ``on_change`` observer keeping every transition."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, ScheduledState | None, ScheduledState]] = []

    def __call__(self, run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        self.changes.append((run.name, old, new))

    def index(self, name: str, state: ScheduledState) -> int:
        return next(i for i, c in enumerate(self.changes) if c[0] == name and c[2] == state)


# -- ordering -----------------------------------------------------------------------------


async def test_higher_priority_starts_first(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        s.submit("block", gated("block"))
        await gates.wait_started("block")
        low = s.submit("low", instant("low"), priority=0)
        high = s.submit("high", instant("high"), priority=10)
        mid = s.submit("mid", instant("mid"), priority=5)
        assert [low.state, high.state, mid.state] == ["waiting"] * 3
        assert s.queue_depth == 3
        assert high.effective_priority == 10
        gates.release("block")
    assert gates.started == ["block", "high", "mid", "low"]
    assert all(r.state == "succeeded" for r in s.runs)


async def test_equal_priority_is_first_come_first_served(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        s.submit("block", gated("block"))
        await gates.wait_started("block")
        for name in ("a", "b", "c", "d"):
            s.submit(name, instant(name), priority=3)
        gates.release("block")
    assert gates.started == ["block", "a", "b", "c", "d"]


@pytest.mark.parametrize("aging", [None, 10])
async def test_ties_go_to_the_run_that_became_ready_first(
    pm: PluginManager, aging: int | None
) -> None:
    async with Scheduler(concurrency=2, aging=aging, plugins=pm) as s:
        s.submit("block", gated("block"))
        s.submit("dep", gated("dep"))
        early = s.submit("early", instant("early"), depends_on=["dep"])  # submitted first
        late = s.submit("late", gated("late"))  # but ready first
        await gates.wait_started("dep")
        assert (early.state, late.state) == ("pending", "waiting")
        gates.release("dep")
        await gates.wait_started("late")
        assert early.state == "waiting"
        gates.release("late")
        gates.release("block")
    assert gates.started[-2:] == ["late", "early"]


async def test_concurrency_limit(pm: PluginManager) -> None:
    rec = Recorder()
    async with Scheduler(concurrency=2, plugins=pm, on_change=rec) as s:
        runs = [s.submit(n, gated(n)) for n in ("a", "b", "c")]
        await gates.wait_started("a")
        await gates.wait_started("b")
        assert [r.state for r in runs] == ["running", "running", "waiting"]
        assert s.running == 2
        gates.release("b")
        await gates.wait_started("c")
        gates.release("a")
        gates.release("c")
    # decisions are ordered; the bodies of two runs started together may begin in any order
    assert [name for name, _, new in rec.changes if new == "running"] == ["a", "b", "c"]
    assert rec.index("b", "succeeded") < rec.index("c", "running") < rec.index("a", "succeeded")


# -- dependencies -------------------------------------------------------------------------


async def test_run_starts_only_after_its_dependencies_succeeded(pm: PluginManager) -> None:
    rec = Recorder()
    async with Scheduler(concurrency=4, plugins=pm, on_change=rec) as s:
        a = s.submit("a", gated("a"))
        b = s.submit("b", instant("b"), depends_on=["a"], priority=100)
        c = s.submit("c", instant("c"), depends_on=["a", "b"], priority=100)
        await gates.wait_started("a")
        assert (b.state, c.state) == ("pending", "pending")
        assert s.queue_depth == 0
        gates.release("a")
    assert gates.started == ["a", "b", "c"]
    assert rec.index("a", "succeeded") < rec.index("b", "waiting") < rec.index("b", "running")
    assert rec.index("b", "succeeded") < rec.index("c", "running")
    assert (a.state, b.state, c.state) == ("succeeded", "succeeded", "succeeded")


async def test_dependents_of_a_failed_run_are_skipped(pm: PluginManager) -> None:
    with anyio.fail_after(5):
        async with Scheduler(plugins=pm) as s:
            a = s.submit("a", instant("a", fail=True))
            b = s.submit("b", instant("b"), depends_on=["a"])
            c = s.submit("c", instant("c"), depends_on=["b"])
            d = s.submit("d", instant("d"))
    assert a.state == "failed"
    assert isinstance(a.error, headwater.PipelineFailed)
    assert "a was told to fail" in (a.reason or "")
    assert a.result is not None
    assert a.result.state == "failed"
    assert b.state == "skipped"
    assert b.reason == "dependency 'a' failed"
    assert isinstance(b.error, RunSkipped)
    assert c.state == "skipped"
    assert c.reason == "dependency 'b' was skipped because 'a' failed"
    assert d.state == "succeeded"
    assert "b" not in gates.started
    assert "c" not in gates.started
    assert b.result is None
    assert b.handle is None


async def test_dependents_of_a_run_cancelled_from_inside_are_skipped(pm: PluginManager) -> None:
    """A pipeline timeout ends its run ``cancelled``; what depends on it is skipped."""
    spec = {**gated("slow"), "timeouts": {"total": 0.05}}
    with anyio.fail_after(5):
        async with Scheduler(plugins=pm) as s:
            slow = s.submit("slow", spec)
            after = s.submit("after", instant("after"), depends_on=["slow"])
    assert slow.state == "cancelled"
    assert isinstance(slow.error, headwater.PipelineTimeout)
    assert after.state == "skipped"
    assert after.reason == "dependency 'slow' was cancelled"


async def test_submitting_after_a_dependency_failed_skips_at_once(pm: PluginManager) -> None:
    async with Scheduler(plugins=pm) as s:
        a = s.submit("a", instant("a", fail=True))
        assert await a.wait() == "failed"
        late = s.submit("late", instant("late"), depends_on=["a"])
        assert late.state == "skipped"
        ok = s.submit("ok", instant("ok"))
        assert await ok.wait() == "succeeded"
        after_ok = s.submit("after-ok", instant("after-ok"), depends_on=["ok"])
    assert after_ok.state == "succeeded"


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelling_a_running_run_cancels_its_dependents(pm: PluginManager) -> None:
    async with Scheduler(concurrency=4, resources={"db": 1}, plugins=pm) as s:
        a = s.submit("a", gated("a"), resources={"db": 1})
        b = s.submit("b", instant("b"), depends_on=["a"])
        c = s.submit("c", instant("c"), depends_on=["b"])
        d = s.submit("d", gated("d"))
        await gates.wait_started("a")
        await gates.wait_started("d")
        assert a.cancel("operator said stop")
        # dependents are settled at once, the running pipeline after its cleanup
        assert (b.state, c.state) == ("cancelled", "cancelled")
        assert b.reason == "dependency 'a' was cancelled"
        assert c.reason == "dependency 'b' was cancelled"
        assert await a.wait() == "cancelled"
        assert a.reason == "operator said stop"
        assert isinstance(a.error, headwater.PipelineCancelled)
        assert s.resources_in_use() == {"db": 0}
        assert d.state == "running"
        gates.release("d")
    assert d.state == "succeeded"
    assert not a.cancel()  # already finished


async def test_cancelling_a_waiting_run(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        s.submit("block", gated("block"))
        await gates.wait_started("block")
        w = s.submit("w", instant("w"))
        dep = s.submit("dep", instant("dep"), depends_on=["w"])
        assert w.state == "waiting"
        assert w.cancel()
        assert (w.state, dep.state) == ("cancelled", "cancelled")
        assert s.queue_depth == 0
        gates.release("block")
    assert gates.started == ["block"]
    assert w.result is None
    assert s.counts_by_state()["cancelled"] == 2


async def test_cancel_all(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        a = s.submit("a", gated("a"))
        b = s.submit("b", instant("b"))
        c = s.submit("c", instant("c"), depends_on=["b"])
        await gates.wait_started("a")
        assert s.cancel_all("shutting down") == 3
    assert [r.state for r in (a, b, c)] == ["cancelled"] * 3
    assert {r.reason for r in (a, b, c)} == {"shutting down"}


async def test_leaving_with_an_error_cancels_everything(pm: PluginManager) -> None:
    runs: list[ScheduledRun] = []

    async def body() -> None:
        async with Scheduler(concurrency=1, plugins=pm) as s:
            runs.append(s.submit("a", gated("a")))
            runs.append(s.submit("b", instant("b")))
            await gates.wait_started("a")
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await body()
    assert [r.state for r in runs] == ["cancelled", "cancelled"]
    assert runs[0].reason is not None
    assert "ZeroDivisionError" in runs[0].reason
    assert runs[0].result is not None
    assert runs[0].result.state == "cancelled"


async def test_outer_cancellation_cancels_every_run(pm: PluginManager) -> None:
    runs: list[ScheduledRun] = []
    with anyio.CancelScope() as scope:
        async with Scheduler(concurrency=1, plugins=pm) as s:
            runs.append(s.submit("a", gated("a")))
            runs.append(s.submit("b", instant("b")))
            await gates.wait_started("a")
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert [r.state for r in runs] == ["cancelled", "cancelled"]
    assert s.unfinished == 0


async def test_cancelled_while_joining(pm: PluginManager) -> None:
    runs: list[ScheduledRun] = []

    async def cancel_soon(scope: anyio.CancelScope) -> None:
        await gates.wait_started("a")
        scope.cancel()

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(cancel_soon, scope)
            async with Scheduler(plugins=pm) as s:
                runs.append(s.submit("a", gated("a")))
                runs.append(s.submit("b", instant("b"), depends_on=["a"]))
            # the block's exit (join) was cancelled
    assert [r.state for r in runs] == ["cancelled", "cancelled"]


# -- rejections ---------------------------------------------------------------------------


async def test_rejections_are_clear_and_atomic(pm: PluginManager) -> None:
    async with Scheduler(concurrency=2, resources={"db": 1}, plugins=pm) as s:
        s.submit("a", instant("a"))

        def rejected(**kwargs: Any) -> RunRejected:
            kwargs.setdefault("pipeline", instant("x"))
            before = len(s.runs)
            with pytest.raises(RunRejected) as info:
                s.submit(**kwargs)
            assert len(s.runs) == before, "a rejected submission left something behind"
            assert isinstance(info.value, SchedulerError)
            assert isinstance(info.value, headwater.HeadwaterError)
            return info.value

        err = rejected(name="a")
        assert str(err.issues[0]) == "a.name: a run named 'a' already exists"
        err = rejected(name="b", depends_on=["a", "nope"])
        assert str(err.issues[0]) == "b.depends_on[1]: unknown run 'nope'; known runs: a"
        err = rejected(name="b", depends_on=["b"])
        assert "dependency cycle: b -> b" in str(err)
        err = rejected(name="b", resources={"gpu": 1})
        assert (
            str(err.issues[0]) == "b.resources.gpu: unknown resource 'gpu' (the scheduler has: db)"
        )
        err = rejected(name="b", resources={"db": 2})
        assert "b.resources.db: needs 2 'db' but the scheduler has only 1" in str(err)
        err = rejected(name="b", priority="high")
        assert err.issues[0].path == "b.priority"
        err = rejected(name="b", depends_on="a")
        assert err.issues[0].path == "b.depends_on"
        err = rejected(name="b", pipeline=job("no.such.action", "b"))
        assert err.issues[0].path == "b.pipeline.sources.s.action"
        assert "no action 'no.such.action'" in err.issues[0].message
        err = rejected(
            name="b",
            pipeline={
                "name": "b",
                "sources": {"up": {"from_run": "a"}},
                "sinks": [{"sink": "collect"}],
            },
        )
        assert err.issues[0].path == "b.pipeline.sources.up.from_run"
        assert "not among this run's depends_on" in err.issues[0].message
        assert str(err).startswith("cannot submit run 'b' (1 problem):")


async def test_cycle_in_a_batch_is_rejected(pm: PluginManager) -> None:
    s = Scheduler(plugins=pm)
    with pytest.raises(RunRejected) as info:
        s.submit_many(
            [
                RunRequest("a", instant("a"), depends_on=["c"]),
                RunRequest("b", instant("b"), depends_on=["a"]),
                RunRequest("c", instant("c"), depends_on=["b"]),
                RunRequest("d", instant("d"), depends_on=["a"]),
            ]
        )
    assert [str(i) for i in info.value.issues] == [
        "a.depends_on[0]: dependency cycle: a -> c -> b -> a (each run depends on the next)"
    ]
    assert s.runs == []


async def test_batch_may_list_dependencies_in_any_order(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        runs = s.submit_many(
            [
                RunRequest("last", instant("last"), depends_on=["first", "middle"]),
                RunRequest("middle", instant("middle"), depends_on=["first"]),
                RunRequest("first", instant("first")),
            ]
        )
    assert [r.name for r in runs] == ["last", "middle", "first"]
    assert gates.started == ["first", "middle", "last"]


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(SchedulerError, match="concurrency"):
        Scheduler(concurrency=0)
    with pytest.raises(SchedulerError, match="capacity of resource 'db'"):
        Scheduler(resources={"db": 0})
    with pytest.raises(SchedulerError, match="aging"):
        Scheduler(aging=0)


async def test_submit_before_entering_and_after_closing(pm: PluginManager) -> None:
    s = Scheduler(plugins=pm)
    early = s.submit("early", instant("early"))
    assert early.state == "waiting"
    with pytest.raises(SchedulerError, match="not running"):
        await s.join()
    async with s:
        pass
    assert early.state == "succeeded"
    with pytest.raises(SchedulerError, match="closed"):
        s.submit("late", instant("late"))
    with pytest.raises(SchedulerError, match="only once"):
        async with s:
            pass


# -- resources ----------------------------------------------------------------------------


async def test_resources_are_limited_and_released_on_every_outcome(pm: PluginManager) -> None:
    async with Scheduler(concurrency=4, resources={"db": 1}, plugins=pm) as s:
        r1 = s.submit("r1", gated("r1", fail=True), resources={"db": 1})
        r2 = s.submit("r2", gated("r2"), resources={"db": 1})
        r3 = s.submit("r3", gated("r3"))
        r4 = s.submit("r4", gated("r4"), resources={"db": 1})
        await gates.wait_started("r1")
        await gates.wait_started("r3")
        assert (r1.state, r2.state, r3.state, r4.state) == (
            "running",
            "waiting",
            "running",
            "waiting",
        )
        assert s.resources_in_use() == {"db": 1}
        gates.release("r1")  # fails: the db unit goes to r2
        await gates.wait_started("r2")
        assert r1.state == "failed"
        assert s.resources_in_use() == {"db": 1}
        r2.cancel()  # cancelled: the db unit goes to r4
        await gates.wait_started("r4")
        assert r2.state == "cancelled"
        gates.release("r4")  # succeeds
        gates.release("r3")
    assert (r3.state, r4.state) == ("succeeded", "succeeded")
    assert s.resources_in_use() == {"db": 0}
    assert s.running == 0


async def test_lower_priority_never_takes_what_a_higher_one_waits_for(pm: PluginManager) -> None:
    async with Scheduler(concurrency=4, resources={"cpu": 2}, plugins=pm) as s:
        s.submit("holder", gated("holder"), resources={"cpu": 1})
        await gates.wait_started("holder")
        big = s.submit("big", gated("big"), priority=5, resources={"cpu": 2})
        small = s.submit("small", gated("small"), priority=0, resources={"cpu": 1})
        free = s.submit("free", gated("free"), priority=0)
        await gates.wait_started("free")
        # one cpu is free and `small` would fit, but `big` (higher priority) claims it
        assert (big.state, small.state, free.state) == ("waiting", "waiting", "running")
        gates.release("holder")
        await gates.wait_started("big")
        assert small.state == "waiting"
        gates.release("big")
        await gates.wait_started("small")
        gates.release("small")
        gates.release("free")
    assert gates.started == ["holder", "free", "big", "small"]


# -- aging --------------------------------------------------------------------------------


@pytest.mark.parametrize("aging", [2, None])
async def test_aging_bounds_the_wait_of_low_priority_work(
    pm: PluginManager, aging: int | None
) -> None:
    """A steady stream of priority-10 runs: each one that starts submits the next."""
    stream = 60

    def feed(run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        if new == "running" and run.name.startswith("hi-"):
            k = int(run.name[3:]) + 1
            if k < stream:
                s.submit(f"hi-{k}", instant(f"hi-{k}"), priority=10)

    s = Scheduler(concurrency=1, aging=aging, plugins=pm, on_change=feed)
    with anyio.fail_after(10):
        async with s:
            s.submit("block", gated("block"))
            await gates.wait_started("block")
            s.submit("low", instant("low"), priority=0)
            s.submit("hi-0", instant("hi-0"), priority=10)
            gates.release("block")
    position = gates.started.index("low")
    assert len(gates.started) == stream + 2
    if aging is None:
        assert position == len(gates.started) - 1, "without aging, low waits for the stream"
    else:
        # one priority point per `aging` starts: low overtakes once it has gained 10 points
        assert position <= (10 - 0) * aging + 2
        assert gates.started[position + 1 :], "the stream was still going"


# -- events, hooks, observers -------------------------------------------------------------


async def test_events_are_state_changes_plus_pipeline_events(pm: PluginManager) -> None:
    seen: list[Any] = []
    async with Scheduler(plugins=pm) as s:
        a = s.submit("a", gated("a"))

        async def consume() -> None:
            async for event in a.events():
                seen.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await gates.wait_started("a")
            gates.release("a")
    states = [(e.old, e.new) for e in seen if isinstance(e, RunStateChanged)]
    assert states == [
        (None, "pending"),
        ("pending", "waiting"),
        ("waiting", "running"),
        ("running", "succeeded"),
    ]
    kinds = [e.type for e in seen]
    assert kinds.index("status") < kinds.index("complete") < len(kinds) - 1
    assert isinstance(seen[-1], RunStateChanged)
    assert seen[-1].new == "succeeded"
    # a late subscriber gets the state history and ends
    late = [e async for e in a.events()]
    assert [e.new for e in late if isinstance(e, RunStateChanged)] == [
        "pending",
        "waiting",
        "running",
        "succeeded",
    ]


async def test_progress_is_forwarded(pm: PluginManager) -> None:
    spec = {
        "name": "counting",
        "sources": {"n": {"action": "range", "params": {"stop": 5000, "chunk": 1000}}},
        "sinks": [{"sink": "null"}],
    }
    async with Scheduler(plugins=pm) as s:
        r = s.submit("counting", spec)
        progress = [e async for e in r.events() if isinstance(e, headwater.Progress)]
    assert progress
    assert progress[-1].done == progress[-1].total == 5000
    assert r.last_progress is not None
    assert r.last_progress.done == 5000
    assert r.result is not None
    assert r.result.output == 5000


async def test_lifecycle_hooks_fire_for_every_run_that_starts(pm: PluginManager) -> None:
    async with Scheduler(concurrency=1, plugins=pm) as s:
        ok = s.submit("ok", instant("ok"))
        bad = s.submit("bad", instant("bad", fail=True))
        skipped = s.submit("skipped", instant("skipped"), depends_on=["bad"])
        s.submit("block", gated("block"))
        await gates.wait_started("block")
        never = s.submit("never", instant("never"))
        never.cancel()
        gates.release("block")
    started = [run_id for kind, run_id, _ in gates.hooks if kind == "started"]
    finished = {run_id: state for kind, run_id, state in gates.hooks if kind == "finished"}
    ran = [r for r in s.runs if r.run_id is not None]
    assert {r.name for r in ran} == {"ok", "bad", "block"}
    assert sorted(started) == sorted(r.run_id for r in ran)
    assert finished == {r.run_id: r.state for r in ran}
    assert finished[bad.run_id] == "failed"
    assert finished[ok.run_id] == "succeeded"
    assert skipped.run_id is None
    assert never.run_id is None


async def test_observers_counts_and_queue_depth(pm: PluginManager) -> None:
    rec = Recorder()
    broken_calls: list[str] = []

    def broken(run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        broken_calls.append(new)
        raise ValueError("observers may fail; the scheduler goes on")

    s = Scheduler(concurrency=1, plugins=pm)
    s.add_observer(rec)
    s.add_observer(broken)
    async with s:
        s.submit("block", gated("block"))
        await gates.wait_started("block")
        s.submit("x", instant("x"))
        s.submit("y", instant("y"), depends_on=["x"])
        counts = s.counts_by_state()
        assert (counts["running"], counts["waiting"], counts["pending"]) == (1, 1, 1)
        assert s.queue_depth == 1
        assert s.unfinished == 3
        s.remove_observer(broken)
        gates.release("block")
    assert s.counts_by_state() == {
        "pending": 0,
        "waiting": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
    }
    assert rec.changes[:3] == [
        ("block", None, "pending"),
        ("block", "pending", "waiting"),
        ("block", "waiting", "running"),
    ]
    assert broken_calls  # it was called, and its errors were contained
    finals = [c for c in rec.changes if c[2] in FINAL_STATES]
    assert sorted(c[0] for c in finals) == ["block", "x", "y"]


# -- data flow ----------------------------------------------------------------------------


async def test_from_run_feeds_the_upstream_output(pm: PluginManager) -> None:
    async with Scheduler(plugins=pm) as s:
        s.submit(
            "numbers",
            {
                "name": "numbers",
                "sources": {"n": {"action": "range", "params": {"stop": 5}}},
                "sinks": [{"sink": "collect"}, {"sink": "null"}],
            },
        )
        squares = s.submit(
            "squares",
            {
                "name": "squares",
                "sources": {"up": {"from_run": "numbers"}},
                "steps": [{"transformer": "map", "params": {"fn": "operator:neg"}}],
                "sinks": [{"sink": "collect"}],
            },
            depends_on=["numbers"],
        )
        counted = s.submit(
            "counted",
            {
                "name": "counted",
                "sources": {"up": {"from_run": "squares"}, "more": {"from_run": "numbers"}},
                "compose": {"concat": ["up", "more"]},
                "sinks": [{"sink": "collect"}],
            },
            depends_on=["squares", "numbers"],
        )
    assert squares.result is not None
    assert squares.result.output == [0, -1, -2, -3, -4]
    assert counted.result is not None
    assert counted.result.output == [0, -1, -2, -3, -4, 0, 1, 2, 3, 4]


async def test_from_run_needs_a_list_output(pm: PluginManager) -> None:
    async with Scheduler(plugins=pm) as s:
        s.submit("count", job("t.now", "count", sink="null"))
        reader = s.submit(
            "reader",
            {"name": "r", "sources": {"up": {"from_run": "count"}}, "sinks": [{"sink": "collect"}]},
            depends_on=["count"],
        )
    assert reader.state == "failed"
    assert "first sink of 'count' returned int, not a list" in (reader.reason or "")
    with pytest.raises(SchedulerError):
        reader.raise_for_state()


# -- property: random DAGs ----------------------------------------------------------------


class WorkParams(BaseModel):
    key: str
    needs: dict[str, int] = {}
    fail: bool = False
    spins: int = 0


class Ledger:
    """What the work components saw while running: live counts and violations."""

    def __init__(self, scheduler: Scheduler, deps: dict[str, list[str]]) -> None:
        self.scheduler = scheduler
        self.deps = deps
        self.live: dict[str, int] = dict.fromkeys(scheduler.capacity, 0)
        self.running = 0
        self.problems: list[str] = []

    def enter(self, key: str, needs: dict[str, int]) -> None:
        self.running += 1
        if self.running > self.scheduler.concurrency:
            self.problems.append(f"{key}: {self.running} runs at once")
        for res, n in needs.items():
            self.live[res] += n
            if self.live[res] > self.scheduler.capacity[res]:
                self.problems.append(f"{key}: {self.live[res]} {res} in use")
        for dep in self.deps[key]:
            if self.scheduler[dep].state != "succeeded":
                self.problems.append(f"{key} started while {dep} was {self.scheduler[dep].state}")

    def leave(self, needs: dict[str, int]) -> None:
        self.running -= 1
        for res, n in needs.items():
            self.live[res] -= n


ledger: Ledger | None = None


@headwater.action("t.work", params=WorkParams)
async def work(params: WorkParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Hold the run's resources for a few checkpoints while checking the invariants."""
    assert ledger is not None
    ledger.enter(params.key, params.needs)
    try:
        for _ in range(params.spins):
            await anyio.lowlevel.checkpoint()
    finally:
        ledger.leave(params.needs)
    if params.fail:
        raise RuntimeError("planned failure")
    yield params.key


_property_pm: PluginManager | None = None


def property_pm() -> PluginManager:
    global _property_pm
    if _property_pm is None:
        _property_pm = PluginManager().load()
        assert _property_pm.register(TestComponents, "scheduler-test-plugin")
    return _property_pm


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    capacity = {"cpu": draw(st.integers(1, 3)), "db": 1}
    n = draw(st.integers(1, 15))
    runs = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        runs.append(
            {
                "name": f"r{i}",
                "deps": [f"r{d}" for d in deps],
                "priority": draw(st.integers(-3, 3)),
                "fail": draw(st.integers(0, 5)) == 0,
                "spins": draw(st.integers(0, 3)),
                "needs": {
                    res: draw(st.integers(0, cap))
                    for res, cap in capacity.items()
                    if draw(st.booleans())
                },
            }
        )
    order = draw(st.permutations(list(range(n))))
    return {
        "concurrency": draw(st.integers(1, 4)),
        "capacity": capacity,
        "aging": draw(st.sampled_from([None, 1, 3])),
        "runs": runs,
        "order": order,
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans())
async def test_random_dags_keep_every_invariant(plan: dict[str, Any]) -> None:
    global ledger
    pm = property_pm()
    runs = plan["runs"]
    deps = {r["name"]: r["deps"] for r in runs}
    changes: dict[str, list[ScheduledState]] = {r["name"]: [] for r in runs}
    problems: list[str] = []

    def check(run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        changes[run.name].append(new)
        if s.running > s.concurrency:
            problems.append(f"{s.running} running")
        if any(s.resources_in_use()[k] > cap for k, cap in s.capacity.items()):
            problems.append(f"over capacity: {s.resources_in_use()}")
        if new == "running" and any(s[d].state != "succeeded" for d in deps[run.name]):
            problems.append(f"{run.name} started before its dependencies succeeded")

    s = Scheduler(
        concurrency=plan["concurrency"],
        resources=plan["capacity"],
        aging=plan["aging"],
        plugins=pm,
        on_change=check,
    )
    ledger = Ledger(s, deps)
    requests = [
        RunRequest(
            r["name"],
            {
                "name": r["name"],
                "sources": {
                    "w": {
                        "action": "t.work",
                        "params": {
                            "key": r["name"],
                            "needs": r["needs"],
                            "fail": r["fail"],
                            "spins": r["spins"],
                        },
                    }
                },
                "sinks": [{"sink": "null"}],
            },
            priority=r["priority"],
            depends_on=r["deps"],
            resources=r["needs"],
        )
        for r in (runs[i] for i in plan["order"])
    ]
    with anyio.fail_after(10):
        async with s:
            s.submit_many(requests)
    # every run ends in exactly one final state: the one its dependencies dictate
    expected: dict[str, str] = {}
    for r in runs:  # runs only depend on earlier runs
        if any(expected[d] != "succeeded" for d in r["deps"]):
            expected[r["name"]] = "skipped"
        else:
            expected[r["name"]] = "failed" if r["fail"] else "succeeded"
    assert {r.name: r.state for r in s.runs} == expected
    for name, seen in changes.items():
        assert sum(state in FINAL_STATES for state in seen) == 1, (name, seen)
        assert seen[-1] in FINAL_STATES
    assert problems == []
    assert ledger.problems == []
    assert s.resources_in_use() == dict.fromkeys(plan["capacity"], 0)
    assert s.running == 0
    assert s.unfinished == 0
