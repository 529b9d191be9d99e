"""Jobs files: several pipelines scheduled together, from the CLI or from code.

A jobs file is YAML with a top-level ``jobs:`` mapping::

    concurrency: 2              # runs at once (default 4)
    resources: {db: 1}          # named resource capacities (default none)
    aging: 10                   # +1 priority per 10 runs started while waiting (null: off)
    jobs:
      extract:
        priority: 10
        pipeline: pipelines/extract.yaml     # a pipeline file, relative to this file
      load:
        depends_on: [extract]
        resources: {db: 1}
        pipeline:                            # or an inline pipeline (name defaults to the job's)
          sources:
            rows: {from_run: extract}        # the collected output of `extract`
          sinks: [{sink: sqlite, params: {path: out.db, table: rows}}]

``headwater run FILE`` recognises a jobs file by its ``jobs:`` key (:func:`is_jobs_file`)
and calls :func:`run_jobs`, which validates everything first (every problem, with paths
such as ``jobs.load.depends_on[0]``), then runs the jobs on a
:class:`~headwater.core.scheduler.Scheduler` with a live table of their states.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from .errors import ValidationIssue
from .pipeline import format_loc
from .plugins import PluginManager
from .scheduler import (
    DEFAULT_AGING,
    RunRejected,
    RunRequest,
    ScheduledRun,
    ScheduledState,
    Scheduler,
    SchedulerError,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

__all__ = [
    "JobSpec",
    "JobsFile",
    "JobsFileError",
    "is_jobs_file",
    "is_jobs_path",
    "load_jobs",
    "parse_jobs",
    "run_jobs",
    "scheduler_for",
    "submit_jobs",
    "validate_jobs",
]

_STRICT = ConfigDict(extra="forbid")

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


class JobsFileError(SchedulerError):
    """A jobs file is invalid; ``issues`` lists every problem with its path."""

    def __init__(self, issues: list[ValidationIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        where = f" {source}" if source else ""
        lines = "\n".join(f"  {issue}" for issue in issues)
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid jobs file{where} ({count}):\n{lines}")


class JobSpec(BaseModel):
    """One job: a pipeline plus how it is scheduled."""

    model_config = _STRICT

    pipeline: dict[str, Any] | str = Field(
        description="An inline pipeline (its name defaults to the job's name) or the path "
        "of a pipeline YAML file, relative to the jobs file. A source written "
        "{from_run: JOB} reads the collected output of JOB (which must be in depends_on)."
    )
    priority: int = Field(0, description="Higher starts first among ready jobs.")
    depends_on: list[str] = Field(
        default_factory=list, description="Jobs that must succeed before this one starts."
    )
    resources: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description="Units of named resources held while running."
    )

    @field_validator("pipeline", mode="before")
    @classmethod
    def _mapping_or_path(cls, value: Any) -> Any:
        if isinstance(value, Mapping | str):
            return value
        raise ValueError(
            "a pipeline is a mapping (an inline pipeline) or the path of a pipeline YAML "
            f"file, got {type(value).__name__}"
        )


class JobsFile(BaseModel):
    """A jobs file: scheduler settings and the jobs, by name."""

    model_config = _STRICT

    concurrency: PositiveInt = Field(4, description="How many jobs may run at once.")
    resources: dict[str, PositiveInt] = Field(
        default_factory=dict, description="Capacity of each named resource."
    )
    aging: PositiveInt | None = Field(
        DEFAULT_AGING,
        description="A waiting job gains one priority point per this many jobs started "
        "while it waits; null disables aging.",
    )
    jobs: dict[str, JobSpec] = Field(min_length=1, description="Job name -> job.")


def is_jobs_file(data: object) -> bool:
    """True when parsed YAML ``data`` is a jobs file (a mapping with a ``jobs`` key)."""
    return isinstance(data, Mapping) and "jobs" in data


def is_jobs_path(path: str | Path) -> bool:
    """True when the YAML file at ``path`` is a jobs file; False if unreadable or invalid
    (so that the pipeline loader reports those problems as usual)."""
    import yaml

    try:
        return is_jobs_file(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _issues(exc: ValidationError) -> list[ValidationIssue]:
    issues = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        issues.append(ValidationIssue(format_loc(list(err["loc"])), msg))
    return issues


def parse_jobs(data: Any, *, source: str | None = None) -> JobsFile:
    """Validate parsed YAML into a :class:`JobsFile` (the shape only).

    Raises :class:`JobsFileError` listing every problem with its path.
    """
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise JobsFileError([ValidationIssue("", f"a jobs file is a mapping, got {got}")], source)
    try:
        return JobsFile.model_validate(data)
    except ValidationError as exc:
        raise JobsFileError(_issues(exc), source) from None


def load_jobs(path: str | Path) -> JobsFile:
    """Read and validate the shape of a jobs file (see :func:`validate_jobs` for the rest)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        raise JobsFileError([ValidationIssue("", problem)], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        issue = ValidationIssue("", f"not valid YAML: {where}{problem}")
        raise JobsFileError([issue], str(path)) from None
    return parse_jobs(data, source=str(path))


def _requests(jobs: JobsFile, base_dir: Path) -> list[RunRequest]:
    requests = []
    for name, job in jobs.jobs.items():
        pipeline: Any
        source = None
        if isinstance(job.pipeline, str):
            file = Path(job.pipeline)
            pipeline = file if file.is_absolute() else base_dir / file
            source = job.pipeline
        else:
            pipeline = {"name": name, **job.pipeline}
        requests.append(
            RunRequest(
                name,
                pipeline,
                priority=job.priority,
                depends_on=job.depends_on,
                resources=job.resources,
                source=source,
            )
        )
    return requests


def scheduler_for(jobs: JobsFile, *, plugins: PluginManager | None = None) -> Scheduler:
    """A :class:`Scheduler` with the jobs file's concurrency, resources and aging."""
    return Scheduler(jobs.concurrency, jobs.resources, aging=jobs.aging, plugins=plugins)


def submit_jobs(
    scheduler: Scheduler,
    jobs: JobsFile,
    *,
    base_dir: str | Path = ".",
    source: str | None = None,
) -> dict[str, ScheduledRun]:
    """Submit every job (all or none); returns the runs by job name.

    Every problem is reported at once as a :class:`JobsFileError` with paths such as
    ``jobs.load.depends_on[0]`` or ``jobs.load.pipeline.sources.rows.action``: unknown
    dependencies, cycles, unknown resources or needs above capacity, invalid pipelines,
    ``from_run`` naming a job that is not a dependency.
    """
    try:
        runs = scheduler.submit_many(_requests(jobs, Path(base_dir)))
    except RunRejected as exc:
        issues = [ValidationIssue(f"jobs.{i.path}", i.message) for i in exc.issues]
        raise JobsFileError(issues, source) from None
    return {run.name: run for run in runs}


def validate_jobs(path: str | Path, *, plugins: PluginManager | None = None) -> JobsFile:
    """Check a jobs file completely without running anything; returns the model.

    Raises :class:`JobsFileError` listing every problem (shape, dependencies, resources
    and each pipeline against the registered components).
    """
    path = Path(path)
    jobs = load_jobs(path)
    submit_jobs(scheduler_for(jobs, plugins=plugins), jobs, base_dir=path.parent, source=str(path))
    return jobs


# ---------------------------------------------------------------------------------------
# run_jobs: the CLI entry point
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

    def __init__(self, console: Console, scheduler: Scheduler, *, live: bool) -> None:
        self.console = console
        self.scheduler = scheduler
        self.live = live

    def on_change(self, run: ScheduledRun, old: ScheduledState | None, new: ScheduledState) -> None:
        if self.live or new not in ("running", "succeeded", "failed", "cancelled", "skipped"):
            return
        from rich.text import Text

        line = Text(f"{run.name}: ")
        line.append(new, style=_STATE_STYLE[new])
        if new == "succeeded":
            line.append(f" in {_seconds(run)}")
        elif run.reason:
            line.append(f" ({run.reason})", style="dim")
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
                Text(note, style="dim"),
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
    while scheduler.unfinished:
        live.update(view.table(), refresh=True)
        await anyio.sleep(_REFRESH_SECONDS)


async def _cancel_on(stop: anyio.Event, scheduler: Scheduler) -> None:
    await stop.wait()
    scheduler.cancel_all("interrupted")


async def run_jobs(
    path: str | Path,
    *,
    progress: bool = True,
    console: Console | None = None,
    plugins: PluginManager | None = None,
    stop: anyio.Event | None = None,
) -> int:
    """Run a jobs file; return the exit code: 0 if every job succeeded, else 1.

    Everything is validated before anything starts: an invalid file raises
    :class:`JobsFileError` (the CLI reports it and exits with 2). While the jobs run,
    ``progress=True`` shows a live table of every job's state and progress on
    ``console`` (default: stderr); otherwise one line per start and end. A summary
    table follows.

    Setting ``stop`` (e.g. from a signal handler) cancels every unfinished job, which
    then shows as ``cancelled`` in the summary. Cancelling the calling task also cancels
    every job (and prints no summary).
    """
    from rich.console import Console
    from rich.live import Live

    if console is None:
        console = Console(stderr=True, highlight=False, emoji=False)
    path = Path(path)
    jobs = load_jobs(path)
    scheduler = scheduler_for(jobs, plugins=plugins)
    view = _JobsView(console, scheduler, live=progress)
    scheduler.add_observer(view.on_change)
    submit_jobs(scheduler, jobs, base_dir=path.parent, source=str(path))
    display = (
        Live(
            view.table(),
            console=console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=False,
        )
        if progress
        else nullcontext()
    )
    with display as live:
        async with scheduler, anyio.create_task_group() as tg:
            if stop is not None:
                tg.start_soon(_cancel_on, stop, scheduler)
            if live is not None:
                tg.start_soon(_refresh, live, view, scheduler)
            await scheduler.join()
            tg.cancel_scope.cancel()
    view.summary()
    return 0 if scheduler.counts_by_state()["succeeded"] == len(scheduler.runs) else 1
