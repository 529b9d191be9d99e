"""The step stages of a run: runs of item-wise steps fused into one loop per batch (see
:mod:`headwater.core.fusion`), and ``stream`` transformers, each in its own task."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import AsyncGenerator
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..channels import BatchChannel
from ..checkpoints import CheckpointError
from ..commit import Marker
from ..fusion import FusedStep, ItemFailure
from ..invoke import params_and_ctx, positional_arity
from ..metrics import Probe
from ..pipeline import ResolvedStage
from ..watermarks import LateItem, Watermark
from .handle import StageStats
from .pumps import _pump_async
from .tasks import _producer, _Stop

if TYPE_CHECKING:
    from .run import _Run
    from .sinks import _Output


class _Stages:
    """Builds the chain of step stages and runs each one's loop."""

    def __init__(self, run: _Run) -> None:
        self.run: _Run = weakref.proxy(run)  # no reference cycle: see _Run
        self._timed = run.metrics_on
        """Time each step per batch (metrics on)."""

    def build(
        self, tg: TaskGroup, out: _Output, steps: list[ResolvedStage] | None = None
    ) -> BatchChannel:
        """Start every step stage (the pipeline's, or ``steps``: a sink's branch), last
        to first; return the channel the stage before them writes to."""
        run = self.run
        groups: list[list[ResolvedStage]] = []
        for step in run.resolved.steps if steps is None else steps:
            if step.component.itemwise and groups and groups[-1][0].component.itemwise:
                groups[-1].append(step)
            else:
                groups.append([step])
        downstream: _Output = out
        for group in reversed(groups):
            inp = BatchChannel(run.capacity)
            run.queues[group[0].stage] = inp
            if group[0].component.itemwise:
                fused = [FusedStep(s, run.ctx(s.stage, s.component)) for s in group]
                for st in fused:
                    run.stats[st.stage] = StageStats()
                    if steps is not None and hasattr(st.state, "snapshot"):
                        run.checkpoints.branch_states.add(st.stage)
                tg.start_soon(_producer, run, downstream, self._fused, inp, downstream, fused)
            else:
                tg.start_soon(_producer, run, downstream, self._stream, inp, downstream, group[0])
            downstream = inp
        if not groups:
            # sources feed the sinks directly through one hop
            inp = BatchChannel(run.capacity)
            tg.start_soon(_producer, run, downstream, self._fused, inp, downstream, [])
            downstream = inp
        assert isinstance(downstream, BatchChannel)
        return downstream

    # -- fused item-wise steps -------------------------------------------------------------

    async def _fused(self, inp: BatchChannel, out: _Output, steps: list[FusedStep]) -> None:
        """The loop of a fused stage: every batch of ``inp`` through ``steps``, into ``out``.

        Order: batches are processed one at a time in arrival order, and each step keeps
        the order of its items, so the output order is the input order.

        Backpressure: the next batch is taken only after the previous one's output was
        put into ``out`` (waiting while it is full); what piles up meanwhile waits in
        ``inp``, whose producers wait in turn.

        Markers: a batch carrying checkpoint markers is split at each one (the steps'
        states are snapshotted there and the marker forwarded right after the output of
        the items before it); latency probes follow the whole batch. The final marker
        is held back and forwarded after the steps flushed their tails.

        Time-driven steps (``tick``) are ticked between batches, also while no input
        arrives. Once a step is exhausted (``take`` got enough) the loop stops reading;
        like the end of the input, that flushes the steps' tails downstream.

        Ends: in every case the input's reader is closed, which cancels the producers
        upstream. A failure of a step (under policy ``fail``), of a flush, a tick or a
        snapshot is recorded and :class:`_Stop` raised; cancellation propagates.
        """
        run = self.run
        checkpoints = run.checkpoints
        stats = [run.stats[s.stage] for s in steps]
        held: list[Marker] = []
        try:
            checkpoints.restore_states(steps)
        except CheckpointError as exc:
            await run.fail(exc)
            raise _Stop from exc
        ticking = [(i, s) for i, s in enumerate(steps) if s.tick is not None]
        next_tick = math.inf
        clocked = [s.state for s in steps if getattr(s.state, "watermark", None) is not None]
        sent = -math.inf
        try:
            exhausted = False
            while not exhausted:
                if clocked and clocked[-1].watermark > sent:
                    # the watermark of the stage's last event-time step, after its output
                    sent = clocked[-1].watermark
                    out.put_marker(Watermark(sent))
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
                # a stopping run's steps keep their tails: their states are in the stop
                # markers' checkpoint, and a resumed run goes on from them
                if step.flush is not None and not checkpoints.stopping:
                    try:
                        tail = step.flush()
                    except Exception as exc:
                        await run.fail(run.stage_error(step.spec, None, exc))
                        raise _Stop from exc
                    if tail:
                        tail = await self._apply(steps, stats, i + 1, list(tail))
                        if tail:
                            await out.put_batch(tail)
            checkpoints.complete(held)
            for marker in held:
                await checkpoints.snapshot_states(steps, marker)
                out.put_marker(marker)
        finally:
            inp.close_reader()
            checkpoints.branch_ended(steps)

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

        Each part goes through every step and into ``out`` before the marker after it:
        the steps' states are snapshotted into the marker, then the marker is placed
        after that part's output. A final marker is appended to ``held`` instead (the
        stage forwards it at its end). Latency probes do not split batches: they follow
        the whole batch. Failures propagate as in :meth:`_apply`.
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
            if isinstance(marker, Watermark):
                await self._advance(steps, stats, marker, out)
            elif marker.final:
                held.append(marker)  # forwarded after the steps flushed, at the end
            else:
                await self.run.checkpoints.snapshot_states(steps, marker)
                out.put_marker(marker)
        rest = batch[start:]
        if rest:
            rest = await self._apply(steps, stats, 0, rest)
            if rest:
                await out.put_batch(rest)
        for probe in probes:
            out.put_marker(probe)

    async def _advance(
        self, steps: list[FusedStep], stats: list[StageStats], mark: Watermark, out: _Output
    ) -> None:
        """An upstream watermark arrived: the stage's first event-time step (one with
        ``advance``) takes it, and what it emits goes on through the steps after it; a
        stage without one forwards the watermark as it is."""
        for i, step in enumerate(steps):
            advance = getattr(step.state, "advance", None)
            if advance is not None:
                try:
                    due = advance(mark.value)
                except Exception as exc:
                    run = self.run
                    await run.fail(run.stage_error(step.spec, None, exc))
                    raise _Stop from exc
                if due:
                    stats[i].items_out += len(due)
                    due = await self._apply(steps, stats, i + 1, list(due))
                    if due:
                        await out.put_batch(due)
                return
        out.put_marker(mark)

    async def _run_ticks(
        self,
        steps: list[FusedStep],
        stats: list[StageStats],
        ticking: list[tuple[int, FusedStep]],
        out: _Output,
    ) -> None:
        """Tick each time-driven step in order; what a tick emits goes through the steps
        after it and into ``out`` (waiting while it is full). A raising ``tick`` fails
        the run (:class:`_Stop`)."""
        run = self.run
        for i, step in ticking:
            assert step.tick is not None
            try:
                due = step.tick()
            except Exception as exc:
                await run.fail(run.stage_error(step.spec, None, exc))
                raise _Stop from exc
            if due:
                stats[i].items_out += len(due)
                due = await self._apply(steps, stats, i + 1, list(due))
                if due:
                    await out.put_batch(due)

    async def _apply(
        self, steps: list[FusedStep], stats: list[StageStats], start: int, batch: list[Any]
    ) -> list[Any]:
        """Run ``batch`` through ``steps[start:]`` in order; return the last step's output.

        No await between steps on the fast path: under policy ``fail`` a step is one
        compiled call per batch, and its first failing item fails the run with that
        item's position in the step's input (:class:`_Stop`). Other policies go item by
        item through :meth:`_on_item_error` (retry, skip to the dead-letter sink, or
        fail). Counters are updated once per step and batch; an empty output stops the
        chain early.
        """
        timed = self._timed
        upstream: float | None = None
        """The watermark of the last event-time step run so far, for the next ones."""
        for i in range(start, len(steps)):
            step = steps[i]
            st = stats[i]
            state = step.state
            n = len(batch)
            st.items_in += n
            st.batches_in += 1
            began = perf_counter() if timed else 0.0
            if step.policy == "fail":
                try:
                    batch = step.fast(batch)
                except ItemFailure as failure:
                    pos = None if failure.index is None else step.n_in + failure.index
                    run = self.run
                    await run.fail(run.stage_error(step.spec, pos, failure.cause))
                    raise _Stop from failure.cause
            else:
                batch = await step.guarded(batch, self._on_item_error)
            if upstream is not None and (advance := getattr(state, "advance", None)):
                batch = batch + advance(upstream)  # what the earlier step's watermark made due
            step.n_in += n
            if timed:
                st.latency.observe(perf_counter() - began)
            take_evicted = getattr(state, "take_evicted", None)
            if take_evicted is not None:
                st.evicted += take_evicted()
            take_late = getattr(state, "take_late", None)
            if take_late is not None:
                await self._late(step, st, take_late)
                upstream = state.watermark
            st.items_out += len(batch)
            if not batch:
                break
            st.batches_out += 1
        return batch

    async def _late(self, step: FusedStep, st: StageStats, take_late: Any) -> None:
        """Count the items an event-time step found late; send those it set aside to
        the dead-letter sink (``late: dead_letter``)."""
        items, dropped = take_late()
        n = len(items) + dropped
        if not n:
            return
        st.late += n
        st.skipped += n
        if items:
            run = self.run
            cause = LateItem(
                "the item's event time was below the watermark when it arrived (late by "
                "more than the step's lateness)"
            )
            await run.sinks.dead_letter(run.stage_error(step.spec, None, cause), items)

    async def _on_item_error(
        self,
        step: FusedStep,
        position: int | None,
        items: list[Any],
        exc: BaseException,
        attempt: int,
    ) -> bool:
        """Apply the step's error policy to failed items; True means "try them again".

        ``retry``: reported as handled, then True after the policy's delay while
        attempts remain. ``skip`` (or ``retry`` then ``skip``): reported as handled,
        counted as skipped and sent to the dead-letter sink, then False. Otherwise the
        failure is recorded and :class:`_Stop` raised.
        """
        run = self.run
        spec = step.spec
        error = run.stage_error(spec, position, exc)
        retry = spec.retry
        if spec.on_error == "retry" and retry is not None and attempt < retry.attempts:
            await run.handled_error(error)
            await anyio.sleep(retry.delay(attempt))
            return True
        if spec.on_error == "skip" or (retry is not None and retry.then == "skip"):
            await run.handled_error(error)
            run.stage_stats(spec.stage).skipped += len(items)
            await run.sinks.dead_letter(error, items)
            return False
        await run.fail(error)
        raise _Stop from exc

    # -- stream transformers ---------------------------------------------------------------

    async def _reject(
        self,
        spec: ResolvedStage,
        stats: StageStats,
        items: list[Any],
        exc: BaseException,
        position: int | None,
    ) -> None:
        """``ctx.reject`` of a stream transformer: skip to the dead-letter sink under
        ``skip`` (or ``retry`` then ``skip``: the transformer did its own retrying),
        raise ``exc`` otherwise (the pump records the failure)."""
        retry = spec.retry
        if spec.on_error == "skip" or (
            spec.on_error == "retry" and retry is not None and retry.then == "skip"
        ):
            run = self.run
            error = run.stage_error(spec, position, exc)
            await run.handled_error(error)
            stats.skipped += len(items)
            await run.sinks.dead_letter(error, items)
            return
        raise exc

    async def _stream(self, inp: BatchChannel, out: _Output, spec: ResolvedStage) -> None:
        """The loop of a ``stream`` transformer: its async generator reads ``inp`` item by
        item and what it yields is pumped into ``out`` (see :func:`_pump_async`).

        Order and backpressure are the transformer's: it pulls the next item when it is
        ready, and a full ``out`` suspends it. A marker is forwarded when the
        transformer asks for the first item after it, so its output for every item before
        the marker is downstream already; the final marker is held back and forwarded
        once the transformer returned.

        A transformer working on several items at once (``ctx.start_soon``) delays
        markers with ``ctx.hold_markers`` until its output for the items before them is
        out, and hands items it gives up on to the step's ``on_error`` with
        ``ctx.reject``.

        Ends: the input's reader is closed (the producers upstream stop) and the item
        feed ``aclose``-d (shielded), whatever happened; the transformer's own failure
        is recorded by the pump (:class:`_Stop`).
        """
        run = self.run
        stats = run.stage_stats(spec.stage)
        ctx = run.ctx(spec.stage, spec.component)
        ctx._reject = partial(self._reject, spec, stats)
        settled = ctx._settled

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
                        for wait in settled:
                            await wait()
                        out.put_marker(marker)
                for item in batch[start:]:
                    yield item

        feed = items()
        lead = params_and_ctx(spec.params, ctx)
        fn = spec.component.obj
        try:
            try:
                async with anyio.create_task_group() as helpers:
                    ctx._spawn = helpers.start_soon
                    agen = fn(feed, *lead[: max(0, positional_arity(fn) - 1)])
                    await _pump_async(run, agen, out, stats, spec, batched=False)
                    helpers.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # the transformer's own failure (recorded: _Stop) or its one helper's,
                # without what it caused in the other helpers (cancellations, which trio
                # reports too, and their errors after the transformer stopped)
                cancelled = anyio.get_cancelled_exc_class()
                errors = [e for e in group.exceptions if not isinstance(e, cancelled)]
                stops = [e for e in errors if isinstance(e, _Stop)]
                first = (stops or errors or list(group.exceptions))[0]
                if stops or len(errors) <= 1:
                    raise first from first.__cause__
                raise
            run.checkpoints.complete(held)
            for marker in held:
                out.put_marker(marker)
        finally:
            inp.close_reader()
            with anyio.CancelScope(shield=True):
                await feed.aclose()
