"""The pipeline of a scheduled run: validated at submission, resolved when it starts.

A source written ``{from_run: NAME}`` reads the output of the run ``NAME`` (one of the
run's dependencies): at submission it is checked with a placeholder source in its
place; when the run starts, it becomes an ``iterable`` source over that output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..api import prepare
from ..errors import HeadwaterError, ValidationIssue
from ..pipeline import ResolvedPipeline
from ..plugins import PluginManager
from .model import RunRequest, ScheduledRun, SchedulerError

__all__ = ["Prepared", "prepare_request", "resolve_run"]

_PLACEHOLDER_INPUT: dict[str, Any] = {"action": "iterable", "params": {"items": []}}
"""Stands in for a ``{from_run: NAME}`` source while the pipeline is validated."""


class Prepared(NamedTuple):
    """A validated pipeline of a request."""

    resolved: ResolvedPipeline | None
    """The resolved pipeline; None when it has from_run sources (resolved at start)."""
    plugins: Any
    """The plugin manager it was (and is to be) resolved with."""
    data: dict[str, Any] | None
    """The pipeline mapping with its from_run sources, to resolve when the run starts."""
    inputs: dict[str, str]
    """Source name -> the run whose output it reads."""
    first_sink: str
    """Result key of the pipeline's first sink (what dependents read)."""


def _read_yaml(path: Path) -> tuple[Any, str | None]:
    """Parse a YAML file; return ``(data, problem)``."""
    from ..yamlfile import YamlFileError, read_yaml

    try:
        return read_yaml(path), None
    except YamlFileError as exc:
        return None, exc.describe(name_file=True)


def _from_run_sources(
    name: str, pipeline: Mapping[str, Any], deps: Sequence[str], issues: list[ValidationIssue]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]] | None:
    """For a pipeline with from_run sources: ``(pipeline to check, pipeline to start,
    inputs)``; None if it has none. Problems of those sources go to ``issues``."""
    sources = pipeline.get("sources")
    if not isinstance(sources, Mapping) or not any(
        isinstance(s, Mapping) and "from_run" in s for s in sources.values()
    ):
        return None
    inputs: dict[str, str] = {}
    checked: dict[str, Any] = {}
    for sname, src in sources.items():
        if not (isinstance(src, Mapping) and "from_run" in src):
            checked[sname] = src
            continue
        path = f"{name}.pipeline.sources.{sname}"
        extra = sorted(k for k in src if k != "from_run")
        upstream = src["from_run"]
        if extra:
            issues.append(
                ValidationIssue(
                    path, "a from_run source takes no other keys, got " + ", ".join(map(str, extra))
                )
            )
        if not isinstance(upstream, str) or upstream not in deps:
            listed = ", ".join(map(str, deps)) or "none"
            issues.append(
                ValidationIssue(
                    f"{path}.from_run",
                    f"{upstream!r} is not among this run's depends_on ({listed}); "
                    "a run can only read the output of a run it depends on",
                )
            )
        else:
            inputs[sname] = upstream
        checked[sname] = _PLACEHOLDER_INPUT
    return {**pipeline, "sources": checked}, {**pipeline, "sources": dict(sources)}, inputs


def prepare_request(
    req: RunRequest, plugins: PluginManager | None
) -> tuple[Prepared | None, list[ValidationIssue]]:
    """Validate the pipeline of ``req``; returns ``(prepared, problems)``.

    A pipeline without ``from_run`` sources is resolved once, here. One with
    ``from_run`` sources is validated with a placeholder and resolved again, with the
    upstream output, when the run starts (:func:`resolve_run`).
    """
    name = req.name
    pipeline: Any = req.pipeline
    source = req.source
    issues: list[ValidationIssue] = []
    deps = req.depends_on
    if isinstance(deps, str | bytes) or not isinstance(deps, Sequence):
        deps = ()
    if isinstance(pipeline, str | Path):
        source = source or str(pipeline)
        data, problem = _read_yaml(Path(pipeline))
        if problem is not None:
            return None, [ValidationIssue(f"{name}.pipeline", problem)]
        pipeline = data
    inputs: dict[str, str] = {}
    data_for_start: dict[str, Any] | None = None
    if isinstance(pipeline, Mapping):
        found = _from_run_sources(name, pipeline, deps, issues)
        if found is not None:
            pipeline, data_for_start, inputs = found
    try:
        resolved, pm = prepare(pipeline, plugins)
    except HeadwaterError as exc:
        problems = getattr(exc, "issues", None)
        where = f" (in {source})" if source else ""
        if problems:
            for issue in problems:
                sub = f".{issue.path}" if issue.path and not issue.path.startswith("[") else ""
                issues.append(ValidationIssue(f"{name}.pipeline{sub}", f"{issue.message}{where}"))
        else:
            issues.append(ValidationIssue(f"{name}.pipeline", f"{exc}{where}"))
        return None, issues
    except TypeError as exc:
        return None, [ValidationIssue(f"{name}.pipeline", str(exc))]
    if issues:
        return None, issues
    first_sink = resolved.sinks[0].stage.removeprefix("sinks.")
    if inputs:
        return Prepared(None, pm, data_for_start, inputs, first_sink), []
    return Prepared(resolved, pm, None, inputs, first_sink), []


def resolve_run(
    run: ScheduledRun, runs: Mapping[str, ScheduledRun], plugins: PluginManager | None
) -> tuple[ResolvedPipeline, Any]:
    """The resolved pipeline of ``run``, with upstream outputs fed to from_run sources."""
    if run._prepared is not None:
        return run._prepared
    assert run._data is not None
    sources = dict(run._data["sources"])
    for sname, upstream in run._inputs.items():
        up = runs[upstream]
        output = up.output
        if isinstance(output, str | bytes | Mapping) or not isinstance(output, Iterable):
            shown = type(output).__name__ if output is not None else "nothing"
            raise SchedulerError(
                f"run {run.name!r} reads the output of {upstream!r} "
                f"(sources.{sname}.from_run), but the first sink of {upstream!r} returned "
                f"{shown}, not a list of items; give {upstream!r} a sink such as 'collect'"
            )
        sources[sname] = {"action": "iterable", "params": {"items": output}}
    resolved, pm = prepare({**run._data, "sources": sources}, plugins)
    return resolved, pm
