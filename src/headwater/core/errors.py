"""Exceptions raised by headwater; each message names what is wrong and where."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ComponentNotFound",
    "HeadwaterError",
    "PipelineCancelled",
    "PipelineFailed",
    "PipelineTimeout",
    "PipelineValidationError",
    "PluginLoadError",
    "StageError",
    "ValidationIssue",
]


class HeadwaterError(Exception):
    """Base class of every error headwater raises on purpose."""


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One problem in a pipeline definition: where (a dotted path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PipelineValidationError(HeadwaterError):
    """A pipeline definition is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ValidationIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {issue}" for issue in issues)
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid pipeline{where} ({count}):\n{lines}")


class ComponentNotFound(HeadwaterError, LookupError):
    """No component of that kind and name is registered."""

    def __init__(self, kind: str, name: str, suggestions: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no {kind} {name!r}{hint}")


class PluginLoadError(HeadwaterError):
    """A plugin could not be loaded (raised only in strict mode)."""


class StageError(HeadwaterError):
    """An error raised inside a pipeline stage, with where it happened.

    ``position`` is the 0-based index of the offending item in the stream entering the
    stage, when known.
    """

    def __init__(
        self,
        *,
        pipeline: str,
        stage: str,
        plugin: str | None,
        position: int | None,
        cause: BaseException,
    ) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.plugin = plugin
        self.position = position
        self.cause = cause
        at = f" at item {position}" if position is not None else ""
        by = f" (plugin {plugin})" if plugin else ""
        super().__init__(
            f"pipeline {pipeline!r}, stage {stage}{by}{at}: {type(cause).__name__}: {cause}"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable description of the error."""
        return {
            "pipeline": self.pipeline,
            "stage": self.stage,
            "plugin": self.plugin,
            "position": self.position,
            "error": type(self.cause).__name__,
            "message": str(self.cause),
        }


class PipelineFailed(HeadwaterError):
    """A run ended with an error; ``errors`` holds the stage errors that caused it."""

    def __init__(self, pipeline: str, errors: list[BaseException]) -> None:
        self.pipeline = pipeline
        self.errors = errors
        first = errors[0] if errors else None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{first}{more}" if first else f"pipeline {pipeline!r} failed")


class PipelineCancelled(HeadwaterError):
    """A run was cancelled (by its handle, a signal, or a client)."""


class PipelineTimeout(HeadwaterError):
    """A run exceeded one of its timeouts (first item, idle, total)."""

    def __init__(self, pipeline: str, which: str, seconds: float) -> None:
        self.pipeline = pipeline
        self.which = which
        self.seconds = seconds
        super().__init__(f"pipeline {pipeline!r} exceeded its {which} timeout of {seconds:g}s")
