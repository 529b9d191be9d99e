"""The pipeline model: one pydantic model for YAML files and the Python API alike.

Validation happens in two passes. :meth:`PipelineSpec.model_validate` checks the shape
(keys, types, references between sources and ``compose``). :func:`resolve` then checks
the pipeline against the registered components: every name must exist, and every
``params`` mapping must satisfy its component's own params model. Both passes report
*every* problem with a path such as ``steps[2].params.pattern``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .components import Component, ComponentKind
from .compose import ComposeSpec
from .errors import (
    ComponentNotFound,
    PipelineValidationError,
    ValidationIssue,
    format_loc,
    issues_from_pydantic,
    join_path,
)
from .keyhints import unknown_key_hint
from .testcases import PipelineTestCase

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from .policy import SandboxPolicy
    from .secrets import Secrets

__all__ = [
    "CheckpointSpec",
    "ComposeSpec",
    "ErrorPolicy",
    "PipelineSpec",
    "ResolvedPipeline",
    "ResolvedStage",
    "RetryPolicy",
    "SinkSpec",
    "SourceSpec",
    "StepSpec",
    "Timeouts",
    "format_loc",
    "load_pipeline",
    "parse_pipeline",
    "resolve",
]

ErrorPolicy = Literal["fail", "skip", "retry"]

_STRICT = ConfigDict(extra="forbid", frozen=False, arbitrary_types_allowed=True)


class RetryPolicy(BaseModel):
    """Bounded retries with exponential backoff (used when ``on_error: retry``)."""

    model_config = _STRICT

    attempts: int = Field(3, gt=0, description="Total attempts, including the first.")
    backoff: float = Field(0.05, ge=0, description="Delay before the first retry, seconds.")
    factor: float = Field(2.0, ge=1, description="Multiplier applied to the delay per retry.")
    max_backoff: float = Field(5.0, ge=0, description="Upper bound of one delay, seconds.")
    then: Literal["fail", "skip"] = Field(
        "fail", description="What to do once every attempt failed."
    )

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        return float(min(self.max_backoff, self.backoff * self.factor ** (attempt - 1)))


class SourceSpec(BaseModel):
    """A named source: a stream action and its params."""

    model_config = _STRICT

    action: str = Field(description="Name of a registered stream action.")
    params: dict[str, Any] = Field(default_factory=dict, description="The action's params.")
    fallback: str | None = Field(
        None,
        description="Action run with the same params when this one fails before its first "
        "item, or is not available (its plugin failed to load or is disabled); overrides "
        "the fallback the action declares.",
    )


class StepSpec(BaseModel):
    """One transformer in the chain of steps."""

    model_config = _STRICT

    transformer: str = Field(description="Name of a registered transformer.")
    params: dict[str, Any] = Field(default_factory=dict, description="The transformer's params.")
    name: str | None = Field(None, description="Stage name in events and metrics.")
    on_error: ErrorPolicy = Field("fail", description="fail | skip | retry")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class SinkSpec(BaseModel):
    """One sink; several sinks receive every item (fan-out)."""

    model_config = _STRICT

    sink: str = Field(description="Name of a registered sink.")
    params: dict[str, Any] = Field(default_factory=dict, description="The sink's params.")
    name: str | None = Field(None, description="Key of this sink's result; defaults to its type.")
    on_error: ErrorPolicy = Field("fail", description="fail | skip | retry (per batch)")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    where: dict[str, Any] | None = Field(
        None, description="Only items this holds for reach the sink: {expr: ...} or {fn: ...}."
    )
    steps: list[StepSpec] = Field(default_factory=list, description="Steps of this sink only.")


class Timeouts(BaseModel):
    """Run timeouts in seconds; None disables one."""

    model_config = _STRICT

    first_item: float | None = Field(
        None, gt=0, description="Until the first item leaves the sources."
    )
    idle: float | None = Field(None, gt=0, description="Longest gap between two items.")
    total: float | None = Field(None, gt=0, description="Whole run.")


class CheckpointSpec(BaseModel):
    """Checkpointing of a resumable pipeline (see docs: delivery and checkpoints)."""

    model_config = _STRICT

    store: str = Field("sqlite", description="Name of a registered checkpoint store.")
    params: dict[str, Any] = Field(default_factory=dict, description="The store's params.")
    every_items: int | None = Field(
        10_000, gt=0, description="Checkpoint at least every this many source items."
    )
    every_seconds: float | None = Field(
        5.0, gt=0, description="Checkpoint at least every this many seconds."
    )


class PluginSettings(BaseModel):
    """Plugin selection for this pipeline's process."""

    model_config = _STRICT

    disable: list[str] = Field(
        default_factory=list, description="Plugin or distribution names not to load."
    )


class PipelineSpec(BaseModel):
    """A pipeline: named sources, optional composition, steps, and one or more sinks."""

    model_config = _STRICT

    name: str = Field(
        min_length=1, description="Pipeline name, used in events, errors and metrics."
    )
    description: str = ""
    sources: dict[str, SourceSpec] = Field(min_length=1, description="Source name -> action.")
    compose: ComposeSpec | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    sinks: list[SinkSpec] = Field(min_length=1)
    dead_letter: SinkSpec | None = Field(
        None, description="Receives items (with their error) that a skip/retry policy dropped."
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    checkpoint: CheckpointSpec | None = Field(
        None, description="Commit progress so that the run can resume (--resume)."
    )
    batch_size: int = Field(256, gt=0, le=65536, description="Items per batch between stages.")
    buffer: int = Field(4, gt=0, le=1024, description="Batches buffered between two stages.")
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    requires: dict[str, str] = Field(
        default_factory=dict,
        description="Distributions the pipeline needs, name -> PEP 440 version range "
        "(e.g. headwater-tabular: '>=0.2'); checked by validate and every run.",
    )
    tests: list[PipelineTestCase] = Field(
        default_factory=list,
        description="Test cases run by `headwater test` (input items and what the sinks "
        "must receive); runs ignore them.",
    )

    @field_validator("requires")
    @classmethod
    def _check_requires(cls, value: dict[str, str]) -> dict[str, str]:
        from .requirements import check_specifier

        for spec in value.values():
            check_specifier(spec)
        return value

    @model_validator(mode="after")
    def _check_composition(self) -> PipelineSpec:
        if self.compose is None:
            if len(self.sources) > 1:
                raise ValueError(
                    f"compose: {len(self.sources)} sources need a compose (merge, zip or concat)"
                )
            return self
        unknown = [n for n in self.compose.names if n not in self.sources]
        if unknown:
            raise ValueError(
                f"compose.{self.compose.mode}: names unknown source(s) "
                f"{', '.join(map(repr, unknown))}; sources are {', '.join(map(repr, self.sources))}"
            )
        unused = [n for n in self.sources if n not in self.compose.names]
        if unused:
            raise ValueError(
                f"compose.{self.compose.mode}: source(s) {', '.join(map(repr, unused))} "
                "not used by compose"
            )
        return self

    def source_order(self) -> list[str]:
        """Source names in composition order."""
        return self.compose.names if self.compose else list(self.sources)

    def fingerprint(self) -> str:
        """A stable hash of what a checkpoint depends on: the sources and the steps.

        Sinks, timeouts, batch sizes and the checkpoint settings may change between a run
        and its resumption; a change of a source or a step makes old positions and states
        meaningless, and resuming is refused. Callables count by their import path. A
        source's ``fallback`` does not count: it resumes from the same positions.
        """
        import hashlib
        import json

        data = self.model_dump(
            mode="python",
            include={"sources", "compose", "steps"},
            exclude={"sources": {"__all__": {"fallback"}}},
        )
        from .branches import fingerprint_data

        if (branches := fingerprint_data(self)) is not None:
            data["branches"] = branches
        text = json.dumps(data, sort_keys=True, default=_stable_repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stable_repr(value: Any) -> str:
    """A representation that is the same in every process (no memory addresses)."""
    if callable(value):
        module = getattr(value, "__module__", None) or ""
        name = getattr(value, "__qualname__", None) or type(value).__qualname__
        return f"{module}:{name}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


_COMPONENT_KEYS = ("action", "transformer", "sink")


def _null_hint(err: ErrorDetails) -> str | None:
    """YAML reads an unquoted ``null`` as None: say so when a component name is None."""
    loc = err["loc"]
    names_component = bool(loc) and loc[-1] in _COMPONENT_KEYS
    if names_component and err["type"] == "string_type" and err.get("input") is None:
        return " (an unquoted null in YAML means nothing: write 'null' in quotes)"
    return None


def _issues_from(
    exc: ValidationError,
    prefix: Sequence[int | str] = (),
    model: type[BaseModel] | None = None,
) -> list[ValidationIssue]:
    """The issues of ``exc``; unknown keys of ``model`` get a "did you mean"."""

    def hint(err: ErrorDetails) -> str | None:
        found = _null_hint(err)
        if found is None and model is not None:
            found = unknown_key_hint(model, err)
        return found

    # model-level validators prefix their message with the path they are about
    return issues_from_pydantic(exc, prefix, message_paths=("compose",), hint=hint)


def parse_pipeline(data: Any, *, source: str | None = None) -> PipelineSpec:
    """Validate a mapping (e.g. parsed YAML) into a :class:`PipelineSpec`.

    Raises :class:`PipelineValidationError` listing every problem with its path.
    """
    if isinstance(data, PipelineSpec):
        return data
    if not isinstance(data, Mapping):
        raise PipelineValidationError(
            [ValidationIssue("", f"a pipeline must be a mapping, got {type(data).__name__}")],
            source,
        )
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise PipelineValidationError(_issues_from(exc, (), PipelineSpec), source) from None


def load_pipeline(
    path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    secrets: Secrets | None = None,
    environ: Mapping[str, str] | None = None,
) -> PipelineSpec:
    """Read a pipeline YAML (or JSON) file; ``overrides`` maps dotted paths to values
    (``--set``, applied as given: never substituted).

    ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in its string values are
    substituted from ``environ`` (default: ``os.environ``) and files beside it; the values
    substituted are added to ``secrets`` (see :mod:`headwater.core.substitution`).
    """
    from .yamlfile import load_yaml_file

    path = Path(path)
    data = load_yaml_file(path, PipelineValidationError, secrets=secrets, environ=environ)
    if overrides:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PipelineValidationError(
                [ValidationIssue("", f"a pipeline must be a mapping, got {type(data).__name__}")],
                str(path),
            )
        for key, value in overrides.items():
            apply_override(data, key, value, source=str(path))
    return parse_pipeline(data, source=str(path))


def apply_override(
    data: dict[str, Any], key: str, value: Any, *, source: str | None = None
) -> None:
    """Set ``data[a][b][0][c] = value`` for ``key = "a.b[0].c"`` (or ``a.b.0.c``)."""
    import re

    parts: list[str | int] = []
    for chunk in key.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", chunk)
        if not m or (not m.group(1) and not m.group(2)):
            raise PipelineValidationError([ValidationIssue(key, "not a valid --set path")], source)
        if m.group(1):
            parts.append(int(m.group(1)) if m.group(1).isdecimal() else m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                raise PipelineValidationError(
                    [ValidationIssue(format_loc(parts[: i + 1]), "index out of range for --set")],
                    source,
                )
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str):
            if not isinstance(node.get(part), dict | list):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        else:
            raise PipelineValidationError(
                [ValidationIssue(format_loc(parts[: i + 1]), "cannot --set inside this value")],
                source,
            )
    last = parts[-1]
    in_list = isinstance(node, list) and isinstance(last, int) and last < len(node)
    in_dict = isinstance(node, dict) and isinstance(last, str)
    if in_list or in_dict:
        node[last] = value
    else:
        raise PipelineValidationError([ValidationIssue(key, "cannot --set this path")], source)


# ---------------------------------------------------------------------------------------
# Resolution against the registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedStage:
    """A stage bound to its component, with validated params."""

    stage: str
    """Stage name used in events/errors, e.g. ``sources.app`` or ``steps[1].regex``."""
    component: Component
    params: BaseModel | None
    on_error: ErrorPolicy = "fail"
    retry: RetryPolicy | None = None
    fallback: ResolvedStage | None = None
    """For a source: the action run instead when this one fails before its first item."""
    stands_in_for: str | None = None
    """For a source whose action is not available: that action's name (``component`` is
    then the declared fallback)."""
    unavailable: str | None = None
    """Why the action :attr:`stands_in_for` names is not available."""


@dataclass(frozen=True, slots=True)
class ResolvedPipeline:
    """A pipeline whose every component was found and whose params validated."""

    spec: PipelineSpec
    sources: dict[str, ResolvedStage]
    steps: list[ResolvedStage]
    sinks: list[ResolvedStage]
    dead_letter: ResolvedStage | None
    checkpoint_store: ResolvedStage | None = None
    branches: dict[str, list[ResolvedStage]] | None = None
    """Sink stage -> the stages of its branch (see :mod:`headwater.core.branches`)."""


def _lookup(
    registry: Any, kind: ComponentKind, name: str, path: str, issues: list[ValidationIssue]
) -> Component | None:
    try:
        found: Component = registry.get(kind, name)
    except ComponentNotFound as exc:
        issues.append(ValidationIssue(path, str(exc)))
        return None
    return found


def _validate_params(
    component: Component,
    params: dict[str, Any],
    path: str,
    issues: list[ValidationIssue],
    policy: SandboxPolicy | None = None,
) -> BaseModel | None:
    if component.params is None:
        if params:
            issues.append(
                ValidationIssue(
                    f"{path}.params",
                    f"{component.kind} {component.name!r} takes no params, got {', '.join(params)}",
                )
            )
        return None
    try:
        context = policy.validation_context() if policy is not None else None
        return component.params.model_validate(params, context=context)
    except ValidationError as exc:
        for issue in _issues_from(exc, (), component.params):
            issues.append(ValidationIssue(join_path(f"{path}.params", issue.path), issue.message))
        return None


def resolve(
    spec: PipelineSpec,
    registry: Any,
    *,
    source: str | None = None,
    policy: SandboxPolicy | None = None,
) -> ResolvedPipeline:
    """Bind every stage of ``spec`` to its component and validate its params.

    ``registry`` is a :class:`~headwater.core.registry.Registry` or a
    :class:`~headwater.core.plugins.PluginManager`. Raises
    :class:`PipelineValidationError` listing every problem.
    """
    from .branches import compose_issues, resolve_branches, step_issues
    from .fallbacks import resolve_source
    from .preflight import setup_issues
    from .requirements import requirement_issues

    issues: list[ValidationIssue] = requirement_issues(spec.requires)
    sources: dict[str, ResolvedStage] = {}
    for name, src in spec.sources.items():
        path = f"sources.{name}" if name.isidentifier() else f"sources[{name!r}]"
        resolved_source = resolve_source(registry, name, src, path, issues, policy)
        if resolved_source is not None:
            sources[name] = resolved_source
    steps: list[ResolvedStage] = []
    for i, step in enumerate(spec.steps):
        path = f"steps[{i}]"
        comp = _lookup(
            registry, ComponentKind.TRANSFORMER, step.transformer, f"{path}.transformer", issues
        )
        if comp is not None:
            params = _validate_params(comp, step.params, path, issues, policy)
            issues += step_issues(params, path, spec.dead_letter is not None)
            stage = step.name or f"{path}.{step.transformer}"
            steps.append(ResolvedStage(stage, comp, params, step.on_error, step.retry))
    sinks: list[ResolvedStage] = []
    seen: set[str] = set()
    seen_stages: list[str] = []
    for i, snk in enumerate(spec.sinks):
        path = f"sinks[{i}]"
        comp = _lookup(registry, ComponentKind.SINK, snk.sink, f"{path}.sink", issues)
        key = snk.name or snk.sink
        if key in seen:
            key = f"{key}[{i}]" if snk.name is None else key
            if key in seen:
                issues.append(ValidationIssue(f"{path}.name", f"duplicate sink name {key!r}"))
        seen.add(key)
        seen_stages.append(f"sinks.{key}")
        if comp is not None:
            params = _validate_params(comp, snk.params, path, issues, policy)
            sinks.append(ResolvedStage(f"sinks.{key}", comp, params, snk.on_error, snk.retry))
    dead: ResolvedStage | None = None
    if spec.dead_letter is not None:
        comp = _lookup(
            registry, ComponentKind.SINK, spec.dead_letter.sink, "dead_letter.sink", issues
        )
        if comp is not None:
            params = _validate_params(comp, spec.dead_letter.params, "dead_letter", issues, policy)
            dead = ResolvedStage("dead_letter", comp, params)
    store: ResolvedStage | None = None
    if spec.checkpoint is not None:
        store = _resolve_checkpointing(spec, registry, sources, steps, issues, policy)
    branches = resolve_branches(spec, registry, issues, policy, seen_stages)
    issues += compose_issues(spec)
    issues += setup_issues(spec, sources, sinks, dead)  # what a run would refuse at start
    if issues:
        raise PipelineValidationError(issues, source)
    return ResolvedPipeline(spec, sources, steps, sinks, dead, store, branches or None)


def _resolve_checkpointing(
    spec: PipelineSpec,
    registry: Any,
    sources: dict[str, ResolvedStage],
    steps: list[ResolvedStage],
    issues: list[ValidationIssue],
    policy: SandboxPolicy | None = None,
) -> ResolvedStage | None:
    from .components import Capability

    assert spec.checkpoint is not None
    if len(spec.sources) != 1 and (spec.compose is None or spec.compose.mode != "join"):
        issues.append(
            ValidationIssue(
                "checkpoint",
                "checkpointing needs exactly one source, or a join (positions of merged or "
                "zipped sources cannot be committed consistently); split the pipeline",
            )
        )
    for name, stage in list(sources.items()):
        if Capability.RESUMABLE not in stage.component.capabilities:
            issues.append(
                ValidationIssue(
                    f"sources.{name}.action",
                    f"action {stage.component.name!r} is not resumable, so it cannot be "
                    "checkpointed; remove the checkpoint section or use a resumable source",
                )
            )
        fallback = stage.fallback
        if fallback is not None and Capability.RESUMABLE not in fallback.component.capabilities:
            if spec.sources[name].fallback is None:
                # the action's own fallback is best effort: this run goes without it
                sources[name] = replace(stage, fallback=None)
                continue
            issues.append(
                ValidationIssue(
                    f"sources.{name}.fallback",
                    f"fallback {fallback.component.name!r} is not resumable, so a "
                    "checkpointed pipeline cannot fall back to it",
                )
            )
    for i, step in enumerate(steps):
        comp = step.component
        if comp.transformer_kind == "stream" and Capability.STATEFUL in comp.capabilities:
            issues.append(
                ValidationIssue(
                    f"steps[{i}].transformer",
                    f"stream transformer {comp.name!r} keeps state it cannot snapshot, so "
                    "the pipeline cannot be checkpointed",
                )
            )
    store = _lookup(
        registry, ComponentKind.CHECKPOINT_STORE, spec.checkpoint.store, "checkpoint.store", issues
    )
    if store is None:
        return None
    params = _validate_params(store, spec.checkpoint.params, "checkpoint", issues, policy)
    return ResolvedStage("checkpoint", store, params)
