"""``engine.stream_action``, ``CancelToken`` and action fallbacks.

Every async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

import headwater
from headwater.core.policy import policy_of, within_roots

pytestmark = pytest.mark.anyio


class State:
    """What the test actions did (one per test, see the fixture)."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.first_chunk: anyio.Event | None = None
        self.received: anyio.Event | None = None


STATE = State()


@pytest.fixture(autouse=True)
def fresh_state() -> State:
    global STATE
    STATE = State()
    return STATE


class CountParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stop: int


@headwater.action("act.count", params=CountParams, capabilities=("progress",))
async def count(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield ``stop`` chunks, reporting progress after each."""
    for i in range(params.stop):
        yield i
        ctx.progress(done=i + 1, total=params.stop)


@headwater.action("act.hang")
async def hang(ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Yield one chunk, then wait for ever (until cancelled)."""
    try:
        yield "first"
        if STATE.first_chunk is not None:
            STATE.first_chunk.set()
        await anyio.sleep_forever()
    finally:
        STATE.log.append("hang finally")


@headwater.action("act.silent")
async def silent(ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Never yield anything."""
    await anyio.sleep_forever()
    yield "never"  # pragma: no cover


@headwater.action("act.answer")
async def answer(ctx: headwater.StreamContext) -> dict[str, int]:
    """A coroutine: its value is one chunk."""
    await anyio.lowlevel.checkpoint()
    return {"answer": 42}


@headwater.action("act.hello", params=CountParams)
def hello(params: CountParams) -> str:
    """A plain function: its value is one chunk."""
    return "hello " * params.stop


class RootParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str

    @field_validator("root")
    @classmethod
    def _inside(cls, value: str, info: ValidationInfo) -> str:
        policy = policy_of(info.context)
        if policy is None:
            raise ValueError("validated without the engine's policy")
        if not within_roots(Path(value).resolve(), policy.roots):
            raise ValueError(f"{value} is outside the allowed roots")
        return value


@headwater.action("act.list", params=RootParams)
async def list_root(params: RootParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Yield the names in ``root``."""
    for name in sorted(await anyio.to_thread.run_sync(lambda: Path(params.root).iterdir())):
        yield name.name


# -- fallbacks -----------------------------------------------------------------------------


@headwater.action("act.backup", params=CountParams)
async def backup(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """The fallback: ``stop`` chunks tagged as such."""
    for i in range(params.stop):
        yield f"backup {i}"


@headwater.action("act.flaky", params=CountParams, fallback="act.backup")
async def flaky(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Fail before the first chunk."""
    try:
        raise ConnectionError("upstream is down")
        yield "never"  # pragma: no cover
    finally:
        STATE.log.append("flaky finally")


@headwater.action("act.late", params=CountParams, fallback="act.backup")
async def late(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Fail after the first chunk (once the consumer has it)."""
    yield "late 0"
    if STATE.received is not None:
        await STATE.received.wait()
    raise ConnectionError("lost the connection")


@headwater.action("act.flaky_coro", params=CountParams, fallback="act.backup")
async def flaky_coro(params: CountParams, ctx: headwater.StreamContext) -> str:
    """A coroutine that fails: nothing was sent, so the fallback runs."""
    raise TimeoutError("no answer")


@headwater.action("act.flaky_sync", params=CountParams, fallback="act.backup")
def flaky_sync(params: CountParams, ctx: headwater.StreamContext) -> Iterator[str]:
    """A sync generator (in a worker thread) that fails before its first chunk."""
    raise OSError("no such device")
    yield "never"  # pragma: no cover


@headwater.action("act.orphan", params=CountParams, fallback="act.not_installed")
async def orphan(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Declares a fallback nobody registered: it runs without one."""
    raise ConnectionError("down, and nothing to fall back to")
    yield "never"  # pragma: no cover


@headwater.action("primary.fetch", params=CountParams)
async def fetch(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """The action of a plugin the tests disable."""
    yield "primary"  # pragma: no cover


class ActPlugin:
    @staticmethod
    @headwater.hookimpl
    def register_actions(register: headwater.Register) -> None:
        for action in (count, hang, silent, answer, hello, list_root, backup, flaky, late):
            register(action)
        for action in (flaky_coro, flaky_sync, orphan):
            register(action)


class PrimaryPlugin:
    @staticmethod
    @headwater.hookimpl
    def register_actions(register: headwater.Register) -> None:
        register(fetch)


def make_engine(
    policy: headwater.SandboxPolicy | None = None, disable: tuple[str, ...] = ()
) -> headwater.Engine:
    """An engine with the built-ins and the actions above (``disable``: plugin names)."""
    engine = headwater.Engine(
        policy=policy or headwater.SandboxPolicy(unrestricted=True), disable=disable
    )
    manager = engine.load()
    assert manager.register(ActPlugin, "acttest"), manager.failures
    registered = manager.register(PrimaryPlugin, "actprimary")
    assert registered is ("actprimary" not in disable)
    return engine


async def chunks(stream: Any) -> list[Any]:
    """Every chunk of ``stream``, entered with ``async with``."""
    async with stream:
        return [chunk async for chunk in stream]


# -- chunks and params ---------------------------------------------------------------------


async def test_the_chunks_of_an_action() -> None:
    async with make_engine() as engine:
        stream = engine.stream_action("act.count", stop=4)
        assert await chunks(stream) == [0, 1, 2, 3]
    assert stream.result is not None
    assert stream.result.state == "succeeded"


async def test_non_streaming_actions_are_one_chunk_streams() -> None:
    async with make_engine() as engine:
        assert await chunks(engine.stream_action("act.answer")) == [{"answer": 42}]
        assert await chunks(engine.stream_action("act.hello", stop=2)) == ["hello hello "]
        result = await engine.run(
            headwater.Pipeline("once").source("act.answer").sink("collect").build()
        )
    assert result.output == [{"answer": 42}]


async def test_bad_params_are_named() -> None:
    engine = make_engine()
    with pytest.raises(headwater.PipelineValidationError) as raised:
        engine.stream_action("act.count", stop="many", extra=1)
    paths = sorted(issue.path for issue in raised.value.issues)
    assert paths == ["extra", "stop"]
    assert str(raised.value).startswith("invalid params for action act.count (2 problems):")
    with pytest.raises(headwater.PipelineValidationError, match=r"stop: required key is missing"):
        engine.stream_action("act.count")


async def test_an_unknown_action_is_not_found() -> None:
    with pytest.raises(headwater.ComponentNotFound, match=r"did you mean 'act\.count'"):
        make_engine().stream_action("act.cuont", stop=1)


async def test_params_are_validated_with_the_engines_policy(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    engine = make_engine(policy=headwater.SandboxPolicy(roots=(tmp_path,)))
    with pytest.raises(headwater.PipelineValidationError, match=r"root: .* outside the allowed"):
        engine.stream_action("act.list", root=str(tmp_path.parent))
    async with engine:
        assert await chunks(engine.stream_action("act.list", root=str(tmp_path))) == ["a.txt"]


# -- progress and events -------------------------------------------------------------------


async def test_progress_reaches_a_sync_callback() -> None:
    seen: list[headwater.Progress] = []
    async with make_engine() as engine:
        stream = engine.stream_action("act.count", stop=50, on_progress=seen.append)
        assert len(await chunks(stream)) == 50
    assert seen, "no progress delivered"
    assert all(p.stage == "sources.action" and p.total == 50 for p in seen)
    assert seen[-1].done == 50  # progress coalesces, the latest value always arrives
    assert [p.done for p in seen] == sorted(p.done for p in seen)


async def test_progress_reaches_an_async_callback_and_events_too() -> None:
    progress: list[float] = []
    events: list[str] = []

    async def on_progress(event: headwater.Progress) -> None:
        await anyio.lowlevel.checkpoint()
        progress.append(event.done)

    async with make_engine() as engine:
        stream = engine.stream_action(
            "act.count", stop=5, on_progress=on_progress, on_event=lambda e: events.append(e.type)
        )
        assert await chunks(stream) == [0, 1, 2, 3, 4]
    assert progress[-1] == 5
    assert events[0] == "status"
    assert events[-1] == "complete"
    assert "progress" in events


async def test_a_callback_that_raises_does_not_break_the_stream() -> None:
    def broken(event: headwater.Progress) -> None:
        raise ValueError("a bug in the callback")

    async with make_engine() as engine:
        stream = engine.stream_action("act.count", stop=3, on_progress=broken)
        assert await chunks(stream) == [0, 1, 2]


# -- cancellation --------------------------------------------------------------------------


async def test_a_cancel_token_from_another_task_ends_the_stream() -> None:
    token = headwater.CancelToken()
    STATE.first_chunk = anyio.Event()
    got: list[str] = []
    failure: list[BaseException] = []

    async def consume(engine: headwater.Engine) -> None:
        try:
            async for chunk in engine.stream_action("act.hang", cancel=token):
                got.append(chunk)
        except headwater.PipelineCancelled as exc:
            STATE.log.append("consumer saw the cancellation")
            failure.append(exc)

    async with make_engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(consume, engine)
        await STATE.first_chunk.wait()
        token.cancel("the user pressed stop")
    assert got == ["first"]
    assert STATE.log == ["hang finally", "consumer saw the cancellation"]
    assert "the user pressed stop" in str(failure[0])


async def test_a_cancel_token_from_another_thread_ends_the_stream() -> None:
    token = headwater.CancelToken()
    STATE.first_chunk = anyio.Event()

    async def cancel_from_a_thread() -> None:
        await STATE.first_chunk.wait()
        await anyio.to_thread.run_sync(token.cancel, "from a thread")

    async def consume(engine: headwater.Engine) -> None:
        await chunks(engine.stream_action("act.hang", cancel=token))

    async with make_engine() as engine, anyio.create_task_group() as tg:
        tg.start_soon(cancel_from_a_thread)
        with pytest.raises(headwater.PipelineCancelled, match="from a thread"):
            await consume(engine)
    assert STATE.log == ["hang finally"]


async def test_a_token_cancelled_before_the_start_cancels_at_once() -> None:
    token = headwater.CancelToken()
    token.cancel()
    async with make_engine() as engine:
        with pytest.raises(headwater.PipelineCancelled, match="CancelToken"):
            await chunks(engine.stream_action("act.hang", cancel=token))


async def test_a_cancelled_scope_ends_the_stream_quietly() -> None:
    STATE.first_chunk = anyio.Event()
    async with make_engine() as engine, anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def consume() -> None:
            with scope:
                await chunks(engine.stream_action("act.hang"))
            STATE.log.append("scope left")

        tg.start_soon(consume)
        await STATE.first_chunk.wait()
        scope.cancel()
    assert STATE.log == ["hang finally", "scope left"]


async def test_cancel_token_basics() -> None:
    token = headwater.CancelToken()
    assert not token.cancelled
    assert token.reason is None
    assert repr(token) == "<CancelToken>"
    woken = anyio.Event()

    async def waiter() -> None:
        await token.wait()
        woken.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woken.is_set()
        token.cancel("first")
        token.cancel("second")
    assert woken.is_set()
    assert token.cancelled
    assert token.reason == "first"
    assert repr(token) == "<CancelToken cancelled reason='first'>"
    await token.wait()  # returns at once


def test_cancel_token_wakes_waiters_on_two_loops_from_a_third_thread() -> None:
    token = headwater.CancelToken()
    ready = threading.Barrier(3)
    done: list[str] = []

    def wait_on(backend: str) -> None:
        async def main() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(token.wait)
                await anyio.wait_all_tasks_blocked()
                await anyio.to_thread.run_sync(ready.wait)
            done.append(backend)

        anyio.run(main, backend=backend)

    threads = [threading.Thread(target=wait_on, args=(b,)) for b in ("asyncio", "trio")]
    for thread in threads:
        thread.start()
    ready.wait()
    token.cancel("both")
    for thread in threads:
        thread.join(30)
    assert sorted(done) == ["asyncio", "trio"]


# -- timeouts ------------------------------------------------------------------------------


async def test_timeouts_apply_as_in_pipelines() -> None:
    async with make_engine() as engine:
        with pytest.raises(headwater.PipelineTimeout, match=r"first item timeout of 0\.05s"):
            await chunks(engine.stream_action("act.silent", timeouts={"first_item": 0.05}))
        STATE.first_chunk = anyio.Event()
        idle = headwater.Timeouts(idle=0.05)
        with pytest.raises(headwater.PipelineTimeout, match="idle timeout"):
            await chunks(engine.stream_action("act.hang", timeouts=idle))
    assert STATE.log == ["hang finally"]


async def test_bad_timeouts_are_named() -> None:
    with pytest.raises(headwater.PipelineValidationError, match=r"timeouts\.total"):
        make_engine().stream_action("act.count", stop=1, timeouts={"total": -1})


# -- fallbacks -----------------------------------------------------------------------------


async def test_failing_before_the_first_chunk_runs_the_fallback() -> None:
    events: list[Any] = []
    async with make_engine() as engine:
        stream = engine.stream_action("act.flaky", stop=2, on_event=events.append)
        assert await chunks(stream) == ["backup 0", "backup 1"]
    assert STATE.log == ["flaky finally"]
    assert stream.result is not None
    assert stream.result.state == "succeeded"
    assert stream.result.fallbacks == {
        "sources.action": {
            "action": "act.flaky",
            "fallback": "act.backup",
            "reason": "ConnectionError: upstream is down",
        }
    }
    status = [e for e in events if isinstance(e, headwater.Status) and e.state == "fallback"]
    assert len(status) == 1
    assert "running fallback 'act.backup'" in (status[0].message or "")
    handled = [e for e in events if isinstance(e, headwater.ErrorEvent)]
    assert [(e.handled, e.error["error"]) for e in handled] == [(True, "ConnectionError")]


@pytest.mark.parametrize("action", ["act.flaky_coro", "act.flaky_sync"])
async def test_non_generator_and_sync_actions_fall_back_too(action: str) -> None:
    async with make_engine() as engine:
        stream = engine.stream_action(action, stop=1)
        assert await chunks(stream) == ["backup 0"]
    assert stream.result is not None
    assert stream.result.fallbacks["sources.action"]["action"] == action


async def test_no_fallback_once_a_chunk_was_sent() -> None:
    got: list[str] = []
    STATE.received = anyio.Event()
    async with make_engine() as engine:
        stream = engine.stream_action("act.late", stop=2)

        async def collect() -> None:
            async with stream:
                async for chunk in stream:
                    got.append(chunk)
                    STATE.received.set()

        with pytest.raises(headwater.PipelineFailed, match="lost the connection"):
            await collect()
    assert got == ["late 0"]
    assert stream.result is not None
    assert stream.result.fallbacks == {}


async def test_a_declared_fallback_that_is_not_installed_is_left_out() -> None:
    async with make_engine() as engine:
        with pytest.raises(headwater.PipelineFailed, match="nothing to fall back to"):
            await chunks(engine.stream_action("act.orphan", stop=1))


async def test_a_disabled_plugins_action_runs_the_pipelines_fallback() -> None:
    spec = {
        "name": "fetch",
        "sources": {
            "n": {"action": "primary.fetch", "fallback": "act.backup", "params": {"stop": 2}}
        },
        "sinks": [{"sink": "collect"}],
    }
    events: list[Any] = []
    async with make_engine(disable=("actprimary",)) as engine:
        stream = engine.stream(spec, on_event=events.append)
        assert await chunks(stream) == ["backup 0", "backup 1"]
        result = await engine.run(spec)
    assert result.output == ["backup 0", "backup 1"]
    for done in (stream.result, result):
        assert done is not None
        info = done.fallbacks["sources.n"]
        assert (info["action"], info["fallback"]) == ("primary.fetch", "act.backup")
        assert "no action 'primary.fetch'" in info["reason"]
    assert any(isinstance(e, headwater.Status) and e.state == "fallback" for e in events)


async def test_the_pipelines_fallback_wins_over_the_actions_own() -> None:
    spec = (
        headwater.Pipeline("chosen")
        .source("act.flaky", name="n", fallback="act.count", stop=3)
        .sink("collect")
    )
    async with make_engine() as engine:
        result = await engine.run(spec)
    assert result.output == [0, 1, 2]
    assert result.fallbacks["sources.n"]["fallback"] == "act.count"


def test_a_pipelines_fallback_is_validated() -> None:
    engine = make_engine(disable=("actprimary",))

    def issues(source: dict[str, Any]) -> list[str]:
        spec = {"name": "p", "sources": {"n": source}, "sinks": [{"sink": "collect"}]}
        with pytest.raises(headwater.PipelineValidationError) as raised:
            engine.prepare(spec)
        return [str(issue) for issue in raised.value.issues]

    missing = issues({"action": "act.count", "fallback": "act.nope", "params": {"stop": 1}})
    assert len(missing) == 1
    assert missing[0].startswith("sources.n.fallback: no action 'act.nope'")
    both = issues({"action": "primary.fetch", "fallback": "act.nope", "params": {"stop": 1}})
    assert [line.split(":")[0] for line in both] == ["sources.n.action", "sources.n.fallback"]
    assert issues({"action": "act.count", "fallback": "act.list", "params": {"stop": 1}}) == [
        "sources.n.params.root: required key is missing (fallback 'act.list')",
        "sources.n.params.stop: unknown key (fallback 'act.list')",
    ]


def test_a_checkpointed_pipeline_falls_back_only_to_a_resumable_action(tmp_path: Path) -> None:
    engine = make_engine()
    spec = {
        "name": "p",
        "sources": {"n": {"action": "range", "fallback": "act.count", "params": {"stop": 1}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"params": {"path": str(tmp_path / "ckpt.db")}},
    }
    with pytest.raises(headwater.PipelineValidationError, match=r"sources\.n\.fallback: .*"):
        engine.prepare(spec)


def test_the_fallback_is_in_the_components_metadata() -> None:
    manager = make_engine().plugins
    assert manager.get("action", "act.flaky").metadata()["fallback"] == "act.backup"
    assert "fallback" not in manager.get("action", "act.count").metadata()
    with pytest.raises(ValueError, match="its own fallback"):
        headwater.action("x.y", fallback="x.y")
