"""Sources of a run and their composition: ``merge`` (the default), ``concat`` and ``zip``."""

from __future__ import annotations

import inspect
import math
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..channels import BatchChannel, DownstreamClosed
from ..checkpoints import CheckpointError
from ..commit import Marker
from ..errors import StageError
from ..invoke import params_and_ctx, positional_arity
from ..join import JoinState, Position
from ..metrics import Probe
from ..pipeline import ResolvedStage
from ..watermarks import LateItem, Watermark
from .handle import StageStats
from .pumps import _pump_async, _pump_thread
from .tasks import _FallBack, _producer, _Stop

if TYPE_CHECKING:
    from .run import _Run


class _Sources:
    """Starts the run's sources, composed into the channel the first stage reads."""

    def __init__(self, run: _Run) -> None:
        self.run: _Run = weakref.proxy(run)  # no reference cycle: see _Run

    def start(self, tg: TaskGroup, head: BatchChannel) -> None:
        """Start every source in ``tg``, composed as the pipeline says, writing to ``head``.

        ``merge``: every source writes to ``head`` concurrently (as many writers; the
        stream ends when all did). ``concat``: one task runs the sources one after the
        other. ``zip``: each source writes to its own channel and one task zips them.
        """
        run = self.run
        spec = run.spec
        order = spec.source_order()
        mode = spec.compose.mode if spec.compose else "merge"
        stages = [run.resolved.sources[n] for n in order]
        if mode == "merge":
            head.add_writers(len(stages) - 1)
            for stage in stages:
                tg.start_soon(_producer, run, head, self._source, stage, head)
        elif mode == "concat":
            tg.start_soon(_producer, run, head, self._concat, stages, head)
        else:
            chans = [BatchChannel(run.capacity) for _ in stages]
            for stage, ch in zip(stages, chans, strict=True):
                tg.start_soon(_producer, run, ch, self._source, stage, ch)
            body = self._zip if mode == "zip" else self._join
            tg.start_soon(_producer, run, head, body, chans, head)

    async def _concat(self, stages: list[ResolvedStage], out: BatchChannel) -> None:
        """Run the sources one after the other into ``out``: all of one before the next
        (none after a clean stop)."""
        for stage in stages:
            if self.run.checkpoints.stopping:
                return
            await self._source(stage, out)

    async def _zip(self, chans: list[BatchChannel], out: BatchChannel) -> None:
        """Put tuples of the sources' items, one of each in order, into ``out``.

        Each round waits until every input has an item, then emits as many tuples as the
        shortest input holds, as one batch (waiting while ``out`` is full). It ends
        with the shortest input; its readers are closed in every case, which stops the
        other sources. Markers are dropped: zipped sources are not checkpointed, and
        their latency probes do not survive the zip.
        """
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

    async def _join(self, chans: list[BatchChannel], out: BatchChannel) -> None:
        """Join the two sources' items (see :mod:`headwater.core.join`) into ``out``.

        A reader task per input hands whole batches over (whichever input has some);
        pairs are put into ``out`` as they are found, followed by the join's watermark
        whenever it advanced. While no batch arrives the watermark is recomputed every
        ``idle_timeout`` seconds (an idle input stops holding it back). Late items are
        counted as the ``compose.join`` stage's (and dead-lettered with ``late:
        dead_letter``); a failure (a missing field, an event time that is not one)
        fails the run as that stage's error. Readers are closed at the end in every case.

        Checkpoints: each source places a :class:`Position` marker after the items a
        position it reported covers, and the join takes in an input's items only up to
        its last such marker (the rest waits for the next one). So at any moment each
        input stands where its source can resume, and a checkpoint marker (positions of
        both, the join's state) can follow the pairs emitted so far whenever one is due.
        """
        run = self.run
        spec = run.spec.compose.join if run.spec.compose else None
        assert spec is not None
        state = JoinState(spec)
        stats = run.stage_stats("compose.join")
        joint = _JoinCut(run, state, out)
        if not await joint.restore():
            raise _Stop
        send, receive = anyio.create_memory_object_stream[
            tuple[int, list[Any] | None, list[tuple[int, Any]]]
        ](2)

        async def pull(side: int, ch: BatchChannel, tx: Any) -> None:
            async with tx:
                while True:
                    base = ch.taken
                    try:
                        batch = await ch.get()
                    except anyio.EndOfStream:
                        break
                    marks = [(o, m) for o, m in ch.pop_markers(base) if not isinstance(m, Probe)]
                    if batch or marks:
                        await tx.send((side, batch, marks))
                await tx.send((side, None, []))

        sent = -math.inf
        open_inputs = 2
        try:
            async with anyio.create_task_group() as tg, receive:
                with send:
                    for side, ch in enumerate(chans):
                        tg.start_soon(pull, side, ch, send.clone())
                while open_inputs:
                    got = None
                    with anyio.move_on_after(spec.idle_timeout or math.inf):
                        got = await receive.receive()
                    pairs: list[Any] = []
                    late: list[Any] = []
                    try:
                        if got is not None:
                            side, batch, marks = got
                            if batch is None:
                                open_inputs -= 1
                                joint.ended(side)
                            else:
                                stats.items_in += len(batch)
                                for items in joint.take(side, batch, marks):
                                    state.add(side, items, pairs, late)
                        wm = state.advance(pairs)
                        if not open_inputs and joint.completed:
                            state.flush(pairs)
                    except Exception as exc:
                        await run.fail(self._join_error(exc))
                        raise _Stop from exc
                    if late:
                        await self._join_late(stats, spec.late == "dead_letter", late)
                    if pairs:
                        stats.items_out += len(pairs)
                        await out.put_batch(pairs)
                    if sent < wm < math.inf:
                        sent = wm
                        out.put_marker(Watermark(wm))
                    await joint.cut(finished=not open_inputs)
        finally:
            for ch in chans:
                ch.close_reader()

    def _join_error(self, exc: Exception) -> StageError:
        run = self.run
        return StageError(
            pipeline=run.spec.name, stage="compose.join", plugin=None, position=None, cause=exc
        )

    async def _join_late(self, stats: StageStats, dead_letter: bool, items: list[Any]) -> None:
        """Count late items of the join; dead-letter them when asked to."""
        stats.late += len(items)
        stats.skipped += len(items)
        if dead_letter:
            cause = LateItem("the item's event time was below the join's watermark")
            await self.run.sinks.dead_letter(self._join_error(cause), items)

    async def _source(self, stage: ResolvedStage, out: BatchChannel) -> None:
        """Run one source into ``out``, falling back to its fallback action when it fails
        before its first item (see :meth:`_produce`).

        A fallback (or a stand-in for an action that is not available) is announced with
        a ``Status`` event of state ``fallback`` and recorded in the run's summary; the
        error that caused it is reported as a handled error of the stage. It runs with the
        same params, into the same channel, under the same stage name.

        A clean cancellation of a checkpointed run stops the source (its scope is
        cancelled) and the stop marker follows its last item, as the final marker would.
        """
        run = self.run
        stats = run.stage_stats(stage.stage)
        if stage.stands_in_for is not None:
            run.fell_back(stage.stage, stage.stands_in_for, stage.component.name, stage.unavailable)
        fallback = stage.fallback
        checkpoints = run.checkpoints
        scope = checkpoints.source_scope()
        try:
            with scope:
                try:
                    await self._produce(stage, stage, out, stats, fallback is not None)
                except _FallBack as failed:
                    assert fallback is not None
                    error = run.stage_error(stage, 0, failed.error)
                    await run.handled_error(error)
                    cause = f"{type(failed.error).__name__}: {failed.error}"
                    run.fell_back(stage.stage, stage.component.name, fallback.component.name, cause)
                    await self._produce(stage, fallback, out, stats, False)
        finally:
            checkpoints.source_ended(scope)
        if scope.cancelled_caught and not out.reader_closed:
            out.put_marker(checkpoints.end_marker(out.taken + len(out.items)))

    async def _produce(
        self,
        stage: ResolvedStage,
        actual: ResolvedStage,
        out: BatchChannel,
        stats: StageStats,
        can_fall_back: bool,
    ) -> None:
        """Run the action of ``actual`` (``stage`` itself or its fallback) as ``stage``,
        with the pump its shape needs.

        Generators are pumped (see :func:`_pump_async`, :func:`_pump_thread`): items in
        the order yielded, with backpressure. A function or coroutine is called once and
        its value (or list of values, when batched) put as one batch. With checkpoints,
        the source's context reports positions as markers, and a source that ended
        normally is followed by the final marker (unless its consumer stopped reading).

        :class:`DownstreamClosed`, :class:`_Stop` and cancellation propagate; so does
        :class:`_FallBack`, raised when ``can_fall_back`` and the action failed before its
        first item. Any other error is recorded as the source's failure (at the count of
        its items so far) and :class:`_Stop` raised.
        """
        run = self.run
        comp = actual.component
        ctx = run.ctx(stage.stage, comp)
        ckpt = run.checkpoints.checkpointer
        if ckpt is not None:
            run.checkpoints.wire_source(ctx, comp, stage.stage.removeprefix("sources."), out)
        lead = params_and_ctx(actual.params, ctx)
        args = lead[: positional_arity(comp.obj)]
        try:
            if comp.shape == "async_gen":
                agen = comp.obj(*args)
                await _pump_async(run, agen, out, stats, stage, comp.batched, can_fall_back)
            elif comp.shape == "sync_gen":
                await _pump_thread(
                    run, comp.obj, args, out, stats, stage, comp.batched, can_fall_back
                )
            else:
                try:
                    if comp.shape == "coroutine":
                        value = await comp.obj(*args)
                    else:
                        value = await anyio.to_thread.run_sync(lambda: comp.obj(*args))
                        if inspect.isawaitable(value):
                            value = await value
                except Exception as exc:
                    if can_fall_back:
                        raise _FallBack(exc) from exc
                    raise
                items = list(value) if comp.batched else [value]
                run.clock.mark(len(items))
                stats.items_out += len(items)
                await out.put_batch(items)
            if ckpt is not None and not out.reader_closed:
                out.put_marker(run.checkpoints.end_marker(out.taken + len(out.items)))
        except (DownstreamClosed, _Stop, _FallBack, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            await run.fail(run.stage_error(stage, stats.items_out, exc))
            raise _Stop from exc


class _JoinCut:
    """The checkpoint side of a join: what each input took in, and the cuts.

    Without checkpoints every item is taken in at once and nothing else happens.
    """

    def __init__(self, run: Any, state: JoinState, out: BatchChannel) -> None:
        self.run = run
        self.state = state
        self.out = out
        self.ckpt = run.checkpoints.checkpointer
        committed = self.ckpt.committed if self.ckpt is not None else None
        self.positions: dict[str, Any] = dict(committed.positions) if committed else {}
        """Each source's position up to which the join took its items in."""
        self.pending: list[list[Any]] = [[], []]
        """Items after each input's last position, waiting for the next one."""
        self.ends: list[Marker | None] = [None, None]
        self.taken = 0

    async def restore(self) -> bool:
        """Continue from the checkpoint's join state, if any; False (the run failed) when
        it cannot be restored."""
        ckpt = self.ckpt
        if ckpt is None or "compose.join" not in ckpt.states:
            return True
        try:
            self.state.restore(ckpt.states["compose.join"])
        except Exception as exc:
            await self.run.fail(
                CheckpointError(
                    f"compose.join: cannot restore the join's state from the checkpoint: "
                    f"{exc}; reset the checkpoint (headwater checkpoints reset "
                    f"{self.run.spec.name}) to start over"
                )
            )
            return False
        return True

    def take(self, side: int, batch: list[Any], marks: list[tuple[int, Any]]) -> list[list[Any]]:
        """The parts of ``batch`` (and of what waited) the join takes in now."""
        if self.ckpt is None:
            return [batch]
        parts = []
        start = 0
        for offset, mark in marks:
            part = self.pending[side] + batch[start:offset]
            self.pending[side] = []
            start = offset
            if isinstance(mark, Position):
                self.positions[mark.source] = mark.position
                parts.append(part)
            elif isinstance(mark, Marker):
                # the source ended: completed (take the rest) or stopped (its items after
                # the last position come again when the run resumes)
                self.ends[side] = mark
                if mark.final:
                    parts.append(part)
        self.pending[side].extend(batch[start:])
        for part in parts:
            self.taken += len(part)
        return parts

    def ended(self, side: int) -> None:
        """Input ``side`` has nothing more."""
        end = self.ends[side]
        if self.ckpt is None or (end is not None and end.final):
            self.state.end(side)

    @property
    def completed(self) -> bool:
        """Both inputs ended normally (not a stopping run's sources)."""
        return self.ckpt is None or all(e is not None and e.final for e in self.ends)

    async def cut(self, *, finished: bool) -> None:
        """Place a checkpoint marker after the output so far when one is due (at the end,
        the final or stop marker), with both inputs' positions and the join's state."""
        ckpt = self.ckpt
        if ckpt is None:
            return
        if finished:
            marker = ckpt.final(self.taken) if self.completed else ckpt.stopped(self.taken)
            marker.positions = dict(self.positions)
        else:
            marker = ckpt.cut(self.positions, self.taken)
            if marker is None:
                return
        try:
            marker.states["compose.join"] = self.state.snapshot()
        except Exception as exc:
            run = self.run
            await run.fail(
                StageError(
                    pipeline=run.spec.name,
                    stage="compose.join",
                    plugin=None,
                    position=None,
                    cause=exc,
                )
            )
            raise _Stop from exc
        self.out.put_marker(marker)
