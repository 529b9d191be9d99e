"""URL templates filled from an item's fields: ``https://api.example.com/users/{user.id}``.

``{path}`` is replaced by the item's field (a key or a dotted path, as the transformers
name fields), percent-encoded as one path or query component (``/``, ``?``, ``#``, ``&``
and ``@`` included), so that a value can never change the URL's host, path or query
structure. ``{{`` and ``}}`` stand for literal braces. A missing field raises
:class:`~headwater.core.expr.MissingField`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from ..transformers.fields import field_getter

__all__ = ["UrlTemplate"]

_PART: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class UrlTemplate:
    """A compiled URL template (see the module docstring)."""

    __slots__ = ("_parts", "fields", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str | Callable[[Any], Any]] = []
        fields: list[str] = []
        pos = 0
        for match in _PART.finditer(text):
            parts.append(text[pos : match.start()])
            token = match.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
            else:
                name = match.group(1).strip()
                if not re.fullmatch(r"[A-Za-z_0-9][\w.-]*", name):
                    raise ValueError(f"URL template {text!r}: {token} is not a field name")
                parts.append(field_getter(name))
                fields.append(name)
            pos = match.end()
        rest = text[pos:]
        if "{" in rest or "}" in rest:
            raise ValueError(f"URL template {text!r}: unbalanced brace")
        parts.append(rest)
        self._parts = tuple(p for p in parts if p != "")
        self.fields = tuple(fields)

    def fill(self, item: Any) -> str:
        """The URL for ``item``."""
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = part(item)
                out.append(quote(value if isinstance(value, str) else str(value), safe=""))
        return "".join(out)
