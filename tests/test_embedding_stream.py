"""``engine.stream``, ``iter_sync``: a run's items in the embedder's own loop.

Every async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

import headwater
from headwater.core.embedding import TAP_BUFFER

pytestmark = pytest.mark.anyio


class Log:
    """What the test components did, in order (one per test, see the fixture)."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.produced = 0
        self.started: anyio.Event | None = None

    def add(self, entry: str) -> None:
        self.entries.append(entry)


LOG = Log()


@pytest.fixture(autouse=True)
def fresh_log() -> Log:
    global LOG
    LOG = Log()
    return LOG


class CountParams(BaseModel):
    stop: int | None = None
    """None: without end."""
    tag: str = "n"


@headwater.action("embed.count", params=CountParams)
async def count(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield 0, 1, 2, ... counting each item in ``LOG.produced``."""
    try:
        i = 0
        while params.stop is None or i < params.stop:
            LOG.produced += 1
            yield i
            i += 1
    finally:
        LOG.add(f"source finally {params.tag}")


@headwater.action("embed.silent")
async def silent(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Say it started, then yield nothing, ever."""
    try:
        if LOG.started is not None:
            LOG.started.set()
        await anyio.sleep_forever()
        yield 0  # pragma: no cover
    finally:
        LOG.add("source finally silent")


@headwater.action("embed.boom")
async def boom(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield two items, then fail."""
    yield 1
    yield 2
    raise RuntimeError("the source broke")


@headwater.transformer("embed.guard", kind="stream")
async def guard(items: AsyncIterator[Any], ctx: headwater.StreamContext) -> AsyncIterator[Any]:
    """Pass items through; say when it is cleaned up."""
    try:
        async for item in items:
            yield item
    finally:
        LOG.add("transformer finally")


class RecordParams(BaseModel):
    tag: str


@headwater.sink("embed.record", params=RecordParams)
class Record:
    """Keep the items; say when it is closed and with what."""

    def __init__(self, params: RecordParams) -> None:
        self.tag = params.tag
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    async def close(self, error: BaseException | None) -> list[Any]:
        LOG.add(f"sink close {self.tag} {type(error).__name__ if error else 'ok'}")
        return self.items


class EmbedPlugin:
    @staticmethod
    @headwater.hookimpl
    def register_actions(register: headwater.Register) -> None:
        for action in (count, silent, boom):
            register(action)

    @staticmethod
    @headwater.hookimpl
    def register_transformers(register: headwater.Register) -> None:
        register(guard)

    @staticmethod
    @headwater.hookimpl
    def register_sinks(register: headwater.Register) -> None:
        register(Record)


def make_engine() -> headwater.Engine:
    """An engine with the built-ins and the components above."""
    engine = headwater.Engine(policy=headwater.SandboxPolicy(unrestricted=True))
    assert engine.load().register(EmbedPlugin, "embedtest"), engine.plugins.failures
    return engine


def endless_pipeline() -> dict[str, Any]:
    """Two endless sources merged, a stream transformer, two recording sinks."""
    return {
        "name": "endless",
        "sources": {
            "a": {"action": "embed.count", "params": {"tag": "a"}},
            "b": {"action": "embed.count", "params": {"tag": "b"}},
        },
        "compose": {"merge": ["a", "b"]},
        "steps": [{"transformer": "embed.guard"}],
        "sinks": [
            {"sink": "embed.record", "name": "one", "params": {"tag": "one"}},
            {"sink": "embed.record", "name": "two", "params": {"tag": "two"}},
        ],
    }


CLEANUP = [
    "source finally a",
    "source finally b",
    "transformer finally",
    "sink close one PipelineCancelled",
    "sink close two PipelineCancelled",
]


def assert_cleaned_up_before(marker: str) -> None:
    """Every clean-up of :func:`endless_pipeline` is logged, all before ``marker``."""
    entries = LOG.entries
    assert marker in entries, entries
    before = entries[: entries.index(marker)]
    assert sorted(before) == sorted(CLEANUP), entries


async def drain(items: Any, then: Any = None) -> list[Any]:
    """Every item of ``items`` (a stream, entered with ``async with``), calling
    ``then(item)`` after each."""
    got = []
    async with items:
        async for item in items:
            got.append(item)
            if then is not None:
                then(item)
    return got


# -- items ---------------------------------------------------------------------------------


async def test_the_consumer_gets_the_items_and_declared_sinks_get_them_too() -> None:
    spec = (
        headwater.Pipeline("squares")
        .source("embed.count", stop=6)
        .map(lambda x: x * x)
        .sink("collect")
    )
    async with make_engine() as engine, engine.stream(spec) as items:
        got = [item async for item in items]
    assert got == [0, 1, 4, 9, 16, 25]
    assert items.result is not None
    assert items.result.state == "succeeded"
    assert items.result.outputs["collect"] == got


async def test_a_pipeline_to_stream_needs_no_sink() -> None:
    data = {"name": "bare", "sources": {"n": {"action": "embed.count", "params": {"stop": 3}}}}
    async with make_engine() as engine:
        assert [item async for item in engine.stream(data)] == [0, 1, 2]


async def test_a_bad_pipeline_is_refused_when_the_stream_is_made() -> None:
    engine = make_engine()
    data = {"name": "bad", "sources": {"n": {"action": "embed.count", "params": {"stop": "x"}}}}
    with pytest.raises(headwater.PipelineValidationError, match=r"sources\.n\.params\.stop"):
        engine.stream(data)


async def test_without_a_task_group_the_stream_says_what_to_do() -> None:
    stream = make_engine().stream({"name": "p", "sources": {"n": {"action": "embed.count"}}})
    with pytest.raises(RuntimeError, match="async with engine"):
        async for _ in stream:
            pass  # pragma: no cover


# -- leaving early -------------------------------------------------------------------------


async def test_break_then_aclose_cleans_up_everything_before_aclose_returns() -> None:
    async with make_engine() as engine:
        items = engine.stream(endless_pipeline())
        seen = 0
        async for _ in items:
            seen += 1
            if seen == 50:
                break
        assert not [e for e in LOG.entries if "finally" in e]  # nothing stopped yet
        await items.aclose()
        LOG.add("aclose returned")
        assert_cleaned_up_before("aclose returned")
        assert items.result is not None
        assert items.result.state == "cancelled"
        await items.aclose()  # idempotent


async def test_an_exception_in_the_loop_cleans_up_before_it_propagates() -> None:
    async def give_up(engine: headwater.Engine) -> None:
        async with engine.stream(endless_pipeline()) as items:
            async for item in items:
                if item == 10:
                    raise KeyError("consumer gave up")

    async with make_engine() as engine:
        with pytest.raises(KeyError):
            await give_up(engine)
        LOG.add("exception caught")
    assert_cleaned_up_before("exception caught")


async def test_cancelling_the_callers_scope_in_the_loop_cleans_up() -> None:
    async with make_engine() as engine:
        with anyio.CancelScope() as scope:
            async with engine.stream(endless_pipeline()) as items:
                async for item in items:
                    if item == 10:
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
        LOG.add("scope left")
    assert scope.cancelled_caught
    assert_cleaned_up_before("scope left")


async def test_cancelling_a_consumer_waiting_for_an_item_cleans_up() -> None:
    LOG.started = anyio.Event()
    data = {"name": "quiet", "sources": {"n": {"action": "embed.silent"}}}
    async with make_engine() as engine, anyio.create_task_group() as tg:
        stream = engine.stream(data)
        scope = anyio.CancelScope()

        async def consume() -> None:
            with scope:
                async for _ in stream:
                    pass  # pragma: no cover
            LOG.add("consumer cancelled")

        tg.start_soon(consume)
        await LOG.started.wait()
        scope.cancel()
    assert LOG.entries == ["source finally silent", "consumer cancelled"]
    assert stream.result is not None
    assert stream.result.state == "cancelled"


# -- backpressure --------------------------------------------------------------------------

SPINS = 50
"""Turns the slow consumer gives the run's tasks per item."""


async def test_the_run_is_never_more_than_its_buffers_ahead_of_the_consumer() -> None:
    batch_size, buffer = 2, 2
    capacity = batch_size * buffer
    # Items between the source and the consumer, at most: the source's channel
    # (capacity), the batch the fused map stage holds (capacity), the tap's channel
    # (a waiting put adds up to a batch: 2*capacity - 1), the batch the tap is handing
    # over, the memory channel's TAP_BUFFER batches and the consumer's current batch
    # (each taken whole from a channel: up to 2*capacity - 1), plus the item the source
    # counted but has not handed over yet.
    bound = 2 * capacity + (2 * capacity - 1) * (3 + TAP_BUFFER) + 1
    n = 10 * bound
    spec = (
        headwater.Pipeline("slow-consumer", batch_size=batch_size, buffer=buffer)
        .source("embed.count", stop=n)
        .map(lambda x: x)
    )
    consumed = 0
    leads: list[int] = []
    async with make_engine() as engine, engine.stream(spec) as items:
        async for _ in items:
            consumed += 1
            # a slow consumer: for each item, the run's tasks get many turns to run ahead
            for _ in range(SPINS):
                await anyio.lowlevel.checkpoint()
            leads.append(LOG.produced - consumed)
    assert consumed == n
    assert max(leads) <= bound, (max(leads), bound)
    assert max(leads) > 2 * capacity  # the run does work ahead, within its buffers


# -- failures and timeouts -----------------------------------------------------------------


async def test_a_failed_run_raises_the_pipeline_failed_of_its_result() -> None:
    data = {"name": "broken", "sources": {"n": {"action": "embed.boom"}}}
    async with make_engine() as engine:
        items = engine.stream(data)
        with pytest.raises(headwater.PipelineFailed) as raised:
            await drain(items)
    assert items.result is not None
    assert items.result.state == "failed"
    assert raised.value.errors == items.result.errors
    error = raised.value.errors[0]
    assert isinstance(error, headwater.StageError)
    assert error.stage == "sources.n"
    assert "the source broke" in str(raised.value)


async def test_a_timeout_raises_pipeline_timeout() -> None:
    data = {
        "name": "late",
        "sources": {"n": {"action": "embed.silent"}},
        "timeouts": {"first_item": 0.05},
    }
    async with make_engine() as engine:
        with pytest.raises(headwater.PipelineTimeout, match="first item timeout"):
            await drain(engine.stream(data))
    assert LOG.entries == ["source finally silent"]


async def test_a_slow_consumer_is_not_an_idle_run() -> None:
    data = {
        "name": "patient",
        "sources": {"n": {"action": "embed.count", "params": {"stop": 3}}},
        "timeouts": {"idle": 0.05},
        "batch_size": 1,
        "buffer": 1,
    }
    async with make_engine() as engine, engine.stream(data) as items:
        got = []
        async for item in items:
            got.append(item)
            # hold the stream far longer than the idle timeout: the run waits for us
            await anyio.sleep(0.2)
    assert got == [0, 1, 2]


async def test_a_cancel_token_cancels_a_stream() -> None:
    token = headwater.CancelToken()
    async with make_engine() as engine:
        items = engine.stream(endless_pipeline(), cancel=token)

        def enough(item: int) -> None:
            if item == 20:
                token.cancel("enough of it")

        with pytest.raises(headwater.PipelineCancelled, match="enough of it"):
            await drain(items, then=enough)
    assert sorted(LOG.entries) == sorted(CLEANUP)


# -- overrides -----------------------------------------------------------------------------


async def test_overrides_are_dotted_paths_as_for_set(tmp_path: Path) -> None:
    path = tmp_path / "count.yaml"
    path.write_text(
        "name: counted\n"
        "sources:\n"
        "  n: {action: embed.count, params: {stop: 100}}\n"
        "steps:\n"
        "  - {transformer: map, params: {fn: 'operator:neg'}}\n"
    )
    changes = {"sources.n.params.stop": 4, "steps[0].params.fn": "builtins:str"}
    async with make_engine() as engine:
        from_file = [item async for item in engine.stream(path, overrides=changes)]
        builder = headwater.Pipeline("b").source("embed.count", name="n", stop=100)
        from_builder = [
            item async for item in engine.stream(builder, overrides={"sources.n.params.stop": 2})
        ]
        model = builder.sink("collect").build()
        from_model = [
            item async for item in engine.stream(model, overrides={"sources.n.params.stop": 3})
        ]
    assert from_file == ["0", "1", "2", "3"]
    assert from_builder == [0, 1]
    assert from_model == [0, 1, 2]
    assert builder.as_dict()["sources"]["n"]["params"]["stop"] == 100  # not changed


async def test_a_bad_override_names_its_path() -> None:
    engine = make_engine()
    data = {"name": "p", "sources": {"n": {"action": "embed.count"}}}
    with pytest.raises(headwater.PipelineValidationError, match=r"steps\[3\]"):
        engine.stream(data, overrides={"steps[3].params.x": 1})
    with pytest.raises(headwater.PipelineValidationError, match=r"sources\.n\.params\.stop"):
        engine.stream(data, overrides={"sources.n.params.stop": "many"})


# -- from a thread -------------------------------------------------------------------------


def in_a_thread(work: Any) -> Any:
    """Run ``work()`` in a new thread (no event loop there); return its result."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_iter_sync_from_a_thread_without_a_loop() -> None:
    engine = make_engine()
    spec = headwater.Pipeline("sync").source("embed.count", name="n", stop=5).map(lambda x: x + 1)
    assert in_a_thread(lambda: list(spec.iter_sync(engine))) == [1, 2, 3, 4, 5]
    overridden = in_a_thread(
        lambda: list(engine.iter_sync(spec, overrides={"sources.n.params.stop": 2}))
    )
    assert overridden == [1, 2]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_closing_iter_sync_early_cleans_up_before_close_returns(backend: str) -> None:
    engine = make_engine()

    def work() -> list[Any]:
        items = engine.iter_sync(endless_pipeline(), backend=backend)  # type: ignore[arg-type]
        got = [next(items) for _ in range(30)]
        items.close()
        LOG.add("close returned")
        return got

    assert len(in_a_thread(work)) == 30
    assert_cleaned_up_before("close returned")


def test_iter_sync_raises_the_runs_failure() -> None:
    engine = make_engine()
    data = {"name": "broken", "sources": {"n": {"action": "embed.boom"}}}
    with pytest.raises(headwater.PipelineFailed, match="the source broke"):
        in_a_thread(lambda: list(engine.iter_sync(data)))


async def test_iter_sync_inside_an_event_loop_is_refused() -> None:
    engine = make_engine()
    items = engine.iter_sync({"name": "p", "sources": {"n": {"action": "embed.count"}}})
    with pytest.raises(RuntimeError, match="async for"):
        next(items)


# -- benchmark -----------------------------------------------------------------------------


def test_the_embedding_benchmark_runs(tmp_path: Path) -> None:
    """``python -m benchmarks embedding`` runs and counts the same items four ways (the
    harness aborts on a mismatch); nothing here is about speed."""
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    args = ["--json", str(out), "--n", "3000", "--rounds", "1", "--warmup", "1", "embedding"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stream vs null_sink" in proc.stdout
    data = json.loads(out.read_text())
    assert set(data["embedding"]) == {"null_sink", "stream", "stream_batches", "async_for_floor"}
    assert "if engine.stream added nothing else" in proc.stdout
