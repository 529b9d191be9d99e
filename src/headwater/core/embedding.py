"""Iterating a run from code: :meth:`Engine.stream <headwater.Engine.stream>`,
``iter_sync`` and ``stream_action``.

A stream is an ordinary run with one more sink, the *tap*, after the declared ones: the
fan-out hands it every batch that leaves the steps, and it passes the batch on through a
memory channel of :data:`TAP_BUFFER` batches to the consumer's ``async for``. The tap
waits while that channel is full, so backpressure reaches the sources exactly as a slow
sink's would: the run is never more than its bounded channels ahead of the consumer,
and the declared sinks still receive every item. There is no second runtime.

The run is a task, so it needs a task group: the stream's own when it is used as
``async with engine.stream(...) as items:``, else the engine's (``async with engine:``).
``aclose()`` (or leaving the ``async with`` block, or the consumer being cancelled while
it waits for an item) cancels the run and waits for its clean-up: every generator's
``finally`` and every sink's ``close`` ran when it returns.

The stream object, its item generator and its run task share one :class:`_Shared` and
hold no reference to each other, so an abandoned stream is freed by reference counting
and its generator's finaliser cancels the run.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .cancel import CancelToken
from .components import Component, ComponentKind
from .errors import PipelineValidationError, ValidationIssue
from .events import Event, Progress
from .pipeline import (
    PipelineSpec,
    ResolvedPipeline,
    ResolvedStage,
    Timeouts,
    apply_override,
    parse_pipeline,
)

if TYPE_CHECKING:
    from .engine import Engine, PipelineLike
    from .plugins import PluginManager
    from .runtime import RunHandle, RunResult

__all__ = [
    "TAP_BUFFER",
    "TAP_NAME",
    "ActionParamsError",
    "ItemStream",
    "action_pipeline",
    "copy_tree",
    "iter_sync",
    "stream_spec",
]

log = logging.getLogger("headwater.embedding")

TAP_NAME = "$stream"
"""Name of the sink that hands a stream's items to its consumer (``sinks.$stream``)."""

TAP_BUFFER = 1
"""Batches the tap's memory channel holds besides the one being handed over."""

EventListener = Callable[[Event], Any]
"""Called with each control event of a stream's run (its result awaited if awaitable)."""


# ---------------------------------------------------------------------------------------
# The pipeline of a stream
# ---------------------------------------------------------------------------------------


def copy_tree(value: Any) -> Any:
    """A copy of the mappings (as dicts) and lists of a YAML-shaped value; other values
    are shared."""
    if isinstance(value, Mapping):
        return {key: copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_tree(item) for item in value]
    return value


def stream_spec(
    pipeline: PipelineLike, overrides: Mapping[str, Any] | None = None
) -> tuple[PipelineSpec, str | None]:
    """The model of a pipeline to stream, with ``overrides`` applied, and its file.

    ``overrides`` maps dotted paths to values exactly as ``headwater run --set`` does
    (``{"sources.n.params.stop": 5}``; see :func:`~headwater.core.pipeline.apply_override`).
    Unlike a pipeline to run, one to stream may declare no sink: its items go to the
    consumer only.
    """
    from .engine import to_spec
    from .yamlfile import load_yaml_file

    origin: str | None = None
    data: Any
    if isinstance(pipeline, PipelineSpec):
        if not overrides:
            return pipeline, None
        data = pipeline.model_dump(mode="python")
    elif isinstance(pipeline, str | Path):
        origin = str(pipeline)
        data = load_yaml_file(Path(pipeline), PipelineValidationError)
    elif isinstance(pipeline, Mapping):
        data = copy_tree(pipeline)
    else:
        as_dict = getattr(pipeline, "as_dict", None)
        if not callable(as_dict):
            return stream_spec(to_spec(pipeline)[0], overrides)
        data = as_dict()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        issue = ValidationIssue("", f"a pipeline must be a mapping, got {type(data).__name__}")
        raise PipelineValidationError([issue], origin)
    for key, value in (overrides or {}).items():
        apply_override(data, key, value, source=origin)
    if data.get("sinks"):
        return parse_pipeline(data, source=origin), origin
    # no sink declared: validate the rest as it is, then drop the stand-in
    spec = parse_pipeline({**data, "sinks": [{"sink": TAP_NAME}]}, source=origin)
    return spec.model_copy(update={"sinks": []}), origin


def action_pipeline(
    name: str, params: Mapping[str, Any], timeouts: Timeouts | Mapping[str, Any] | None
) -> dict[str, Any]:
    """The one-source pipeline ``stream_action`` streams: ``name`` with ``params``, no
    steps, no sinks (the source is called ``action``: its events' stage is
    ``sources.action``)."""
    data: dict[str, Any] = {
        "name": name,
        "sources": {"action": {"action": name, "params": dict(params)}},
    }
    if timeouts is not None:
        data["timeouts"] = (
            timeouts.model_dump() if isinstance(timeouts, Timeouts) else dict(timeouts)
        )
    return data


class ActionParamsError(PipelineValidationError):
    """``stream_action`` was called with params its action does not accept; each issue
    names the param (``pattern: required key is missing``)."""

    subject = "params"
    source_prefix = " for action "

    @classmethod
    def from_pipeline(cls, action: str, error: PipelineValidationError) -> ActionParamsError:
        """The issues of the one-source pipeline, with paths relative to the params."""
        issues = []
        for issue in error.issues:
            path = issue.path
            for prefix in ("sources.action.params.", "sources.action."):
                if path.startswith(prefix):
                    path = path.removeprefix(prefix)
                    break
            issues.append(ValidationIssue(path, issue.message))
        return cls(issues, action)


# ---------------------------------------------------------------------------------------
# The tap
# ---------------------------------------------------------------------------------------


class _Tap:
    """The last sink of a streamed run: hands each batch to the consumer.

    ``write`` waits while the consumer has :data:`TAP_BUFFER` batches it has not taken
    (backpressure); meanwhile the run's clock is *held*, so the consumer's own time does
    not count towards the ``idle`` timeout. ``close`` ends the consumer's stream.
    """

    def __init__(self, shared: _Shared) -> None:
        self._send = shared.send
        self._clock = shared.clock()
        self.delivered = 0

    async def write(self, batch: list[Any]) -> None:
        """Hand ``batch`` over; wait while the consumer is behind."""
        try:
            self._send.send_nowait(batch)
        except anyio.WouldBlock:
            self._clock.hold(True)
            try:
                await self._send.send(batch)
            finally:
                self._clock.hold(False)
        self.delivered += len(batch)

    async def close(self, error: BaseException | None) -> int:
        """End the consumer's stream; the result is the number of items handed over."""
        self._send.close()
        return self.delivered


def _tap_stage(shared: _Shared) -> ResolvedStage:
    """The tap as a resolved sink stage, bound to one stream."""

    def make() -> _Tap:
        return _Tap(shared)

    component = Component(
        kind=ComponentKind.SINK,
        name=TAP_NAME,
        obj=make,
        shape="class",
        description="Hands the items to the consumer of engine.stream.",
    )
    return ResolvedStage(f"sinks.{TAP_NAME}", component, None)


# ---------------------------------------------------------------------------------------
# The stream
# ---------------------------------------------------------------------------------------


class _Shared:
    """What a stream, its item generator and its run task share."""

    def __init__(
        self,
        engine: Engine,
        resolved: ResolvedPipeline,
        plugins: PluginManager,
        listener: EventListener | None,
        token: CancelToken | None,
    ) -> None:
        self.engine = engine
        self.resolved = replace(resolved, sinks=[*resolved.sinks, _tap_stage(self)])
        self.plugins = plugins
        self.listener = listener
        self.token = token
        self.handle: RunHandle | None = None
        self.send: MemoryObjectSendStream[list[Any]]
        self.receive: MemoryObjectReceiveStream[list[Any]]
        self.done: anyio.Event | None = None
        """Set once the run ended and its events were delivered to the listener."""
        self.closing = False
        """The consumer closed the stream: the run's cancellation is not an error."""

    def clock(self) -> Any:
        """The run's clock (for the tap's hold on the ``idle`` timeout)."""
        assert self.handle is not None
        return self.handle._run.clock

    def start(self, tg: TaskGroup) -> None:
        """Create the run and start it in ``tg``."""
        if self.handle is not None:
            raise RuntimeError("this stream was started already")
        self.send, self.receive = anyio.create_memory_object_stream[list[Any]](TAP_BUFFER)
        self.done = anyio.Event()
        self.handle = self.engine.create_run(self.resolved, self.plugins)
        tg.start_soon(_drive, self, name=f"headwater stream {self.resolved.spec.name}")

    async def next_batch(self) -> list[Any] | None:
        """The next batch of items, or None at the end of a run that succeeded.

        Raises what the run's result raises (:class:`~headwater.PipelineFailed`,
        ``PipelineCancelled``, ``PipelineTimeout``) at the end of a run that did not
        succeed, unless the consumer closed the stream itself.
        """
        if self.handle is None:
            self.start(self.engine._host_group())
        try:
            return await self.receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        assert self.done is not None
        await self.done.wait()
        result = self.handle_result()
        if not self.closing:
            result.raise_for_state()
        return None

    def handle_result(self) -> RunResult:
        """The run's result (once it ended)."""
        assert self.handle is not None
        result = self.handle._run.result
        assert result is not None
        return result

    async def stop(self, reason: str) -> None:
        """Cancel the run (if it still goes) and wait for its clean-up, shielded."""
        self.closing = True
        if self.handle is None:
            return
        assert self.done is not None
        with anyio.CancelScope(shield=True):
            if not self.done.is_set():
                # the consumer left: what the tap holds was never delivered, so no final
                # checkpoint may count it (and the tap would wait for it)
                self.handle.cancel(reason, immediate=True)
                await self.done.wait()
            self.receive.close()


async def _drive(shared: _Shared) -> None:
    """The stream's task: the run, its events to the listener, the cancel token."""
    handle = shared.handle
    assert handle is not None
    assert shared.done is not None
    try:
        async with anyio.create_task_group() as tg:
            if shared.listener is not None:
                tg.start_soon(_dispatch, handle, shared.listener)
            watch = anyio.CancelScope()
            if shared.token is not None:
                tg.start_soon(_watch, shared.token, handle, watch)
            try:
                await handle.start()
            except Exception:  # a bug of the runtime: the stream must still end
                log.exception("stream of pipeline %s: the run crashed", handle.pipeline)
            finally:
                watch.cancel()
    finally:
        shared.send.close()
        shared.done.set()


async def _dispatch(handle: RunHandle, listener: EventListener) -> None:
    """Call ``listener`` with every event of the run, up to ``Complete``; an error of the
    listener is logged and the next event still delivered."""
    async for event in handle.events():
        try:
            result = listener(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("event listener of pipeline %s raised; ignored", handle.pipeline)


async def _watch(token: CancelToken, handle: RunHandle, scope: anyio.CancelScope) -> None:
    """Cancel the run when ``token`` fires (until ``scope`` is cancelled)."""
    with scope:
        await token.wait()
        handle.cancel(token.reason or "cancelled by a CancelToken")


async def _items(shared: _Shared) -> AsyncIterator[Any]:
    """The consumer's items, batch after batch. Leaving early (closed, cancelled, or
    finalised after being abandoned) cancels the run and waits for its clean-up."""
    ended = False
    try:
        while (batch := await shared.next_batch()) is not None:
            for item in batch:
                yield item
        ended = True
    finally:
        if not ended:
            await shared.stop("the consumer stopped reading")


class ItemStream:
    """The items reaching the end of a run's steps, as an async iterator.

    Returned by :meth:`Engine.stream <headwater.Engine.stream>` and
    :meth:`Engine.stream_action <headwater.Engine.stream_action>`; the run starts on the
    first item asked for (or on entering ``async with``). At the end of a run that did
    not succeed, iteration raises what :meth:`RunResult.raise_for_state
    <headwater.RunResult.raise_for_state>` raises. :meth:`aclose` cancels a run that is
    still going and returns once it cleaned up; a stream closed by its consumer raises
    nothing.

    Each item is one step of an async generator, the cheapest ``async for`` step the
    interpreter has (a class with ``__anext__`` costs more per item); for many small
    items, :meth:`next_batch` takes whole batches at about the speed of a sink.
    """

    def __init__(
        self,
        engine: Engine,
        resolved: ResolvedPipeline,
        plugins: PluginManager,
        *,
        on_event: EventListener | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self._shared = _Shared(engine, resolved, plugins, on_event, cancel)
        self._iter: AsyncIterator[Any] | None = None
        self._tg: TaskGroup | None = None

    @property
    def pipeline(self) -> str:
        """Name of the pipeline."""
        return self._shared.resolved.spec.name

    @property
    def handle(self) -> RunHandle | None:
        """The run's handle once it started (its ``stats``, ``cancel()``, ``wait()``)."""
        return self._shared.handle

    @property
    def result(self) -> RunResult | None:
        """The run's result once it ended (``fallbacks``, ``summary``, ``outputs``)."""
        handle = self._shared.handle
        return None if handle is None else handle._run.result

    def _iterator(self) -> AsyncIterator[Any]:
        if self._iter is None:
            self._iter = _items(self._shared)
        return self._iter

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterator()

    async def __anext__(self) -> Any:
        return await self._iterator().__anext__()

    async def next_batch(self) -> list[Any] | None:
        """The next batch of items as the run handed it over, or None at the end (a
        cheaper way through many small items than one ``async for`` step per item).
        Use it inside ``async with``: unlike ``async for``, a caller cancelled while it
        waits here does not cancel the run by itself."""
        return await self._shared.next_batch()

    async def aclose(self) -> None:
        """Cancel the run if it still goes and wait for its clean-up (every generator's
        ``finally`` and every sink's ``close`` ran when this returns). Idempotent."""
        await self._shared.stop("the consumer closed the stream")
        if self._iter is not None:
            closer = getattr(self._iter, "aclose", None)
            if closer is not None:
                # RuntimeError: another task is inside the generator right now
                with contextlib.suppress(RuntimeError):
                    await closer()

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            self._shared.start(tg)
        except BaseException as exc:
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        try:
            await self.aclose()
        finally:
            # the run ended (aclose waited for it): this only joins its task. The block's
            # exception is not the task group's: handing it over would wrap it in a group
            if tg is not None:
                await tg.__aexit__(None, None, None)
        return None


# ---------------------------------------------------------------------------------------
# From a thread without an event loop
# ---------------------------------------------------------------------------------------


def iter_sync(
    stream: ItemStream, backend: Literal["asyncio", "trio"] = "asyncio"
) -> Generator[Any, None, None]:
    """Iterate ``stream`` from synchronous code, on an event loop of its own in a
    background thread (a blocking portal). Closing the generator (``close()``, or leaving
    a ``for`` loop over it and dropping it) cancels the run and waits for its clean-up."""
    try:
        anyio.lowlevel.current_token()
    except anyio.NoEventLoopError:
        pass
    else:
        raise RuntimeError(
            "iter_sync() blocks: inside an event loop, use 'async for' over engine.stream()"
        )
    with (
        anyio.from_thread.start_blocking_portal(backend) as portal,
        portal.wrap_async_context_manager(stream) as items,
    ):
        while (batch := portal.call(items.next_batch)) is not None:
            yield from batch


def listener_for(
    on_event: EventListener | None, on_progress: Callable[[Progress], Any] | None
) -> EventListener | None:
    """One listener calling ``on_event`` with every event and ``on_progress`` with the
    progress events (each awaited when it returns an awaitable)."""
    if on_progress is None:
        return on_event

    async def listener(event: Event) -> None:
        if on_event is not None:
            result = on_event(event)
            if inspect.isawaitable(result):
                await result
        if isinstance(event, Progress):
            result = on_progress(event)
            if inspect.isawaitable(result):
                await result

    return listener
