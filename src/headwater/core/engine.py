"""The :class:`Engine`: one per embedding, never one per process.

An engine owns what used to be process-wide: a plugin manager (and so the component
registry), a metrics registry, the drain signal of broker sources, the servers running on
it and the runs it started. Components reach these through their
:class:`~headwater.StreamContext` (``ctx.publisher``, ``ctx.draining``, ``ctx.metrics``),
never through module-level state, so two engines in one process never see each other's
streams, runs, metrics or plugins.

:func:`default_engine` is a convenience for scripts (``headwater.run(...)`` without an
engine): it creates one engine on first use. Nothing inside headwater is wired through it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import anyio
from anyio.abc import TaskGroup

from .metrics import MetricsRegistry
from .pipeline import PipelineSpec, ResolvedPipeline, load_pipeline, parse_pipeline, resolve
from .plugins import PluginManager
from .policy import SandboxPolicy
from .runtime import RunHandle, RunResult, create_run
from .secrets import Secrets
from .services import EngineServices, StreamPublisher

if TYPE_CHECKING:
    from .cancel import CancelToken
    from .embedding import ItemStream
    from .events import Event, Progress
    from .pipeline import Timeouts
    from .scheduler import Scheduler

__all__ = ["Engine", "PipelineLike", "default_engine", "set_default_engine"]


class _Buildable(Protocol):
    def build(self) -> PipelineSpec: ...


PipelineLike = PipelineSpec | Mapping[str, Any] | str | Path | _Buildable
"""A pipeline model, a mapping in the YAML shape, a path to a YAML file, or a builder."""


def to_spec(
    pipeline: PipelineLike, secrets: Secrets | None = None
) -> tuple[PipelineSpec, str | None]:
    """The pipeline model of anything :data:`PipelineLike`, and the file it came from
    (whose substituted values go to ``secrets``)."""
    if isinstance(pipeline, PipelineSpec):
        return pipeline, None
    if isinstance(pipeline, str | Path):
        return load_pipeline(pipeline, secrets=secrets), str(pipeline)
    if isinstance(pipeline, Mapping):
        return parse_pipeline(dict(pipeline)), None
    build = getattr(pipeline, "build", None)
    if callable(build):
        spec = build()
        if isinstance(spec, PipelineSpec):
            return spec, None
    raise TypeError(f"not a pipeline: {pipeline!r}")


class Engine:
    """Everything one embedding of headwater owns.

    ::

        async with headwater.Engine() as engine:
            result = await engine.run("pipe.yaml")
            async with engine.open_run(spec) as handle:
                async for event in handle.events():
                    ...

    ``plugins=None`` discovers the ``headwater`` entry points (built-ins included); a
    sequence of modules or plugin objects replaces discovery (built-ins are then only
    there if listed, e.g. ``headwater.builtin_plugins.catalogue.sources``). ``disable`` names
    plugins or distributions to skip (added to ``HEADWATER_DISABLE_PLUGINS``);
    ``strict`` makes a plugin that fails to load an error instead of a reported skip;
    ``metrics=False`` switches the runtime's latency instruments off (default: the
    ``HEADWATER_METRICS`` environment variable). ``plugin_manager`` hands over a
    :class:`~headwater.PluginManager` built elsewhere (the other plugin arguments must
    then be left out). ``policy`` is the operator's :class:`~headwater.SandboxPolicy`
    (default: read from the environment, rooted at the working directory).

    Leaving the ``async with`` block cancels the runs the engine started that are still
    going and waits for their clean-up. An engine can be used without the block (runs
    are then not cancelled for you).
    """

    def __init__(
        self,
        *,
        plugins: Sequence[object] | None = None,
        disable: Iterable[str] = (),
        strict: bool | None = None,
        metrics: bool | None = None,
        plugin_manager: PluginManager | None = None,
        policy: SandboxPolicy | None = None,
    ) -> None:
        disable = list(disable)
        if plugin_manager is not None:
            if plugins is not None or disable or strict is not None:
                raise TypeError("pass either plugin_manager or plugins/disable/strict")
            self.plugins = plugin_manager
        else:
            self.plugins = PluginManager(
                disable=disable, strict=strict, load_entry_points=plugins is None
            )
        self._extra_plugins: list[object] = list(plugins or ())
        self.services = EngineServices(
            metrics=MetricsRegistry(enabled=metrics),
            policy=policy if policy is not None else SandboxPolicy.from_environment(),
        )
        self._handles: weakref.WeakSet[RunHandle] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._loaded = False
        self._host: TaskGroup | None = None
        """Task group of the ``async with engine:`` block: runs of streams iterated
        without ``async with`` of their own live here."""
        self._host_thread = 0
        self._depth = 0

    # -- services -----------------------------------------------------------------------

    @property
    def metrics(self) -> MetricsRegistry:
        """This engine's metrics: every run, stream and scheduler it owns."""
        return self.services.metrics

    @property
    def policy(self) -> SandboxPolicy:
        """What this engine's pipelines may run and read."""
        return self.services.policy

    @property
    def servers(self) -> list[StreamPublisher]:
        """The servers running on this engine, oldest first."""
        return list(self.services.publishers)

    def load(self) -> PluginManager:
        """Discover and register the plugins once (later calls do nothing); returns the
        loaded plugin manager."""
        with self._lock:
            if not self._loaded:
                self._loaded = True
                self.plugins.load()
                for plugin in self._extra_plugins:
                    self.plugins.register(plugin)
        return self.plugins

    def request_drain(self, run_id: str | None = None) -> None:
        """Ask broker sources of one run (or of every run) to stop taking messages and
        finish: what they handed on is committed and acknowledged, nothing is lost."""
        self.services.drain.request(run_id)

    def attach_server(self, server: StreamPublisher) -> None:
        """Called by a server when it starts serving on this engine."""
        with self._lock:
            if server not in self.services.publishers:
                self.services.publishers.append(server)

    def detach_server(self, server: StreamPublisher) -> None:
        """Called by a server when it stops."""
        with self._lock:
            if server in self.services.publishers:
                self.services.publishers.remove(server)

    # -- pipelines ----------------------------------------------------------------------

    def prepare(
        self, pipeline: PipelineLike, *, source: str | None = None
    ) -> tuple[ResolvedPipeline, PluginManager]:
        """Validate a pipeline against this engine's components (raises on any problem).

        When the pipeline disables plugins (``plugins: {disable: [...]}``) that this
        engine loaded, it is resolved against a new manager loaded with both lists of
        disabled plugins and the same strictness. ``source`` names the file in errors.
        """
        spec, origin = to_spec(pipeline, self.services.secrets)
        base = self.load()
        wanted = set(spec.plugins.disable)
        if wanted - base.disabled:
            base = PluginManager(
                disable=base.disabled | wanted,
                strict=base.strict,
                load_entry_points=bool(base.loads_entry_points),
            ).load()
            for plugin in self._extra_plugins:
                base.register(plugin)
        return resolve(spec, base, source=source or origin, policy=self.policy), base

    def create_run(
        self,
        resolved: ResolvedPipeline,
        plugins: PluginManager | None = None,
        *,
        run_id: str | None = None,
        resume: bool = False,
        force: bool = False,
        publisher: StreamPublisher | None = None,
    ) -> RunHandle:
        """A handle for a run of a resolved pipeline that has not started yet
        (``await handle.start()`` runs it). ``publisher`` is the server that starts the
        run: its ``websocket`` sinks publish there."""
        services = self.services if publisher is None else self.services.for_publisher(publisher)
        handle = create_run(
            resolved,
            plugins if plugins is not None else self.load(),
            run_id=run_id,
            resume=resume,
            force=force,
            services=services,
        )
        self._handles.add(handle)
        return handle

    async def run(
        self,
        pipeline: PipelineLike,
        *,
        raise_on_error: bool = True,
        resume: bool = False,
        force: bool = False,
    ) -> RunResult:
        """Run a pipeline to completion on the current event loop and return its result.

        With ``resume``, a pipeline with a ``checkpoint`` section continues from its last
        committed checkpoint (``force`` accepts one taken by a changed definition).
        Raises :class:`~headwater.PipelineFailed` (or ``PipelineCancelled`` /
        ``PipelineTimeout``) unless ``raise_on_error`` is False; the result's ``state``
        then tells the outcome.
        """
        resolved, pm = self.prepare(pipeline)
        handle = self.create_run(resolved, pm, resume=resume, force=force)
        result = await handle.start()
        return result.raise_for_state() if raise_on_error else result

    @asynccontextmanager
    async def open_run(
        self,
        pipeline: PipelineLike,
        *,
        resume: bool = False,
        force: bool = False,
    ) -> AsyncIterator[RunHandle]:
        """Start a run in the background and yield its :class:`~headwater.RunHandle`.

        Leaving the block while the run is still going cancels it (and waits for its
        clean-up)::

            async with engine.open_run(spec) as handle:
                async for event in handle.events():
                    ...
            result = await handle.wait()
        """
        resolved, pm = self.prepare(pipeline)
        handle = self.create_run(resolved, pm, resume=resume, force=force)
        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.start)
            try:
                yield handle
            finally:
                if not handle.done:
                    handle.cancel("run handle closed")

    # -- embedding: iterate a run's items -------------------------------------------------

    def stream(
        self,
        pipeline: PipelineLike,
        *,
        overrides: Mapping[str, Any] | None = None,
        on_event: Callable[[Event], Any] | None = None,
        cancel: CancelToken | None = None,
    ) -> ItemStream:
        """The items that reach the end of the pipeline's steps, as an async iterator::

            async with engine.stream("pipe.yaml", overrides={"sources.n.params.stop": 5}) as items:
                async for item in items:
                    ...

        The pipeline is validated now (raising :class:`~headwater.PipelineValidationError`);
        it may declare no sink (declared sinks still receive every item). ``overrides``
        maps dotted paths to values as ``headwater run --set`` does. The run starts on
        entering ``async with`` or on the first item asked for; iterated without ``async
        with``, it runs in the task group of ``async with engine:``. It never gets more
        than its bounded channels ahead of the consumer. Leaving early (``aclose()``, the
        end of the ``async with`` block, the consumer cancelled while waiting) cancels the
        run and returns once every generator's ``finally`` and sink's ``close`` ran. A run
        that did not succeed raises :class:`~headwater.PipelineFailed` (or
        ``PipelineCancelled`` / ``PipelineTimeout``) at the end of the iteration.
        ``on_event`` is called with every control event (awaited when it returns an
        awaitable); ``cancel`` is a :class:`~headwater.CancelToken` that cancels the run.
        """
        from .embedding import ItemStream, stream_spec

        spec, origin = stream_spec(pipeline, overrides)
        resolved, plugins = self.prepare(spec, source=origin)
        return ItemStream(self, resolved, plugins, on_event=on_event, cancel=cancel)

    def iter_sync(
        self,
        pipeline: PipelineLike,
        *,
        overrides: Mapping[str, Any] | None = None,
        backend: Literal["asyncio", "trio"] = "asyncio",
    ) -> Generator[Any, None, None]:
        """:meth:`stream` for synchronous code (a thread with no running event loop): a
        plain generator of the items, running the pipeline on an event loop of its own.
        ``close()`` of the generator cancels the run and returns after its clean-up."""
        from .embedding import iter_sync

        return iter_sync(self.stream(pipeline, overrides=overrides), backend)

    def stream_action(
        self,
        name: str,
        /,
        *,
        on_progress: Callable[[Progress], Any] | None = None,
        on_event: Callable[[Event], Any] | None = None,
        cancel: CancelToken | None = None,
        timeouts: Timeouts | Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ItemStream:
        """The chunks of one stream action, as an async iterator (see :meth:`stream`)::

            async for chunk in engine.stream_action("file.find", path=".", pattern="TODO"):
                ...

        ``params`` are validated by the action's params model with this engine's
        :class:`~headwater.SandboxPolicy` (raising a
        :class:`~headwater.PipelineValidationError` naming each bad param; an unknown
        action raises :class:`~headwater.ComponentNotFound`). ``on_progress`` is called
        with the action's :class:`~headwater.Progress` (awaited when it returns an
        awaitable), ``on_event`` with every event. ``cancel`` (a
        :class:`~headwater.CancelToken`) or a cancelled scope around the loop ends it;
        a token raises :class:`~headwater.PipelineCancelled`. ``timeouts``
        (``first_item``, ``idle``, ``total`` seconds) raise
        :class:`~headwater.PipelineTimeout`. An action that fails before its first chunk
        is replaced by its declared fallback (the ``result`` says so). It is a pipeline
        with one source and no sink; its events' stage is ``sources.action``.
        """
        from .components import ComponentKind
        from .embedding import ActionParamsError, action_pipeline, listener_for, stream_spec
        from .errors import PipelineValidationError

        self.load().get(ComponentKind.ACTION, name)
        data = action_pipeline(name, params, timeouts)
        try:
            spec, _ = stream_spec(data)
            resolved, plugins = self.prepare(spec)
        except PipelineValidationError as exc:
            raise ActionParamsError.from_pipeline(name, exc) from None
        from .embedding import ItemStream

        listener = listener_for(on_event, on_progress)
        return ItemStream(self, resolved, plugins, on_event=listener, cancel=cancel)

    def _host_group(self) -> TaskGroup:
        """The task group of the ``async with engine:`` block of this thread's loop."""
        if self._host is None or self._host_thread != threading.get_ident():
            raise RuntimeError(
                "a stream's run needs a task group: iterate it inside "
                "'async with engine.stream(...) as items:' or inside 'async with engine:'"
            )
        return self._host

    def scheduler(self, **options: Any) -> Scheduler:
        """A :class:`~headwater.scheduler.Scheduler` that validates and runs pipelines on
        this engine (``options`` as for the scheduler)."""
        from .scheduler import Scheduler

        return Scheduler(engine=self, **options)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.load()
        self._depth += 1
        if self._host is None:
            host = anyio.create_task_group()
            await host.__aenter__()
            self._host, self._host_thread = host, threading.get_ident()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        host = self._host if self._depth == 0 else None
        try:
            await self.aclose()
        finally:
            if host is not None:
                self._host = None
                # the streams' runs were cancelled and awaited above: this only joins
                # their tasks. The block's exception is not the task group's (handing it
                # over would wrap it in an exception group)
                await host.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Cancel the runs this engine started that are still going and wait for them;
        runs created but not started yet are cancelled as they start."""
        with anyio.CancelScope(shield=True):
            for handle in list(self._handles):
                if handle.state == "pending":
                    handle.cancel("engine closed")
                elif handle.state == "running":
                    handle.cancel("engine closed")
                    await handle.wait()


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The engine of scripts that use none of their own (``headwater.run(...)``),
    created on first use. headwater's own components never reach for it."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default


def set_default_engine(engine: Engine | None) -> Engine | None:
    """Replace (or forget, with ``None``) the default engine; returns the previous one.
    For tests and for applications that build their default engine themselves."""
    global _default
    with _default_lock:
        previous, _default = _default, engine
    return previous
