"""Scheduling many pipelines: priorities, dependencies, resource slots, jobs files.

The public API for applications that run many pipelines at once::

    async with engine.scheduler(concurrency=4) as scheduler:
        scheduler.submit(RunRequest("ingest", "ingest.yaml", priority=10))
        ...

:class:`Scheduler` runs :class:`RunRequest` s on an :class:`~headwater.Engine` (a
priority queue with aging, a DAG of dependencies, a concurrency limit and named resource
slots); :func:`run_jobs` and :func:`validate_jobs` do the same from a jobs file.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

_LAZY: dict[str, str] = {
    "JobsFile": "core.jobs",
    "JobsFileError": "core.jobs",
    "run_jobs": "core.jobs",
    "validate_jobs": "core.jobs",
    "RunRejected": "core.scheduler",
    "RunRequest": "core.scheduler",
    "RunSkipped": "core.scheduler",
    "RunStateChanged": "core.scheduler",
    "ScheduledRun": "core.scheduler",
    "Scheduler": "core.scheduler",
    "SchedulerError": "core.scheduler",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'headwater.scheduler' has no attribute {name!r}")
    value = getattr(import_module(f"headwater.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
