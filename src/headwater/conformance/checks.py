"""The checks that run a component: ``cancellation``, ``progress``, ``timeout`` and
``resume`` for actions, ``checkpoint_ack`` for sinks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .probes import (
    STOP_GRACE,
    _closed,
    _first_error,
    _manager,
    _observe,
    _Probe,
)
from .results import CheckResult, Status

if TYPE_CHECKING:
    from ..core.components import Component

FIRST_ITEM_WAIT = 0.3
"""Seconds the cancellation check waits for a first item before cancelling anyway."""
TIMEOUT_TOTAL = 0.3
"""The ``timeouts.total`` of the timeout check, seconds."""
OBSERVE_ITEMS = 200
"""Items a progress or reference run reads at most."""
OBSERVE_SECONDS = 2.0
"""Seconds a progress or reference run lasts at most."""
RESUME_AFTER = 3
"""Items the first run of the resume check delivers before it is stopped."""


# -- the action checks --------------------------------------------------------------------


async def _check_cancellation(component: Component, params: Mapping[str, Any]) -> CheckResult:
    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "cancellation", status, detail)

    if component.shape not in ("async_gen", "sync_gen"):
        return res("n/a", f"a {component.shape} returns one chunk; nothing to cancel")
    probe = _Probe()
    result, _, took = await _observe(
        component,
        params,
        name="conformance-cancel",
        probe=probe,
        cancel_when="first",
        wait=FIRST_ITEM_WAIT,
    )
    if result is None:
        return res("fail", f"the run did not end within {STOP_GRACE:g} s of the cancel")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    if not probe.generators:
        return res("fail", "the action was never called")
    if not all(_closed(g) for g in probe.generators):
        return res("fail", "its generator was not closed: finally blocks did not run")
    if result.state == "succeeded":
        return res("pass", "the stream ended before the cancel; its generator was closed")
    after = "its first item" if probe.items else f"{FIRST_ITEM_WAIT:g} s without items"
    return res("pass", f"cancelled after {after}; closed in {took:.2f} s")


async def _check_progress(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from ..core.components import Capability

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "progress", status, detail)

    if Capability.PROGRESS not in component.capabilities:
        return res("n/a", "does not claim progress")
    probe = _Probe(stop_after=OBSERVE_ITEMS)
    result, events, _ = await _observe(
        component,
        params,
        name="conformance-progress",
        probe=probe,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
    )
    if result is not None and result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    reports = [e for e in events if getattr(e, "type", None) == "progress"]
    if not reports:
        return res("fail", f"claims progress but reported none in {len(probe.items)} items")
    return res("pass", f"{len(reports)} progress events in {len(probe.items)} items")


async def _check_timeout(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from ..core.errors import PipelineTimeout

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "timeout", status, detail)

    probe = _Probe()
    result, _, took = await _observe(
        component,
        params,
        name="conformance-timeout",
        probe=probe,
        cancel_when="never",
        wait=TIMEOUT_TOTAL,
        timeouts={"total": TIMEOUT_TOTAL},
    )
    if result is None:
        return res("fail", f"a {TIMEOUT_TOTAL:g} s timeout did not end the run within bounds")
    if result.state == "succeeded":
        return res("skip", f"the stream ended in {took:.2f} s, before the timeout")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    if not any(isinstance(e, PipelineTimeout) for e in result.errors):
        return res("fail", "the run was cancelled without PipelineTimeout")
    if took > TIMEOUT_TOTAL + STOP_GRACE:
        return res("fail", f"ended {took - TIMEOUT_TOTAL:.2f} s after its timeout")
    return res("pass", f"PipelineTimeout after {took:.2f} s (timeout {TIMEOUT_TOTAL:g} s)")


def _key(item: Any) -> str:
    try:
        return json.dumps(item, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(item)


async def _check_resume(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from ..core.components import Capability

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "resume", status, detail)

    if Capability.RESUMABLE not in component.capabilities:
        return res("n/a", "does not claim resumable")
    reference = _Probe(stop_after=OBSERVE_ITEMS + 1)
    result, _, _ = await _observe(
        component,
        params,
        name="conformance-reference",
        probe=reference,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
    )
    if result is None or result.state == "cancelled":
        return res("skip", f"the stream does not end within {OBSERVE_ITEMS} items / 2 s")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    full = reference.items
    if len(full) < 2:
        return res("skip", f"{len(full)} item(s): too few to stop a run half-way")
    stop_after = min(RESUME_AFTER, len(full) - 1)
    probe = _Probe(stop_after=stop_after)
    probe.stop_on_commit = True
    checkpoint = {"store": "memory", "every_items": 1, "every_seconds": None}
    common: dict[str, Any] = {"checkpoint": checkpoint, "batch_size": 1, "buffer": 1}
    first, _, _ = await _observe(
        component,
        params,
        name="conformance-resume",
        probe=probe,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
        **common,
    )
    if first is None or first.state == "failed":
        return res("fail", "the first run failed" + (f": {_first_error(first)}" if first else ""))
    delivered = list(probe.items)
    committed = probe.checkpoints.get("conformance-resume")
    if committed is None or not committed.positions:
        return res("fail", "claims resumable but committed no position (ctx.checkpoint)")
    probe.items.clear()
    probe.stop_after = None
    probe.stop_on_commit = False
    second, _, _ = await _observe(
        component,
        params,
        name="conformance-resume",
        probe=probe,
        cancel_when="never",
        wait=OBSERVE_SECONDS,
        resume=True,
        **common,
    )
    if second is None or second.state != "succeeded":
        why = _first_error(second) if second is not None else "it did not end"
        return res("fail", f"the resumed run did not succeed: {why}")
    resumed = list(probe.items)
    lost = Counter(map(_key, full)) - Counter(map(_key, delivered + resumed))
    if lost:
        return res("fail", f"{sum(lost.values())} item(s) lost, e.g. {next(iter(lost))}")
    if committed.items > 0 and len(resumed) >= len(full):
        return res("fail", "the resumed run started over (ctx.resume_position ignored)")
    return res(
        "pass",
        f"stopped after {len(delivered)} of {len(full)} items, resumed at "
        f"{committed.positions} with {len(resumed)}; none lost",
    )


# -- the sink check -----------------------------------------------------------------------


async def _check_checkpoint_ack(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from ..core.checkpoints import Checkpoint

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "sink", "checkpoint_ack", status, detail)

    has_commit = component.shape == "class" and hasattr(component.obj, "commit_checkpoint")
    if not has_commit:
        if component.delivery == "transactional":
            return res("fail", "declares transactional delivery but has no commit_checkpoint")
        return res("n/a", "no commit_checkpoint")
    import anyio

    from ..core.api import run

    probe = _Probe()
    manager = _manager(component, probe)
    spec = {
        "name": "conformance-ack",
        "sources": {"source": {"action": "conformance.source"}},
        "sinks": [{"sink": component.name, "params": dict(params)}],
        "checkpoint": {"store": "memory", "every_items": 1, "every_seconds": None},
    }
    with anyio.move_on_after(OBSERVE_SECONDS + STOP_GRACE):
        result = await run(spec, plugins=manager, raise_on_error=False)
        if result.state != "succeeded":
            return res("fail", f"the run failed: {_first_error(result)}")
        if not probe.commits:
            return res("fail", "commit_checkpoint was never called")
        last = probe.commits[-1]
        if not hasattr(component.obj, "load_checkpoint"):
            return res("pass", f"{len(probe.commits)} checkpoints committed")
        probe.loads.clear()
        await run(spec, plugins=manager, raise_on_error=False, resume=True)
        if not probe.loads:
            return res("fail", "load_checkpoint was not called on resume")
        held = probe.loads[-1]
        if isinstance(held, str):
            held = Checkpoint.from_json(held)
        elif isinstance(held, Mapping):
            held = Checkpoint(**held)
        if held is None:
            return res("fail", f"load_checkpoint returned None after commit {last.seq}")
        if (held.seq, held.positions) != (last.seq, last.positions):
            return res(
                "fail",
                f"load_checkpoint returned checkpoint {held.seq} {held.positions}, "
                f"the last committed is {last.seq} {last.positions}",
            )
        return res(
            "pass", f"{len(probe.commits)} commits; load_checkpoint returns the last ({last.seq})"
        )
    return res("fail", "the run did not end within bounds")
