"""Item-wise transformers: ``map``, ``filter``, ``select`` and ``flatten``.

Each is a factory returning a per-item function, so the runtime fuses them into one loop
per batch and an error names the failing item's position. ``map``, ``filter`` and
``select`` take expressions (:mod:`headwater.core.expr`) as well as importable functions:
an expression compiles to a plain function at validation, so it fuses the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

import headwater
from headwater.core.expr import Expr
from headwater.core.types import CallableRef

from .fields import _STRICT, FieldPath, MissingField, field_getter

# ---------------------------------------------------------------------------------------
# map / filter
# ---------------------------------------------------------------------------------------


class CallableParams(BaseModel):
    """The per-item function of ``map`` and ``filter``: ``fn`` or ``expr``, exactly one.

    ``fn`` is an importable path ``pkg.mod:fn`` (or, from Python, a callable), allowed by
    the operator's sandbox policy; ``expr`` an expression of the item, which needs no
    allowance (see the Expressions page).
    """

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef | None = Field(
        None,
        description="Callable named 'module:function', e.g. 'math:sqrt' (or a callable when "
        "building the pipeline in Python). A name must be allowed by the operator's sandbox "
        "policy: by default a few pure builtins and the modules operator, math, statistics, "
        "json, re and datetime; more with HEADWATER_ALLOW_CALLABLES. Give fn or expr.",
    )
    expr: Expr | None = Field(
        None,
        description="An expression of the item instead of fn, e.g. \"level == 'ERROR' and "
        'latency > 0.5": the item is `item`, its keys are names; needs no allowance from the '
        "operator. See Expressions in the docs.",
    )

    @model_validator(mode="after")
    def _one_function(self) -> CallableParams:
        if (self.fn is None) == (self.expr is None):
            raise ValueError("give exactly one of fn and expr")
        return self

    def function(self) -> Callable[[Any], Any]:
        """The per-item function: ``fn`` itself, or the compiled expression's function."""
        if self.expr is not None:
            return self.expr.fn
        assert self.fn is not None  # the validator saw to it
        return self.fn


@headwater.transformer(
    "map",
    kind="map",
    params=CallableParams,
    factory=True,
    output="fn(item) (or the value of expr) for each item",
    sample_params={"expr": "n * 2"},
    sample_input=[{"n": 1}, {"n": 2}],
)
def map_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Replace each item with ``fn(item)`` or the value of ``expr``.

    ``{transformer: map, params: {expr: "latency * 1000"}}``.
    """
    return params.function()


@headwater.transformer(
    "filter",
    kind="filter",
    params=CallableParams,
    factory=True,
    output="the items for which fn(item) (or expr) is true",
    sample_params={"expr": "n > 1"},
    sample_input=[{"n": 1}, {"n": 2}],
)
def filter_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Keep the items for which ``fn(item)`` or ``expr`` is true.

    ``{transformer: filter, params: {expr: "level == 'ERROR' and latency > 0.5"}}``.
    """
    return params.function()


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------


class SelectParams(BaseModel):
    """Params of ``select``."""

    model_config = _STRICT

    fields: list[FieldPath] = Field(
        default_factory=list,
        description="Fields to keep, in output order; a dotted path keeps its path as key.",
    )
    rename: dict[str, FieldPath] = Field(
        default_factory=dict,
        description="Further fields to keep under a new name: mapping new name -> field.",
    )
    expr: dict[str, Expr] = Field(
        default_factory=dict,
        description="Further fields computed from the item: mapping new name -> "
        'expression, e.g. {ms: "latency * 1000"} (see Expressions in the docs).',
    )
    missing: Literal["error", "null", "omit"] = Field(
        "error",
        description="When an item lacks a field (or an expression reads a missing key): "
        "fail the item (error), output None (null) or leave the key out (omit).",
    )

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in fields:
            if name in seen:
                raise ValueError(f"field {name!r} is listed more than once")
            seen.add(name)
        return fields

    @field_validator("rename", "expr")
    @classmethod
    def _no_clash(cls, named: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        taken = {name: "fields" for name in info.data.get("fields") or []}
        taken.update({name: "rename" for name in info.data.get("rename") or {}})
        clash = [new for new in named if new in taken]
        if clash:
            raise ValueError(
                f"new name {clash[0]!r} is also listed in {taken[clash[0]]}; "
                f"{info.field_name} would overwrite it"
            )
        if any(not new for new in named):
            raise ValueError("a new name must not be empty")
        return named

    @model_validator(mode="after")
    def _something_selected(self) -> SelectParams:
        if not self.fields and not self.rename and not self.expr:
            raise ValueError("select needs fields, rename or expr (or several of them)")
        return self


@headwater.transformer(
    "select",
    kind="map",
    params=SelectParams,
    factory=True,
    output="a new dict holding only the selected, renamed and computed fields",
)
def select_transformer(params: SelectParams) -> Callable[[Any], dict[str, Any]]:
    """Keep only some fields of dict items, optionally renaming them or computing new ones.

    ``fields`` are kept under their own name, ``rename`` maps a new name to the field it
    reads, ``expr`` maps a new name to an expression of the item. ``missing`` says what
    happens when an item lacks one: ``error`` fails the item, ``null`` outputs None,
    ``omit`` leaves the key out.
    """
    pairs = [(name, name) for name in params.fields] + list(params.rename.items())
    getters = [(out, field_getter(path)) for out, path in pairs]
    getters += [(out, expression.fn) for out, expression in params.expr.items()]
    missing = params.missing

    def pick(item: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, get in getters:
            try:
                out[key] = get(item)
            except MissingField:
                if missing == "error":
                    raise
                if missing == "null":
                    out[key] = None
        return out

    if missing != "error" or any("." in path for _, path in pairs):
        return pick

    simple = tuple(pairs)
    computed = tuple((out, expression.fn) for out, expression in params.expr.items())

    def pick_fast(item: Any) -> dict[str, Any]:
        try:
            out = {key: item[path] for key, path in simple}
        except (KeyError, TypeError, IndexError):
            return pick(item)  # raises the detailed error
        for key, fn in computed:
            out[key] = fn(item)
        return out

    return pick_fast


# ---------------------------------------------------------------------------------------
# flatten
# ---------------------------------------------------------------------------------------


class FlattenParams(BaseModel):
    """Params of ``flatten``."""

    model_config = _STRICT

    depth: int | None = Field(
        1, ge=1, description="How many levels of nesting to open; null opens all of them."
    )


_ATOMS = (str, bytes, bytearray, Mapping)


def _opens(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, _ATOMS)


@headwater.transformer(
    "flatten",
    kind="flat_map",
    params=FlattenParams,
    factory=True,
    output="the elements of each iterable item (other items unchanged)",
)
def flatten_transformer(params: FlattenParams) -> Callable[[Any], Iterable[Any]]:
    """Replace each iterable item by its elements, ``depth`` levels deep.

    Strings, bytes and mappings are not opened (a dict is one record); items that are
    not iterable pass through unchanged.
    """
    depth = params.depth

    def one_level(item: Any) -> Iterable[Any]:
        if type(item) is list or type(item) is tuple:
            return item
        return item if _opens(item) else (item,)

    if depth == 1:
        return one_level

    def walk(value: Any, left: int | None) -> Iterable[Any]:
        for element in value:
            if (left is None or left > 0) and _opens(element):
                yield from walk(element, None if left is None else left - 1)
            else:
                yield element

    def deep(item: Any) -> Iterable[Any]:
        if not _opens(item):
            return (item,)
        return walk(item, None if depth is None else depth - 1)

    return deep
