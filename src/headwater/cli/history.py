"""``headwater run FILE --history``: the run recorded in the run history.

The run is recorded (pipeline, params given with ``--set``, start and end, state, stage
counters, fatal error with its traceback, handled errors, last chunks) in
``.headwater/runs.db`` of the working directory, where ``headwater serve`` started in
the same folder lists it. Nothing of this module, nor of the server's packages, is
imported by a ``run`` without ``--history``.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._common import parse_overrides

if TYPE_CHECKING:
    from ..core.pipeline import PipelineSpec, ResolvedPipeline
    from ..core.plugins import PluginManager
    from ..core.runtime import RunResult
    from .runview import _RunView

Runner = Callable[..., Awaitable[tuple["RunResult", "int | None"]]]


def _recorded_runner(
    args: argparse.Namespace, spec: PipelineSpec
) -> tuple[ResolvedPipeline, Runner]:
    """The pipeline as it runs when recorded (with the ``websocket`` sink feeding the
    history) and the coroutine function that runs it in place of ``_execute``."""
    from ..core.engine import default_engine
    from ..server.history.local import recorded_pipeline

    resolved, plugins = recorded_pipeline(default_engine(), spec)
    params = parse_overrides(args.overrides)
    return resolved, functools.partial(_execute_recorded, resolved, plugins, params)


async def _execute_recorded(
    resolved: ResolvedPipeline,
    plugins: PluginManager,
    params: dict[str, Any],
    spec: PipelineSpec,
    manager: PluginManager,
    view: _RunView,
    resume: bool = False,
    force: bool = False,
) -> tuple[RunResult, int | None]:
    """As ``headwater.cli.run._execute``, the run being recorded."""
    from ..core.engine import default_engine
    from ..server.history.local import LocalRecorder
    from .run import _show_run

    recorder = LocalRecorder(default_engine(), origin="run")
    async with (
        recorder,
        recorder.run(resolved, plugins, params, resume=resume, force=force) as info,
    ):
        return await _show_run(info.handle, view, lambda: recorder.forward(info, view.on_event))
