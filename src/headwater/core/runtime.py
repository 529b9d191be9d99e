"""The pipeline runtime: stages as anyio tasks joined by bounded batching channels.

Topology of a run::

    source(s) --> [compose] --> ch --> stage --> ch --> ... --> fan-out --> sink tasks

* A *stage* is either a fused run of item-wise steps (one loop per batch, see
  :mod:`headwater.core.fusion`) or one ``stream`` transformer.
* Every channel is a :class:`~headwater.core.channels.BatchChannel` with a bound in
  items, so memory stays flat however long the stream and a slow sink slows the source.
* A stage that stops reading (``take`` satisfied, ``zip`` shortest input ended) closes
  its input: the producers upstream are cancelled and clean up, and the run goes on.
* Any failure (with policy ``fail``), a timeout, or :meth:`RunHandle.cancel` cancels the
  run's scope; every generator is ``aclose``-d and every sink ``close``-d (shielded).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .channels import BatchChannel, DownstreamClosed, ThreadFeed
from .checkpoints import Checkpoint, CheckpointError
from .commit import Checkpointer, Marker
from .components import Capability, Component
from .context import RunIdentity, StreamContext
from .errors import (
    PipelineCancelled,
    PipelineFailed,
    PipelineTimeout,
    StageError,
)
from .events import Complete, ErrorEvent, Event, RunState, Status
from .events_queue import EventQueue
from .fusion import FusedStep, ItemFailure
from .invoke import params_and_ctx, positional_arity
from .metrics import Histogram, Probe
from .services import EngineServices
from .pipeline import ResolvedPipeline, ResolvedStage

__all__ = ["RunHandle", "RunResult", "StageStats", "create_run", "execute"]

log = logging.getLogger("headwater.runtime")

PROBE_INTERVAL = 0.1
"""Seconds between two end-to-end latency probes sent by a source."""

CLEANUP_GRACE = 10.0
"""Seconds a generator's ``finally`` or a sink's ``close`` may take after cancellation."""


@dataclass(slots=True)
class StageStats:
    """Counters of one stage (updated per batch, never per item)."""

    items_in: int = 0
    items_out: int = 0
    errors: int = 0
    skipped: int = 0
    batches_in: int = 0
    batches_out: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    """Seconds spent processing (or, for a sink, writing) each batch."""

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form."""
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "errors": self.errors,
            "skipped": self.skipped,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
        }

    def error(self, exc: BaseException) -> None:
        """Count one error of the exception's type."""
        self.errors += 1
        kind = type(exc).__name__
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def metrics(self) -> dict[str, Any]:
        """Counters plus error kinds and the latency histogram (for the metrics registry)."""
        return {
            "items_in": self.items_in,
            "items_out": self.items_out,
            "batches_in": self.batches_in,
            "batches_out": self.batches_out,
            "skipped": self.skipped,
            "errors_by_kind": dict(self.errors_by_kind),
            "latency": self.latency,
        }


@dataclass(slots=True)
class RunResult:
    """What a finished run produced."""

    pipeline: str
    run_id: str
    state: RunState
    outputs: dict[str, Any]
    """Each sink's result (what its ``close`` returned), keyed by sink name."""
    summary: dict[str, Any]
    errors: list[BaseException] = field(default_factory=list)

    @property
    def output(self) -> Any:
        """The result of the only sink (or of the first one)."""
        return next(iter(self.outputs.values()), None)

    def raise_for_state(self) -> RunResult:
        """Raise the matching error unless the run succeeded; returns self otherwise."""
        if self.state == "succeeded":
            return self
        if self.state == "cancelled":
            timeout = next((e for e in self.errors if isinstance(e, PipelineTimeout)), None)
            if timeout is not None:
                raise timeout
            raise PipelineCancelled(f"pipeline {self.pipeline!r} was cancelled")
        raise PipelineFailed(self.pipeline, self.errors)


class _Stop(Exception):
    """Internal: a stage failed; the run is being torn down."""


class _SinkRuntime:
    """A sink instance for one run, with sync methods bridged to worker threads."""

    def __init__(self, spec: ResolvedStage, ctx: StreamContext) -> None:
        comp = spec.component
        self.spec = spec
        self.stats = StageStats()
        self.opened = False
        self.closed = False
        lead = params_and_ctx(spec.params, ctx)
        if comp.shape == "class":
            instance = comp.obj(*lead[: positional_arity(comp.obj)])
            self._open: Callable[..., Any] | None = getattr(instance, "open", None)
            write = getattr(instance, "write", None)
            if write is None:
                raise TypeError(f"sink {comp.name!r} has no write(batch) method")
            self._write: Callable[[list[Any]], Any] = write
            self._close: Callable[..., Any] | None = getattr(instance, "close", None)
            self._commit: Callable[..., Any] | None = getattr(instance, "commit_checkpoint", None)
            self._load: Callable[..., Any] | None = getattr(instance, "load_checkpoint", None)
        else:
            fn = comp.obj
            extra = lead[: max(0, positional_arity(fn) - 1)]
            self._open = None
            self._close = None
            self._commit = None
            self._load = None
            if inspect.iscoroutinefunction(fn):

                async def write_async(batch: list[Any]) -> Any:
                    return await fn(batch, *extra)

                self._write = write_async
            else:

                def write_sync(batch: list[Any]) -> Any:
                    return fn(batch, *extra)

                self._write = write_sync
        self._write_is_async = inspect.iscoroutinefunction(self._write)

    async def open(self) -> None:
        if self._open is not None:
            await _call(self._open)
        self.opened = True

    async def write(self, batch: list[Any]) -> None:
        if self._write_is_async:
            await self._write(batch)
        else:
            await anyio.to_thread.run_sync(self._write, batch)

    async def commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        if self._commit is not None:
            await _call(self._commit, checkpoint)

    async def load_checkpoint(self) -> Checkpoint | None:
        if self._load is None:
            return None
        held = await _call(self._load)
        if held is None or isinstance(held, Checkpoint):
            return held
        if isinstance(held, str):
            return Checkpoint.from_json(held)
        return Checkpoint(**held)

    async def close(self, error: BaseException | None) -> Any:
        if self.closed:
            return None
        self.closed = True
        if self._close is None:
            return None
        if positional_arity(self._close) >= 1:
            return await _call(self._close, error)
        return await _call(self._close)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await anyio.to_thread.run_sync(lambda: fn(*args))
    if inspect.isawaitable(result):
        return await result
    return result


class RunHandle:
    """A run in progress: iterate its events, cancel it, await its result.

    Obtained from :func:`headwater.open_run`. ``events()`` may be iterated by one
    consumer; it ends with the :class:`~headwater.Complete` event.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        """Unique id of the run."""
        return self._run.identity.run_id

    @property
    def pipeline(self) -> str:
        """Name of the pipeline."""
        return self._run.identity.pipeline

    @property
    def state(self) -> RunState:
        """``pending``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self._run.state

    @property
    def done(self) -> bool:
        """True once the run finished, whatever the outcome."""
        return self._run.finished.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the run: every stage stops and cleans up. Safe to call more than once."""
        self._run.cancel(reason)

    def drain(self) -> None:
        """Ask the run's broker sources to stop taking messages and return: what they
        handed on is committed and acknowledged, and the run ends normally."""
        self._run.services.drain.request(self.run_id)

    def events(self) -> AsyncIterator[Event]:
        """The run's control events, ending with :class:`~headwater.Complete`."""
        return self._run.events.__aiter__()

    async def start(self) -> RunResult:
        """Execute the run in the calling task (used by :func:`headwater.open_run`)."""
        return await self._run.execute()

    async def wait(self) -> RunResult:
        """Wait for the end of the run and return its result (never raises on failure)."""
        await self._run.finished.wait()
        assert self._run.result is not None
        return self._run.result

    @property
    def stats(self) -> dict[str, StageStats]:
        """Live per-stage counters."""
        return self._run.stats


class _Run:
    """State and tasks of one execution of a resolved pipeline."""

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
        self.resume = resume
        self.force = force
        self.checkpointer: Checkpointer | None = None
        self._resuming = False
        self.resume_note: str | None = None
        self._stored: Checkpoint | None = None
        """The checkpoint found in the store at start (even when not resuming)."""
        self._completed_at: Checkpoint | None = None
        """Set when a resumed run found its pipeline already completed."""
        self.spec = resolved.spec
        self.plugins = plugins
        self.identity = RunIdentity(self.spec.name, run_id or uuid.uuid4().hex[:12])
        self.events = EventQueue()
        self.state: RunState = "pending"
        self.stats: dict[str, StageStats] = {}
        self.errors: list[BaseException] = []
        self.outputs: dict[str, Any] = {}
        self.result: RunResult | None = None
        self.finished = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._cancel_reason: str | None = None
        self._pending_cancel = False
        self._first_item_at: float | None = None
        self._last_item_at = 0.0
        self._capacity = self.spec.batch_size * self.spec.buffer
        self._dead: BatchChannel | None = None
        self._e2e = Histogram()
        self._last_probe = 0.0
        self._metrics_on = self.services.metrics.enabled
        """Time batches, send latency probes, report to the registry (HEADWATER_METRICS)."""
        self._queues: dict[str, BatchChannel] = {}

    # -- control ------------------------------------------------------------------------

    def cancel(self, reason: str = "cancelled") -> None:
        if self._cancel_reason is None:
            self._cancel_reason = reason
        if self._scope is not None:
            self._scope.cancel()
        else:
            self._pending_cancel = True

    def _is_cancelled(self) -> bool:
        return self._cancel_reason is not None or bool(self.errors)

    def _ctx(self, stage: str, component: Component | None) -> StreamContext:
        return StreamContext(
            self.identity,
            stage,
            component.plugin if component else None,
            self.events.emit,
            self._is_cancelled,
            checkpointing=self.resolved.checkpoint_store is not None,
            resuming=self._resuming,
            services=self.services,
        )

    def _stats(self, stage: str) -> StageStats:
        stats = self.stats.get(stage)
        if stats is None:
            stats = self.stats[stage] = StageStats()
        return stats

    def _stage_error(
        self, stage: ResolvedStage, position: int | None, exc: BaseException
    ) -> StageError:
        if isinstance(exc, StageError):
            return exc
        return StageError(
            pipeline=self.spec.name,
            stage=stage.stage,
            plugin=stage.component.plugin,
            position=position,
            cause=exc,
        )

    async def _fail(self, error: BaseException) -> None:
        """Record a fatal error and tear the run down."""
        first = not self.errors
        self.errors.append(error)
        if isinstance(error, StageError):
            self._stats(error.stage).error(error.cause)
            self.events.emit(ErrorEvent(error.stage, error.to_dict(), handled=False))
            with anyio.CancelScope(shield=True):
                await self.plugins.stream_error(self.spec, self.identity.run_id, error, False)
        if first and self._scope is not None:
            self._scope.cancel()

    async def _handled_error(self, error: StageError) -> None:
        self._stats(error.stage).error(error.cause)
        self.events.emit(ErrorEvent(error.stage, error.to_dict(), handled=True))
        await self.plugins.stream_error(self.spec, self.identity.run_id, error, True)

    # -- main ---------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        started = time.monotonic()
        self.events.bind_loop()
        self.state = "running"
        if self._metrics_on:
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
                    if self._cancel_reason is None:
                        self._cancel_reason = "cancelled by the caller"
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
            elif self._cancel_reason is not None or self.errors:
                state = "cancelled"
            else:
                state = "succeeded"
            self.state = state
            summary = self._summary(state, elapsed)
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

    def _summary(self, state: RunState, elapsed: float) -> dict[str, Any]:
        produced = sum(
            self.stats[f"sources.{n}"].items_out
            for n in self.resolved.sources
            if f"sources.{n}" in self.stats
        )
        return {
            "pipeline": self.spec.name,
            "run_id": self.identity.run_id,
            "state": state,
            "elapsed_seconds": elapsed,
            "items_in": produced,
            "items_per_second": produced / elapsed if elapsed > 0 else None,
            "time_to_first_item_seconds": self._first_item_at,
            "stages": {name: s.to_dict() for name, s in self.stats.items()},
            "errors": [
                e.to_dict()
                if isinstance(e, StageError)
                else {"error": type(e).__name__, "message": str(e)}
                for e in self.errors
            ],
            "cancel_reason": self._cancel_reason,
            "checkpoint": self._checkpoint_summary(),
        }

    def metrics(self) -> dict[str, Any]:
        """Figures for the metrics registry (may be called from another thread)."""
        for _ in range(3):
            try:
                stages = {name: st.metrics() for name, st in list(self.stats.items())}
                queues = {name: len(ch.items) for name, ch in list(self._queues.items())}
                break
            except RuntimeError:  # a dict changed size under us: try again
                continue
        else:  # pragma: no cover - three concurrent resizes in a row
            stages, queues = {}, {}
        return {
            "pipeline": self.spec.name,
            "run_id": self.identity.run_id,
            "state": self.state,
            "stages": stages,
            "queue_depth": queues,
            "e2e_latency": self._e2e,
            "time_to_first_item": self._first_item_at,
        }

    def _ordered_outputs(self) -> dict[str, Any]:
        """Sink outputs in declaration order (sinks finish in any order)."""
        keys = [s.stage.removeprefix("sinks.") for s in self.resolved.sinks] + ["dead_letter"]
        return {k: self.outputs[k] for k in keys if k in self.outputs}

    def _checkpoint_summary(self) -> dict[str, Any] | None:
        ckpt = self.checkpointer
        note = self.resume_note
        if ckpt is None and self._completed_at is not None:
            done = self._completed_at
            return {
                "resumed": True,
                "committed_seq": done.seq,
                "committed_items": done.items,
                "saved": 0,
                "note": note,
            }
        if ckpt is None:
            return {"note": note} if note else None
        committed = ckpt.committed
        return {
            "resumed": self._resuming,
            "committed_seq": committed.seq if committed else None,
            "committed_items": committed.items if committed else None,
            "saved": ckpt.saved,
            "note": note,
        }

    async def _run_graph(self) -> None:
        res = self.resolved
        self._t0 = time.monotonic()
        self._last_item_at = self._t0
        store = None
        if res.checkpoint_store is not None:
            try:
                store, start = await self._load_checkpoint(res.checkpoint_store)
            except CheckpointError as exc:
                self._checkpoint_failed(exc)
                return
            self._resuming = start is not None
        sinks = [_SinkRuntime(s, self._ctx(s.stage, s.component)) for s in res.sinks]
        for s in sinks:
            self.stats[s.spec.stage] = s.stats
        dead = None
        if res.dead_letter is not None:
            dead = _SinkRuntime(
                res.dead_letter, self._ctx("dead_letter", res.dead_letter.component)
            )
            self.stats["dead_letter"] = dead.stats
        opened: list[_SinkRuntime] = []
        try:
            for s in [*sinks, *([dead] if dead else [])]:
                try:
                    await s.open()
                except Exception as exc:
                    await self._fail(self._stage_error(s.spec, None, exc))
                    return
                opened.append(s)
            if store is not None:
                try:
                    start = await self._newest_checkpoint(start, sinks)
                    if start is not None and start.completed:
                        self._skipped_completed(start)
                        return
                    if start is None:
                        start = await self._fresh_start(store, sinks)
                except CheckpointError as exc:
                    self._checkpoint_failed(exc)
                    return
                self.checkpointer = Checkpointer(
                    pipeline=self.spec.name,
                    fingerprint=self.spec.fingerprint(),
                    store=store,
                    every_items=self.spec.checkpoint.every_items if self.spec.checkpoint else None,
                    every_seconds=(
                        self.spec.checkpoint.every_seconds if self.spec.checkpoint else None
                    ),
                    start=start,
                    sinks=[s.spec.stage for s in sinks],
                )
            watchdog = anyio.CancelScope()
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._watchdog, watchdog)
                await self._run_stages(sinks, dead)
                watchdog.cancel()
        finally:
            error = (
                self.errors[0]
                if self.errors
                else (PipelineCancelled(self._cancel_reason) if self._cancel_reason else None)
            )
            with anyio.CancelScope(shield=True):
                for s in opened:
                    if not s.closed:
                        with anyio.move_on_after(CLEANUP_GRACE):
                            try:
                                await s.close(error)
                            except Exception:
                                log.exception("sink %s raised in close()", s.spec.stage)
                if store is not None:
                    with contextlib.suppress(Exception):
                        await anyio.to_thread.run_sync(store.close)

    async def _load_checkpoint(self, stage: ResolvedStage) -> tuple[Any, Checkpoint | None]:
        """Instantiate the checkpoint store; with ``resume``, load and check the checkpoint."""
        comp = stage.component
        store = comp.obj(*(() if stage.params is None else (stage.params,)))
        start: Checkpoint | None = await anyio.to_thread.run_sync(store.load, self.spec.name)
        self._stored = start
        if not self.resume:
            if start is not None:
                self.events.emit(
                    Status(
                        "running",
                        None,
                        f"starting over: checkpoint {start.seq} of {self.spec.name} will be "
                        "replaced (resume to continue from it instead)",
                    )
                )
            return store, None
        if start is not None:
            try:
                self._check_fingerprint(start)
            except CheckpointError:
                await anyio.to_thread.run_sync(store.close)
                raise
        return store, start

    def _check_fingerprint(self, checkpoint: Checkpoint) -> None:
        """Refuse (unless ``force``) a checkpoint taken by a different definition."""
        if checkpoint.fingerprint != self.spec.fingerprint() and not self.force:
            raise CheckpointError(
                f"pipeline {self.spec.name!r} changed since its checkpoint {checkpoint.seq} "
                "was taken (its sources or steps differ), so the committed positions and "
                "states may not fit it any more; resume with force (headwater run --resume "
                "--force) to use them anyway, or reset the checkpoint (headwater checkpoints "
                f"reset {self.spec.name}) to start over"
            )

    def _checkpoint_failed(self, exc: CheckpointError) -> None:
        """The checkpoint cannot be used: the run fails before any item moved."""
        self.errors.append(exc)
        self.events.emit(
            ErrorEvent(
                "checkpoint",
                {"error": "CheckpointError", "message": str(exc)},
                handled=False,
            )
        )

    async def _newest_checkpoint(
        self, start: Checkpoint | None, sinks: list[_SinkRuntime]
    ) -> Checkpoint | None:
        """A transactional sink may hold a newer checkpoint than the store (it commits the
        checkpoint with its data, before every sink acknowledged it): prefer the newest.

        Only when the store has a checkpoint: every run saves one before its first item
        (see :meth:`_fresh_start`), so a store without one was reset (or lost), and a
        checkpoint a sink still holds is stale: the run starts over.
        """
        if not self.resume or start is None:
            return start
        for sink in sinks:
            held = await sink.load_checkpoint()
            if held is None or held.pipeline != self.spec.name or held.seq <= start.seq:
                continue
            self._check_fingerprint(held)
            start = held
        return start

    async def _fresh_start(self, store: Any, sinks: list[_SinkRuntime]) -> Checkpoint:
        """Save the empty checkpoint a run that starts over begins from.

        Its number follows every checkpoint of the pipeline still around (in the store or
        held by a transactional sink), so that a stale checkpoint of an earlier run never
        looks newer than this run's, and a crash before this run's first commit resumes
        from the start rather than from an earlier run's positions.
        """
        seqs = [self._stored.seq if self._stored is not None else 0]
        for sink in sinks:
            held = await sink.load_checkpoint()
            if held is not None and held.pipeline == self.spec.name:
                seqs.append(held.seq)
        fresh = Checkpoint(
            pipeline=self.spec.name, fingerprint=self.spec.fingerprint(), seq=max(seqs) + 1
        )
        await anyio.to_thread.run_sync(store.save, fresh)
        return fresh

    def _skipped_completed(self, start: Checkpoint) -> None:
        self.events.emit(
            Status(
                "running",
                None,
                f"pipeline {self.spec.name} already completed (checkpoint {start.seq}); "
                "nothing to resume",
            )
        )
        self.resume_note = f"already completed at checkpoint {start.seq}"
        self._completed_at = start

    async def _run_stages(self, sinks: list[_SinkRuntime], dead: _SinkRuntime | None) -> None:
        async with anyio.create_task_group() as dead_tg:
            if dead is not None:
                self._dead = BatchChannel(self._capacity)
                dead_tg.start_soon(self._sink_task, dead, self._dead)
            async with anyio.create_task_group() as tg:
                sink_channels = []
                for s in sinks:
                    ch = BatchChannel(self._capacity)
                    sink_channels.append(ch)
                    self._queues[s.spec.stage] = ch
                    tg.start_soon(self._sink_task, s, ch)
                out: _Output = (
                    _FanOut(sink_channels) if len(sink_channels) > 1 else sink_channels[0]
                )
                head = self._build_stages(tg, out)
                self._start_sources(tg, head)
            if self._dead is not None:
                self._dead.close_writer()

    # -- stages -------------------------------------------------------------------------

    def _build_stages(self, tg: TaskGroup, out: _Output) -> BatchChannel:
        """Start every step stage, last to first; return the channel sources write to."""
        groups: list[list[ResolvedStage]] = []
        for step in self.resolved.steps:
            if step.component.itemwise and groups and groups[-1][0].component.itemwise:
                groups[-1].append(step)
            else:
                groups.append([step])
        downstream: _Output = out
        for group in reversed(groups):
            inp = BatchChannel(self._capacity)
            self._queues[group[0].stage] = inp
            if group[0].component.itemwise:
                steps = [FusedStep(s, self._ctx(s.stage, s.component)) for s in group]
                for st in steps:
                    self.stats[st.stage] = StageStats()
                tg.start_soon(self._producer, downstream, self._fused_stage, inp, downstream, steps)
            else:
                tg.start_soon(
                    self._producer, downstream, self._stream_stage, inp, downstream, group[0]
                )
            downstream = inp
        if not groups:
            # sources feed the sinks directly through one hop
            inp = BatchChannel(self._capacity)
            tg.start_soon(self._producer, downstream, self._fused_stage, inp, downstream, [])
            downstream = inp
        assert isinstance(downstream, BatchChannel)
        return downstream

    async def _producer(self, out: _Output, body: Callable[..., Any], *args: Any) -> None:
        """Run a producing task in its own scope, so its consumer can stop it.

        The end of the stream is signalled downstream only when the producer finished
        cleanly (or was stopped by its consumer), never when the run is failing: a sink
        must not mistake a failure for a complete stream.
        """
        with anyio.CancelScope() as scope:
            out.add_producer_scope(scope)
            try:
                await body(*args)
            except DownstreamClosed:
                pass
            except _Stop:
                return
        if not self.errors:
            out.close_writer()

    async def _fused_stage(self, inp: BatchChannel, out: _Output, steps: list[FusedStep]) -> None:
        stats = [self.stats[s.stage] for s in steps]
        held: list[Marker] = []
        try:
            self._restore_states(steps)
        except CheckpointError as exc:
            await self._fail(exc)
            raise _Stop from exc
        ticking = [(i, s) for i, s in enumerate(steps) if s.tick is not None]
        next_tick = math.inf
        try:
            exhausted = False
            while not exhausted:
                if ticking:
                    interval = min((s.tick_interval or math.inf) for _, s in ticking)
                    now = time.monotonic()
                    if next_tick == math.inf and interval != math.inf:
                        next_tick = now + interval
                    batch = None
                    base = inp.taken
                    with anyio.move_on_after(max(0.0, next_tick - now)):
                        try:
                            batch = await inp.get()
                        except anyio.EndOfStream:
                            break
                    if batch is not None and inp.has_markers:
                        await self._apply_marked(
                            steps, stats, batch, inp.pop_markers(base), out, held
                        )
                        batch = []
                    if time.monotonic() >= next_tick:
                        next_tick = math.inf
                        await self._run_ticks(steps, stats, ticking, out)
                        exhausted = any(s.exhausted for s in steps)
                    if batch is None or exhausted:
                        continue
                else:
                    base = inp.taken
                    try:
                        batch = await inp.get()
                    except anyio.EndOfStream:
                        break
                    if inp.has_markers:
                        await self._apply_marked(
                            steps, stats, batch, inp.pop_markers(base), out, held
                        )
                        exhausted = any(s.exhausted for s in steps)
                        continue
                batch = await self._apply(steps, stats, 0, batch)
                if batch:
                    await out.put_batch(batch)
                exhausted = any(s.exhausted for s in steps)
            for i, step in enumerate(steps):
                if step.flush is not None:
                    try:
                        tail = step.flush()
                    except Exception as exc:
                        await self._fail(self._stage_error(step.spec, None, exc))
                        raise _Stop from exc
                    if tail:
                        tail = await self._apply(steps, stats, i + 1, list(tail))
                        if tail:
                            await out.put_batch(tail)
            self._complete(held)
            for marker in held:
                await self._snapshot_states(steps, marker)
                out.put_marker(marker)
        finally:
            inp.close_reader()

    def _complete(self, held: list[Marker]) -> None:
        """A stage that ended normally without the source's final marker (``take`` got
        enough, a stream transformer stopped reading) marks the end of the run itself:
        otherwise what it emitted after the last checkpoint would never be committed."""
        ckpt = self.checkpointer
        if ckpt is not None and not any(m.final for m in held):
            produced = sum(
                self.stats[f"sources.{n}"].items_out
                for n in self.resolved.sources
                if f"sources.{n}" in self.stats
            )
            held.append(ckpt.final(produced))

    async def _apply_marked(
        self,
        steps: list[FusedStep],
        stats: list[StageStats],
        batch: list[Any],
        marks: list[tuple[int, Any]],
        out: _Output,
        held: list[Marker],
    ) -> None:
        """Process a batch that carries markers, splitting it at each checkpoint marker.

        Latency probes do not split batches: they follow the whole batch.
        """
        probes = [m for _, m in marks if isinstance(m, Probe)]
        if probes:
            marks = [(o, m) for o, m in marks if not isinstance(m, Probe)]
        start = 0
        for offset, marker in marks:
            part = batch[start:offset]
            start = offset
            if part:
                part = await self._apply(steps, stats, 0, part)
                if part:
                    await out.put_batch(part)
            if marker.final:
                held.append(marker)  # forwarded after the steps flushed, at the end
            else:
                await self._snapshot_states(steps, marker)
                out.put_marker(marker)
        rest = batch[start:]
        if rest:
            rest = await self._apply(steps, stats, 0, rest)
            if rest:
                await out.put_batch(rest)
        for probe in probes:
            out.put_marker(probe)

    async def _snapshot_states(self, steps: list[FusedStep], marker: Marker) -> None:
        for step in steps:
            snapshot = getattr(step.state, "snapshot", None)
            if snapshot is not None:
                try:
                    marker.states[step.stage] = snapshot()
                except Exception as exc:
                    await self._fail(self._stage_error(step.spec, None, exc))
                    raise _Stop from exc

    def _restore_states(self, steps: list[FusedStep]) -> None:
        ckpt = self.checkpointer
        if ckpt is None:
            return
        for step in steps:
            restore = getattr(step.state, "restore", None)
            stateful = Capability.STATEFUL in step.component.capabilities
            if stateful and (restore is None or not hasattr(step.state, "snapshot")):
                raise CheckpointError(
                    f"stage {step.stage}: transformer {step.component.name!r} is stateful "
                    "but cannot snapshot its state, so the pipeline cannot be checkpointed"
                )
            if restore is not None and step.stage in ckpt.states:
                try:
                    restore(ckpt.states[step.stage])
                except Exception as exc:
                    raise CheckpointError(
                        f"stage {step.stage}: cannot restore the state of transformer "
                        f"{step.component.name!r} from the checkpoint: {exc}; reset "
                        f"the checkpoint (headwater checkpoints reset {self.spec.name}) to "
                        "start over"
                    ) from exc

    async def _run_ticks(
        self,
        steps: list[FusedStep],
        stats: list[StageStats],
        ticking: list[tuple[int, FusedStep]],
        out: _Output,
    ) -> None:
        for i, step in ticking:
            assert step.tick is not None
            try:
                due = step.tick()
            except Exception as exc:
                await self._fail(self._stage_error(step.spec, None, exc))
                raise _Stop from exc
            if due:
                stats[i].items_out += len(due)
                due = await self._apply(steps, stats, i + 1, list(due))
                if due:
                    await out.put_batch(due)

    async def _apply(
        self, steps: list[FusedStep], stats: list[StageStats], start: int, batch: list[Any]
    ) -> list[Any]:
        timed = self._metrics_on
        for i in range(start, len(steps)):
            step = steps[i]
            st = stats[i]
            n = len(batch)
            st.items_in += n
            st.batches_in += 1
            began = perf_counter() if timed else 0.0
            if step.policy == "fail":
                try:
                    batch = step.fast(batch)
                except ItemFailure as failure:
                    pos = None if failure.index is None else step.n_in + failure.index
                    await self._fail(self._stage_error(step.spec, pos, failure.cause))
                    raise _Stop from failure.cause
            else:
                batch = await step.guarded(batch, self._on_item_error)
            step.n_in += n
            if timed:
                st.latency.observe(perf_counter() - began)
            st.items_out += len(batch)
            if not batch:
                break
            st.batches_out += 1
        return batch

    async def _on_item_error(
        self,
        step: FusedStep,
        position: int | None,
        items: list[Any],
        exc: BaseException,
        attempt: int,
    ) -> bool:
        spec = step.spec
        error = self._stage_error(spec, position, exc)
        retry = spec.retry
        if spec.on_error == "retry" and retry is not None and attempt < retry.attempts:
            await self._handled_error(error)
            await anyio.sleep(retry.delay(attempt))
            return True
        if spec.on_error == "skip" or (retry is not None and retry.then == "skip"):
            await self._handled_error(error)
            self._stats(spec.stage).skipped += len(items)
            await self._dead_letter(error, items)
            return False
        await self._fail(error)
        raise _Stop from exc

    async def _dead_letter(self, error: StageError, items: list[Any]) -> None:
        if self._dead is None:
            return
        info = error.to_dict()
        records = [{**info, "item": item} for item in items]
        if error.position is not None and len(items) > 1:
            for k, rec in enumerate(records):
                rec["position"] = error.position + k
        await self._dead.put_batch(records)

    async def _stream_stage(self, inp: BatchChannel, out: _Output, spec: ResolvedStage) -> None:
        stats = self._stats(spec.stage)
        ctx = self._ctx(spec.stage, spec.component)

        held: list[Marker] = []

        async def items() -> AsyncGenerator[Any, None]:
            while True:
                base = inp.taken
                try:
                    batch = await inp.get()
                except anyio.EndOfStream:
                    return
                stats.items_in += len(batch)
                if not inp.has_markers:
                    for item in batch:
                        yield item
                    continue
                start = 0
                for offset, marker in inp.pop_markers(base):
                    for item in batch[start:offset]:
                        yield item
                    start = offset
                    # the transformer asked for the next item: its output for every item
                    # before the marker is downstream already
                    if isinstance(marker, Marker) and marker.final:
                        held.append(marker)
                    else:
                        out.put_marker(marker)
                for item in batch[start:]:
                    yield item

        feed = items()
        lead = params_and_ctx(spec.params, ctx)
        fn = spec.component.obj
        try:
            agen = fn(feed, *lead[: max(0, positional_arity(fn) - 1)])
            await self._pump_async(agen, out, stats, spec, batched=False)
            self._complete(held)
            for marker in held:
                out.put_marker(marker)
        finally:
            inp.close_reader()
            with anyio.CancelScope(shield=True):
                await feed.aclose()

    # -- sources ------------------------------------------------------------------------

    def _start_sources(self, tg: TaskGroup, head: BatchChannel) -> None:
        spec = self.spec
        order = spec.source_order()
        mode = spec.compose.mode if spec.compose else "merge"
        stages = [self.resolved.sources[n] for n in order]
        if mode == "merge":
            head.add_writers(len(stages) - 1)
            for stage in stages:
                tg.start_soon(self._producer, head, self._source, stage, head)
        elif mode == "concat":
            tg.start_soon(self._producer, head, self._concat, stages, head)
        else:
            chans = [BatchChannel(self._capacity) for _ in stages]
            for stage, ch in zip(stages, chans, strict=True):
                tg.start_soon(self._producer, ch, self._source, stage, ch)
            tg.start_soon(self._producer, head, self._zip, chans, head)

    async def _concat(self, stages: list[ResolvedStage], out: BatchChannel) -> None:
        for stage in stages:
            await self._source(stage, out)

    async def _zip(self, chans: list[BatchChannel], out: BatchChannel) -> None:
        from collections import deque

        bufs: list[deque[Any]] = [deque() for _ in chans]
        try:
            while True:
                for buf, ch in zip(bufs, chans, strict=True):
                    while not buf:
                        buf.extend(await ch.get())
                        # zipped sources are not checkpointed: only latency probes, dropped
                        ch.pop_markers(0)
                n = min(len(b) for b in bufs)
                await out.put_batch([tuple(b.popleft() for b in bufs) for _ in range(n)])
        except anyio.EndOfStream:
            return
        finally:
            for ch in chans:
                ch.close_reader()

    async def _source(self, stage: ResolvedStage, out: BatchChannel) -> None:
        comp = stage.component
        stats = self._stats(stage.stage)
        ctx = self._ctx(stage.stage, comp)
        ckpt = self.checkpointer
        name = stage.stage.removeprefix("sources.")
        if ckpt is not None:
            if ckpt.committed is not None:
                ctx.resume_position = ckpt.committed.positions.get(name)

            def report(position: Any) -> None:
                marker = ckpt.report(name, position, out.taken + len(out.items))
                if marker is not None:
                    out.put_marker(marker)

            def report_from_thread(position: Any) -> None:
                raise RuntimeError(
                    f"action {comp.name!r} is a sync generator: sources running in a worker "
                    "thread cannot report checkpoint positions yet; write it as an async "
                    "generator to make it resumable"
                )

            ctx._position = report_from_thread if comp.shape == "sync_gen" else report

            def on_commit(callback: Callable[[Any], Any]) -> None:
                ckpt.listeners.append(lambda cp: callback(cp.positions.get(name)))

            ctx._on_commit = on_commit
        lead = params_and_ctx(stage.params, ctx)
        args = lead[: positional_arity(comp.obj)]
        try:
            if comp.shape == "async_gen":
                await self._pump_async(comp.obj(*args), out, stats, stage, comp.batched)
            elif comp.shape == "sync_gen":
                await self._pump_thread(comp.obj, args, out, stats, stage, comp.batched)
            else:
                if comp.shape == "coroutine":
                    value = await comp.obj(*args)
                else:
                    value = await anyio.to_thread.run_sync(lambda: comp.obj(*args))
                    if inspect.isawaitable(value):
                        value = await value
                items = list(value) if comp.batched else [value]
                self._mark_items(len(items))
                stats.items_out += len(items)
                await out.put_batch(items)
            if ckpt is not None and not out.reader_closed:
                out.put_marker(ckpt.final(out.taken + len(out.items)))
        except (DownstreamClosed, _Stop, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            await self._fail(self._stage_error(stage, stats.items_out, exc))
            raise _Stop from exc

    def _mark_items(self, n: int, out: _Output | None = None) -> None:
        now = time.monotonic()
        if self._first_item_at is None and n:
            self._first_item_at = now - self._t0
        self._last_item_at = now
        if out is not None and self._metrics_on and now - self._last_probe >= PROBE_INTERVAL:
            # a latency probe after these items: sinks observe end-to-end latency
            self._last_probe = now
            out.put_marker(Probe())

    async def _pump_async(
        self, agen: Any, out: _Output, stats: StageStats, stage: ResolvedStage, batched: bool
    ) -> None:
        """Move an async generator's output into ``out``; always ``aclose`` it."""
        produced = 0
        base = stats.items_out
        try:
            if batched or not isinstance(out, BatchChannel):
                async for chunk in agen:
                    if not batched:
                        chunk = [chunk]
                    elif type(chunk) is not list:
                        chunk = list(chunk)
                    produced += len(chunk)
                    stats.items_out = base + produced
                    await out.put_batch(chunk)
                    self._mark_items(len(chunk), out)
            else:
                cap = out.capacity
                async for item in agen:
                    # re-read every time: the consumer swaps the list when it takes it
                    items = out.items
                    items.append(item)
                    produced += 1
                    n = len(items)
                    if n == 1:
                        self._mark_items(1, out)
                        stats.items_out = base + produced
                        if out.reader_closed:
                            raise DownstreamClosed
                        out.wake()
                    elif n >= cap:
                        self._mark_items(n, out)
                        stats.items_out = base + produced
                        await out.pushed()
        except (DownstreamClosed, _Stop, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            await self._fail(self._stage_error(stage, produced, exc))
            raise _Stop from exc
        finally:
            stats.items_out = base + produced
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_GRACE):
                try:
                    await agen.aclose()
                except Exception:
                    log.exception("generator of %s raised while closing", stage.stage)

    async def _pump_thread(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        out: BatchChannel,
        stats: StageStats,
        stage: ResolvedStage,
        batched: bool,
    ) -> None:
        """Run a sync generator in a worker thread, feeding ``out`` with backpressure."""
        feed = ThreadFeed(out.capacity)

        def work() -> None:
            error: BaseException | None = None
            gen = None
            try:
                gen = fn(*args)
                for item in gen:
                    if not feed.put(item):
                        break
            except BaseException as exc:  # handed to the event loop side
                error = exc
            finally:
                if gen is not None:
                    try:
                        gen.close()
                    except Exception as exc:
                        error = error or exc
                feed.finish(error)

        # A daemon thread rather than an anyio worker: a generator blocked on input (a pipe,
        # a socket) must not keep the process alive after its run was cancelled.
        threading.Thread(target=work, name=f"headwater {stage.stage}", daemon=True).start()
        try:
            while True:
                items, done = await feed.drain()
                if items:
                    if batched:
                        items = [x for chunk in items for x in chunk]
                    stats.items_out += len(items)
                    await out.put_batch(items)
                    self._mark_items(len(items), out)
                if done:
                    if feed.error is not None:
                        err = feed.error
                        if isinstance(err, Exception):
                            await self._fail(self._stage_error(stage, stats.items_out, err))
                            raise _Stop from err
                        raise err
                    break
        finally:
            feed.stop()

    # -- sinks --------------------------------------------------------------------------

    async def _sink_task(self, sink: _SinkRuntime, ch: BatchChannel) -> None:
        spec = sink.spec
        try:
            while True:
                base = ch.taken
                try:
                    batch = await ch.get()
                except anyio.EndOfStream:
                    break
                sink.stats.items_in += len(batch)
                sink.stats.batches_in += 1
                if not ch.has_markers:
                    await self._write(sink, batch)
                    continue
                start = 0
                probes: list[Probe] = []
                for offset, marker in ch.pop_markers(base):
                    if isinstance(marker, Probe):
                        probes.append(marker)  # observed once the whole batch is written
                        continue
                    if offset > start:
                        await self._write(sink, batch[start:offset])
                    start = offset
                    await self._acknowledge(sink, marker)
                if start < len(batch):
                    await self._write(sink, batch[start:])
                now = perf_counter()
                for probe in probes:
                    self._e2e.observe(now - probe.created)
            if self.errors or self._cancel_reason is not None:
                return  # the run is ending abnormally: closed with its error by _run_graph
            with anyio.CancelScope(shield=True):
                result = await sink.close(None)
            self.outputs[spec.stage.removeprefix("sinks.")] = result
        except _Stop:
            pass
        except Exception as exc:
            await self._fail(self._stage_error(spec, None, exc))
        finally:
            ch.close_reader()

    async def _acknowledge(self, sink: _SinkRuntime, marker: Marker) -> None:
        """The sink wrote every item before ``marker``: let it commit, then acknowledge."""
        ckpt = self.checkpointer
        if ckpt is None or sink.spec.stage == "dead_letter":
            return
        try:
            await sink.commit_checkpoint(ckpt.checkpoint_for(marker))
        except Exception as exc:
            await self._fail(self._stage_error(sink.spec, sink.stats.items_out, exc))
            raise _Stop from exc
        await ckpt.ack(marker, sink.spec.stage)

    async def _write(self, sink: _SinkRuntime, batch: list[Any]) -> None:
        spec = sink.spec
        attempt = 1
        while True:
            began = perf_counter() if self._metrics_on else 0.0
            try:
                await sink.write(batch)
                if self._metrics_on:
                    sink.stats.latency.observe(perf_counter() - began)
                sink.stats.items_out += len(batch)
                sink.stats.batches_out += 1
                return
            except Exception as exc:
                error = self._stage_error(spec, sink.stats.items_out, exc)
                retry = spec.retry
                if spec.on_error == "retry" and retry is not None and attempt < retry.attempts:
                    await self._handled_error(error)
                    await anyio.sleep(retry.delay(attempt))
                    attempt += 1
                    continue
                if spec.on_error == "skip" or (
                    spec.on_error == "retry" and retry is not None and retry.then == "skip"
                ):
                    await self._handled_error(error)
                    sink.stats.skipped += len(batch)
                    if spec.stage != "dead_letter":
                        await self._dead_letter(error, batch)
                    return
                await self._fail(error)
                raise _Stop from exc

    # -- timeouts -----------------------------------------------------------------------

    async def _watchdog(self, scope: anyio.CancelScope) -> None:
        t = self.spec.timeouts
        if t.first_item is None and t.idle is None and t.total is None:
            return
        with scope:
            while True:
                now = time.monotonic()
                deadlines: list[tuple[float, str, float]] = []
                if t.total is not None:
                    deadlines.append((self._t0 + t.total, "total", t.total))
                if t.first_item is not None and self._first_item_at is None:
                    deadlines.append((self._t0 + t.first_item, "first item", t.first_item))
                if t.idle is not None:
                    deadlines.append((self._last_item_at + t.idle, "idle", t.idle))
                when, which, seconds = min(deadlines)
                if now >= when:
                    self.errors.append(PipelineTimeout(self.spec.name, which, seconds))
                    if self._cancel_reason is None:
                        self._cancel_reason = f"{which} timeout"
                    if self._scope is not None:
                        self._scope.cancel()
                    return
                await anyio.sleep(when - now)


class _FanOut:
    """Sends every batch to each sink's channel (each sink sees every item)."""

    def __init__(self, channels: list[BatchChannel]) -> None:
        self.channels = channels
        self.capacity = min(c.capacity for c in channels)

    async def put_batch(self, batch: list[Any]) -> None:
        last = len(self.channels) - 1
        for i, ch in enumerate(self.channels):
            # a channel may adopt the list it is given, so each but the last gets a copy
            await ch.put_batch(batch if i == last else batch.copy())

    def close_writer(self) -> None:
        for ch in self.channels:
            ch.close_writer()

    def put_marker(self, marker: Any) -> None:
        for ch in self.channels:
            ch.put_marker(marker)

    def add_producer_scope(self, scope: anyio.CancelScope) -> None:
        for ch in self.channels:
            ch.add_producer_scope(scope)


_Output = BatchChannel | _FanOut
"""Where a stage writes: one channel, or a fan-out to several sinks' channels."""


def _default_services() -> EngineServices:
    """The default engine's services, for runs started without an engine."""
    from .engine import default_engine

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
