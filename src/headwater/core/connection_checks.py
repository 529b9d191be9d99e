"""Connection checks: reach each service a pipeline talks to, without moving data.

A component declares a check with ``check=`` in its decorator (see
:attr:`~headwater.core.components.Component.check`). :func:`check_pipeline` calls the
check of every source, step, sink, dead-letter sink and checkpoint store of a resolved
pipeline, each bounded by a timeout, all at once, and returns one
:class:`CheckOutcome` per stage (in pipeline order) for ``headwater validate
--check-connections`` to print.

What a check may do: open a connection, authenticate, ask the service read-only
questions (does the stream, queue, table exist; may this user write there), and close
again. It never reads, writes, acknowledges or creates anything, and never takes a
name a running worker holds (a consumer, a client id). It returns None or a short
description of what it reached; it raises :class:`CheckFailed` (shown as its message
alone) or any exception (shown as ``Type: message``) when it cannot reach it, and
:class:`CheckSkipped` when there is nothing it can check (a listening source, a URL
whose host each item fills in).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from .errors import CheckFailed, CheckSkipped, HeadwaterError
from .optional import MissingDependency

if TYPE_CHECKING:
    from .engine import Engine
    from .pipeline import ResolvedPipeline, ResolvedStage

__all__ = [
    "DEFAULT_TIMEOUT",
    "CheckFailed",
    "CheckOutcome",
    "CheckSkipped",
    "check_pipeline",
    "checked_stages",
    "describe_failure",
]

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds one component's check may take before it counts as failed."""

Outcome = Literal["ok", "failed", "skipped", "no check"]


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """The result of one stage's check."""

    stage: str
    """The stage (``sources.events``, ``sinks.postgres``, ``checkpoint``)."""
    component: str
    """The component's name."""
    outcome: Outcome
    detail: str = ""
    """What was reached (ok), what is wrong (failed), why nothing was checked."""


def describe_failure(exc: BaseException) -> str:
    """One line for a failed check: the message of headwater's own errors (and of a
    missing client library), ``Type: message`` for others; no traceback."""
    text = " ".join(str(exc).split())
    if isinstance(exc, HeadwaterError | MissingDependency) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def checked_stages(resolved: ResolvedPipeline) -> Iterator[ResolvedStage]:
    """The stages whose connections are checked, in pipeline order: every source and
    sink; the steps (also those of per-sink branches) and the dead-letter sink; the
    checkpoint store. Steps are listed only when their component has a check: most are
    computations that reach nothing."""
    yield from resolved.sources.values()
    yield from (step for step in resolved.steps if step.component.check is not None)
    for sink in resolved.sinks:
        branch = (resolved.branches or {}).get(sink.stage, [])
        yield from (step for step in branch if step.component.check is not None)
        yield sink
    if resolved.dead_letter is not None:
        yield resolved.dead_letter
    if resolved.checkpoint_store is not None:
        yield resolved.checkpoint_store


async def check_pipeline(
    engine: Engine, resolved: ResolvedPipeline, *, per_check: float = DEFAULT_TIMEOUT
) -> list[CheckOutcome]:
    """Run the check of every stage of :func:`checked_stages` concurrently, each within
    ``per_check`` seconds; the outcomes in the stages' order."""
    from .context import RunIdentity, StreamContext

    identity = RunIdentity(resolved.spec.name, "check")
    stages = list(checked_stages(resolved))
    outcomes: list[CheckOutcome | None] = [None] * len(stages)

    async def one(i: int, stage: ResolvedStage) -> None:
        ctx = StreamContext(identity, stage.stage, stage.component.plugin, services=engine.services)
        outcomes[i] = await check_stage(stage, ctx, per_check)

    async with anyio.create_task_group() as tg:
        for i, stage in enumerate(stages):
            tg.start_soon(one, i, stage)
    return [o for o in outcomes if o is not None]


async def check_stage(stage: ResolvedStage, ctx: Any, seconds: float) -> CheckOutcome:
    """Call one stage's check within ``seconds`` and say how it went."""
    component = stage.component
    check = component.check
    name = component.name

    def outcome(kind: Outcome, detail: str) -> CheckOutcome:
        return CheckOutcome(stage.stage, name, kind, detail)

    if check is None:
        return outcome("no check", f"{component.kind} {name!r} declares no connection check")
    args = (ctx,) if stage.params is None else (stage.params, ctx)
    try:
        with anyio.fail_after(seconds):
            said = await _call(check, args)
    except CheckSkipped as exc:
        return outcome("skipped", str(exc))
    except TimeoutError:
        return outcome("failed", f"no answer within {seconds:g}s (--timeout)")
    except Exception as exc:
        return outcome("failed", describe_failure(exc))
    except SystemExit as exc:  # a plugin's check calling sys.exit() ends no command
        return outcome("failed", f"the check raised SystemExit({exc.code!r})")
    return outcome("ok", " ".join(str(said).split()) if said else "")


async def _call(check: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``check(*args)``: awaited when async, in a worker thread (abandoned at the
    timeout) when sync."""
    import inspect

    from .invoke import positional_arity

    args = args[: positional_arity(check)]
    if inspect.iscoroutinefunction(check):
        return await check(*args)
    result = await _in_daemon_thread(lambda: check(*args))
    if inspect.isawaitable(result):
        return await result
    return result


async def _in_daemon_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a daemon thread of its own. A check stuck in a blocking call (a socket
    that never answers, a FIFO opened as a database) is abandoned at the timeout and
    never holds the process at exit, as a worker thread of the loop's pool would."""
    from anyio.from_thread import run_sync
    from anyio.lowlevel import current_token

    done = anyio.Event()
    token = current_token()
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed over to the awaiting task, whatever it is
            outcome.append((False, exc))
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            run_sync(done.set, token=token)

    threading.Thread(target=target, name="headwater-connection-check", daemon=True).start()
    await done.wait()
    ok, value = outcome[0]
    if ok:
        return value
    raise value
