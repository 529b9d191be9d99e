"""Item-wise transformers: ``map``, ``filter``, ``select`` and ``flatten``.

Each is a factory returning a per-item function, so the runtime fuses them into one loop
per batch and an error names the failing item's position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

import headwater
from headwater.core.types import CallableRef

from .fields import _STRICT, FieldPath, MissingField, field_getter

# ---------------------------------------------------------------------------------------
# map / filter
# ---------------------------------------------------------------------------------------


class CallableParams(BaseModel):
    """A function given as an importable path ``pkg.mod:fn`` or, from Python, a callable."""

    model_config = ConfigDict(extra="forbid", defer_build=True, arbitrary_types_allowed=True)

    fn: CallableRef = Field(
        description="Importable callable, e.g. 'mypkg.transforms:clean' (or a callable "
        "when building the pipeline in Python)."
    )


@headwater.transformer(
    "map", kind="map", params=CallableParams, factory=True, output="fn(item) for each item"
)
def map_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Replace each item with ``fn(item)``."""
    return params.fn


@headwater.transformer(
    "filter",
    kind="filter",
    params=CallableParams,
    factory=True,
    output="the items for which fn(item) is true",
)
def filter_transformer(params: CallableParams) -> Callable[[Any], Any]:
    """Keep the items for which ``fn(item)`` is true."""
    return params.fn


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
    missing: Literal["error", "null", "omit"] = Field(
        "error",
        description="When an item lacks a field: fail the item (error), output None "
        "(null) or leave the key out (omit).",
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

    @field_validator("rename")
    @classmethod
    def _no_clash(cls, rename: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fields = info.data.get("fields") or []
        clash = [new for new in rename if new in fields]
        if clash:
            raise ValueError(
                f"new name {clash[0]!r} is also listed in fields; rename would overwrite it"
            )
        empty = [new for new in rename if not new]
        if empty:
            raise ValueError("a new name must not be empty")
        return rename

    @model_validator(mode="after")
    def _something_selected(self) -> SelectParams:
        if not self.fields and not self.rename:
            raise ValueError("select needs fields, rename or both")
        return self


@headwater.transformer(
    "select",
    kind="map",
    params=SelectParams,
    factory=True,
    output="a new dict holding only the selected (and renamed) fields",
)
def select_transformer(params: SelectParams) -> Callable[[Any], dict[str, Any]]:
    """Keep only some fields of dict items, optionally renaming them.

    ``fields`` are kept under their own name, ``rename`` maps a new name to the field it
    reads. ``missing`` says what happens when an item lacks one: ``error`` fails the item,
    ``null`` outputs None, ``omit`` leaves the key out.
    """
    pairs = [(name, name) for name in params.fields] + list(params.rename.items())
    getters = [(out, field_getter(path)) for out, path in pairs]
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

    def pick_fast(item: Any) -> dict[str, Any]:
        try:
            return {out: item[path] for out, path in simple}
        except (KeyError, TypeError, IndexError):
            return pick(item)  # raises the detailed error

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
