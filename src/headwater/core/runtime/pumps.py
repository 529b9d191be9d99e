"""Pumps: moving what a generator yields (a source's, a ``stream`` transformer's) into the
channel (or fan-out) that follows it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ..channels import BatchChannel, DownstreamClosed, ThreadFeed
from ..pipeline import ResolvedStage
from .handle import StageStats
from .tasks import CLEANUP_GRACE, _FallBack, _Stop

if TYPE_CHECKING:
    from .run import _Run
    from .sinks import _Output

log = logging.getLogger("headwater.runtime")


async def _pump_async(
    run: _Run,
    agen: Any,
    out: _Output,
    stats: StageStats,
    stage: ResolvedStage,
    batched: bool,
    fallback: bool = False,
) -> None:
    """Move an async generator's output into ``out``; always ``aclose`` it.

    Order: items reach ``out`` in the order the generator yields them.

    Per-item generators feeding one channel take the fast path: each item is appended
    to the channel's pending list with no await; the consumer is woken when that list
    goes from empty to one item, and the pump waits (backpressure) only once the list
    holds ``capacity`` items, so a fast generator fills whole batches and a slow one
    hands each item on at once. Batched generators (or a fan-out) put whole chunks,
    waiting while the channel is full. ``stats.items_out`` and the run's clock (first
    and last item, latency probes) are updated per batch, and exactly at the end.

    Ends: :class:`DownstreamClosed` (the consumer stopped reading), :class:`_Stop` and
    cancellation propagate. Any other error of the generator is recorded as the stage's
    failure, at the position of the items produced so far, and :class:`_Stop` raised;
    with ``fallback``, an error before the first item raises :class:`_FallBack` instead.
    In every case the generator is ``aclose``-d, shielded, within :data:`CLEANUP_GRACE`
    (an error while closing is logged).
    """
    produced = 0
    base = stats.items_out
    mark = run.clock.mark
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
                mark(len(chunk), out)
        else:
            cap = out.capacity
            async for item in agen:
                # re-read every time: the consumer swaps the list when it takes it
                items = out.items
                items.append(item)
                produced += 1
                n = len(items)
                if n == 1:
                    mark(1, out)
                    stats.items_out = base + produced
                    if out.reader_closed:
                        raise DownstreamClosed
                    out.wake()
                elif n >= cap:
                    mark(n, out)
                    stats.items_out = base + produced
                    await out.pushed()
    except (DownstreamClosed, _Stop, anyio.get_cancelled_exc_class()):
        raise
    except Exception as exc:
        if fallback and not produced:
            raise _FallBack(exc) from exc
        await run.fail(run.stage_error(stage, produced, exc))
        raise _Stop from exc
    finally:
        stats.items_out = base + produced
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_GRACE):
            try:
                await agen.aclose()
            except Exception:
                log.exception("generator of %s raised while closing", stage.stage)


async def _pump_thread(
    run: _Run,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    out: BatchChannel,
    stats: StageStats,
    stage: ResolvedStage,
    batched: bool,
    fallback: bool = False,
) -> None:
    """Run a sync generator in a worker thread, feeding ``out`` with backpressure.

    The thread hands items over through a :class:`ThreadFeed` bounded at the channel's
    capacity: it blocks while the feed is full, so backpressure reaches the generator.
    Whatever arrived since the last look moves into ``out`` as one batch, in the order
    yielded (chunks of a batched generator are flattened), waiting while ``out`` is
    full; the clock and ``stats`` are updated per batch.

    The generator's exception ends the stage: an ``Exception`` is recorded as its
    failure and :class:`_Stop` raised (with ``fallback``, before the first item,
    :class:`_FallBack` instead), anything else is re-raised. On every exit
    (end, error, cancellation, :class:`DownstreamClosed`) the feed is stopped: the
    thread stops and closes the generator at its next item. It is a daemon thread, so a
    generator blocked on input does not keep the process alive.
    """
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
    mark = run.clock.mark
    base = stats.items_out
    try:
        while True:
            items, done = await feed.drain()
            if items:
                if batched:
                    items = [x for chunk in items for x in chunk]
                stats.items_out += len(items)
                await out.put_batch(items)
                mark(len(items), out)
            if done:
                if feed.error is not None:
                    err = feed.error
                    if isinstance(err, Exception):
                        if fallback and stats.items_out == base:
                            raise _FallBack(err) from err
                        await run.fail(run.stage_error(stage, stats.items_out, err))
                        raise _Stop from err
                    raise err
                break
    finally:
        feed.stop()
