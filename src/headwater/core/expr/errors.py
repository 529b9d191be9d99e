"""The errors of expressions: refused at validation, bounded or missing at run time."""

from __future__ import annotations

from typing import Any

__all__ = ["ExprError", "ExprLimitError", "MissingField"]


class ExprError(ValueError):
    """An expression is refused at validation: its text, the place and the reason.

    ``line`` and ``column`` are 1-based and count characters; both are None when the
    problem is the expression as a whole (its length).
    """

    def __init__(self, reason: str, line: int | None = None, column: int | None = None):
        self.reason = reason
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{reason}")


class ExprLimitError(ValueError):
    """At run time, an operation of an expression would exceed one of the bounds."""


class MissingField(KeyError):
    """An item lacks a field that a step needs (or, where documented, the field is None).

    ``subject`` names what lacks it: the item, or a part of it (``item['user']``).
    """

    def __init__(self, path: Any, reason: str = "has no field", subject: str = "item") -> None:
        super().__init__(path)
        self.path = path
        self.reason = reason
        self.subject = subject

    def __str__(self) -> str:
        return f"{self.subject} {self.reason} {self.path!r}"
