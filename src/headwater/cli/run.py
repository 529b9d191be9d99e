"""``headwater run``, ``validate`` and ``schema``, and the view of a run on stderr.

:class:`_RunView` shows the live progress bars (or plain lines) of a run,
:func:`_print_summary` its outcome; ``headwater worker`` shows its run the same way.
A jobs file given to ``run`` or ``validate`` is handed to :mod:`headwater.cli.jobs`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._common import (
    _EPILOG,
    _MAX_OUTPUT_REPR,
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _add_overrides,
    _add_sandbox_options,
    _consoles,
    _describe_value,
    _forced_terminal,
    _json_safe,
    _load_spec,
    _num,
    _on_signals,
    _plugin_manager,
    _prepare,
    _print_json,
    _rate,
    _secrets,
    _verbosity,
)
from .metrics import _add_metrics_options, _metrics_exporters, _with_exporters

if TYPE_CHECKING:
    from anyio.abc import TaskStatus
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from ..core.events import Complete, ErrorEvent, Event
    from ..core.events import Progress as ProgressEvent
    from ..core.pipeline import PipelineSpec, ResolvedPipeline
    from ..core.plugins import PluginManager
    from ..core.runtime import RunHandle, RunResult
    from ..core.secrets import Secrets

_MAX_ERROR_LINES = 5
"""Handled errors printed per stage while a run goes on; the rest are only counted."""

_MAX_OUTPUT_JSON = 10_000
"""Longest sink output (JSON characters) included verbatim in ``run --json``."""


def _add_run_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``run`` sub-command."""
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


def _add_validate_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``validate`` sub-command."""
    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check a pipeline file: its shape, its components and their params",
        description="Validate a pipeline YAML file against the pipeline schema and the "
        "installed components; print OK or every problem with its path.",
    )
    validate.add_argument("file", metavar="FILE", help="pipeline YAML file")
    _add_overrides(validate)
    _add_sandbox_options(validate)
    validate.set_defaults(func=_cmd_validate)


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
    secrets = _secrets(args)
    view = _RunView(err, resolved, live=live, secrets=secrets)
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
    from .checkpoints import _raise_checkpoint_error

    _raise_checkpoint_error(result)
    _print_summary(err, result, resolved, verbose=_verbosity(args) > 0, secrets=secrets)
    if args.json:
        outputs = _in_order(result.outputs, _sink_keys(resolved))
        summary = dict(result.summary)
        summary["stages"] = _in_order(summary.get("stages") or {}, _stage_order(resolved))
        summary["outputs"] = {k: _output_for_json(v) for k, v in outputs.items()}
        _print_json(summary, secrets)
    if result.state == "succeeded":
        return EXIT_OK
    if signum is not None:
        return 128 + signum
    return EXIT_FAILED


async def _execute(
    spec: PipelineSpec,
    manager: PluginManager,
    view: _RunView,
    resume: bool = False,
    force: bool = False,
) -> tuple[RunResult, int | None]:
    """Run the pipeline, rendering its events; return its result and any signal number."""
    import anyio

    from ..core.api import open_run

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


def _output_for_json(value: Any) -> Any:
    import json

    safe = _json_safe(value)
    if len(json.dumps(safe)) <= _MAX_OUTPUT_JSON:
        return safe
    return f"<{_describe_value(value)}>"


# ---------------------------------------------------------------------------------------
# The view of a run
# ---------------------------------------------------------------------------------------


class _RunView:
    """Shows a run on stderr: live progress bars on a terminal, plain lines otherwise.

    One bar per stage that reports progress (``done/total`` and a percentage when the
    total is known, a spinner and a count when not), plus a line for the whole run with
    the number of items that entered it, the number delivered and the rate. Stage status
    messages and the first handled errors of each stage are printed above the bars.
    """

    def __init__(
        self,
        console: Console,
        resolved: ResolvedPipeline,
        *,
        live: bool,
        secrets: Secrets | None = None,
    ) -> None:
        self.console = console
        self.secrets = secrets
        """Masked in every line and message shown."""
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

        self.console.print(Text(self._masked(text), style=style or ""), soft_wrap=True)

    def _masked(self, text: str) -> str:
        return self.secrets.mask(text) if self.secrets is not None else text

    # -- lifecycle --------------------------------------------------------------------

    def start(self, handle: RunHandle) -> None:
        """Announce the run and start the live display."""
        self.handle = handle
        spec = self.resolved.spec
        sources = ", ".join(spec.source_order())
        compose = f" {spec.compose.described}" if spec.compose and len(spec.sources) > 1 else ""
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
        from ..core.events import Complete, ErrorEvent, Progress, Status

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
        if event.message:
            event = replace(event, message=self._masked(event.message))
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


def _print_summary(
    console: Console,
    result: RunResult,
    resolved: ResolvedPipeline,
    *,
    verbose: bool = False,
    secrets: Secrets | None = None,
) -> None:
    """The end of a run on stderr: outcome, per-stage counts, sink outputs, errors (every
    text masked with ``secrets``, when given)."""
    from rich.table import Table
    from rich.text import Text as RichText

    from .checkpoints import _checkpoint_line

    def Text(text: str, style: str = "") -> RichText:  # rich's Text, masked
        return RichText(secrets.mask(text) if secrets is not None else text, style=style)

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


def _cmd_validate(args: argparse.Namespace) -> int:
    """``headwater validate``: check shape, components and params; print OK."""
    if _is_jobs_path(args.file):
        from ..core.jobs import validate_jobs

        if args.overrides:
            raise CLIError("--set applies to pipeline files, not to jobs files")
        jobs = validate_jobs(args.file, plugins=_plugin_manager(args), secrets=_secrets(args))
        n = len(jobs.jobs)
        print(f"OK: jobs file {args.file} is valid ({n} job{'s' if n != 1 else ''})")
        return EXIT_OK
    spec = _load_spec(args)
    resolved, _ = _prepare(args, spec)
    n_src, n_steps, n_sinks = len(resolved.sources), len(resolved.steps), len(resolved.sinks)
    compose = f", {spec.compose.described}" if spec.compose and n_src > 1 else ""
    ok = (
        f"OK: pipeline {spec.name!r} in {args.file} is valid "
        f"({n_src} source{'s' if n_src != 1 else ''}{compose}, "
        f"{n_steps} step{'s' if n_steps != 1 else ''}, "
        f"{n_sinks} sink{'s' if n_sinks != 1 else ''})"
    )
    print(_secrets(args).mask(ok))
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    """``headwater schema``: the JSON Schema of pipeline files."""
    from ..core.pipeline import PipelineSpec

    _print_json(PipelineSpec.model_json_schema())
    return EXIT_OK
