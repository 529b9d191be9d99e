"""One run of a resolved pipeline: its shared state, its life from start to result, and
the entry points :func:`create_run` and :func:`execute`.

:class:`_Run` owns what every concern shares (identity, events, per-stage counters,
errors, cancellation) and delegates the rest to per-concern helpers: ``checkpoints``
(:mod:`.checkpointing`), ``sinks`` (:mod:`.sinks`), ``stages`` (:mod:`.stages`),
``sources`` (:mod:`.sources`), ``clock`` (:mod:`.run_metrics`) and the watchdog
(:mod:`.timeouts`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio

from ..channels import BatchChannel
from ..checkpoints import CheckpointError
from ..components import Component
from ..context import RunIdentity, StreamContext
from ..errors import PipelineCancelled, PipelineTimeout, StageError
from ..events import Complete, ErrorEvent, Event, Progress, RunState, Status
from ..events_queue import EventQueue
from ..metrics import Histogram
from ..pipeline import ResolvedPipeline, ResolvedStage
from ..services import EngineServices
from .checkpointing import _Checkpointing
from .handle import RunHandle, RunResult, StageStats
from .run_metrics import _Clock, _live_metrics, _summary
from .sinks import _close_sinks, _FanOut, _Output, _SinkRuntime, _Sinks
from .sources import _Sources
from .stages import _Stages
from .tasks import CLEANUP_GRACE
from .timeouts import _watchdog

__all__ = ["create_run", "execute"]

log = logging.getLogger("headwater.runtime")


class _Run:
    """State and tasks of one execution of a resolved pipeline.

    Its helpers (``checkpoints``, ``sinks``, ``stages``, ``sources``) reach it through a
    weak proxy: a run and its helpers form no reference cycle, so a run that ended is
    freed by reference counting as soon as nobody holds it rather than left to the
    cyclic garbage collector (which would cost every run its share of collections).
    """

    def __init__(
        self,
        resolved: ResolvedPipeline,
        plugins: Any,
        run_id: str | None = None,
        *,
        resume: bool = False,
        force: bool = False,
        services: EngineServices | None = None,
    ) -> None:
        self.resolved = resolved
        self.services = services if services is not None else _default_services()
        self.spec = resolved.spec
        self.plugins = plugins
        self.identity = RunIdentity(self.spec.name, run_id or uuid.uuid4().hex[:12])
        self.events = EventQueue()
        self.state: RunState = "pending"
        self.stats: dict[str, StageStats] = {}
        self.errors: list[BaseException] = []
        self.outputs: dict[str, Any] = {}
        self.fallbacks: dict[str, dict[str, Any]] = {}
        """Sources that ran a fallback action: stage -> action, fallback and reason."""
        self.result: RunResult | None = None
        self.finished = anyio.Event()
        self.cancel_reason: str | None = None
        self._scope: anyio.CancelScope | None = None
        self._pending_cancel = False
        self.capacity = self.spec.batch_size * self.spec.buffer
        """Items each channel between two stages holds."""
        self.metrics_on = self.services.metrics.enabled
        """Time batches, send latency probes, report to the registry (HEADWATER_METRICS)."""
        self.clock = _Clock(self.metrics_on)
        self.e2e = Histogram()
        """End-to-end latency the sinks observe from the sources' probes."""
        self.queues: dict[str, BatchChannel] = {}
        """Input channel of each stage and sink, for the queue depths in the metrics."""
        self.checkpoints = _Checkpointing(self, resume=resume, force=force)
        self.sinks = _Sinks(self)
        self.stages = _Stages(self)
        self.sources = _Sources(self)

    # -- control ------------------------------------------------------------------------

    def cancel(self, reason: str = "cancelled", *, immediate: bool = False) -> None:
        """Cancel the run (see :meth:`RunHandle.cancel`).

        With checkpoints, unless ``immediate``, the sources stop and the rest of the run
        ends by itself once the sinks committed what they produced, or is cancelled
        :data:`CLEANUP_GRACE` seconds later.
        """
        if self.cancel_reason is None:
            self.cancel_reason = reason
        scope = self._scope
        if scope is not None and not immediate and self.checkpoints.stop():
            scope.deadline = min(scope.deadline, anyio.current_time() + CLEANUP_GRACE)
        elif scope is not None:
            scope.cancel()
        else:
            self._pending_cancel = True

    def timed_out(self, error: PipelineTimeout, reason: str) -> None:
        """A timeout expired: record it and cancel the run."""
        self.errors.append(error)
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    def _is_cancelled(self) -> bool:
        return self.cancel_reason is not None or bool(self.errors)

    def ctx(self, stage: str, component: Component | None) -> StreamContext:
        """The context handed to a stage's component."""
        return StreamContext(
            self.identity,
            stage,
            component.plugin if component else None,
            self._emit if len(self.services.secrets) else self.events.emit,
            self._is_cancelled,
            checkpointing=self.resolved.checkpoint_store is not None,
            resuming=self.checkpoints.resuming,
            services=self.services,
        )

    def stage_stats(self, stage: str) -> StageStats:
        """The counters of ``stage``, created on first use."""
        stats = self.stats.get(stage)
        if stats is None:
            stats = self.stats[stage] = StageStats()
        return stats

    def produced(self) -> int:
        """Items the sources produced so far."""
        return sum(
            self.stats[f"sources.{n}"].items_out
            for n in self.resolved.sources
            if f"sources.{n}" in self.stats
        )

    def stage_error(
        self, stage: ResolvedStage, position: int | None, exc: BaseException
    ) -> StageError:
        """``exc`` as a :class:`StageError` of ``stage`` (unchanged if it is one)."""
        if isinstance(exc, StageError):
            return exc
        return StageError(
            pipeline=self.spec.name,
            stage=stage.stage,
            plugin=stage.component.plugin,
            position=position,
            cause=exc,
        )

    async def fail(self, error: BaseException) -> None:
        """Record a fatal error and tear the run down."""
        first = not self.errors
        self.errors.append(error)
        if isinstance(error, StageError):
            self.stage_stats(error.stage).error(error.cause)
            masked = self.services.secrets.mask_data(error.to_dict())
            self.events.emit(ErrorEvent(error.stage, masked, handled=False))
            with anyio.CancelScope(shield=True):
                await self.plugins.stream_error(self.spec, self.identity.run_id, error, False)
        if first and self._scope is not None:
            self._scope.cancel()

    def fell_back(self, stage: str, action: str, fallback: str, reason: str | None) -> None:
        """Record that source ``stage`` runs ``fallback`` instead of ``action`` (which
        failed before its first item, or is not available) and say so in a status event."""
        self.fallbacks[stage] = {"action": action, "fallback": fallback, "reason": reason}
        why = f": {reason}" if reason else ""
        message = f"action {action!r} did not run{why}; running fallback {fallback!r}"
        self._emit(Status("fallback", stage, message))

    def _emit(self, event: Event) -> None:
        """Emit an event whose message a component wrote, masked with the engine's
        secrets (a progress or status message may name an address, a path...)."""
        if isinstance(event, Progress | Status) and event.message:
            masked = self.services.secrets.mask(event.message)
            if masked != event.message:
                event = replace(event, message=masked)
        self.events.emit(event)

    async def handled_error(self, error: StageError) -> None:
        """Report an error the stage's policy handled (retried or skipped)."""
        self.stage_stats(error.stage).error(error.cause)
        masked = self.services.secrets.mask_data(error.to_dict())
        self.events.emit(ErrorEvent(error.stage, masked, handled=True))
        await self.plugins.stream_error(self.spec, self.identity.run_id, error, True)

    # -- main ---------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        started = time.monotonic()
        self.events.bind_loop()
        self.state = "running"
        if self.metrics_on:
            self.services.metrics.started(self.identity.run_id, self)
        try:
            await self.plugins.pipeline_started(self.spec, self.identity.run_id)
            self.events.emit(Status("running", None, f"pipeline {self.spec.name} started"))
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._pending_cancel:
                    scope.cancel()
                try:
                    await self._run_graph()
                except anyio.get_cancelled_exc_class():
                    # an enclosing scope (not this run's) cancelled us
                    if self.cancel_reason is None:
                        self.cancel_reason = "cancelled by the caller"
                    raise
                except Exception as exc:
                    # not a stage's error (those are recorded where they happen): a bug or
                    # a broken store; record it so that the run fails with it, not crashes
                    log.exception("pipeline %s: unexpected error", self.spec.name)
                    self.errors.append(exc)
        finally:
            elapsed = time.monotonic() - started
            if self.errors and not all(isinstance(e, PipelineTimeout) for e in self.errors):
                state: RunState = "failed"
            elif self.cancel_reason is not None or self.errors:
                state = "cancelled"
            else:
                state = "succeeded"
            self.state = state
            # what is recorded and shown of the run never holds a secret of the engine
            summary = self.services.secrets.mask_data(_summary(self, state, elapsed))
            self.result = RunResult(
                self.spec.name,
                self.identity.run_id,
                state,
                self._ordered_outputs(),
                summary,
                list(self.errors),
            )
            with anyio.CancelScope(shield=True):
                await self.plugins.pipeline_finished(
                    self.spec, self.identity.run_id, state, summary
                )
            self.services.metrics.finished(self.identity.run_id)
            self.services.drain.clear(self.identity.run_id)
            self.events.emit(Complete(state, summary))
            self.finished.set()
        return self.result

    def metrics(self) -> dict[str, Any]:
        """Figures for the metrics registry (may be called from another thread)."""
        return _live_metrics(self)

    def _ordered_outputs(self) -> dict[str, Any]:
        """Sink outputs in declaration order (sinks finish in any order)."""
        keys = [s.stage.removeprefix("sinks.") for s in self.resolved.sinks] + ["dead_letter"]
        return {k: self.outputs[k] for k in keys if k in self.outputs}

    async def _run_graph(self) -> None:
        """Open the checkpoint store and the sinks, run the stages, close everything."""
        res = self.resolved
        checkpoints = self.checkpoints
        self.clock.start()
        store = None
        start = None
        if res.checkpoint_store is not None:
            try:
                store, start = await checkpoints.load(res.checkpoint_store)
            except CheckpointError as exc:
                checkpoints.failed(exc)
                return
        opened: list[_SinkRuntime] = []
        try:
            try:  # a sink that cannot even be built fails the run as that sink's error
                sinks = [self._sink(s, s.stage) for s in res.sinks]
                dead = None
                if res.dead_letter is not None:
                    dead = self._sink(res.dead_letter, "dead_letter")
            except StageError as exc:
                await self.fail(exc)
                return
            for s in [*sinks, *([dead] if dead else [])]:
                self.stats[s.spec.stage] = s.stats
            for s in [*sinks, *([dead] if dead else [])]:
                try:
                    await s.open()
                except Exception as exc:
                    await self.fail(self.stage_error(s.spec, None, exc))
                    return
                opened.append(s)
            if store is not None and not await checkpoints.begin(store, start, sinks):
                return
            watchdog = anyio.CancelScope()
            async with anyio.create_task_group() as outer:
                outer.start_soon(_watchdog, self, watchdog)
                await self._run_stages(sinks, dead)
                watchdog.cancel()
        finally:
            error = (
                self.errors[0]
                if self.errors
                else (PipelineCancelled(self.cancel_reason) if self.cancel_reason else None)
            )
            with anyio.CancelScope(shield=True):
                await _close_sinks(opened, error)
                if store is not None:
                    with contextlib.suppress(Exception):
                        await anyio.to_thread.run_sync(store.close)

    def _sink(self, spec: ResolvedStage, stage: str) -> _SinkRuntime:
        """This run's instance of a sink; one that cannot be built is its stage's error."""
        try:
            return _SinkRuntime(spec, self.ctx(stage, spec.component))
        except Exception as exc:
            raise self.stage_error(spec, None, exc) from exc

    async def _run_stages(self, sinks: list[_SinkRuntime], dead: _SinkRuntime | None) -> None:
        """Start the sinks' tasks, the stages and the sources; return once all ended.

        The dead-letter sink runs in an outer task group, so it receives what the other
        stages skip until they all ended, and its stream ends after theirs.
        """
        async with anyio.create_task_group() as dead_tg:
            if dead is not None:
                self.sinks.dead = BatchChannel(self.capacity)
                dead_tg.start_soon(self.sinks.task, dead, self.sinks.dead)
            async with anyio.create_task_group() as tg:
                sink_channels = []
                branches = self.resolved.branches or {}
                for s in sinks:
                    ch = BatchChannel(self.capacity)
                    self.queues[s.spec.stage] = ch
                    tg.start_soon(self.sinks.task, s, ch)
                    branch = branches.get(s.spec.stage)
                    # a sink's own where and steps run between the fan-out and the sink
                    sink_channels.append(
                        ch if branch is None else self.stages.build(tg, ch, branch)
                    )
                out: _Output = (
                    _FanOut(sink_channels) if len(sink_channels) > 1 else sink_channels[0]
                )
                head = self.stages.build(tg, out)
                self.sources.start(tg, head)
            if self.sinks.dead is not None:
                self.sinks.dead.close_writer()


def _default_services() -> EngineServices:
    """The default engine's services, for runs started without an engine."""
    from ..engine import default_engine

    return default_engine().services


def create_run(
    resolved: ResolvedPipeline,
    plugins: Any,
    *,
    run_id: str | None = None,
    resume: bool = False,
    force: bool = False,
    services: EngineServices | None = None,
) -> RunHandle:
    """A handle for a run that has not started yet; ``await handle.start()`` runs it.

    With ``resume``, a checkpointed pipeline continues from its last committed
    checkpoint; ``force`` accepts a checkpoint taken by a different definition.
    """
    return RunHandle(_Run(resolved, plugins, run_id, resume=resume, force=force, services=services))


async def execute(
    resolved: ResolvedPipeline,
    plugins: Any,
    *,
    run_id: str | None = None,
    on_handle: Callable[[RunHandle], None] | None = None,
    resume: bool = False,
    force: bool = False,
    services: EngineServices | None = None,
) -> RunResult:
    """Run a resolved pipeline to completion and return its result (never raises on failure)."""
    run = _Run(resolved, plugins, run_id, resume=resume, force=force, services=services)
    if on_handle is not None:
        on_handle(RunHandle(run))
    return await run.execute()
