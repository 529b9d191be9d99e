"""Sinks of a run: their instances, their tasks and writes, the fan-out to several sinks
and the dead-letter sink."""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio

from ..channels import BatchChannel
from ..checkpoints import Checkpoint
from ..context import StreamContext
from ..errors import StageError
from ..invoke import params_and_ctx, positional_arity
from ..metrics import Probe
from ..pipeline import ResolvedStage
from ..watermarks import Watermark
from .handle import StageStats
from .tasks import CLEANUP_GRACE, _Stop

if TYPE_CHECKING:
    from .run import _Run

log = logging.getLogger("headwater.runtime")


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
        """Write one batch: awaited in the event loop when async, else in a worker thread.

        The caller awaits each write before the next, so a sink never sees two of its
        methods run at the same time, and a slow sink slows its channel's producers.
        """
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


async def _close_sinks(sinks: list[_SinkRuntime], error: BaseException | None) -> None:
    """Close every sink not closed yet with the run's error, each within
    :data:`CLEANUP_GRACE`; a sink raising in ``close`` is logged, not raised. The caller
    shields it from cancellation."""
    for s in sinks:
        if not s.closed:
            with anyio.move_on_after(CLEANUP_GRACE):
                try:
                    await s.close(error)
                except Exception:
                    log.exception("sink %s raised in close()", s.spec.stage)


class _FanOut:
    """Sends every batch to each sink's channel (each sink sees every item)."""

    def __init__(self, channels: list[BatchChannel]) -> None:
        self.channels = channels
        self.capacity = min(c.capacity for c in channels)

    async def put_batch(self, batch: list[Any]) -> None:
        """Put ``batch`` into every sink's channel, one after the other, in sink order.

        Backpressure: waits while any of them is full, so the slowest sink sets the pace.
        Every sink sees the same items in the same order. Raises
        :class:`DownstreamClosed` as soon as one sink stopped reading (the sinks before
        it already got the batch). Takes ``batch`` over, like a channel does.
        """
        last = len(self.channels) - 1
        for i, ch in enumerate(self.channels):
            # a channel may adopt the list it is given, so each but the last gets a copy
            await ch.put_batch(batch if i == last else batch.copy())

    def close_writer(self) -> None:
        for ch in self.channels:
            ch.close_writer()

    def put_marker(self, marker: Any) -> None:
        """Place ``marker`` in every sink's channel after the items put so far (no wait)."""
        for ch in self.channels:
            ch.put_marker(marker)

    def add_producer_scope(self, scope: anyio.CancelScope) -> None:
        for ch in self.channels:
            ch.add_producer_scope(scope)


_Output = BatchChannel | _FanOut
"""Where a stage writes: one channel, or a fan-out to several sinks' channels."""


class _Sinks:
    """The sink side of a run: one task per sink draining its channel, and the dead-letter
    channel that items skipped by ``on_error: skip`` go to."""

    def __init__(self, run: _Run) -> None:
        self.run: _Run = weakref.proxy(run)  # no reference cycle: see _Run
        self._timed = run.metrics_on
        """Time each write (metrics on)."""
        self.dead: BatchChannel | None = None
        """The dead-letter sink's channel, while the stages run (None without one)."""

    async def task(self, sink: _SinkRuntime, ch: BatchChannel) -> None:
        """Drain ``ch`` into ``sink`` until the end of the stream, then close the sink.

        Batches are written in channel order, one write at a time: while a write runs,
        nothing is taken from ``ch``, so a slow sink fills it and its producers wait.
        A batch carrying checkpoint markers is written in parts, and each marker is
        acknowledged once every item before it was written; latency probes are observed
        after the whole batch. On a normal end the sink is closed (shielded) and its
        result kept; when the run is failing or cancelled it is left to the run, which
        closes it with the error. A failure is recorded and the channel's reader closed,
        so the producers upstream stop.
        """
        run = self.run
        spec = sink.spec
        stats = sink.stats
        write = self._write
        try:
            while True:
                base = ch.taken
                try:
                    batch = await ch.get()
                except anyio.EndOfStream:
                    break
                stats.items_in += len(batch)
                stats.batches_in += 1
                if not ch.has_markers:
                    await write(sink, batch)
                    continue
                start = 0
                probes: list[Probe] = []
                for offset, marker in ch.pop_markers(base):
                    if isinstance(marker, Probe):
                        probes.append(marker)  # observed once the whole batch is written
                        continue
                    if isinstance(marker, Watermark):
                        continue  # event time ends here: a sink has no use for it
                    if offset > start:
                        await write(sink, batch[start:offset])
                    start = offset
                    await run.checkpoints.acknowledge(sink, marker)
                if start < len(batch):
                    await write(sink, batch[start:])
                now = perf_counter()
                for probe in probes:
                    run.e2e.observe(now - probe.created)
            if run.errors or run.cancel_reason is not None:
                return  # the run is ending abnormally: closed with its error by the run
            with anyio.CancelScope(shield=True):
                result = await sink.close(None)
            run.outputs[spec.stage.removeprefix("sinks.")] = result
        except _Stop:
            pass
        except Exception as exc:
            await run.fail(run.stage_error(spec, None, exc))
        finally:
            ch.close_reader()

    async def _write(self, sink: _SinkRuntime, batch: list[Any]) -> None:
        """Write one batch, applying the sink's error policy; counts it and times it.

        ``retry`` writes the same batch again after the policy's delay; ``skip`` (or
        ``retry`` then ``skip``) drops the batch to the dead-letter sink and goes on;
        otherwise the failure is recorded and :class:`_Stop` raised. Cancellation is
        never caught: an async write is interrupted, a sync one (in a worker thread)
        first runs to its end.
        """
        run = self.run
        spec = sink.spec
        timed = self._timed
        attempt = 1
        while True:
            began = perf_counter() if timed else 0.0
            try:
                await sink.write(batch)
                if timed:
                    sink.stats.latency.observe(perf_counter() - began)
                sink.stats.items_out += len(batch)
                sink.stats.batches_out += 1
                return
            except Exception as exc:
                error = run.stage_error(spec, sink.stats.items_out, exc)
                retry = spec.retry
                if spec.on_error == "retry" and retry is not None and attempt < retry.attempts:
                    await run.handled_error(error)
                    await anyio.sleep(retry.delay(attempt))
                    attempt += 1
                    continue
                if spec.on_error == "skip" or (
                    spec.on_error == "retry" and retry is not None and retry.then == "skip"
                ):
                    await run.handled_error(error)
                    sink.stats.skipped += len(batch)
                    if spec.stage != "dead_letter":
                        await self.dead_letter(error, batch)
                    return
                await run.fail(error)
                raise _Stop from exc

    async def dead_letter(self, error: StageError, items: list[Any]) -> None:
        """Send skipped items to the dead-letter sink, one record per item (the error's
        fields plus ``item``, and its own ``position``); waits while that channel is full.
        Does nothing when the pipeline has no dead-letter sink."""
        if self.dead is None:
            return
        info = error.to_dict()
        records = [{**info, "item": item} for item in items]
        if error.position is not None and len(items) > 1:
            for k, rec in enumerate(records):
                rec["position"] = error.position + k
        await self.dead.put_batch(records)
