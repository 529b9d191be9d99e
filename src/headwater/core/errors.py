"""Exceptions raised by headwater; each message names what is wrong and where."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

__all__ = [
    "CheckFailed",
    "CheckSkipped",
    "ComponentNotFound",
    "ComponentUnavailable",
    "HeadwaterError",
    "InvalidFileError",
    "PipelineCancelled",
    "PipelineFailed",
    "PipelineTimeout",
    "PipelineValidationError",
    "PluginLoadError",
    "StageError",
    "ValidationIssue",
    "format_loc",
    "issues_from_pydantic",
    "join_path",
]


class HeadwaterError(Exception):
    """Base class of every error headwater raises on purpose."""


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    """One problem in a pipeline definition: where (a dotted path) and what.

    ``line`` (1-based) is the line of the file it is on, when known.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def located(self, source: str | None = None) -> str:
        """The issue with its place in the file: ``pipe.yaml:3: PATH: MESSAGE``
        (``line 3: ...`` without ``source``; just the issue when the line is unknown)."""
        if self.line is None:
            return str(self)
        return f"{source}:{self.line}: {self}" if source else f"line {self.line}: {self}"


def format_loc(loc: Sequence[int | str]) -> str:
    """``('steps', 2, 'params', 'pattern')`` -> ``steps[2].params.pattern``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def join_path(prefix: str, path: str) -> str:
    """``prefix`` followed by ``path``: ``join_path("steps[0].params", "pattern")`` is
    ``steps[0].params.pattern``, ``join_path("steps", "[0]")`` is ``steps[0]``."""
    if not path:
        return prefix
    if not prefix:
        return path
    return prefix + (path if path.startswith("[") else "." + path)


class InvalidFileError(HeadwaterError):
    """A definition (a pipeline, a server configuration, a jobs file) is invalid.

    ``issues`` lists every problem found, each with its path; ``source`` names where the
    definition came from (a file), if known. The message reads
    ``invalid SUBJECT in SOURCE (N problems):`` followed by one issue per line.
    Subclasses set :attr:`subject` (and :attr:`source_prefix`).
    """

    subject: ClassVar[str] = "file"
    """What is invalid, as the message names it."""
    source_prefix: ClassVar[str] = " in "
    """What joins :attr:`subject` and the source in the message."""

    def __init__(self, issues: list[ValidationIssue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        where = f"{self.source_prefix}{source}" if source else ""
        lines = "\n".join(f"  {issue.located(source)}" for issue in issues)
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"invalid {self.subject}{where} ({count}):\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.issues, self.source))


class PipelineValidationError(InvalidFileError):
    """A pipeline definition is invalid; ``issues`` lists every problem found."""

    subject = "pipeline"


_VALIDATOR_LOC = re.compile(r"function-(?:after|before|wrap|plain)\[.*\]")
"""How pydantic names a validator it inserts in an error's location."""


def issues_from_pydantic(
    exc: ValidationError,
    prefix: Sequence[int | str] = (),
    *,
    union_tags: Collection[str] = (),
    message_paths: Collection[str] = (),
    hint: Callable[[ErrorDetails], str | None] | None = None,
) -> list[ValidationIssue]:
    """The problems of a pydantic ``ValidationError`` as :class:`ValidationIssue` s.

    Paths are dotted (``steps[2].params.pattern``), after ``prefix``; validator names
    pydantic inserts in locations are dropped, and so are the ``union_tags`` (the member
    names pydantic inserts for a union such as ``str | TokenConfig``). An unknown key
    reads ``unknown key``, a missing one ``required key is missing``, and other messages
    lose pydantic's ``Value error,`` prefix. A model-level validator may start its
    message with the path it is about, for the keys in ``message_paths``
    (``compose.merge: ...``): that path then becomes the issue's. ``hint(error)`` may
    return text to append to a message. Identical issues are reported once.
    """
    issues: list[ValidationIssue] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = [
            p
            for p in err["loc"]
            if not (isinstance(p, str) and (p in union_tags or _VALIDATOR_LOC.fullmatch(p)))
        ]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if hint is not None:
            msg += hint(err) or ""
        path = format_loc([*prefix, *loc])
        if not loc and message_paths:
            keys = "|".join(re.escape(k) for k in message_paths)
            where = re.match(rf"((?:{keys})(?:\.\w+)?): ", msg)
            if where:
                path = format_loc([*prefix, *where.group(1).split(".")])
                msg = msg[where.end() :]
        if (path, msg) not in seen:
            seen.add((path, msg))
            issues.append(ValidationIssue(path, msg))
    return issues


class ComponentNotFound(HeadwaterError, LookupError):
    """No component of that kind and name is registered."""

    def __init__(self, kind: str, name: str, suggestions: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"no {kind} {name!r}{hint}")


class ComponentUnavailable(ComponentNotFound):
    """A component is registered, but its module could not be imported (a lazily
    registered component of a broken or incompletely installed plugin)."""

    def __init__(self, kind: str, name: str, plugin: str | None, error: str) -> None:
        self.plugin = plugin
        self.error = error
        self.kind = kind
        self.name = name
        self.suggestions: list[str] = []
        owner = f" of plugin {plugin!r}" if plugin else ""
        Exception.__init__(self, f"{kind} {name!r}{owner} could not be loaded: {error}")


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


class CheckFailed(HeadwaterError):
    """A connection check could not reach its service; the message says where and why
    (an address without credentials, and what is wrong), and is shown alone."""


class CheckSkipped(Exception):
    """Raised by a connection check that has nothing to reach; the message says why."""
