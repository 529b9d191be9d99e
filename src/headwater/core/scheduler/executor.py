"""The async half of :class:`Scheduler`: a task group in which the scheduled runs execute.

The decisions (what starts when, how the end of a run settles its dependents) are
synchronous and live in :class:`~.core.SchedulerCore`; this class launches each started
run as a task of its task group, relays the pipeline's events and reports how it ended.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ..errors import HeadwaterError, PipelineCancelled
from ..plugins import PluginManager
from ..runtime import RunHandle
from .core import SchedulerCore
from .model import (
    DEFAULT_AGING,
    ChangeObserver,
    RunCreator,
    ScheduledRun,
    ScheduledState,
    SchedulerError,
)
from .pipelines import resolve_run

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["Scheduler"]

_METRICS_IDS = itertools.count(1)
"""Ids of schedulers in metrics snapshots (the ``scheduler`` label): 1, 2, ..."""


class Scheduler(SchedulerCore):
    """Runs many pipelines by priority, with dependencies, resource slots and aging.

    Use it as ``async with Scheduler(...) as scheduler:``; runs execute in the
    scheduler's task group. Leaving the block normally waits for every run (like a task
    group); leaving it with an exception, or being cancelled, cancels every unfinished
    run and waits for their cleanup. Runs may be submitted before entering the block;
    they start on entry. A scheduler is not thread-safe: use it from its event loop's
    thread.

    Args:
        concurrency: How many runs may be running at once.
        resources: Named resource capacities, e.g. ``{"cpu": 2, "db": 1}``.
        aging: A waiting run gains one priority point per ``aging`` runs started while it
            waits (None disables aging).
        engine: The :class:`~headwater.Engine` that validates and runs the pipelines and
            whose metrics list the scheduler (default: the default engine, or one built
            around ``plugins``).
        plugins: For compatibility: a plugin manager to validate and run pipelines with.
        on_change: An observer called as ``on_change(run, old_state, new_state)`` on
            every state change (more with :meth:`add_observer`). Observers run
            synchronously inside scheduling decisions: keep them quick.
        create_run: Creates the handle of each run that starts (see
            :data:`~headwater.core.scheduler.RunCreator`; default: the engine's
            ``create_run``). ``headwater run JOBS.yaml --history`` records the jobs so.
    """

    def __init__(
        self,
        concurrency: int = 4,
        resources: Mapping[str, int] | None = None,
        *,
        aging: int | None = DEFAULT_AGING,
        engine: Engine | None = None,
        plugins: PluginManager | None = None,
        on_change: ChangeObserver | None = None,
        create_run: RunCreator | None = None,
    ) -> None:
        from ..api import engine_for

        self.engine = engine_for(engine, plugins)
        """The engine the scheduler runs its pipelines on."""
        super().__init__(
            concurrency, resources, aging=aging, plugins=self.engine.plugins, on_change=on_change
        )
        self._create_run = create_run
        self._tg: TaskGroup | None = None
        self._entered = False
        self._idle: anyio.Event | None = None
        self.metrics_id = str(next(_METRICS_IDS))
        """This scheduler's id in metrics snapshots (reported while it is entered)."""

    # -- context manager ------------------------------------------------------------------

    async def __aenter__(self) -> Scheduler:
        if self._entered:
            raise SchedulerError("a Scheduler can be entered only once")
        self._entered = True
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._launch = self._launch_in_task_group
        self.engine.metrics.add_member("schedulers", self.metrics_id, self.metrics)
        self._dispatch()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "__aexit__ without __aenter__"
        caught: BaseException | None = None
        if exc is None:
            try:
                await self.join()
            except BaseException as error:  # cancelled while joining: clean up, re-raise
                caught = error
                exc_type, exc, tb = type(error), error, error.__traceback__
        if exc is not None:
            self._shutdown(f"scheduler closed ({type(exc).__name__})")
        self._closed = True
        unwrap = False
        try:
            suppress = await tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # the task group wraps the body's own exception: hand it back as it was
            if exc is None or len(group.exceptions) != 1 or group.exceptions[0] is not exc:
                raise
            unwrap = True
        finally:
            self._tg = None
            self._launch = None
            # A task cancelled before it ever ran (asyncio) never settled its run.
            for run in self._runs.values():
                if not run.done:
                    why = run._cancel_reason or "scheduler closed"
                    self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why))
            self.engine.metrics.remove_member("schedulers", self.metrics_id)
        if unwrap:
            assert exc is not None
            raise exc
        if caught is not None and not suppress:
            raise caught
        return suppress

    # -- waiting --------------------------------------------------------------------------

    async def join(self) -> None:
        """Wait until every submitted run (including ones submitted meanwhile) is final."""
        if self._unfinished and self._tg is None:
            raise SchedulerError(
                "the scheduler is not running; use `async with Scheduler(...)` to run it"
            )
        while self._unfinished:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def _on_idle(self) -> None:
        if self._idle is not None:
            self._idle.set()
            self._idle = None

    # -- running --------------------------------------------------------------------------

    def _launch_in_task_group(self, run: ScheduledRun) -> None:
        assert self._tg is not None
        self._tg.start_soon(self._execute, run, name=f"headwater scheduled run {run.name}")

    async def _execute(self, run: ScheduledRun) -> None:
        """The task of one running run: start the pipeline, forward its events, settle."""
        if run._cancel_reason is not None:  # cancelled between the decision and now
            why = run._cancel_reason
            self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why))
            return
        handle: RunHandle | None = None
        try:
            resolved, pm = resolve_run(run, self._runs, self.plugins)
            if self._create_run is not None:
                handle = await self._create_run(run, resolved, pm)
            else:
                handle = self.engine.create_run(resolved, pm)
            run._handle = handle
            run._run_id = handle.run_id
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward, run, handle)
                result = await handle.start()
        except anyio.get_cancelled_exc_class():
            # Cancelled from outside (the scheduler's task group): the whole scheduler is
            # going down. Record the truth, whatever state the pipeline reported.
            self._shutdown("scheduler cancelled")
            why = run._cancel_reason or "scheduler cancelled"
            partial = None
            if handle is not None and handle.done:
                with anyio.CancelScope(shield=True):
                    partial = await handle.wait()
            self._finish(run, "cancelled", reason=why, error=PipelineCancelled(why), result=partial)
            raise
        except Exception as exc:
            self._finish(run, "failed", reason=f"could not start: {exc}", error=exc)
            return
        state: ScheduledState = result.state
        error: BaseException | None = None
        reason: str | None = None
        if state != "succeeded":
            try:
                result.raise_for_state()
            except HeadwaterError as exc:
                error = exc
            if state == "cancelled":
                reason = str(result.summary.get("cancel_reason") or error or "cancelled")
            else:
                reason = str(error).splitlines()[0] if error is not None else "failed"
        self._finish(run, state, reason=reason, error=error, result=result)

    async def _forward(self, run: ScheduledRun, handle: RunHandle) -> None:
        """Relay the pipeline's events to the run's subscribers (ends with Complete)."""
        async for event in handle.events():
            run._publish(event)
