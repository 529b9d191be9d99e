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
:class:`~headwater.core.scheduler.Scheduler`; the command shows a live table of their
states (``headwater.cli.jobs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
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

from .errors import InvalidFileError, ValidationIssue, issues_from_pydantic
from .plugins import PluginManager
from .scheduler import (
    DEFAULT_AGING,
    RunCreator,
    RunRejected,
    RunRequest,
    ScheduledRun,
    Scheduler,
    SchedulerError,
)

if TYPE_CHECKING:
    from .secrets import Secrets

__all__ = [
    "JobSpec",
    "JobsFile",
    "JobsFileError",
    "JobsWatch",
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


class JobsFileError(InvalidFileError, SchedulerError):
    """A jobs file is invalid; ``issues`` lists every problem with its path."""

    subject = "jobs file"
    source_prefix = " "


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
    from .yamlfile import YamlFileError, read_yaml

    try:
        return is_jobs_file(read_yaml(path, substitute=False))
    except YamlFileError:
        return False


def _issues(exc: ValidationError) -> list[ValidationIssue]:
    return issues_from_pydantic(exc)


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


def load_jobs(path: str | Path, *, secrets: Secrets | None = None) -> JobsFile:
    """Read and validate the shape of a jobs file (see :func:`validate_jobs` for the rest).

    ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in its string values are
    substituted, and the values substituted added to ``secrets``.
    """
    from .yamlfile import load_yaml_file

    path = Path(path)
    return parse_jobs(load_yaml_file(path, JobsFileError, secrets=secrets), source=str(path))


def _read_pipeline(file: Path, secrets: Secrets | None) -> Any:
    """The mapping of a job's pipeline file, substituted; the path itself when it cannot
    be read as one (the scheduler reports why, as for any pipeline file)."""
    from .yamlfile import YamlFileError, read_yaml

    try:
        data = read_yaml(file, secrets=secrets)
    except YamlFileError:
        return file
    return data if isinstance(data, Mapping) else file


def _requests(jobs: JobsFile, base_dir: Path, secrets: Secrets | None = None) -> list[RunRequest]:
    requests = []
    for name, job in jobs.jobs.items():
        pipeline: Any
        source = None
        if isinstance(job.pipeline, str):
            file = Path(job.pipeline)
            pipeline = _read_pipeline(file if file.is_absolute() else base_dir / file, secrets)
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


def scheduler_for(
    jobs: JobsFile, *, plugins: PluginManager | None = None, create_run: RunCreator | None = None
) -> Scheduler:
    """A :class:`Scheduler` with the jobs file's concurrency, resources and aging
    (``create_run``: see :class:`Scheduler`)."""
    return Scheduler(
        jobs.concurrency, jobs.resources, aging=jobs.aging, plugins=plugins, create_run=create_run
    )


def submit_jobs(
    scheduler: Scheduler,
    jobs: JobsFile,
    *,
    base_dir: str | Path = ".",
    source: str | None = None,
    secrets: Secrets | None = None,
) -> dict[str, ScheduledRun]:
    """Submit every job (all or none); returns the runs by job name.

    Every problem is reported at once as a :class:`JobsFileError` with paths such as
    ``jobs.load.depends_on[0]`` or ``jobs.load.pipeline.sources.rows.action``: unknown
    dependencies, cycles, unknown resources or needs above capacity, invalid pipelines,
    ``from_run`` naming a job that is not a dependency. Pipeline files are read with
    substitution, the values substituted added to ``secrets``.
    """
    try:
        runs = scheduler.submit_many(_requests(jobs, Path(base_dir), secrets))
    except RunRejected as exc:
        issues = [ValidationIssue(f"jobs.{i.path}", i.message) for i in exc.issues]
        raise JobsFileError(issues, source) from None
    return {run.name: run for run in runs}


def validate_jobs(
    path: str | Path, *, plugins: PluginManager | None = None, secrets: Secrets | None = None
) -> JobsFile:
    """Check a jobs file completely without running anything; returns the model.

    Raises :class:`JobsFileError` listing every problem (shape, dependencies, resources
    and each pipeline against the registered components). The values substituted in the
    jobs file and its pipeline files are added to ``secrets``.
    """
    path = Path(path)
    jobs = load_jobs(path, secrets=secrets)
    scheduler = scheduler_for(jobs, plugins=plugins)
    submit_jobs(scheduler, jobs, base_dir=path.parent, source=str(path), secrets=secrets)
    return jobs


# ---------------------------------------------------------------------------------------
# run_jobs
# ---------------------------------------------------------------------------------------

JobsWatch = Callable[[Scheduler], AbstractAsyncContextManager[object]]
"""What :func:`run_jobs` calls to let the jobs be shown (the ``headwater`` command's
table): ``watch(scheduler)``."""


async def _cancel_on(stop: anyio.Event, scheduler: Scheduler) -> None:
    await stop.wait()
    scheduler.cancel_all("interrupted")


async def run_jobs(
    path: str | Path,
    *,
    plugins: PluginManager | None = None,
    stop: anyio.Event | None = None,
    watch: JobsWatch | None = None,
    secrets: Secrets | None = None,
    create_run: RunCreator | None = None,
) -> int:
    """Run a jobs file; return the exit code: 0 if every job succeeded, else 1.

    Everything is validated before anything starts: an invalid file raises
    :class:`JobsFileError` (the CLI reports it and exits with 2). Nothing is printed:
    ``watch``, when given, is called with the scheduler before the jobs are submitted
    (to add observers, see :meth:`Scheduler.add_observer`) and returns an async context
    manager entered once they are submitted and exited when they have all ended; the
    ``headwater run`` command shows its live table of the jobs that way.

    Setting ``stop`` (e.g. from a signal handler) cancels every unfinished job, which
    then ends ``cancelled``. Cancelling the calling task also cancels every job. The
    values substituted in the files are added to ``secrets``. ``create_run`` creates the
    run of each job that starts (``headwater run JOBS.yaml --history`` records them so;
    see :class:`Scheduler`).
    """
    path = Path(path)
    jobs = load_jobs(path, secrets=secrets)
    scheduler = scheduler_for(jobs, plugins=plugins, create_run=create_run)
    watching = nullcontext() if watch is None else watch(scheduler)
    submit_jobs(scheduler, jobs, base_dir=path.parent, source=str(path), secrets=secrets)
    async with watching, scheduler, anyio.create_task_group() as tg:
        if stop is not None:
            tg.start_soon(_cancel_on, stop, scheduler)
        await scheduler.join()
        tg.cancel_scope.cancel()
    return 0 if scheduler.counts_by_state()["succeeded"] == len(scheduler.runs) else 1
