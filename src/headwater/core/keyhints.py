""" "Did you mean" for unknown keys: the known keys of a pydantic model at a location.

A validation error of an unknown key (``extra_forbidden``) carries the key's location,
e.g. ``("sources", "app", "parms")``. :func:`unknown_key_hint` walks the model's fields
along that location (through ``dict[str, X]``, ``list[X]``, ``X | None`` and unions of
models) to the model that refused the key, and suggests its closest field names.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = ["known_keys", "suggest", "unknown_key_hint"]


def suggest(name: str, candidates: Sequence[str]) -> list[str]:
    """Up to three of ``candidates`` close to ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold directly (``X``, ``X | None``, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    return []


def _step(annotation: Any, part: int | str) -> list[Any]:
    """The annotations one location part leads to from ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [a for arg in args for a in _step(arg, part)]
    if origin is typing.Annotated:
        return _step(args[0], part)
    if origin in (list, Sequence, tuple) and args and isinstance(part, int):
        return [args[0]]
    if origin is dict and len(args) == 2 and isinstance(part, str):
        return [args[1]]
    if isinstance(part, str):
        found = []
        for model in _models_in(annotation):
            field = model.model_fields.get(part)
            if field is not None:
                found.append(field.annotation)
        return found
    return []


def known_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The field names of the model(s) found at ``loc`` (the location of a mapping)."""
    current: list[Any] = [model]
    for part in loc:
        current = [a for annotation in current for a in _step(annotation, part)]
        if not current:
            return []
    keys: list[str] = []
    for annotation in current:
        for found in _models_in(annotation):
            keys.extend(found.model_fields)
    return keys


def unknown_key_hint(model: type[BaseModel], error: ErrorDetails) -> str | None:
    """``"; did you mean 'params'?"`` for an unknown key close to a known one of
    ``model`` at the error's location; None otherwise."""
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or not loc or not isinstance(loc[-1], str):
        return None
    close = suggest(loc[-1], known_keys(model, loc[:-1]))
    if not close:
        return None
    return f"; did you mean {' or '.join(repr(c) for c in close)}?"
