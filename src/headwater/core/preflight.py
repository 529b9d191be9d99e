"""What a run would refuse while it sets up, found when the pipeline is resolved instead.

:func:`~headwater.core.pipeline.resolve` (and so ``headwater validate``) calls
:func:`setup_issues` so that a pipeline it accepts does not then fail the moment a run
starts: a sink class with no ``write`` method, or a resumable source written as a sync
generator in a checkpointed pipeline (a worker thread cannot report positions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .components import Capability, Component
from .errors import ValidationIssue

if TYPE_CHECKING:
    from .pipeline import PipelineSpec, ResolvedStage

__all__ = ["setup_issues"]


def setup_issues(
    spec: PipelineSpec,
    sources: Mapping[str, ResolvedStage],
    sinks: Sequence[ResolvedStage],
    dead_letter: ResolvedStage | None,
) -> list[ValidationIssue]:
    """The problems the runtime would meet setting up a run of these stages."""
    issues: list[ValidationIssue] = []
    found = {stage.component.name: stage.component for stage in sinks}
    for i, sink in enumerate(spec.sinks):
        component = found.get(sink.sink)
        if component is not None and not _writes(component):
            issues.append(_no_write(f"sinks[{i}].sink", component))
    if dead_letter is not None and not _writes(dead_letter.component):
        issues.append(_no_write("dead_letter.sink", dead_letter.component))
    if spec.checkpoint is not None:
        for name, stage in sources.items():
            action = stage.component
            if action.shape == "sync_gen" and Capability.RESUMABLE in action.capabilities:
                issues.append(
                    ValidationIssue(
                        f"sources.{name}.action",
                        f"action {action.name!r} is a sync generator: it runs in a worker "
                        "thread, which cannot report checkpoint positions, so the pipeline "
                        "cannot be checkpointed; write it as an async generator",
                    )
                )
    return issues


def _writes(component: Component) -> bool:
    """A sink function writes; a sink class must have a ``write(batch)`` method."""
    return component.shape != "class" or callable(getattr(component.obj, "write", None))


def _no_write(path: str, component: Component) -> ValidationIssue:
    return ValidationIssue(
        path, f"sink {component.name!r} has no write(batch) method, so it cannot take items"
    )
