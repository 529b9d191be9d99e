"""Fields of dict items, as the transformers name them: paths, reading, missing fields.

A field is named by a *path*: a key, or a dotted path such as ``user.id`` reaching into
nested mappings (an integer part indexes a list: ``tags.0``). A key that itself contains
dots is matched first.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from headwater.core.expr import MissingField

__all__ = ["FieldPath", "MissingField", "field_getter", "quick_getter"]

FieldPath = Annotated[
    str,
    Field(
        min_length=1,
        description="A key of dict items, or a dotted path into nested mappings (user.id).",
    ),
]
"""A field of dict items: a key, or a dotted path such as ``user.id``."""

_STRICT = ConfigDict(extra="forbid", defer_build=True)


def _not_a_mapping(path: str, item: object) -> TypeError:
    return TypeError(
        f"cannot read field {path!r} of a {type(item).__name__} item; expected a mapping"
    )


def _is_index(part: str) -> bool:
    return part.lstrip("-").isdigit()


def field_getter(path: str) -> Callable[[Any], Any]:
    """A function reading ``path`` from an item; raises :class:`MissingField` if absent.

    ``path`` is a key, or a dotted path through nested mappings (an integer part indexes
    a list or tuple). A key that itself contains the dots is tried first. An item that is
    not a mapping raises ``TypeError``.
    """
    parts = path.split(".")
    if len(parts) == 1:

        def get(item: Any) -> Any:
            try:
                return item[path]
            except KeyError:
                raise MissingField(path) from None
            except (TypeError, IndexError):
                raise _not_a_mapping(path, item) from None

        return get

    steps = [(part, int(part) if _is_index(part) else None) for part in parts]

    def get_nested(item: Any) -> Any:
        if not isinstance(item, Mapping):
            raise _not_a_mapping(path, item)
        if path in item:
            return item[path]
        node: Any = item
        for key, index in steps:
            if isinstance(node, Mapping):
                if key not in node:
                    raise MissingField(path)
                node = node[key]
            elif index is not None and isinstance(node, list | tuple):
                try:
                    node = node[index]
                except IndexError:
                    raise MissingField(path) from None
            else:
                raise MissingField(path)
        return node

    return get_nested


def quick_getter(path: str) -> Callable[[Any], Any]:
    """The fastest reader of ``path`` for a hot loop: ``operator.itemgetter`` for a plain
    key (raising ``KeyError`` or ``TypeError`` as it is), else :func:`field_getter`.

    A loop using it explains a failure by reading the item again with
    :func:`field_getter`, whose errors name the field.
    """
    if "." in path:
        return field_getter(path)
    return operator.itemgetter(path)
