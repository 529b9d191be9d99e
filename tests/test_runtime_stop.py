"""How runs stop: timeouts that are spent, and the final checkpoint of a cancelled run.

Every async test runs on asyncio and on trio (see conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
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


class StopTestPlugin:
    """Registers the components above."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(one_then_past_deadline)


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
