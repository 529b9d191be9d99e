"""The embedding API: run pipelines from your own async (or sync) code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from .pipeline import PipelineSpec, ResolvedPipeline, load_pipeline, parse_pipeline, resolve
from .plugins import PluginManager, get_plugin_manager
from .runtime import RunHandle, RunResult, create_run, execute

__all__ = ["PipelineLike", "open_run", "prepare", "run", "run_sync"]


class _Buildable(Protocol):
    def build(self) -> PipelineSpec: ...


PipelineLike = PipelineSpec | Mapping[str, Any] | str | Path | _Buildable
"""A pipeline model, a mapping in the YAML shape, a path to a YAML file, or a builder."""


def _to_spec(pipeline: PipelineLike) -> tuple[PipelineSpec, str | None]:
    if isinstance(pipeline, PipelineSpec):
        return pipeline, None
    if isinstance(pipeline, str | Path):
        return load_pipeline(pipeline), str(pipeline)
    if isinstance(pipeline, Mapping):
        return parse_pipeline(dict(pipeline)), None
    build = getattr(pipeline, "build", None)
    if callable(build):
        spec = build()
        if isinstance(spec, PipelineSpec):
            return spec, None
    raise TypeError(f"not a pipeline: {pipeline!r}")


def prepare(
    pipeline: PipelineLike,
    plugins: PluginManager | None = None,
    *,
    source: str | None = None,
) -> tuple[ResolvedPipeline, PluginManager]:
    """Validate a pipeline against the registered components (raises on any problem).

    When the pipeline disables plugins (``plugins: {disable: [...]}``) that are loaded in
    ``plugins`` (default: the process-wide manager), a new manager is loaded with both
    lists of disabled plugins and the same strictness. ``source`` names the file in
    error messages.
    """
    spec, origin = _to_spec(pipeline)
    base = plugins if plugins is not None else get_plugin_manager()
    wanted = set(spec.plugins.disable)
    if wanted - base.disabled:
        base = PluginManager(disable=base.disabled | wanted, strict=base.strict)
    manager = base.load()
    return resolve(spec, manager, source=source or origin), manager


async def run(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    raise_on_error: bool = True,
    resume: bool = False,
    force: bool = False,
) -> RunResult:
    """Run a pipeline to completion on the current event loop and return its result.

    With ``resume``, a pipeline with a ``checkpoint`` section continues from its last
    committed checkpoint (``force`` accepts one taken by a changed definition).

    Raises :class:`~headwater.PipelineFailed` (or ``PipelineCancelled`` /
    ``PipelineTimeout``) unless ``raise_on_error`` is False, in which case the returned
    result's ``state`` tells the outcome.
    """
    resolved, pm = prepare(pipeline, plugins)
    result = await execute(resolved, pm, resume=resume, force=force)
    return result.raise_for_state() if raise_on_error else result


@asynccontextmanager
async def open_run(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    resume: bool = False,
    force: bool = False,
) -> AsyncIterator[RunHandle]:
    """Start a run in the background and yield its :class:`RunHandle`.

    Leaving the block while the run is still going cancels it (and waits for cleanup)::

        async with headwater.open_run(spec) as handle:
            async for event in handle.events():
                ...
        result = await handle.wait()
    """
    resolved, pm = prepare(pipeline, plugins)
    handle = create_run(resolved, pm, resume=resume, force=force)
    async with anyio.create_task_group() as tg:
        tg.start_soon(handle.start)
        try:
            yield handle
        finally:
            if not handle.done:
                handle.cancel("run handle closed")


def run_sync(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    raise_on_error: bool = True,
    backend: Literal["asyncio", "trio"] = "asyncio",
    resume: bool = False,
    force: bool = False,
) -> RunResult:
    """Blocking convenience for scripts: run a pipeline on a fresh event loop."""
    return anyio.run(
        lambda: run(
            pipeline, plugins=plugins, raise_on_error=raise_on_error, resume=resume, force=force
        ),
        backend=backend,
    )
