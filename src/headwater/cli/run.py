"""``headwater run``, ``validate`` and ``schema``.

The view of a run on stderr is :mod:`headwater.cli.runview`; ``run --serve`` is
:mod:`headwater.cli.serve_run`. A jobs file given to ``run`` or ``validate`` is handed to
:mod:`headwater.cli.jobs`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._common import (
    _EPILOG,
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _add_overrides,
    _add_sandbox_options,
    _consoles,
    _forced_terminal,
    _load_spec,
    _on_signals,
    _plain_stderr,
    _port,
    _prepare,
    _print_json,
    _secrets,
    _verbosity,
)
from .metrics import _add_metrics_options, _metrics_exporters, _with_exporters
from .runview import _json_summary, _print_summary, _RunView

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from rich.console import Console

    from ..core.pipeline import PipelineSpec
    from ..core.plugins import PluginManager
    from ..core.runtime import RunHandle, RunResult


def _add_run_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``run`` sub-command."""
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run a pipeline file with live progress (--serve: with a dashboard and a stream)",
        description="Run a pipeline YAML file. Progress and the summary go to stderr;\n"
        "stdout is left to sinks (and to --json). Ctrl-C cancels the run cleanly.\n"
        "\n"
        "Progress counts the items delivered (written by the sinks), with their rate, the\n"
        "percentage and an ETA when the sources know their total and no step changes the\n"
        "number of items; what the sources have read is shown beside it (read N, +M\n"
        "ahead). On a terminal it is a live bar; otherwise a plain line is printed every\n"
        "--progress-every seconds.\n"
        "\n"
        "With --serve, the pipeline runs inside a server on 127.0.0.1 (the server of\n"
        "headwater serve): its output goes to a stream that WebSocket clients, headwater\n"
        "tail and the dashboard follow. The URLs of the dashboard's page of the run, of the\n"
        "stream and of its events are printed first. The command exits when the run ends\n"
        "(clients are told first); --keep-serving keeps the server, its dashboard and the\n"
        "replay of the run until Ctrl-C. The exit status is the run's outcome either way.\n"
        "\n"
        "With --history (the default with --serve), the run is recorded in the run history,\n"
        ".headwater/runs.db in the working directory: headwater serve started in the same\n"
        "folder lists it (/api/runs), shows its page and replays its stream. For a jobs\n"
        "file, each job's run is recorded, with the job's name.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", metavar="FILE", help="pipeline YAML file")
    _add_overrides(run)
    _add_sandbox_options(run)
    shown = run.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show live progress bars even when stderr is not a terminal",
    )
    shown.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no live progress bars (the default when stderr is not a terminal)",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the run summary as JSON on stdout at the end",
    )
    run.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="when stderr is not a terminal: print a progress line this often (default 5; "
        "0: never)",
    )
    served = run.add_argument_group("serving the run (--serve)")
    served.add_argument(
        "--serve",
        action="store_true",
        help="run inside a server on 127.0.0.1 and print the URLs of its dashboard page, "
        "stream and events",
    )
    served.add_argument("--port", type=_port, help="with --serve: the port (default: a free one)")
    served.add_argument(
        "--stream",
        metavar="NAME",
        help="with --serve: the id of the run's stream (default PIPELINE-RUNID)",
    )
    served.add_argument(
        "--keep-serving",
        action="store_true",
        help="with --serve: keep serving (dashboard, replay of the stream) after the run "
        "ended, until Ctrl-C",
    )
    run.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record the run in .headwater/runs.db (the run history of headwater serve); "
        "the default with --serve. --no-history: record nothing (with --serve: keep the run "
        "in memory while serving)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the pipeline's last committed checkpoint (needs a checkpoint "
        "section); a completed run is not run again",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="with --resume: use the checkpoint even if the pipeline's sources or steps "
        "changed since it was taken",
    )
    run.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (trio needs the 'trio' extra); default: asyncio",
    )
    _add_metrics_options(run, port=True)
    run.set_defaults(func=_cmd_run)


def _add_schema_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``schema`` sub-command."""
    schema = commands.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of pipeline files",
        description="Print the JSON Schema of the pipeline YAML format.",
    )
    schema.set_defaults(func=_cmd_schema)


# ---------------------------------------------------------------------------------------
# headwater run
# ---------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    """``headwater run``: run a pipeline file with progress, a summary and exit code."""
    import importlib.util

    import anyio

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise CLIError("the trio backend needs trio: pip install 'headwater[trio]'")
    if _is_jobs_path(args.file):
        if args.resume or args.force:
            raise CLIError("--resume and --force apply to pipeline files, not to jobs files")
        from .jobs import _cmd_run_jobs

        return _cmd_run_jobs(args)
    if args.force and not args.resume:
        raise CLIError("--force only applies with --resume")
    if args.progress_every < 0:
        raise CLIError("--progress-every must be >= 0")
    from .serve_run import _check_serve_options

    _check_serve_options(args)
    spec = _load_spec(args)
    if args.serve:
        from .serve_run import _cmd_run_serve

        _prepare(args, spec)  # every problem of the file, before anything listens
        return _cmd_run_serve(args, spec)
    resolved, manager = _prepare(args, spec)
    if args.resume and spec.checkpoint is None:
        raise CLIError(
            f"pipeline {spec.name!r} in {args.file} has no checkpoint section, so it cannot "
            "resume; add one (e.g. checkpoint: {every_items: 10000}) to make runs resumable"
        )
    exporters = _metrics_exporters(args, manager)
    live = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    # Off a terminal the run view writes plain lines and rich waits for the summary: the
    # first chunk of a piped run does not pay for importing it.
    err = None if not live and _plain_stderr(args) else _stderr_console(args)
    secrets = _secrets(args)
    every = args.progress_every if args.progress is None else 0.0
    runner: Any = _execute
    if args.history:  # lazily: a run without it imports nothing of the run history
        from .history import _recorded_runner

        resolved, runner = _recorded_runner(args, spec)
    view = _RunView(err, resolved, live=live, secrets=secrets, every=every)
    result: RunResult
    signum: int | None
    try:
        result, signum = anyio.run(
            _with_exporters,
            exporters,
            err,
            runner,
            spec,
            manager,
            view,
            args.resume,
            args.force,
            backend=args.backend,
        )
    finally:
        view.stop()
    from .checkpoints import _raise_checkpoint_error

    _raise_checkpoint_error(result)
    err = err if err is not None else _stderr_console(args)
    _print_summary(err, result, resolved, verbose=_verbosity(args) > 0, secrets=secrets)
    if args.json:
        _json_summary(result, resolved, secrets)
    if result.state == "succeeded":
        return EXIT_OK
    if signum is not None:
        return 128 + signum
    return EXIT_FAILED


def _stderr_console(args: argparse.Namespace) -> Console:
    """stderr's rich console, live output forced on by ``--progress``."""
    return _consoles(force_terminal=_forced_terminal(args))[1]


async def _execute(
    spec: PipelineSpec,
    manager: PluginManager,
    view: _RunView,
    resume: bool = False,
    force: bool = False,
) -> tuple[RunResult, int | None]:
    """Run the pipeline, rendering its events; return its result and any signal number."""
    from ..core.api import open_run

    async with open_run(spec, plugins=manager, resume=resume, force=force) as handle:

        async def consume() -> None:
            async for event in handle.events():
                view.on_event(event)

        return await _show_run(handle, view, consume)


async def _show_run(
    handle: RunHandle, view: _RunView, consume: Callable[[], Awaitable[None]]
) -> tuple[RunResult, int | None]:
    """Show a run on the terminal (signals handled, the view refreshed) while ``consume``
    reads its events and hands them to ``view``; return its result and any signal
    number."""
    import anyio

    received: list[int] = []
    async with anyio.create_task_group() as tg:
        await tg.start(_watch_signals, handle, view, received)
        view.start(handle)
        tg.start_soon(view.refresh)
        try:
            await consume()
        finally:
            tg.cancel_scope.cancel()
    result = await handle.wait()
    return result, (received[0] if received else None)


async def _watch_signals(
    handle: RunHandle,
    view: _RunView,
    received: list[int],
    *,
    task_status: TaskStatus[None],
) -> None:
    """Cancel the run on the first SIGINT/SIGTERM; exit at once on the second."""
    import signal

    def first(name: str, signum: int) -> None:
        view.line(f"{name}: cancelling the run, cleaning up (send it again to exit now)", "yellow")
        handle.cancel("interrupted" if signum == signal.SIGINT else "terminated")

    def again(name: str) -> None:
        view.stop()
        view.line(f"{name} again: exiting without cleanup", "red")

    await _on_signals(first, again, received, task_status=task_status)


# ---------------------------------------------------------------------------------------
# headwater validate / schema
# ---------------------------------------------------------------------------------------


def _is_jobs_path(path: str) -> bool:
    """Is ``path`` a jobs file (a mapping with a ``jobs`` key)? False when unreadable or
    invalid, so that the pipeline loader reports the problem.

    The same test as :func:`headwater.core.jobs.is_jobs_path`, without importing the jobs
    module and its scheduler, which a pipeline file never needs.
    """
    from ..core.yamlfile import YamlFileError, read_yaml

    try:
        data = read_yaml(path, substitute=False)
    except YamlFileError:
        return False
    return isinstance(data, Mapping) and "jobs" in data


def _cmd_schema(args: argparse.Namespace) -> int:
    """``headwater schema``: the JSON Schema of pipeline files."""
    from ..core.pipeline import PipelineSpec

    _print_json(PipelineSpec.model_json_schema())
    return EXIT_OK
