"""Script conveniences: run a pipeline without holding an :class:`~headwater.Engine`.

Each function takes an ``engine`` (default: :func:`~headwater.core.engine.default_engine`)
or, for compatibility, a ``plugins`` manager (a private engine is built around it).
Embedders hold an engine and call its methods instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio

from .engine import Engine, PipelineLike, default_engine
from .pipeline import ResolvedPipeline
from .plugins import PluginManager
from .runtime import RunHandle, RunResult

__all__ = ["PipelineLike", "open_run", "prepare", "run", "run_sync"]


def engine_for(engine: Engine | None, plugins: PluginManager | None) -> Engine:
    """The engine a convenience function runs on: ``engine``, else one around
    ``plugins`` (sharing the default engine's metrics and servers), else the default."""
    if engine is not None:
        if plugins is not None:
            raise TypeError("pass either engine or plugins")
        return engine
    if plugins is not None:
        # a script's own plugin manager; its runs still count in the default metrics
        private = Engine(plugin_manager=plugins)
        private.services = default_engine().services
        return private
    return default_engine()


def prepare(
    pipeline: PipelineLike,
    plugins: PluginManager | None = None,
    *,
    source: str | None = None,
    engine: Engine | None = None,
) -> tuple[ResolvedPipeline, PluginManager]:
    """Validate a pipeline against the registered components (raises on any problem);
    see :meth:`Engine.prepare <headwater.Engine.prepare>`."""
    return engine_for(engine, plugins).prepare(pipeline, source=source)


async def run(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    engine: Engine | None = None,
    raise_on_error: bool = True,
    resume: bool = False,
    force: bool = False,
) -> RunResult:
    """Run a pipeline to completion on the current event loop and return its result;
    see :meth:`Engine.run <headwater.Engine.run>`."""
    return await engine_for(engine, plugins).run(
        pipeline, raise_on_error=raise_on_error, resume=resume, force=force
    )


@asynccontextmanager
async def open_run(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    engine: Engine | None = None,
    resume: bool = False,
    force: bool = False,
) -> AsyncIterator[RunHandle]:
    """Start a run in the background and yield its :class:`RunHandle`; see
    :meth:`Engine.open_run <headwater.Engine.open_run>`."""
    async with engine_for(engine, plugins).open_run(pipeline, resume=resume, force=force) as handle:
        yield handle


def run_sync(
    pipeline: PipelineLike,
    *,
    plugins: PluginManager | None = None,
    engine: Engine | None = None,
    raise_on_error: bool = True,
    backend: Literal["asyncio", "trio"] = "asyncio",
    resume: bool = False,
    force: bool = False,
) -> RunResult:
    """Blocking convenience for scripts: run a pipeline on a fresh event loop."""
    target = engine_for(engine, plugins)
    return anyio.run(
        lambda: target.run(pipeline, raise_on_error=raise_on_error, resume=resume, force=force),
        backend=backend,
    )
