"""``headwater run JOBS.yaml``: the jobs of a jobs file on the scheduler, shown on stderr.

:func:`headwater.core.jobs.run_jobs` runs them; :class:`_JobsView` renders them: a live
table of every job's state and progress on a terminal, one line per start and end
otherwise, then a summary table and a verdict. With ``--history``, each job's run is
recorded in the run history (``.headwater/runs.db``), with the job's name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._common import (
    CLIError,
    _consoles,
    _forced_terminal,
    _on_signals,
    _plugin_manager,
    _secrets,
)
from .metrics import _metrics_exporters, _with_exporters

if TYPE_CHECKING:
    import anyio
    from anyio.abc import TaskStatus
    from rich.console import Console, RenderableType
    from rich.table import Table

    from ..core.plugins import PluginManager
    from ..core.scheduler import RunCreator, ScheduledRun, ScheduledState, Scheduler
    from ..core.secrets import Secrets

_STATE_STYLE: dict[str, str] = {
    "pending": "dim",
    "waiting": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "magenta",
}

_REFRESH_SECONDS = 0.1
"""How often the live table is redrawn."""


def _cmd_run_jobs(args: argparse.Namespace) -> int:
    """``headwater run JOBS.yaml``: run every job of a jobs file on the scheduler."""
    import anyio

    from ..core.jobs import validate_jobs

    if args.overrides or args.json:
        raise CLIError("--set and --json apply to pipeline files, not to jobs files")
    manager = _plugin_manager(args)
    secrets = _secrets(args)
    # every problem, before the event loop starts
    validate_jobs(args.file, plugins=manager, secrets=secrets)
    _, err = _consoles(force_terminal=_forced_terminal(args))
    exporters = _metrics_exporters(args, manager)
    live = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    received: list[int] = []

    async def main() -> int:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            await tg.start(_stop_on_signals, stop, err, received)
            async with _recording(bool(args.history)) as create_run:
                code = await _run_jobs(
                    args.file,
                    progress=live,
                    console=err,
                    plugins=manager,
                    stop=stop,
                    secrets=secrets,
                    create_run=create_run,
                )
            tg.cancel_scope.cancel()
        return code

    code = int(anyio.run(_with_exporters, exporters, err, main, backend=args.backend))
    return 128 + received[0] if received else code


@asynccontextmanager
async def _recording(enabled: bool) -> AsyncIterator[RunCreator | None]:
    """With ``--history``: what creates the jobs' runs so that they are recorded (the
    run history is imported only then)."""
    if not enabled:
        yield None
        return
    from ..core.engine import default_engine
    from ..server.history.local import LocalRecorder

    async with LocalRecorder(default_engine(), origin="jobs") as recorder:
        yield recorder.create_job_run


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


async def _run_jobs(
    path: str | Path,
    *,
    progress: bool,
    console: Console,
    plugins: PluginManager | None = None,
    stop: anyio.Event | None = None,
    secrets: Secrets | None = None,
    create_run: RunCreator | None = None,
) -> int:
    """Run a jobs file with :func:`~headwater.core.jobs.run_jobs`, showing the jobs on
    ``console`` (masked with ``secrets``); return the exit code: 0 if every job
    succeeded, else 1.

    ``progress=True`` shows a live table of every job's state and progress while they
    run; otherwise one line per start and end. A summary table follows (not when the
    calling task is cancelled). An invalid file raises
    :class:`~headwater.core.jobs.JobsFileError` before anything starts. ``create_run``
    creates the jobs' runs (``--history`` records them so).
    """
    from ..core.jobs import run_jobs

    view = _JobsView(console, live=progress, secrets=secrets)
    code = await run_jobs(
        path,
        plugins=plugins,
        stop=stop,
        watch=view.watch,
        secrets=secrets,
        create_run=create_run,
    )
    view.summary()
    return code


# ---------------------------------------------------------------------------------------
# The view of the jobs
# ---------------------------------------------------------------------------------------


def _seconds(run: ScheduledRun) -> str:
    elapsed = run.elapsed
    return "" if elapsed is None else f"{elapsed:.2f}s"


def _items(run: ScheduledRun) -> int | None:
    """Items the run's sources produced (so far)."""
    if run.result is not None:
        return int(run.result.summary.get("items_in") or 0)
    handle = run.handle
    if handle is None:
        return None
    return sum(s.items_out for name, s in handle.stats.items() if name.startswith("sources."))


class _JobsView:
    """Renders the jobs: a live table while they run, lines otherwise, then a summary."""

    scheduler: Scheduler
    """The scheduler of the jobs, set by :meth:`watch`."""

    def __init__(self, console: Console, *, live: bool, secrets: Secrets | None = None) -> None:
        self.console = console
        self.live = live
        self.secrets = secrets
        """Masked in the reasons shown."""

    def _masked(self, text: str) -> str:
        return self.secrets.mask(text) if self.secrets is not None else text

    def watch(self, scheduler: Scheduler) -> AbstractAsyncContextManager[None]:
        """Follow the jobs of ``scheduler``.

        :func:`~headwater.core.jobs.run_jobs` calls it before submitting them; the context
        returned shows the live table while they run (when ``live``).
        """
        self.scheduler = scheduler
        scheduler.add_observer(self.on_change)
        return self._display()

    @asynccontextmanager
    async def _display(self) -> AsyncIterator[None]:
        if not self.live:
            yield
            return
        import anyio
        from rich.live import Live

        live = Live(
            self.table(),
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=False,
        )
        with live:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_refresh, live, self, self.scheduler)
                yield
                tg.cancel_scope.cancel()

    def on_change(self, run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        if self.live or new not in ("running", "succeeded", "failed", "cancelled", "skipped"):
            return
        from rich.text import Text

        line = Text(f"{run.name}: ")
        line.append(new, style=_STATE_STYLE[new])
        if new == "succeeded":
            line.append(f" in {_seconds(run)}")
        elif run.reason:
            line.append(f" ({self._masked(run.reason)})", style="dim")
        self.console.print(line, soft_wrap=True)

    def _progress_cell(self, run: ScheduledRun) -> RenderableType:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        last = run.last_progress
        if run.state == "running" and last is not None and last.total:
            cell = Table.grid(padding=(0, 1))
            cell.add_row(
                ProgressBar(total=last.total, completed=last.done, width=20),
                Text(f"{last.done:,.0f}/{last.total:,.0f}"),
            )
            return cell
        items = _items(run)
        return Text("" if items is None else f"{items:,} items", style="dim")

    def table(self) -> Table:
        """The current state of every job."""
        from rich.table import Table
        from rich.text import Text

        counts = self.scheduler.counts_by_state()
        title = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        table = Table(title=f"jobs: {title}", title_justify="left", box=None, padding=(0, 2))
        table.add_column("job", no_wrap=True)
        table.add_column("priority", justify="right")
        table.add_column("state", no_wrap=True)
        table.add_column("progress", no_wrap=True)
        table.add_column("time", justify="right")
        table.add_column("note", overflow="fold")
        for run in self.scheduler.runs:
            note = run.reason or ""
            if run.state == "pending":
                waiting_for = [d for d in run.depends_on if self.scheduler[d].state != "succeeded"]
                note = f"after {', '.join(waiting_for)}"
            elif run.state == "waiting" and run.resources:
                note = "needs " + ", ".join(f"{n} {k}" for k, n in run.resources.items())
            table.add_row(
                Text(run.name),
                str(run.priority),
                Text(run.state, style=_STATE_STYLE[run.state]),
                self._progress_cell(run),
                _seconds(run),
                Text(self._masked(note), style="dim"),
            )
        return table

    def summary(self) -> None:
        """Print the final table and a one-line verdict."""
        from rich.text import Text

        self.console.print(self.table())
        counts = self.scheduler.counts_by_state()
        total = sum(counts.values())
        if counts["succeeded"] == total:
            verdict = Text(f"all {total} jobs succeeded", style="bold green")
        else:
            bad = ", ".join(
                f"{counts[s]} {s}" for s in ("failed", "cancelled", "skipped") if counts[s]
            )
            verdict = Text(
                f"{counts['succeeded']} of {total} jobs succeeded; {bad}", style="bold red"
            )
        self.console.print(verdict, soft_wrap=True)


async def _refresh(live: Any, view: _JobsView, scheduler: Scheduler) -> None:
    import anyio

    while scheduler.unfinished:
        live.update(view.table(), refresh=True)
        await anyio.sleep(_REFRESH_SECONDS)
