"""Per-sink branches: a sink's own ``where`` and ``steps``.

A sink may carry a ``where`` predicate and a chain of ``steps`` of its own::

    sinks:
      - sink: jsonl
        params: {path: errors.jsonl}
        where: {expr: "level == 'ERROR'"}
        steps: [{transformer: select, params: {fields: [msg]}}]
      - {sink: collect}

Every item leaving the pipeline's shared steps goes to each sink (fan-out) once; a
branch then keeps the items its ``where`` holds for (``{expr: ...}`` or ``{fn: ...}``,
the params of ``filter``) and runs them through its ``steps``. The shared steps run once
whatever the number of branches. A branch's steps are stages like the shared ones
(stage names ``sinks.NAME.where`` and ``sinks.NAME.steps[i].TRANSFORMER``), so their
state is checkpointed with the rest.

This module resolves branches against the registry; the runtime builds their stages
(:mod:`headwater.core.runtime.run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .components import ComponentKind
from .errors import ValidationIssue

if TYPE_CHECKING:
    from .pipeline import PipelineSpec, ResolvedStage
    from .policy import SandboxPolicy

__all__ = ["compose_issues", "fingerprint_data", "resolve_branches", "step_issues"]


def step_issues(params: Any, path: str, has_dead_letter: bool) -> list[ValidationIssue]:
    """What a step's params need of the pipeline: ``late: dead_letter`` a dead-letter
    sink."""
    if not has_dead_letter and getattr(params, "late", None) == "dead_letter":
        msg = "late: dead_letter needs the pipeline's dead_letter sink"
        return [ValidationIssue(f"{path}.params.late", msg)]
    return []


def compose_issues(spec: PipelineSpec) -> list[ValidationIssue]:
    """What the composition needs of the pipeline: a join's ``late: dead_letter`` a
    dead-letter sink."""
    join = spec.compose.join if spec.compose is not None else None
    if join is not None and join.late == "dead_letter" and spec.dead_letter is None:
        msg = "late: dead_letter needs the pipeline's dead_letter sink"
        return [ValidationIssue("compose.join.late", msg)]
    return []


def resolve_branches(
    spec: PipelineSpec,
    registry: Any,
    issues: list[ValidationIssue],
    policy: SandboxPolicy | None,
    sink_stages: list[str],
) -> dict[str, list[ResolvedStage]]:
    """Sink stage -> its branch stages (``where`` first, then ``steps``), for the sinks
    that have one; problems go into ``issues`` with their path."""
    from .pipeline import ResolvedStage, _lookup, _validate_params

    branches: dict[str, list[ResolvedStage]] = {}
    for i, (sink, stage) in enumerate(zip(spec.sinks, sink_stages, strict=False)):
        chain: list[ResolvedStage] = []
        if sink.where is not None:
            path = f"sinks[{i}].where"
            comp = _lookup(registry, ComponentKind.TRANSFORMER, "filter", path, issues)
            if comp is not None:
                params = _validate_params(comp, sink.where, f"sinks[{i}].where", [], policy)
                if params is None:
                    _where_issues(comp, sink.where, path, issues, policy)
                else:
                    chain.append(ResolvedStage(f"{stage}.where", comp, params))
        for j, step in enumerate(sink.steps):
            path = f"sinks[{i}].steps[{j}]"
            comp = _lookup(
                registry, ComponentKind.TRANSFORMER, step.transformer, f"{path}.transformer", issues
            )
            if comp is None:
                continue
            params = _validate_params(comp, step.params, path, issues, policy)
            issues += step_issues(params, path, spec.dead_letter is not None)
            name = step.name or f"{stage}.steps[{j}].{step.transformer}"
            chain.append(ResolvedStage(name, comp, params, step.on_error, step.retry))
        if chain:
            branches[stage] = chain
    return branches


def _where_issues(
    comp: Any,
    where: dict[str, Any],
    path: str,
    issues: list[ValidationIssue],
    policy: SandboxPolicy | None,
) -> None:
    """``where``'s problems, with paths under ``where`` (not ``where.params``)."""
    from .pipeline import _validate_params

    found: list[ValidationIssue] = []
    _validate_params(comp, where, path, found, policy)
    for issue in found:
        issues.append(ValidationIssue(issue.path.replace(".params", "", 1), issue.message))


def fingerprint_data(spec: PipelineSpec) -> list[Any] | None:
    """What of the sinks a checkpoint depends on: their branches (None without any, so
    that pipelines without branches keep the fingerprint they had)."""
    if not any(s.steps or s.where is not None for s in spec.sinks):
        return None
    return [s.model_dump(mode="python", include={"steps", "where"}) for s in spec.sinks]
