"""Transformers reading and writing text items: ``json.decode``, ``json.encode`` and
``regex``.

All three are item-wise: factories returning a per-item function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

import headwater

from .fields import _STRICT, FieldPath, field_getter

# ---------------------------------------------------------------------------------------
# json.decode / json.encode
# ---------------------------------------------------------------------------------------


@headwater.transformer(
    "json.decode",
    kind="map",
    factory=True,
    output="the object parsed from each str / bytes item",
    sample_params={},
    sample_input=['{"n": 1}', "[2]"],
)
def json_decode_transformer() -> Callable[[Any], Any]:
    """Parse each item (a str, bytes or bytearray holding JSON) into a Python object."""
    return json.loads


class JsonEncodeParams(BaseModel):
    """Params of ``json.encode``."""

    model_config = _STRICT

    sort_keys: bool = Field(False, description="Write the keys of objects in sorted order.")
    ensure_ascii: bool = Field(
        False, description="Escape non-ASCII characters (\\u00e9) instead of writing them."
    )
    allow_nan: bool = Field(
        False,
        description="Write NaN and Infinity (not valid JSON) instead of failing the item.",
    )
    default: Literal["error", "str"] = Field(
        "error",
        description="Values JSON cannot represent (datetime, Decimal, ...): fail the item "
        "(error) or write str(value) (str).",
    )


@headwater.transformer(
    "json.encode",
    kind="map",
    params=JsonEncodeParams,
    factory=True,
    output="each item as a compact JSON string",
    sample_params={},
    sample_input=[{"n": 1}, [2]],
)
def json_encode_transformer(params: JsonEncodeParams) -> Callable[[Any], str]:
    """Serialise each item to a compact JSON string (no spaces)."""
    encoder = json.JSONEncoder(
        separators=(",", ":"),
        sort_keys=params.sort_keys,
        ensure_ascii=params.ensure_ascii,
        allow_nan=params.allow_nan,
        default=str if params.default == "str" else None,
    )
    return encoder.encode


# ---------------------------------------------------------------------------------------
# regex
# ---------------------------------------------------------------------------------------


class RegexParams(BaseModel):
    """Params of ``regex``."""

    model_config = _STRICT

    pattern: str = Field(
        description="Regular expression (Python syntax); named groups "
        "(?P<name>...) become the keys of the output."
    )
    ignore_case: bool = Field(False, description="Match letters regardless of case.")
    field: FieldPath | None = Field(
        None, description="Apply the pattern to this field of dict items instead of the item."
    )
    mode: Literal["search", "match", "fullmatch"] = Field(
        "search",
        description="search: anywhere in the text; match: at its start; fullmatch: all of it.",
    )
    output: Literal["groups", "item", "match", "merge"] | None = Field(
        None,
        description="What a matching item becomes: groups (dict of named groups; the "
        "default when the pattern has some), match (the matched text; the default "
        "otherwise), item (the item unchanged) or merge (the dict item with the named "
        "groups added; needs field).",
    )
    keep_unmatched: bool = Field(
        False, description="Pass items that do not match through unchanged instead of dropping."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise ValueError(f"invalid regular expression: {exc.msg}{where}") from None
        return pattern

    @field_validator("output")
    @classmethod
    def _output_fits(cls, output: str | None, info: ValidationInfo) -> str | None:
        pattern = info.data.get("pattern")
        named = pattern is not None and bool(re.compile(pattern).groupindex)
        if output in ("groups", "merge") and pattern is not None and not named:
            raise ValueError(
                f"output {output!r} needs named groups like (?P<name>...) in the pattern"
            )
        if output == "merge" and info.data.get("field") is None:
            raise ValueError("output 'merge' needs field: the items must be mappings")
        return output


@headwater.transformer(
    "regex",
    kind="flat_map",
    params=RegexParams,
    factory=True,
    output="for each matching item: its named groups, the matched text, the item, or the "
    "item merged with the groups (see output); non-matching items are dropped",
)
def regex_transformer(params: RegexParams) -> Callable[[Any], tuple[Any, ...]]:
    """Match a regular expression against each item (or one field of it).

    Matching items become a dict of the named groups (the default when the pattern has
    named groups), the matched text, the unchanged item, or the item with the groups
    merged in. Items that do not match are dropped, or passed on unchanged with
    ``keep_unmatched``.
    """
    rx = re.compile(params.pattern, re.IGNORECASE if params.ignore_case else 0)
    op = getattr(rx, params.mode)
    output = params.output or ("groups" if rx.groupindex else "match")
    get = field_getter(params.field) if params.field is not None else None
    keep = params.keep_unmatched
    nothing: tuple[Any, ...] = ()

    def apply(item: Any) -> tuple[Any, ...]:
        m = op(item if get is None else get(item))
        if m is None:
            return (item,) if keep else nothing
        if output == "groups":
            return (m.groupdict(),)
        if output == "match":
            return (m.group(0),)
        if output == "item":
            return (item,)
        return ({**item, **m.groupdict()},)

    return apply
