"""The ``headwater`` command: run, validate and inspect pipelines; list plugins.

Commands::

    headwater run FILE [--set KEY=VALUE]... [--progress | --no-progress] [--json]
    headwater validate FILE [--set KEY=VALUE]...
    headwater plugins [--json]
    headwater describe NAME [--kind KIND] [--json]
    headwater schema
    headwater serve [--config FILE] [--host HOST] [--port PORT]
    headwater tail URL STREAM [--since N] [--token TOKEN] [--json]
    headwater worker FILE [--consumer NAME] [--drain-timeout SECONDS] [--set KEY=VALUE]...
    headwater run FILE --resume [--force]
    headwater checkpoints list|show NAME|reset NAME [--store-path PATH | --pipeline FILE]

Global options (before or after the command): ``--disable-plugin NAME`` (repeatable, also
``-p no:NAME`` as in pytest, and the ``HEADWATER_DISABLE_PLUGINS`` variable),
``--strict-plugins`` (a plugin that fails to load is an error), ``-v`` (logging, and
tracebacks of unexpected errors), ``--version``.

Output: data goes to stdout (``--json`` documents, sinks such as ``stdout``); progress,
messages, summaries and errors go to stderr. Errors are one readable paragraph, never a
traceback unless ``-v`` is given.

Exit codes: 0 success; 1 the pipeline failed, was cancelled or timed out (or an
unexpected error); 2 bad input (missing file, invalid YAML, validation errors, unknown
component, a plugin failure in strict mode); 130 / 143 the run was interrupted by
SIGINT / SIGTERM.

Heavy modules (rich, anyio, pydantic, the plugin machinery) are imported inside the
command functions so that ``headwater --help`` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from rich.console import Console, RenderableType
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from .core.components import Component
    from .core.events import Complete, ErrorEvent, Event
    from .core.events import Progress as ProgressEvent
    from .core.pipeline import PipelineSpec, ResolvedPipeline
    from .core.plugins import PluginManager
    from .core.runtime import RunHandle, RunResult

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "CLIError",
    "build_parser",
    "main",
    "parse_overrides",
]

EXIT_OK = 0
"""The command did what was asked (the pipeline succeeded)."""
EXIT_FAILED = 1
"""The pipeline failed, was cancelled or timed out; or an unexpected error."""
EXIT_USAGE = 2
"""Bad input: missing file, invalid YAML, validation errors, unknown component."""
EXIT_SIGINT = 130
"""The run was interrupted by SIGINT (Ctrl-C): 128 + 2."""
EXIT_SIGTERM = 143
"""The run was stopped by SIGTERM: 128 + 15."""

KINDS = ("action", "transformer", "sink", "exporter")
"""The values of ``ComponentKind``, spelled out so that ``--help`` imports no core module."""

_MAX_ERROR_LINES = 5
"""Handled errors printed per stage while a run goes on; the rest are only counted."""
_MAX_OUTPUT_REPR = 160
"""Longest sink output shown verbatim in the human summary."""
_MAX_OUTPUT_JSON = 10_000
"""Longest sink output (JSON characters) included verbatim in ``run --json``."""

_EPILOG = """\
exit codes:
  0    success
  1    the pipeline failed, was cancelled or timed out
  2    bad input: missing file, invalid YAML or pipeline, unknown component,
       a plugin that failed to load with --strict-plugins
  130  interrupted (SIGINT, Ctrl-C); 143 on SIGTERM

environment:
  HEADWATER_DISABLE_PLUGINS=a,b   plugins (or distributions) not to load
  HEADWATER_STRICT_PLUGINS=1      same as --strict-plugins
"""


class CLIError(Exception):
    """A user-facing error: printed as one paragraph on stderr, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------


def _add_global_options(parser: argparse.ArgumentParser, *, suffix: str = "") -> None:
    """Options accepted before the command (``suffix=""``) and after it (``"_sub"``).

    argparse gives every sub-command a fresh namespace that overwrites the parent's, so
    the copies after the command use their own destinations and are merged afterwards.
    """
    sub = bool(suffix)
    group = parser.add_argument_group("global options")
    group.add_argument(
        "--disable-plugin",
        dest=f"disable{suffix}",
        action="append",
        metavar="NAME",
        default=argparse.SUPPRESS if sub else [],
        help="do not load this plugin or distribution (repeatable)",
    )
    group.add_argument(
        "-p",
        dest=f"plugin_opts{suffix}",
        action="append",
        metavar="no:NAME",
        default=argparse.SUPPRESS if sub else [],
        help="pytest-style spelling of --disable-plugin NAME",
    )
    group.add_argument(
        "--strict-plugins",
        dest=f"strict{suffix}",
        action="store_true",
        default=argparse.SUPPRESS if sub else False,
        help="fail when any plugin fails to load (default: report it and go on)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose{suffix}",
        action="count",
        default=argparse.SUPPRESS if sub else 0,
        help="log more (-vv for debug); show tracebacks of unexpected errors",
    )


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the pipeline file, e.g. sources.app.params.path=x.log or "
        "steps.0.params.size=10 (also steps[0].params.size=10, quoted for the shell); VALUE "
        "is read as YAML: 10 is a number, '10' a string, [a, b] a list, an empty VALUE is "
        "null; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``headwater`` command."""
    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Streaming pipelines assembled from plugins.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    _add_global_options(parser)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suffix="_sub")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run a pipeline file with live progress",
        description="Run a pipeline YAML file. Progress bars and the summary go to stderr;\n"
        "stdout is left to sinks (and to --json). Ctrl-C cancels the run cleanly.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", metavar="FILE", help="pipeline YAML file")
    _add_overrides(run)
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

    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check a pipeline file: its shape, its components and their params",
        description="Validate a pipeline YAML file against the pipeline schema and the "
        "installed components; print OK or every problem with its path.",
    )
    validate.add_argument("file", metavar="FILE", help="pipeline YAML file")
    _add_overrides(validate)
    validate.set_defaults(func=_cmd_validate)

    plugins = commands.add_parser(
        "plugins",
        parents=[common],
        help="list plugins, their components and load errors",
        description="List the installed plugins (loaded and disabled), the components "
        "they contribute and the plugins that failed to load.",
    )
    plugins.add_argument(
        "--json",
        action="store_true",
        help='print {"plugins": [...], "components": [...], "failures": [...]}',
    )
    plugins.add_argument(
        "--check",
        action="store_true",
        help="run the conformance checks on every installed component (exit 1 if one "
        'fails); with --json print {"results": [...], "failed": N}',
    )
    plugins.set_defaults(func=_cmd_plugins)

    describe = commands.add_parser(
        "describe",
        parents=[common],
        help="show one component's metadata and params",
        description="Show a component's metadata and the JSON Schema of its params.",
    )
    describe.add_argument("name", metavar="NAME", help="component name, e.g. range")
    describe.add_argument("--kind", choices=KINDS, help="only look among this kind")
    describe.add_argument("--json", action="store_true", help="print the metadata as JSON")
    describe.set_defaults(func=_cmd_describe)

    schema = commands.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of pipeline files",
        description="Print the JSON Schema of the pipeline YAML format.",
    )
    schema.set_defaults(func=_cmd_schema)

    new_plugin = commands.add_parser(
        "new-plugin",
        parents=[common],
        help="create a plugin package, ready to pip install and test",
        description="Create a plugin distribution: pyproject.toml with the headwater entry "
        "point, a sample action with a params model, and tests using the headwater.testing "
        "fixtures. They pass right after: pip install -e 'DIR[test]' && pytest DIR",
    )
    new_plugin.add_argument("name", metavar="NAME", help="distribution name, e.g. acme-weather")
    new_plugin.add_argument(
        "--dir",
        metavar="PATH",
        help="directory to create (default: ./NAME); it may exist if it is empty",
    )
    new_plugin.set_defaults(func=_cmd_new_plugin)
    _add_server_commands(commands, common)
    _add_worker_command(commands, common)
    _add_checkpoint_commands(commands, common)
    return parser


def _merged(args: argparse.Namespace, name: str, empty: Any) -> Any:
    before = getattr(args, name, empty)
    after = getattr(args, f"{name}_sub", empty)
    return before + after


def _disabled_plugins(args: argparse.Namespace) -> list[str]:
    names = list(_merged(args, "disable", []))
    for opt in _merged(args, "plugin_opts", []):
        if not opt.startswith("no:") or not opt[3:].strip():
            raise CLIError(f"-p expects no:NAME (to disable the plugin NAME), got {opt!r}")
        names.append(opt[3:].strip())
    return names


def _verbosity(args: argparse.Namespace) -> int:
    return int(_merged(args, "verbose", 0))


def _strict(args: argparse.Namespace) -> bool:
    """``--strict-plugins`` given, or ``HEADWATER_STRICT_PLUGINS`` set to a true value."""
    if getattr(args, "strict", False) or getattr(args, "strict_sub", False):
        return True
    value = os.environ.get("HEADWATER_STRICT_PLUGINS", "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``--set KEY=VALUE`` options into ``{KEY: value}``.

    VALUE is read as a YAML scalar (``10`` is an int, ``true`` a bool, ``'10'`` a string,
    an empty VALUE is null). Bracketed flow collections (``[a, b]``, ``{k: v}``) become
    lists and mappings; any other text, including text YAML would read as a mapping such
    as ``ERROR: (.*)``, stays the literal string.
    """
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list) and not raw.lstrip().startswith(("[", "{")):
            value = raw
        overrides[key] = value
    return overrides


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _forced_terminal(args: argparse.Namespace) -> bool | None:
    """True when ``run --progress`` asks for live output even off a terminal."""
    return True if getattr(args, "progress", None) else None


@functools.cache
def _consoles(*, force_terminal: bool | None = None) -> tuple[Console, Console]:
    """Rich consoles for stdout and stderr (one pair per process, shared by all output).

    No emoji codes and no guessing at highlights. The stderr console never wraps printed
    lines: the lines a sink writes to a terminal stdout are routed through it while
    progress bars are live, and must stay intact.
    """
    from rich.console import Console

    out = Console(highlight=False, emoji=False)
    err = Console(
        stderr=True, highlight=False, emoji=False, soft_wrap=True, force_terminal=force_terminal
    )
    return out, err


def _plugin_manager(
    args: argparse.Namespace, extra_disable: Iterable[str] = (), *, strict: bool | None = None
) -> PluginManager:
    """A loaded plugin manager honouring the CLI options; it becomes the process default."""
    from .core.plugins import PluginManager, reset_plugin_manager

    if strict is None:
        strict = _strict(args)
    manager = PluginManager(disable=[*_disabled_plugins(args), *extra_disable], strict=strict)
    reset_plugin_manager(manager)
    return manager.load()


def _load_spec(args: argparse.Namespace) -> PipelineSpec:
    from pathlib import Path

    from .core.pipeline import load_pipeline

    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"no such file: {args.file}")
    if path.is_dir():
        raise CLIError(f"{args.file} is a directory, not a pipeline file")
    overrides = parse_overrides(args.overrides)
    return load_pipeline(path, overrides)


def _prepare(
    args: argparse.Namespace, spec: PipelineSpec
) -> tuple[ResolvedPipeline, PluginManager]:
    """Resolve ``spec`` against the plugins; validation errors name the file."""
    from .core.api import prepare
    from .core.errors import PipelineValidationError

    manager = _plugin_manager(args, spec.plugins.disable)
    try:
        resolved, manager = prepare(spec, plugins=manager)
    except PipelineValidationError as exc:
        raise PipelineValidationError(exc.issues, exc.source or args.file) from None
    return resolved, manager


def _stage_order(resolved: ResolvedPipeline) -> list[str]:
    names = [s.stage for s in resolved.sources.values()]
    names += [s.stage for s in resolved.steps]
    names += [s.stage for s in resolved.sinks]
    if resolved.dead_letter is not None:
        names.append(resolved.dead_letter.stage)
    return names


def _sink_keys(resolved: ResolvedPipeline) -> list[str]:
    return [s.stage.removeprefix("sinks.") for s in resolved.sinks]


def _in_order(mapping: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """``mapping`` with the keys listed in ``order`` first, in that order."""
    ordered = {key: mapping[key] for key in order if key in mapping}
    ordered.update((key, value) for key, value in mapping.items() if key not in ordered)
    return ordered


def _num(value: float) -> str:
    """``1234`` -> ``1,234``; non-integers keep two decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _rate(value: Any) -> str:
    """An items-per-second figure, or ``-`` when there is none (no time elapsed)."""
    import math

    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _json_safe(value: Any) -> Any:
    """A JSON-serialisable copy: non-finite floats become null, unknown objects repr()."""
    import math
    from pathlib import PurePath

    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)


def _describe_value(value: Any) -> str:
    """A short description of a value too large to show: ``list of 10,000 items``."""
    if isinstance(value, list | tuple | set | frozenset):
        return f"{type(value).__name__} of {len(value):,} items"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with {len(value):,} keys"
    return f"{type(value).__name__} object"


def _output_for_json(value: Any) -> Any:
    import json

    safe = _json_safe(value)
    if len(json.dumps(safe)) <= _MAX_OUTPUT_JSON:
        return safe
    return f"<{_describe_value(value)}>"


def _print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# headwater run
# ---------------------------------------------------------------------------------------


class _RunView:
    """Shows a run on stderr: live progress bars on a terminal, plain lines otherwise.

    One bar per stage that reports progress (``done/total`` and a percentage when the
    total is known, a spinner and a count when not), plus a line for the whole run with
    the number of items that entered it, the number delivered and the rate. Stage status
    messages and the first handled errors of each stage are printed above the bars.
    """

    def __init__(self, console: Console, resolved: ResolvedPipeline, *, live: bool) -> None:
        self.console = console
        self.resolved = resolved
        self.live = live
        self.handle: RunHandle | None = None
        self._progress: RichProgress | None = None
        self._run_task: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._errors: dict[str, int] = {}
        self._policies = {s.stage: s.on_error for s in [*resolved.steps, *resolved.sinks]}
        self._sinks = [s.stage for s in resolved.sinks]
        first = resolved.steps[0] if resolved.steps else None
        self._entry = first.stage if first else (self._sinks[0] if self._sinks else None)

    # -- output helpers ---------------------------------------------------------------

    def line(self, text: str, style: str | None = None) -> None:
        """Print one line above the live display (or plainly)."""
        from rich.text import Text

        self.console.print(Text(text, style=style or ""), soft_wrap=True)

    # -- lifecycle --------------------------------------------------------------------

    def start(self, handle: RunHandle) -> None:
        """Announce the run and start the live display."""
        self.handle = handle
        spec = self.resolved.spec
        sources = ", ".join(spec.source_order())
        compose = f" {spec.compose.mode}d" if spec.compose and len(spec.sources) > 1 else ""
        sinks = ", ".join(s.stage.removeprefix("sinks.") for s in self.resolved.sinks)
        self.line(
            f"running pipeline {spec.name!r} (run {handle.run_id}): sources {sources}{compose}"
            f" -> {len(spec.steps)} step{'s' if len(spec.steps) != 1 else ''} -> {sinks}",
            "bold",
        )
        if self.live:
            self._progress = _make_progress(self.console)
            self._run_task = self._progress.add_task(spec.name, total=None, message="")
            self._progress.start()

    def stop(self) -> None:
        """Stop the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _count(self, stage: str | None, attr: str) -> int:
        if self.handle is None or stage is None:
            return 0
        stats = self.handle.stats.get(stage)
        return int(getattr(stats, attr)) if stats is not None else 0

    def tick(self) -> None:
        """Refresh the run line from the live counters.

        It counts the items entering the first stage after the sources (sources only
        publish their counters when they end) and those delivered to the first sink.
        """
        if self._progress is None or self._run_task is None:
            return
        task = self._progress.tasks[self._run_task]
        count = self._count(self._entry, "items_in")
        delivered = self._count(self._sinks[0] if self._sinks else None, "items_out")
        elapsed = task.elapsed or 0.0
        rate = f" · {_rate(count / elapsed)} items/s" if elapsed > 0 else ""
        self._progress.update(
            self._run_task, completed=count, message=f"{delivered:,} delivered{rate}"
        )

    async def refresh(self) -> None:
        """Keep the run line current until cancelled."""
        import anyio

        while True:
            self.tick()
            await anyio.sleep(0.1)

    # -- events -----------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Render one control event."""
        from .core.events import Complete, ErrorEvent, Progress, Status

        if isinstance(event, Progress):
            self._on_progress(event)
        elif isinstance(event, Status):
            if event.stage is not None and event.message:
                self.line(f"  {event.stage}: {event.message}", "dim")
        elif isinstance(event, ErrorEvent):
            if event.handled:
                self._on_handled_error(event)
        elif isinstance(event, Complete):
            self._on_complete(event)

    def _on_progress(self, event: ProgressEvent) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(event.stage)
        if task is None:
            self._tasks[event.stage] = self._progress.add_task(
                event.stage, total=event.total, message=event.message or ""
            )
            self._progress.update(self._tasks[event.stage], completed=event.done)
        elif event.message is None:
            self._progress.update(task, completed=event.done, total=event.total)
        else:
            self._progress.update(
                task, completed=event.done, total=event.total, message=event.message
            )

    def _on_handled_error(self, event: ErrorEvent) -> None:
        count = self._errors[event.stage] = self._errors.get(event.stage, 0) + 1
        if count > _MAX_ERROR_LINES:
            return
        err = event.error
        at = f" at item {err['position']}" if err.get("position") is not None else ""
        policy = self._policies.get(event.stage, "skip")
        more = (
            f" (further errors of {event.stage} are only counted)"
            if count == _MAX_ERROR_LINES
            else ""
        )
        self.line(
            f"  warning: {event.stage}{at}: {err.get('error')}: {err.get('message')} "
            f"[on_error: {policy}]{more}",
            "yellow",
        )

    def _on_complete(self, event: Complete) -> None:
        progress = self._progress
        if progress is None:
            return
        self.tick()
        if event.state == "succeeded":
            # Complete the bars whose total was unknown, still showing only their count.
            for task in progress.tasks:
                if task.total is None:
                    progress.update(task.id, total=task.completed, unknown_total=True)
        for task in progress.tasks:
            progress.stop_task(task.id)
        self.stop()


def _make_progress(console: Console) -> RichProgress:
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    def total_known(task: Task) -> bool:
        return task.total is not None and not task.fields.get("unknown_total")

    class CountColumn(ProgressColumn):
        """``done/total``, or just ``done`` when the total is unknown."""

        def render(self, task: Task) -> Text:
            if not total_known(task):
                return Text(_num(task.completed), style="progress.download")
            assert task.total is not None
            return Text(f"{_num(task.completed)}/{_num(task.total)}", style="progress.download")

    class PercentColumn(ProgressColumn):
        """The percentage done, when the total is known."""

        def render(self, task: Task) -> Text:
            if not total_known(task):
                return Text("")
            return Text(f"{task.percentage:>3.0f}%", style="progress.percentage")

    return Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        CountColumn(),
        PercentColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}", style="dim", markup=False),
        console=console,
        transient=False,
        # Lines a sink prints to a terminal stdout appear above the bars; a redirected
        # stdout is never touched.
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    )


async def _on_signals(
    first: Callable[[str, int], None],
    again: Callable[[str], None],
    received: list[int],
    *,
    task_status: TaskStatus[None],
) -> None:
    """Call ``first`` on the first SIGINT/SIGTERM; on a second one call ``again`` and exit
    at once with 128 + the signal number (no cleanup)."""
    import signal

    import anyio

    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        signals = receiver.__enter__()
    except NotImplementedError:  # e.g. asyncio on Windows: Ctrl-C raises KeyboardInterrupt
        task_status.started()
        return
    try:
        task_status.started()
        async for signum in signals:
            received.append(int(signum))
            name = signal.Signals(signum).name
            if len(received) == 1:
                first(name, int(signum))
            else:
                again(name)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + int(signum))
    finally:
        receiver.__exit__(None, None, None)


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


async def _execute(
    spec: PipelineSpec,
    manager: PluginManager,
    view: _RunView,
    resume: bool = False,
    force: bool = False,
) -> tuple[RunResult, int | None]:
    """Run the pipeline, rendering its events; return its result and any signal number."""
    import anyio

    from .core.api import open_run

    received: list[int] = []
    async with open_run(spec, plugins=manager, resume=resume, force=force) as handle:
        async with anyio.create_task_group() as tg:
            await tg.start(_watch_signals, handle, view, received)
            view.start(handle)
            if view.live:
                tg.start_soon(view.refresh)
            try:
                async for event in handle.events():
                    view.on_event(event)
            finally:
                tg.cancel_scope.cancel()
        result = await handle.wait()
    return result, (received[0] if received else None)


def _print_summary(
    console: Console, result: RunResult, resolved: ResolvedPipeline, *, verbose: bool = False
) -> None:
    """The end of a run on stderr: outcome, per-stage counts, sink outputs, errors."""
    from rich.table import Table
    from rich.text import Text

    summary = result.summary
    items = int(summary.get("items_in") or 0)
    elapsed = float(summary.get("elapsed_seconds") or 0.0)
    rate = _rate(summary.get("items_per_second"))
    name = result.pipeline
    counts = f"{items:,} item{'s' if items != 1 else ''} in {elapsed:.2f}s ({rate} items/s)"
    if result.state == "succeeded":
        head = Text(f"pipeline {name!r} succeeded: {counts}", style="bold green")
    elif result.state == "cancelled":
        reason = summary.get("cancel_reason") or "cancelled"
        head = Text(f"pipeline {name!r} cancelled ({reason}): {counts}", style="bold yellow")
    else:
        head = Text(f"pipeline {name!r} failed: {counts}", style="bold red")
    console.print(head, soft_wrap=True)
    checkpoint = _checkpoint_line(summary.get("checkpoint"))
    if checkpoint:
        console.print(Text(checkpoint), soft_wrap=True)

    stages: dict[str, dict[str, int]] = _in_order(
        summary.get("stages") or {}, _stage_order(resolved)
    )
    order = list(stages)
    if order:
        table = Table(box=None, pad_edge=False, padding=(0, 2), show_edge=False)
        table.add_column("stage", no_wrap=True)
        for col in ("in", "out", "errors", "skipped"):
            table.add_column(col, justify="right")
        for stage in order:
            st = stages[stage]
            table.add_row(
                Text(stage),
                "" if stage.startswith("sources.") else f"{st.get('items_in', 0):,}",
                f"{st.get('items_out', 0):,}",
                Text(f"{st.get('errors', 0):,}", style="red" if st.get("errors") else ""),
                f"{st.get('skipped', 0):,}",
            )
        console.print(table)

    for sink, output in _in_order(result.outputs, _sink_keys(resolved)).items():
        if output is None:
            continue
        shown = repr(output)
        if len(shown) > _MAX_OUTPUT_REPR:
            shown = _describe_value(output)
        console.print(Text(f"output of {sink}: {shown}"), soft_wrap=True)
    for error in result.errors:
        console.print(Text(f"error: {error}", style="red"), soft_wrap=True)
        cause = getattr(error, "cause", None)
        if verbose and isinstance(cause, BaseException):
            import traceback

            console.print(Text("".join(traceback.format_exception(cause)).rstrip(), style="dim"))


def _add_metrics_options(parser: argparse.ArgumentParser, *, port: bool) -> None:
    """``--metrics-port`` (if ``port``), ``--metrics-jsonl`` and ``--metrics-interval``."""
    group = parser.add_argument_group("metrics (see docs/metrics.md)")
    if port:
        group.add_argument(
            "--metrics-port",
            type=_port,
            metavar="PORT",
            help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics while it runs "
            "(0: any free port; the URL is printed on stderr)",
        )
    group.add_argument(
        "--metrics-jsonl",
        metavar="FILE",
        help="append a metrics snapshot as one JSON line to FILE every --metrics-interval "
        "seconds, and a last one at the end",
    )
    group.add_argument(
        "--metrics-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between two --metrics-jsonl lines (default: 10)",
    )


def _metrics_exporters(args: argparse.Namespace, manager: PluginManager) -> list[Any]:
    """The exporters the metrics options ask for, created but not started."""
    entries: list[dict[str, Any]] = []
    port = getattr(args, "metrics_port", None)
    if port is not None:
        entries.append({"exporter": "prometheus", "params": {"port": port}})
    if args.metrics_jsonl:
        params = {"path": args.metrics_jsonl, "interval": args.metrics_interval}
        entries.append({"exporter": "jsonl", "params": params})
    if not entries:
        return []
    from pydantic import ValidationError

    from .builtin_plugins.exporters import build_exporters
    from .core.errors import ComponentNotFound

    try:
        return build_exporters(entries, manager)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CLIError(f"metrics options: {problems}") from None
    except (ImportError, ComponentNotFound) as exc:
        raise CLIError(f"metrics options: {exc}", EXIT_FAILED) from None


async def _with_exporters(
    exporters: list[Any], console: Console, fn: Callable[..., Any], *args: Any
) -> Any:
    """Await ``fn(*args)`` with the metrics exporters running (stopped at the end, which
    writes the final figures)."""
    from rich.text import Text

    from .core.metrics import running_exporters

    entered = False
    try:
        async with running_exporters(exporters):
            entered = True
            for exporter in exporters:
                url = getattr(exporter, "url", None)
                if url:
                    console.print(Text(f"headwater: metrics at {url}"), soft_wrap=True)
            return await fn(*args)
    except OSError as exc:
        if entered:
            raise
        # a port taken, a file that cannot be opened
        raise CLIError(f"cannot start metrics: {exc.strerror or exc}", EXIT_FAILED) from None


def _cmd_run(args: argparse.Namespace) -> int:
    """``headwater run``: run a pipeline file with progress, a summary and exit code."""
    import importlib.util

    import anyio

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        raise CLIError("the trio backend needs trio: pip install 'headwater[trio]'")
    from .core.jobs import is_jobs_path

    if is_jobs_path(args.file):
        if args.resume or args.force:
            raise CLIError("--resume and --force apply to pipeline files, not to jobs files")
        return _cmd_run_jobs(args)
    if args.force and not args.resume:
        raise CLIError("--force only applies with --resume")
    spec = _load_spec(args)
    resolved, manager = _prepare(args, spec)
    if args.resume and spec.checkpoint is None:
        raise CLIError(
            f"pipeline {spec.name!r} in {args.file} has no checkpoint section, so it cannot "
            "resume; add one (e.g. checkpoint: {every_items: 10000}) to make runs resumable"
        )
    _, err = _consoles(force_terminal=_forced_terminal(args))
    exporters = _metrics_exporters(args, manager)
    live = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    view = _RunView(err, resolved, live=live)
    result: RunResult
    signum: int | None
    try:
        result, signum = anyio.run(
            _with_exporters,
            exporters,
            err,
            _execute,
            spec,
            manager,
            view,
            args.resume,
            args.force,
            backend=args.backend,
        )
    finally:
        view.stop()
    _raise_checkpoint_error(result)
    _print_summary(err, result, resolved, verbose=_verbosity(args) > 0)
    if args.json:
        outputs = _in_order(result.outputs, _sink_keys(resolved))
        summary = dict(result.summary)
        summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
        summary["outputs"] = {k: _output_for_json(v) for k, v in outputs.items()}
        _print_json(summary)
    if result.state == "succeeded":
        return EXIT_OK
    if signum is not None:
        return 128 + signum
    return EXIT_FAILED


async def _stop_on_signals(
    stop: Any, console: Console, received: list[int], *, task_status: TaskStatus[None]
) -> None:
    """Set ``stop`` on the first SIGINT/SIGTERM; exit at once on the second."""

    def first(name: str, signum: int) -> None:
        console.print(
            f"{name}: cancelling every job, cleaning up (send it again to exit now)",
            style="yellow",
        )
        stop.set()

    def again(name: str) -> None:
        console.print(f"{name} again: exiting without cleanup", style="red")

    await _on_signals(first, again, received, task_status=task_status)


def _cmd_run_jobs(args: argparse.Namespace) -> int:
    """``headwater run JOBS.yaml``: run every job of a jobs file on the scheduler."""
    import anyio

    from .core.jobs import run_jobs, validate_jobs

    if args.overrides or args.json:
        raise CLIError("--set and --json apply to pipeline files, not to jobs files")
    manager = _plugin_manager(args)
    validate_jobs(args.file, plugins=manager)  # every problem, before the event loop starts
    _, err = _consoles(force_terminal=_forced_terminal(args))
    exporters = _metrics_exporters(args, manager)
    live = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    received: list[int] = []

    async def main() -> int:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signals, stop, err, received)
            code = await run_jobs(args.file, progress=live, console=err, plugins=manager, stop=stop)
            tg.cancel_scope.cancel()
        return code

    code = int(anyio.run(_with_exporters, exporters, err, main, backend=args.backend))
    return 128 + received[0] if received else code


# ---------------------------------------------------------------------------------------
# headwater validate / schema
# ---------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    """``headwater validate``: check shape, components and params; print OK."""
    from .core.jobs import is_jobs_path, validate_jobs

    if is_jobs_path(args.file):
        if args.overrides:
            raise CLIError("--set applies to pipeline files, not to jobs files")
        n = len(validate_jobs(args.file, plugins=_plugin_manager(args)).jobs)
        print(f"OK: jobs file {args.file} is valid ({n} job{'s' if n != 1 else ''})")
        return EXIT_OK
    spec = _load_spec(args)
    resolved, _ = _prepare(args, spec)
    n_src, n_steps, n_sinks = len(resolved.sources), len(resolved.steps), len(resolved.sinks)
    compose = f", {spec.compose.mode}d" if spec.compose and n_src > 1 else ""
    print(
        f"OK: pipeline {spec.name!r} in {args.file} is valid "
        f"({n_src} source{'s' if n_src != 1 else ''}{compose}, "
        f"{n_steps} step{'s' if n_steps != 1 else ''}, "
        f"{n_sinks} sink{'s' if n_sinks != 1 else ''})"
    )
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """``headwater schema``: the JSON Schema of pipeline files."""
    from .core.pipeline import PipelineSpec

    _print_json(PipelineSpec.model_json_schema())
    return EXIT_OK


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    """``headwater new-plugin``: scaffold a plugin distribution; print what to do next."""
    import shlex

    from .scaffold import ScaffoldError, create_plugin

    try:
        made = create_plugin(args.name, args.dir)
    except ScaffoldError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot create the plugin: {exc}") from None
    where = shlex.quote(str(made.root))
    print(f"created plugin {made.names.distribution!r} in {made.root}:")
    for path in made.files:
        print(f"  {path.as_posix()}")
    print(
        "next:\n"
        f"  python -m pip install -e {shlex.quote(f'{made.root}[test]')}\n"
        f"  python -m pytest {where}\n"
        f"  headwater plugins                 # lists {made.names.package}\n"
        f"  headwater describe {made.action}"
    )
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# headwater plugins / describe
# ---------------------------------------------------------------------------------------


def _metadata(component: Component) -> dict[str, Any]:
    """``component.metadata()``; a params model without a JSON Schema does not break it."""
    import dataclasses

    try:
        return component.metadata()
    except Exception as exc:  # e.g. a params field of a type pydantic cannot describe
        meta = dataclasses.replace(component, params=None).metadata()
        meta["params_schema"] = None
        meta["params_schema_error"] = f"{type(exc).__name__}: {exc}"
        return meta


def _cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins. JSON structure (stable)::

    {"plugins": [{"name", "distribution", "version", "module", "components": ["kind:name"],
                  "disabled": bool}],
     "components": [{"name", "kind", "plugin", "distribution", "version", "description",
                     "output", "capabilities", "params_schema", ...}],
     "failures": [{"plugin", "distribution", "version", "stage", "error"}]}
    """
    # Load everything even in strict mode so the listing is complete; strictness decides
    # the exit code instead.
    manager = _plugin_manager(args, strict=False)
    failures = manager.failures
    strict = _strict(args)
    if getattr(args, "check", False):
        return _check_plugins(args, manager)
    if args.json:
        plugins = sorted(manager.plugins.values(), key=lambda p: p.name)
        _print_json(
            {
                "plugins": [p.to_dict() for p in plugins],
                "components": [_metadata(c) for c in manager.registry],
                "failures": [f.to_dict() for f in failures],
            }
        )
        return EXIT_USAGE if strict and failures else EXIT_OK

    _print_plugins(_consoles()[0], manager, verbose=_verbosity(args) > 0)
    if strict and failures:
        _error("a plugin failed to load and strict plugin loading is on")
        return EXIT_USAGE
    return EXIT_OK


def _check_plugins(args: argparse.Namespace, manager: PluginManager) -> int:
    """``headwater plugins --check``: the conformance kit on every installed component."""
    from rich.table import Table
    from rich.text import Text

    from .conformance import check_all

    results = check_all(manager)
    failed = sum(r.status == "fail" for r in results)
    if args.json:
        _print_json({"results": [r.to_dict() for r in results], "failed": failed})
        return EXIT_FAILED if failed else EXIT_OK
    styles = {"pass": "green", "fail": "bold red", "skip": "yellow", "n/a": "dim"}
    table = Table("component", "check", "result", "detail", show_edge=False)
    for r in results:
        table.add_row(
            f"{r.kind} {r.component}",
            r.check,
            Text(r.status, style=styles[r.status]),
            Text(r.detail, style="red" if r.status == "fail" else ""),
        )
    out = _consoles()[0]
    out.print(table)
    counts = {s: sum(r.status == s for r in results) for s in styles}
    out.print(Text(", ".join(f"{n} {s}" for s, n in counts.items()), style="bold"))
    if failed:
        _error(f"{failed} conformance check{'s' if failed != 1 else ''} failed")
        return EXIT_FAILED
    return EXIT_OK


def _print_plugins(out: Console, manager: PluginManager, *, verbose: bool) -> None:
    """Human listing: each plugin with its components, then disabled ones, then failures."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    plugins = sorted(manager.plugins.values(), key=lambda p: p.name)
    loaded = [p for p in plugins if not p.disabled]
    disabled = [p for p in plugins if p.disabled]
    failures = manager.failures
    n_comp = len(manager.registry)
    out.print(
        Text(
            f"{len(loaded)} plugin{'s' if len(loaded) != 1 else ''} loaded "
            f"({n_comp} component{'s' if n_comp != 1 else ''}), {len(disabled)} disabled, "
            f"{len(failures)} failed to load",
            style="bold",
        )
    )

    max_name = max((len(c.name) for c in manager.registry), default=0)

    def origin(dist: str | None, version: str | None) -> str:
        return f"{dist} {version or ''}".rstrip() if dist else "(not from a distribution)"

    for plugin in loaded:
        out.print()
        out.print(
            Text.assemble(
                (plugin.name, "bold"), "  ", (origin(plugin.distribution, plugin.version), "dim")
            )
        )
        refs = [ref.partition(":")[::2] for ref in plugin.components]
        width_kind = max((len(k) for k, _ in refs), default=0)
        room = max(20, out.width - 2 - width_kind - 2 - max_name - 2)
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, style="cyan", min_width=max_name)
        table.add_column(no_wrap=True)
        for kind, name in refs:
            try:
                description = Text(manager.registry.get(kind, name).description)
            except LookupError:
                description = Text()
            description.truncate(room, overflow="ellipsis")
            table.add_row(kind, Text(name), description)
        if not refs:
            table.add_row(Text("(no components)", style="dim"), "", "")
        out.print(Padding(table, (0, 0, 0, 2), expand=False))
    if disabled:
        out.print()
        out.print(Text("disabled", style="bold"))
        for plugin in disabled:
            out.print(Text(f"  {plugin.name}  {origin(plugin.distribution, plugin.version)}"))
    if failures:
        out.print()
        out.print(Text("LOAD ERRORS", style="bold red"))
        for failure in failures:
            out.print(Text(f"  {failure}", style="red"), soft_wrap=True)
            if verbose and failure.traceback:
                out.print(Text(failure.traceback.rstrip()), soft_wrap=True)
    out.print()
    out.print(Text("headwater describe NAME shows a component's params", style="dim"))


def _suggest(name: str, candidates: Iterable[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)


def _cmd_describe(args: argparse.Namespace) -> int:
    """``headwater describe``: one component's metadata and params schema."""
    manager = _plugin_manager(args)
    registry = manager.registry
    found = registry.find(args.name)
    if args.kind:
        found = [c for c in found if str(c.kind) == args.kind]
    if not found:
        kinds = [args.kind] if args.kind else list(KINDS)
        names = [n for k in kinds for n in registry.names(k)]
        message = f"no {args.kind or 'component'} named {args.name!r}"
        elsewhere = [str(c.kind) for c in registry.find(args.name)]
        if elsewhere:
            kinds_found = " and ".join(f"a{'n' * (k[0] in 'ae')} {k}" for k in elsewhere)
            message += f"; {args.name!r} is {kinds_found}"
        suggestions = _suggest(args.name, names)
        if suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in suggestions)}?"
        elif not elsewhere:
            message += " (headwater plugins lists every component)"
        raise CLIError(message)
    if args.json:
        if len(found) > 1:
            several = ", ".join(str(c.kind) for c in found)
            raise CLIError(f"{args.name!r} names several components ({several}); pass --kind")
        _print_json(_metadata(found[0]))
        return EXIT_OK
    out, _ = _consoles()
    for i, component in enumerate(found):
        if i:
            out.print()
        _print_component(out, component)
    return EXIT_OK


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "type" in prop:
        kind = prop["type"]
        if kind == "array" and isinstance(prop.get("items"), Mapping):
            return f"array of {_schema_type(prop['items'])}"
        return " | ".join(kind) if isinstance(kind, list) else str(kind)
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " | ".join(_schema_type(p) for p in prop[key])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    return "any"


def _print_component(out: Console, component: Component) -> None:
    """Human description: metadata, a table of params, then the params JSON Schema."""
    import json
    import textwrap

    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    def indented(renderable: RenderableType) -> Padding:
        return Padding(renderable, (0, 0, 0, 2), expand=False)

    meta = _metadata(component)
    out.print(Text.assemble((meta["name"], "bold"), f"  ({meta['kind']})"))
    if meta["description"]:
        out.print(indented(Text(meta["description"])))
    info = Table.grid(padding=(0, 2))
    info.add_column(style="dim", no_wrap=True)
    info.add_column(overflow="fold")
    origin = meta["plugin"] or "-"
    if meta["distribution"]:
        origin += f" ({meta['distribution']} {meta['version'] or ''}".rstrip() + ")"
    rows: list[tuple[str, str]] = [("plugin", origin)]
    if meta.get("output"):
        rows.append(("output", meta["output"]))
    rows.append(("capabilities", ", ".join(meta["capabilities"]) or "-"))
    if meta.get("transformer_kind"):
        rows.append(("transformer kind", meta["transformer_kind"]))
    if meta.get("delivery"):
        rows.append(("delivery", meta["delivery"]))
    for key, value in rows:
        info.add_row(key, Text(value))
    out.print(indented(info))
    out.print()
    schema = meta.get("params_schema")
    if schema is None:
        out.print(Text(f"params schema unavailable: {meta.get('params_schema_error')}"))
        return
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    if not props:
        out.print(Text("params: none"))
        return
    out.print(Text("params", style="bold"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for pname, prop in props.items():
        if pname in required:
            default = Text("required", style="bold")
        elif "default" in prop:
            default = Text(f"default {json.dumps(prop['default'])}")
        else:
            default = Text("optional")
        table.add_row(
            Text(pname), Text(_schema_type(prop)), default, Text(str(prop.get("description", "")))
        )
    out.print(indented(table))
    out.print()
    out.print(Text("params JSON schema", style="bold"))
    out.print(Text(textwrap.indent(json.dumps(schema, indent=2), "  ")), soft_wrap=True)


# ---------------------------------------------------------------------------------------
# headwater serve / tail
# ---------------------------------------------------------------------------------------


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {port}")
    return port


def _add_server_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``serve`` and ``tail`` sub-commands."""
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve streams and named pipelines over WebSockets (and HTTP)",
        description="Serve protocol v1 over WebSockets and /healthz, /api/streams,\n"
        "/api/components over HTTP, on one port. Without authentication (auth.tokens or\n"
        "HEADWATER_TOKENS) it binds 127.0.0.1 only. Ctrl-C (SIGINT) or SIGTERM shuts it\n"
        "down cleanly: every client is told, then disconnected.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="server configuration (YAML)")
    serve.add_argument("--host", help="address to bind (overrides the configuration)")
    serve.add_argument(
        "--port", type=_port, help="port to listen on; 0 picks a free one (default 8765)"
    )
    _add_metrics_options(serve, port=False)
    serve.set_defaults(func=_cmd_serve)

    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="print a stream's chunks as they arrive",
        description="Follow one stream of a headwater server: each chunk is printed on\n"
        "stdout (strings as they are, anything else as JSON), progress and status on\n"
        "stderr. Ends when the stream ends (exit 1 if it ended with an error).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("url", metavar="URL", help="server URL, e.g. ws://127.0.0.1:8765/")
    tail.add_argument("stream", metavar="STREAM", help="stream id")
    tail.add_argument(
        "--since",
        type=int,
        metavar="N",
        help="first print the buffered chunks after seq N (0: everything buffered)",
    )
    tail.add_argument(
        "--token", help="bearer token (default: the HEADWATER_TOKEN environment variable)"
    )
    tail.add_argument(
        "--json", action="store_true", help="print every protocol message as JSON on stdout"
    )
    tail.set_defaults(func=_cmd_tail)


def _cmd_serve(args: argparse.Namespace) -> int:
    """``headwater serve``: run the server until SIGINT or SIGTERM."""
    from pathlib import Path

    import anyio

    from .server.config import ServerConfig, load_server_config

    base_dir: Path | None = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise CLIError(f"no such file: {args.config}")
        config = load_server_config(path)
        base_dir = path.parent
    else:
        config = ServerConfig()
    updates: dict[str, Any] = {}
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if updates:
        config = config.model_copy(update=updates)
    manager = _plugin_manager(args)
    _, err = _consoles()
    exporters = _metrics_exporters(args, manager)
    try:
        return int(
            anyio.run(
                _with_exporters,
                exporters,
                err,
                _serve,
                config,
                manager,
                base_dir,
                err,
                backend="asyncio",
            )
        )
    except OSError as exc:
        raise CLIError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", EXIT_FAILED
        ) from None


async def _serve(config: Any, manager: PluginManager, base_dir: Any, err: Console) -> int:
    import signal

    import anyio
    from rich.text import Text

    from .server.app import Server

    async with Server(config, plugins=manager, base_dir=base_dir) as server:
        names = ", ".join(sorted(server.pipelines)) or "none"
        err.print(
            Text(f"headwater: serving on {server.http_url} (WebSocket {server.url})"),
            soft_wrap=True,
        )
        err.print(Text(f"headwater: pipelines: {names}; Ctrl-C to stop"), soft_wrap=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def on_signal() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        err.print(Text(f"headwater: {name}: shutting down"), soft_wrap=True)
                        await server.shutdown()
                        return

                tg.start_soon(on_signal)
                await server.serve_forever()
                tg.cancel_scope.cancel()
    err.print(Text("headwater: server stopped"), soft_wrap=True)
    return EXIT_OK


def _cmd_tail(args: argparse.Namespace) -> int:
    """``headwater tail``: follow one stream."""
    import anyio

    if args.since is not None and args.since < 0:
        raise CLIError("--since must be >= 0")
    token = args.token or os.environ.get("HEADWATER_TOKEN") or None
    return int(anyio.run(_tail, args, token, backend="asyncio"))


async def _tail(args: argparse.Namespace, token: str | None) -> int:
    import json

    from rich.text import Text
    from websockets.exceptions import InvalidURI

    from .client import ConnectFailed, RequestFailed, connect

    _, err = _consoles()
    stream = args.stream

    def note(text: str, style: str = "dim") -> None:
        err.print(Text(text, style=style), soft_wrap=True)

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        async with connect(args.url, token=token) as client:
            try:
                sub = await client.subscribe(stream, since=args.since)
            except RequestFailed as exc:
                raise CLIError(f"cannot follow stream {stream!r}: {exc}", EXIT_FAILED) from None
            if args.json:
                emit(sub.model_dump_json())
            replayed = f", {sub.replayed} buffered chunk(s) first" if sub.replayed else ""
            note(f"following stream {stream!r} at seq {sub.seq}{replayed}")
            async for message in client:
                if getattr(message, "stream", stream) != stream:
                    continue
                if args.json:
                    emit(message.model_dump_json())
                if message.type == "stream_update":
                    if not args.json:
                        data = message.data
                        emit(
                            data
                            if isinstance(data, str)
                            else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
                        )
                elif message.type == "progress":
                    total = f"/{_num(message.total)}" if message.total is not None else ""
                    text = f" {message.message}" if message.message else ""
                    note(f"progress {message.stage}: {_num(message.done)}{total}{text}")
                elif message.type == "status":
                    where = message.stage or "run"
                    note(f"status {where}: {message.state} {message.message or ''}".rstrip())
                elif message.type == "stream_error":
                    note(f"error: {json.dumps(message.error)}", "red")
                elif message.type == "dropped":
                    note(f"warning: {message.count} message(s) dropped (too slow)", "yellow")
                elif message.type == "replay_gap":
                    note(
                        f"warning: chunks after {message.since} are not all buffered "
                        f"({message.reason}); continuing from {message.first_available}",
                        "yellow",
                    )
                elif message.type == "error":
                    note(f"error: {message.code}: {message.message}", "red")
                elif message.type == "stream_complete":
                    failed = message.reason in ("failed", "error")
                    note(
                        f"stream {stream!r} ended: {message.reason} (last seq {message.last_seq})",
                        "red" if failed else "bold",
                    )
                    return EXIT_FAILED if failed else EXIT_OK
            code, reason = client.close_code, client.close_reason
    except ConnectFailed as exc:
        raise CLIError(str(exc), EXIT_USAGE if exc.status in (401, 403) else EXIT_FAILED) from None
    except OSError as exc:
        raise CLIError(
            f"cannot connect to {args.url}: {exc.strerror or exc}", EXIT_FAILED
        ) from None
    except InvalidURI as exc:
        raise CLIError(f"not a WebSocket URL: {args.url} ({exc})") from None
    raise CLIError(
        f"the connection closed before the stream ended (code {code}: {reason or 'no reason'})",
        EXIT_FAILED,
    )


# ---------------------------------------------------------------------------------------
# headwater checkpoints (and the checkpoint part of headwater run)
# ---------------------------------------------------------------------------------------


def _checkpoint_line(info: Any) -> str | None:
    """The summary line about checkpoints: resumed or not, what is committed, any note."""
    if not isinstance(info, Mapping) or not info:
        return None
    parts: list[str] = []
    if info.get("resumed"):
        parts.append("resumed")
    seq = info.get("committed_seq")
    if seq is not None:
        items = int(info.get("committed_items") or 0)
        parts.append(f"committed checkpoint {seq} ({items:,} item{'s' if items != 1 else ''})")
    saved = info.get("saved")
    if saved:
        parts.append(f"{int(saved):,} saved by this run")
    if info.get("note"):
        parts.append(str(info["note"]))
    return "checkpoint: " + ", ".join(parts) if parts else None


def _raise_checkpoint_error(result: RunResult) -> None:
    """A run that could not use its checkpoint (corrupt, locked or newer database, changed
    pipeline) is bad input: exit 2 with the message rather than a failed-run summary."""
    from .core.checkpoints import CheckpointError

    for error in result.errors:
        if isinstance(error, CheckpointError):
            raise CLIError(str(error))


def _add_checkpoint_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """``headwater checkpoints list | show NAME | reset NAME``."""
    where = argparse.ArgumentParser(add_help=False)
    choice = where.add_mutually_exclusive_group()
    choice.add_argument(
        "--store-path",
        metavar="PATH",
        help="SQLite checkpoint file (default: .headwater/checkpoints.db)",
    )
    choice.add_argument(
        "--pipeline",
        metavar="FILE",
        help="use the checkpoint store of this pipeline file's checkpoint section",
    )
    where.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for a lock held by another process (SQLite file; default 5)",
    )
    parser = commands.add_parser(
        "checkpoints",
        parents=[common],
        help="list, show or reset the checkpoints of resumable pipelines",
        description="Inspect and reset the committed checkpoints that `headwater run "
        "--resume` continues from.",
    )
    sub = parser.add_subparsers(dest="checkpoints_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser(
        "list",
        parents=[common, where],
        help="every pipeline's latest checkpoint",
        description="List every pipeline's latest checkpoint in the store.",
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=_cmd_checkpoints_list)
    show = sub.add_parser(
        "show",
        parents=[common, where],
        help="one pipeline's checkpoint: positions, states, fingerprint",
        description="Show the latest checkpoint of one pipeline.",
    )
    show.add_argument(
        "name", metavar="NAME", nargs="?", help="pipeline name (default with --pipeline: its name)"
    )
    show.add_argument("--json", action="store_true", help="print the whole checkpoint as JSON")
    show.set_defaults(func=_cmd_checkpoints_show)
    reset = sub.add_parser(
        "reset",
        parents=[common, where],
        help="forget a pipeline's checkpoint: its next run starts over",
        description="Delete the checkpoint of one pipeline; its next run (even with "
        "--resume) starts from the beginning.",
    )
    reset.add_argument(
        "name", metavar="NAME", nargs="?", help="pipeline name (default with --pipeline: its name)"
    )
    reset.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    reset.set_defaults(func=_cmd_checkpoints_reset)


class _StoreView:
    """The checkpoint store a ``checkpoints`` command works on."""

    def __init__(self, store: Any, label: str, spec: PipelineSpec | None) -> None:
        self.store = store
        """None when the store's file does not exist (nothing to show, nothing created)."""
        self.label = label
        self.spec = spec

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def _checkpoint_store(args: argparse.Namespace) -> _StoreView:
    """Open the store named by ``--store-path`` / ``--pipeline`` (default: the built-in file).

    A missing SQLite file is not created: the view then has no store.
    """
    from pathlib import Path

    from .core.checkpoints import DEFAULT_PATH, SQLiteCheckpointStore

    if args.pipeline:
        source = argparse.Namespace(**{**vars(args), "file": args.pipeline, "overrides": []})
        spec = _load_spec(source)
        if spec.checkpoint is None:
            raise CLIError(f"pipeline {spec.name!r} in {args.pipeline} has no checkpoint section")
        resolved, _ = _prepare(source, spec)
        stage = resolved.checkpoint_store
        assert stage is not None
        label = f"checkpoint store {spec.checkpoint.store!r} of {args.pipeline}"
        path = getattr(stage.params, "path", None)
        if isinstance(path, str):
            label = f"{path} (checkpoint store of {args.pipeline})"
            if not Path(path).exists():
                return _StoreView(None, label, spec)
        store = stage.component.obj(*(() if stage.params is None else (stage.params,)))
        return _StoreView(store, label, spec)
    path = Path(args.store_path) if args.store_path else DEFAULT_PATH
    if path.is_dir():
        raise CLIError(f"{path} is a directory, not a checkpoint file")
    if not path.exists():
        return _StoreView(None, str(path), None)
    return _StoreView(SQLiteCheckpointStore(path, timeout=args.timeout), str(path), None)


def _checkpoint_name(args: argparse.Namespace, view: _StoreView) -> str:
    if args.name:
        return str(args.name)
    if view.spec is not None:
        return view.spec.name
    raise CLIError("give the pipeline NAME (or --pipeline FILE to use that pipeline's name)")


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _cmd_checkpoints_list(args: argparse.Namespace) -> int:
    """``headwater checkpoints list``: every pipeline's latest checkpoint."""
    view = _checkpoint_store(args)
    try:
        checkpoints = [] if view.store is None else view.store.list()
    finally:
        view.close()
    if args.json:
        _print_json(
            [
                {
                    "pipeline": c.pipeline,
                    "seq": c.seq,
                    "items": c.items,
                    "completed": c.completed,
                    "fingerprint": c.fingerprint,
                    "created": c.created,
                    "positions": c.positions,
                    "stages": sorted(c.states),
                }
                for c in checkpoints
            ]
        )
        return EXIT_OK
    out, _ = _consoles()
    if not checkpoints:
        missing = " (the file does not exist)" if view.store is None else ""
        out.print(f"no checkpoints in {view.label}{missing}", soft_wrap=True)
        return EXIT_OK
    from rich.table import Table

    table = Table(box=None, pad_edge=False, padding=(0, 2), show_edge=False)
    table.add_column("pipeline", overflow="fold")
    for column in ("seq", "items", "state", "saved", "fingerprint"):
        table.add_column(
            column, justify="right" if column in ("seq", "items") else "left", no_wrap=True
        )
    for c in checkpoints:
        table.add_row(
            c.pipeline,
            str(c.seq),
            f"{c.items:,}",
            "completed" if c.completed else "resumable",
            _when(c.created)[:16],
            c.fingerprint,
        )
    out.print(f"checkpoints in {view.label}:", soft_wrap=True)
    out.print(table)
    return EXIT_OK


def _cmd_checkpoints_show(args: argparse.Namespace) -> int:
    """``headwater checkpoints show NAME``: one checkpoint in full."""
    import dataclasses
    import json

    view = _checkpoint_store(args)
    try:
        name = _checkpoint_name(args, view)
        checkpoint = None if view.store is None else view.store.load(name)
        known = [] if view.store is None or checkpoint else [c.pipeline for c in view.store.list()]
    finally:
        view.close()
    if checkpoint is None:
        hint = f"; checkpoints exist for {', '.join(known)}" if known else ""
        raise CLIError(f"no checkpoint of pipeline {name!r} in {view.label}{hint}")
    if args.json:
        _print_json(dataclasses.asdict(checkpoint))
        return EXIT_OK
    out, _ = _consoles()
    fingerprint = checkpoint.fingerprint
    if view.spec is not None:
        same = view.spec.fingerprint() == fingerprint
        fingerprint += (
            f" (matches {args.pipeline})"
            if same
            else f" (differs from {args.pipeline}: resuming it needs --force)"
        )
    lines = [
        f"pipeline:    {checkpoint.pipeline}",
        f"checkpoint:  {checkpoint.seq} ({'completed' if checkpoint.completed else 'resumable'})",
        f"items:       {checkpoint.items:,}",
        f"saved:       {_when(checkpoint.created)}",
        f"fingerprint: {fingerprint}",
        f"store:       {view.label}",
        "positions:",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in checkpoint.positions.items()] or ["  (none)"]
    lines.append("states:")
    for stage, state in checkpoint.states.items():
        text = json.dumps(state)
        if len(text) > _MAX_OUTPUT_REPR:
            text = f"{text[:_MAX_OUTPUT_REPR]}... ({len(text):,} characters)"
        lines.append(f"  {stage}: {text}")
    if not checkpoint.states:
        lines.append("  (none)")
    from rich.text import Text

    for line in lines:
        out.print(Text(line), soft_wrap=True)
    return EXIT_OK


def _cmd_checkpoints_reset(args: argparse.Namespace) -> int:
    """``headwater checkpoints reset NAME``: forget a checkpoint (asks unless ``--yes``)."""
    view = _checkpoint_store(args)
    try:
        name = _checkpoint_name(args, view)
        checkpoint = None if view.store is None else view.store.load(name)
        if checkpoint is None:
            print(f"no checkpoint of pipeline {name!r} in {view.label}: nothing to reset")
            return EXIT_OK
        what = f"checkpoint {checkpoint.seq} of pipeline {name!r} ({checkpoint.items:,} items)"
        if not args.yes:
            if not sys.stdin.isatty():
                raise CLIError(f"reset {what} in {view.label}? pass --yes to confirm")
            answer = input(f"reset {what} in {view.label}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not reset")
                return EXIT_FAILED
        view.store.reset(name)
    finally:
        view.close()
    print(f"reset {what}: its next run starts from the beginning")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# headwater worker
# ---------------------------------------------------------------------------------------

_WORKER_CHECKPOINT_SECONDS = 1.0
"""Commit cadence of a worker whose pipeline has no ``checkpoint`` section: upstream
acknowledgements lag the sinks by about this much (and a killed worker's redelivered
messages are about this many seconds' worth)."""


def _add_worker_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``worker`` sub-command."""
    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="run a pipeline as one member of a consumer group (Redis Streams, JetStream)",
        description="Run a pipeline whose source reads a shared stream with a consumer group\n"
        "(redis.stream) or a durable consumer (nats.jetstream), as one member: start\n"
        "as many workers as you like, on one or many machines, and they share the\n"
        "stream. Messages are acknowledged after every sink committed them. SIGTERM or\n"
        "SIGINT drains: no new reads, what is in flight is written, committed and\n"
        "acknowledged, exit 0. A second signal exits at once (unacknowledged messages\n"
        "are redelivered to the other members). Without a checkpoint section the\n"
        "pipeline gets `checkpoint: {store: memory, every_seconds: 1}`.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("file", metavar="FILE", help="pipeline YAML file")
    worker.add_argument(
        "--consumer",
        metavar="NAME",
        help="this member's name in the group (sets HEADWATER_CONSUMER; default: "
        "HEADWATER_CONSUMER or HOSTNAME-PID)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest a drain may take before the run is cancelled (default 30)",
    )
    _add_overrides(worker)
    worker.add_argument(
        "--json", action="store_true", help="print the run summary as JSON on stdout at the end"
    )
    worker.set_defaults(func=_cmd_worker)


def _cmd_worker(args: argparse.Namespace) -> int:
    """``headwater worker``: run one member of a consumer group until drained."""
    import anyio

    from .core.pipeline import CheckpointSpec

    if args.drain_timeout <= 0:
        raise CLIError("--drain-timeout must be > 0")
    if args.consumer is not None:
        if not args.consumer.strip():
            raise CLIError("--consumer needs a non-empty NAME")
        os.environ["HEADWATER_CONSUMER"] = args.consumer.strip()
    spec = _load_spec(args)
    if spec.checkpoint is None:
        checkpoint = CheckpointSpec(store="memory", every_seconds=_WORKER_CHECKPOINT_SECONDS)
        spec = spec.model_copy(update={"checkpoint": checkpoint})
    resolved, manager = _prepare(args, spec)
    _, err = _consoles()
    view = _RunView(err, resolved, live=False)
    result, drained = anyio.run(_work, spec, manager, view, args.drain_timeout, backend="asyncio")
    _print_summary(err, result, resolved, verbose=_verbosity(args) > 0)
    if args.json:
        summary = dict(result.summary)
        summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
        summary["drained"] = drained
        _print_json(summary)
    return EXIT_OK if result.state == "succeeded" else EXIT_FAILED


async def _work(
    spec: PipelineSpec, manager: PluginManager, view: _RunView, drain_timeout: float
) -> tuple[RunResult, bool]:
    """Run the worker's pipeline; the first signal drains it, the second exits at once."""
    import signal

    import anyio

    from .builtin_plugins._brokers import clear_drain, default_consumer, request_drain
    from .core.api import open_run

    drained = False
    async with open_run(spec, plugins=manager) as handle:
        consumer = default_consumer()
        view.line(f"worker {consumer}: pipeline {spec.name!r} (run {handle.run_id})", "bold")

        async def on_signals() -> None:
            nonlocal drained
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if drained:
                        view.line(f"{name} again: exiting without draining", "red")
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(128 + int(signum))
                    drained = True
                    view.line(f"{name}: draining (no new reads; committing what is in flight)")
                    request_drain(handle.run_id)
                    tg.start_soon(deadline)

        async def deadline() -> None:
            await anyio.sleep(drain_timeout)
            view.line(f"drain took longer than {drain_timeout:g}s: cancelling", "red")
            handle.cancel("drain timeout")

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(on_signals)
                async for event in handle.events():
                    view.on_event(event)
                tg.cancel_scope.cancel()
            result = await handle.wait()
        finally:
            clear_drain(handle.run_id)
    return result, drained


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _error(message: str) -> None:
    sys.stderr.write(f"headwater: error: {message}\n")
    sys.stderr.flush()


def _setup_logging(verbosity: int, console: Console) -> None:
    """Send log records through the stderr console (above any live progress bars).

    Warnings and errors are always shown (a plugin that failed to load, say) as
    ``headwater: warning: ...``; ``-v`` adds info records and ``-vv`` debug ones, with the
    logger's name and tracebacks.
    """
    import logging

    from rich.text import Text

    class ConsoleHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = record.getMessage()
                if verbosity:
                    message = f"{message} [{record.name}]"
                    if record.exc_info:
                        message += "\n" + logging.Formatter().formatException(record.exc_info)
                level = record.levelname.lower()
                style = "red" if record.levelno >= logging.ERROR else "yellow"
                if record.levelno < logging.WARNING:
                    style = "dim"
                console.print(Text(f"headwater: {level}: {message}", style=style))
            except Exception:
                self.handleError(record)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_headwater_cli", False)]:
        root.removeHandler(old)
    handler = ConsoleHandler()
    handler._headwater_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(
        logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``headwater`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code; usage errors exit through argparse with code 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = _verbosity(args)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        _setup_logging(verbosity, _consoles(force_terminal=_forced_terminal(args))[1])
        return int(command(args))
    except CLIError as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_SIGINT
    except BrokenPipeError:
        # The reader of our stdout went away (``headwater plugins | head``): stay quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as caught:
        return _unexpected(caught, verbosity)


def _unexpected(caught: BaseException, verbosity: int) -> int:
    """Report an exception that escaped a command; return the exit code."""
    import traceback

    from .core.errors import HeadwaterError, PipelineValidationError

    exc = caught
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's wrapper around one error
    if isinstance(exc, HeadwaterError):
        if verbosity and not isinstance(exc, PipelineValidationError):
            traceback.print_exception(caught)
        _error(str(exc))
        return EXIT_USAGE
    if verbosity:
        traceback.print_exception(caught)
        _error(f"unexpected {type(exc).__name__}: {exc}")
    else:
        _error(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)")
    return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover - use ``python -m headwater``
    sys.exit(main())
