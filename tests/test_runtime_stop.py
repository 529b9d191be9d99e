"""How runs stop: timeouts that are spent, and the final checkpoint of a cancelled run.

A checkpointed run cancelled cleanly (``handle.cancel()``, a signal to ``headwater run``)
stops its sources, lets what they produced reach the sinks, and commits a last
checkpoint: a resumed run then writes no item twice into a ``jsonl`` file. Every async
test runs on asyncio and on trio (see conftest.py); ``headwater run`` runs as a real
subprocess.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

import headwater
from headwater.core.pipeline import Timeouts
from headwater.core.plugins import PluginManager
from headwater.core.runtime.timeouts import _watchdog

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Upper bound of every wait: a correct run is orders of magnitude faster."""

DEADLINE = 0.05
"""The ``first_item`` timeout of the tests: the runs below outlive it."""


@headwater.action("stoptest.one_then_past_deadline")
async def one_then_past_deadline(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Yield one item at once, then a second one only once the run is well past
    ``DEADLINE``: the watchdog's ``first_item`` deadline has expired by then."""
    yield 1
    await anyio.sleep(4 * DEADLINE)  # the run outlives the deadline (what is tested)
    yield 2


class Gate:
    """Holds a run once ``after`` items went through ``stoptest.gate``, until released."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.reached = anyio.Event()
        self.release = anyio.Event()


gate = Gate(None)


@headwater.transformer("stoptest.gate", kind="stream")
async def gate_transformer(
    items: AsyncIterator[Any], ctx: headwater.StreamContext
) -> AsyncIterator[Any]:
    """Pass items through; once ``gate.after`` items passed, wait for ``gate.release``."""
    seen = 0
    async for item in items:
        yield item
        seen += 1
        if seen == gate.after:
            gate.reached.set()
            await gate.release.wait()


class StopTestPlugin:
    """Registers the components above."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(one_then_past_deadline)

    @staticmethod
    @headwater.hookimpl
    def register_transformers(register: Any) -> None:
        register(gate_transformer)


@pytest.fixture
def pm() -> PluginManager:
    manager = PluginManager().load()
    assert manager.register(StopTestPlugin, "stoptest-plugin"), manager.failures
    return manager


# -- timeouts ---------------------------------------------------------------------------


async def test_watchdog_returns_once_the_first_item_deadline_is_spent() -> None:
    """Only ``first_item`` set, and the first item came: nothing is left to watch."""
    timed_out: list[Any] = []
    clock = SimpleNamespace(t0=time.monotonic() - 10.0, first_item_at=0.01, last_item_at=0.0)
    run = SimpleNamespace(
        spec=SimpleNamespace(name="p", timeouts=Timeouts(first_item=1.0)),
        clock=clock,
        timed_out=lambda error, reason: timed_out.append(error),
    )
    with anyio.fail_after(WAIT):
        await _watchdog(run, anyio.CancelScope())  # type: ignore[arg-type]
    assert timed_out == []


async def test_a_run_with_only_a_first_item_timeout_outlives_its_deadline(
    pm: PluginManager,
) -> None:
    spec = (
        headwater.Pipeline("outlives")
        .source("stoptest.one_then_past_deadline")
        .sink("collect")
        .timeouts(first_item=DEADLINE)
    )
    with anyio.fail_after(WAIT):
        result = await spec.run(plugins=pm)
    assert result.state == "succeeded"
    assert result.outputs["collect"] == [1, 2]


# -- the final checkpoint of a clean cancellation -----------------------------------------

STOP = 50_000
"""Items of the checkpointed pipelines below."""


def numbers_pipeline(tmp_path: Path, *steps: dict[str, Any]) -> dict[str, Any]:
    """``range(STOP)`` into a jsonl file, checkpointed only at the end (or at a stop)."""
    return {
        "name": "numbers",
        "sources": {"n": {"action": "range", "params": {"stop": STOP, "chunk": 100}}},
        "steps": list(steps),
        "sinks": [{"sink": "jsonl", "params": {"path": str(tmp_path / "out.jsonl")}}],
        "checkpoint": {
            "params": {"path": str(tmp_path / "checkpoints.db")},
            "every_items": None,
            "every_seconds": None,
        },
    }


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_cancelled_checkpointed_run_commits_what_its_sinks_wrote(
    pm: PluginManager, tmp_path: Path
) -> None:
    global gate
    spec = numbers_pipeline(tmp_path, {"transformer": "stoptest.gate"})
    gate = Gate(after=1000)
    with anyio.fail_after(WAIT):
        async with headwater.open_run(spec, plugins=pm) as handle:
            await gate.reached.wait()
            handle.cancel()  # the source stops; what it produced goes on to the sink
            gate.release.set()
            result = await handle.wait()
    assert result.state == "cancelled"
    written = lines(tmp_path / "out.jsonl")
    assert 1000 <= len(written) < STOP
    assert written == list(range(len(written)))
    committed = result.summary["checkpoint"]
    assert committed["committed_items"] == len(written)

    gate = Gate(after=None)
    with anyio.fail_after(WAIT):
        again = await headwater.run(spec, plugins=pm, resume=True)
    assert again.summary["checkpoint"]["resumed"] is True
    assert lines(tmp_path / "out.jsonl") == list(range(STOP))  # none twice, none missing


async def test_an_immediate_cancel_commits_nothing_more(pm: PluginManager, tmp_path: Path) -> None:
    global gate
    spec = numbers_pipeline(tmp_path, {"transformer": "stoptest.gate"})
    gate = Gate(after=1000)
    with anyio.fail_after(WAIT):
        async with headwater.open_run(spec, plugins=pm) as handle:
            await gate.reached.wait()
            handle.cancel(immediate=True)
            result = await handle.wait()
    assert result.state == "cancelled"
    assert result.summary["checkpoint"]["committed_items"] == 0  # the empty start only


async def test_a_stopped_stateful_step_keeps_its_state_for_the_resume(
    pm: PluginManager, tmp_path: Path
) -> None:
    """``aggregate`` is not flushed at a stop: its state is in the final checkpoint, and
    the resumed run's total counts every item exactly once."""
    global gate
    spec = numbers_pipeline(
        tmp_path,
        {"transformer": "stoptest.gate"},
        {"transformer": "aggregate", "params": {"op": "count"}},
    )
    gate = Gate(after=1000)
    with anyio.fail_after(WAIT):
        async with headwater.open_run(spec, plugins=pm) as handle:
            await gate.reached.wait()
            handle.cancel()
            gate.release.set()
            assert (await handle.wait()).state == "cancelled"
    assert lines(tmp_path / "out.jsonl") == []  # no partial total at the stop
    gate = Gate(after=None)
    with anyio.fail_after(WAIT):
        await headwater.run(spec, plugins=pm, resume=True)
    assert lines(tmp_path / "out.jsonl") == [STOP]


# -- headwater run and SIGTERM ----------------------------------------------------------

CLI_PIPELINE = """\
name: numbers
sources:
  n: {action: range, params: {stop: 20000, chunk: 100}}
steps:
  - {transformer: throttle, params: {rate: 10000, burst: 100}}
sinks:
  - {sink: jsonl, params: {path: out.jsonl}}
  - {sink: stdout}
checkpoint:
  params: {path: checkpoints.db}
  every_items: null
  every_seconds: null
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sigterm_then_resume_writes_every_item_once(tmp_path: Path) -> None:
    (tmp_path / "numbers.yaml").write_text(CLI_PIPELINE)
    command = [sys.executable, "-m", "headwater", "run", "numbers.yaml", "--no-progress"]
    with anyio.fail_after(6 * WAIT):
        process = await anyio.open_process(command, cwd=tmp_path)
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            first = await process.stdout.receive()  # the stdout sink wrote: the run is on
            assert first
            process.send_signal(signal.SIGTERM)
            async with anyio.create_task_group() as tg:  # keep reading until the end
                tg.start_soon(drain, process.stdout)
                tg.start_soon(drain, process.stderr)
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert code == 128 + signal.SIGTERM
        stopped = lines(tmp_path / "out.jsonl")
        assert 0 < len(stopped) < 20_000, "the run should have been stopped midway"

        resumed = await anyio.run_process([*command, "--resume"], cwd=tmp_path, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert lines(tmp_path / "out.jsonl") == list(range(20_000))


async def drain(stream: Any) -> None:
    """Read ``stream`` until it ends (so that the process never blocks on a full pipe)."""
    try:
        while True:
            await stream.receive()
    except anyio.EndOfStream:
        pass
