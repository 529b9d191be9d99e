"""Recording the runs of a process that serves nothing: :class:`LocalRecorder`.

``headwater run FILE --history`` and ``headwater run JOBS.yaml --history`` record their
runs in the same run store as ``headwater serve`` (``.headwater/runs.db`` by default), so
that a server started later in the same folder lists them (``GET /api/runs``), shows
their pages and replays their streams (``subscribe`` with ``since: 0``).

A recorder stands in for a server without listening anywhere: its streaming manager,
which no client reaches, holds one stream per run (``PIPELINE-RUNID``); each run gets a
``websocket`` sink (:func:`~headwater.server.runs.with_stream_sink`) that publishes its
items there, the recorder being the run's publisher; its events are forwarded to the
stream; and a :class:`~.recorder.RunHistory` observes the manager, exactly as in a
server. A record therefore holds what a server's would: params, stages, the fatal error
with its traceback, handled errors by stage and type, and the last chunks.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from headwater.core.events import Event
from headwater.core.streaming import StreamError, StreamingConfig, StreamingManager

from ..runs import RunInfo, masked_events, with_stream_sink
from .config import HistoryConfig
from .recorder import RunHistory

if TYPE_CHECKING:
    from headwater.core.engine import Engine
    from headwater.core.pipeline import PipelineSpec, ResolvedPipeline
    from headwater.core.plugins import PluginManager
    from headwater.core.runtime import RunHandle, RunResult
    from headwater.core.scheduler import ScheduledRun

__all__ = ["LocalRecorder", "recorded_pipeline"]


def recorded_pipeline(
    engine: Engine, pipeline: PipelineSpec | Mapping[str, Any]
) -> tuple[ResolvedPipeline, PluginManager]:
    """``pipeline`` resolved with the ``websocket`` sink that feeds the history (added
    unless it has one)."""
    if isinstance(pipeline, Mapping):
        data = dict(pipeline)
    else:
        data = pipeline.model_dump(mode="python", exclude_unset=True, exclude={"tests"})
    return engine.prepare(with_stream_sink(data))


class LocalRecorder:
    """Records runs into a run store without a server (see the module docstring)::

        async with LocalRecorder(engine, origin="run") as recorder:
            resolved, plugins = recorded_pipeline(engine, spec)
            async with recorder.run(resolved, plugins, params) as info:
                await recorder.forward(info)      # the run's events, to its stream
            result = await info.handle.wait()

    It is the publisher of the runs it creates (a
    :class:`~headwater.core.services.StreamPublisher`) and the host of its
    :class:`~.recorder.RunHistory`. ``origin`` is what the records say started the runs.
    """

    def __init__(
        self, engine: Engine, config: HistoryConfig | None = None, *, origin: str = "run"
    ) -> None:
        self.engine = engine
        self.config = config if config is not None else HistoryConfig()
        self.origin = origin
        self.history = RunHistory(self, self.config)
        self._manager: StreamingManager | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._runs: dict[str, RunInfo] = {}
        self._thread_id = 0
        self._token: object | None = None

    # -- the host of the history, and the publisher of the runs ---------------------------

    @property
    def plugins(self) -> PluginManager:
        """The engine's plugins (they may contribute run stores)."""
        return self.engine.load()

    @property
    def runs(self) -> list[RunInfo]:
        """The runs going on."""
        return list(self._runs.values())

    @property
    def manager(self) -> StreamingManager:
        """The streaming manager holding the streams of the runs."""
        if self._manager is None:
            raise RuntimeError("the recorder is not started: use `async with`")
        return self._manager

    def stream_of_run(self, run_id: str) -> str | None:
        """The stream of a run this recorder created."""
        run = self._runs.get(run_id)
        return run.stream if run is not None else None

    async def call(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Await ``func(*args)`` on the recorder's event loop (from any thread's loop)."""
        if self._token is None or threading.get_ident() == self._thread_id:
            return await func(*args)
        token = self._token

        def hop() -> Any:
            return anyio.from_thread.run(func, *args, token=token)  # type: ignore[arg-type]

        return await anyio.to_thread.run_sync(hop)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> LocalRecorder:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            # no client ever subscribes: no replay buffer, the history keeps the chunks
            streaming = StreamingConfig(
                inactivity_timeout=None, replay_max_chunks=0, replay_max_bytes=0
            )
            self._manager = await stack.enter_async_context(StreamingManager(streaming))
            await self.history.open()
            stack.push_async_callback(self.history.close)
            self._manager.add_observer(self.history)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._token = anyio.lowlevel.current_token()
        self._thread_id = threading.get_ident()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        self._tg = None
        self._token = None
        if stack is not None:
            return await stack.__aexit__(exc_type, exc, tb)
        return None

    # -- runs ---------------------------------------------------------------------------

    async def open_run(
        self,
        resolved: ResolvedPipeline,
        plugins: PluginManager,
        params: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
        force: bool = False,
        job: str | None = None,
    ) -> RunInfo:
        """Create a run (not started) with its stream, and record it as ``running``.
        ``resolved`` comes from :func:`recorded_pipeline`; :meth:`close_run` records its
        end."""
        run_id = uuid.uuid4().hex[:12]
        pipeline = resolved.spec.name
        stream = f"{pipeline}-{run_id}"
        metadata = {"pipeline": pipeline, "run": run_id, "owner": None}
        await self.manager.create_stream(stream, metadata=metadata, inactivity_timeout=None)
        handle = self.engine.create_run(
            resolved, plugins, run_id=run_id, resume=resume, force=force, publisher=self
        )
        info = RunInfo(run_id, pipeline, stream, None, handle)
        self._runs[run_id] = info
        try:
            await self.history.started(info, params or {}, resolved, job=job, origin=self.origin)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close_run(info, None)
            raise
        return info

    async def close_run(self, info: RunInfo, result: RunResult | None) -> None:
        """Record the end of a run (its stream is closed first if still open)."""
        self._runs.pop(info.run_id, None)
        manager = self.manager
        if manager.has_stream(info.stream):
            state = result.state if result is not None else "failed"
            await manager.close_stream(info.stream, state)
        await self.history.finished(info, result)

    @asynccontextmanager
    async def run(
        self,
        resolved: ResolvedPipeline,
        plugins: PluginManager,
        params: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
        force: bool = False,
    ) -> AsyncIterator[RunInfo]:
        """Start a recorded run in the background and yield it (as
        :meth:`Engine.open_run <headwater.Engine.open_run>`: leaving the block while it
        goes on cancels it); its end is recorded when the block is left."""
        info = await self.open_run(resolved, plugins, params, resume=resume, force=force)
        result: RunResult | None = None

        async def execute() -> None:
            nonlocal result
            result = await info.handle.start()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(execute)
                try:
                    yield info
                finally:
                    if not info.handle.done:
                        info.handle.cancel("run handle closed")
        finally:
            with anyio.CancelScope(shield=True):
                await self.close_run(info, result)

    async def forward(self, info: RunInfo, on_event: Callable[[Event], None] | None = None) -> None:
        """Forward the run's events to its stream until it ends, each one given to
        ``on_event`` first (the terminal's view of the run); secrets are masked in what
        the stream (and so the record) receives."""

        async def events() -> AsyncIterator[Event]:
            async for event in info.handle.events():
                if on_event is not None:
                    on_event(event)
                yield event

        await self._forward(info, events())

    async def _forward(self, info: RunInfo, events: AsyncIterator[Event]) -> None:
        secrets = self.engine.services.secrets
        try:
            await self.manager.forward_events(info.stream, masked_events(events, secrets))
        except StreamError:
            async for _ in events:  # the stream is gone: keep the run's events flowing
                pass

    # -- scheduled runs (jobs) ----------------------------------------------------------

    async def create_job_run(
        self, run: ScheduledRun, resolved: ResolvedPipeline, plugins: PluginManager
    ) -> RunHandle:
        """The :data:`~headwater.core.scheduler.RunCreator` of a scheduler whose runs are
        recorded: each run is recorded with its name as ``job``."""
        recorded, plugins = recorded_pipeline(self.engine, resolved.spec)
        info = await self.open_run(recorded, plugins, job=run.name)
        assert self._tg is not None
        await self._tg.start(self._follow_job, run, info)
        return info.handle

    async def _follow_job(
        self, run: ScheduledRun, info: RunInfo, *, task_status: TaskStatus[None]
    ) -> None:
        """Forward a scheduled run's pipeline events to its stream; record its end."""
        from headwater.core.scheduler import RunStateChanged

        changes = run.events()
        await changes.__anext__()  # subscribed (its submission is always there)
        task_status.started()

        async def events() -> AsyncIterator[Event]:
            async for event in changes:
                if not isinstance(event, RunStateChanged):
                    yield event

        try:
            await self._forward(info, events())
            await run.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.close_run(info, run.result)
