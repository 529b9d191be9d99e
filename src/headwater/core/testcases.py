"""The ``tests:`` of a pipeline file: input items and what must come out.

A test case feeds the items it gives to the pipeline in place of its sources (or to one
named stage and the stages after it) and states what the sinks must receive: the exact
items, a count, conditions written as safe expressions (:mod:`headwater.core.expr`).
Runs ignore ``tests:``; ``headwater test`` runs them (see
:mod:`headwater.core.pipeline_tests`). These are plain models, so that the pipeline
model can hold them without importing the runner.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .expr import Expr

__all__ = ["CountSpec", "Expectation", "PipelineTestCase"]

_STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class CountSpec(BaseModel):
    """Bounds on a number of items: ``{min: 1, max: 10}`` (both included)."""

    model_config = _STRICT

    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> CountSpec:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class Expectation(BaseModel):
    """What one sink (or the dead-letter sink) must receive in a test."""

    model_config = _STRICT

    sink: str | None = Field(
        None,
        description="The sink whose items are checked, by name (its `name`, else its "
        "component), or `dead_letter`; default: the pipeline's first sink.",
    )
    items: list[Any] | None = Field(None, description="Exactly these items, in this order.")
    unordered: bool = Field(False, description="With `items`: the same items in any order.")
    contains: list[Any] | None = Field(
        None, description="These items are among those received (in any order)."
    )
    count: int | CountSpec | None = Field(
        None, description="How many items: a number, or {min, max}."
    )
    all: Expr | None = Field(None, description="An expression true for every item.")
    any: Expr | None = Field(None, description="An expression true for at least one item.")
    none: Expr | None = Field(None, description="An expression true for no item.")

    @model_validator(mode="after")
    def _check_something(self) -> Expectation:
        checks = (self.items, self.contains, self.count, self.all, self.any, self.none)
        if all(c is None for c in checks):
            raise ValueError("expect: give at least one of items, contains, count, all, any, none")
        if self.unordered and self.items is None:
            raise ValueError("expect.unordered applies to items")
        return self


class PipelineTestCase(BaseModel):
    """One test of a pipeline: input items, where they go in, what must come out."""

    model_config = _STRICT

    name: str = Field(min_length=1, description="Shown in the report.")
    input: list[Any] | dict[str, list[Any]] = Field(
        description="The items fed in place of the sources: a list (a pipeline with one "
        "source, or with `stage`), or source name -> list."
    )
    stage: str | None = Field(
        None,
        description="Feed the items to this step (its `name`, `steps[N]` or its stage name) "
        "or sink (`sinks.NAME`) instead of the sources: the stages before it are left out.",
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides for this test, as with --set (dotted path -> value).",
    )
    expect: Expectation | list[Expectation] = Field(
        description="What the sinks must receive (one expectation or a list)."
    )
    state: str = Field(
        "succeeded",
        pattern="^(succeeded|failed)$",
        description="The run's expected final state: succeeded (default) or failed.",
    )
    error: str | None = Field(
        None,
        description="With state failed: text the run's error must contain.",
    )

    def expectations(self) -> list[Expectation]:
        """``expect`` as a list."""
        return list(self.expect) if isinstance(self.expect, list) else [self.expect]
