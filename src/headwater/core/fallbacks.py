"""Resolving a source with its fallback: the action that runs, with the same params,
when the source's own action fails before its first item or is not available.

A fallback declared by the pipeline (``fallback:`` on a source) is checked like the
action: it must exist and accept the params. The one an action declares itself
(``@headwater.action(..., fallback=NAME)``) is best effort. Split from
:mod:`headwater.core.pipeline`, whose :func:`~headwater.core.pipeline.resolve` calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .components import Component, ComponentKind
from .errors import ComponentNotFound, ValidationIssue
from .pipeline import ResolvedStage, SourceSpec, _lookup, _validate_params

if TYPE_CHECKING:
    from .policy import SandboxPolicy

__all__ = ["resolve_source"]


def resolve_source(
    registry: Any,
    name: str,
    src: SourceSpec,
    path: str,
    issues: list[ValidationIssue],
    policy: SandboxPolicy | None,
) -> ResolvedStage | None:
    """The source's stage with its fallback, if any.

    A fallback declared by the pipeline (``fallback:``) must exist and accept the
    params; it also stands in for an action that is not available. The fallback an
    action declares itself is best effort: it is left out when it is not registered or
    does not accept the params.
    """
    stage = f"sources.{name}"
    try:
        comp: Component = registry.get(ComponentKind.ACTION, src.action)
    except ComponentNotFound as exc:
        issue = ValidationIssue(f"{path}.action", str(exc))
        if src.fallback is None:
            issues.append(issue)
            return None
        found: list[ValidationIssue] = []
        sub = _lookup(registry, ComponentKind.ACTION, src.fallback, f"{path}.fallback", found)
        if sub is None:
            issues.extend([issue, *found])
            return None
        params = _validate_params(sub, src.params, path, found, policy)
        issues.extend(_about_fallback(found, src.fallback))
        return ResolvedStage(stage, sub, params, stands_in_for=src.action, unavailable=str(exc))
    params = _validate_params(comp, src.params, path, issues, policy)
    fallback: ResolvedStage | None = None
    wanted = src.fallback or comp.fallback
    if wanted is not None and wanted != comp.name:
        declared = src.fallback is not None
        found = []
        other = _lookup(registry, ComponentKind.ACTION, wanted, f"{path}.fallback", found)
        other_params = None
        if other is not None:
            other_params = _validate_params(other, src.params, path, found, policy)
        if not found and other is not None:
            fallback = ResolvedStage(stage, other, other_params)
        elif declared:
            issues.extend(_about_fallback(found, wanted))
    return ResolvedStage(stage, comp, params, fallback=fallback)


def _about_fallback(issues: list[ValidationIssue], fallback: str) -> list[ValidationIssue]:
    """Issues of the params checked against a fallback's model, saying so."""
    return [
        i
        if i.path.endswith(".fallback")
        else ValidationIssue(i.path, f"{i.message} (fallback {fallback!r})")
        for i in issues
    ]
