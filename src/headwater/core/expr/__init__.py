"""Safe expressions: conditions and projections written in a pipeline file.

``level == "ERROR" and latency > 0.5`` is a small subset of Python's expression syntax,
checked once and compiled once into an ordinary Python function of the item. The check
walks the parsed tree and accepts only what is listed here: literals, ``item``, names
(read from a mapping item), subscripts and slices, arithmetic, comparisons, boolean
operators, ``x if c else y``, a few functions and a few ``str`` methods. Anything else
(attributes, other calls, lambdas, comprehensions, f-strings, ``:=``) is refused with
its line and column. A name is never looked up anywhere but in the item: ``level``
compiles to ``item["level"]``, so no name can reach a builtin, a module or a global.

Why compile rather than interpret: the compiled function runs at the speed of the
same code written by hand in Python (a tree-walking evaluator such as ``simpleeval``
costs about 35 times as much per item, a CEL runtime 50 to several thousand times; see
``docs/architecture.md``), and filters run once per item in the fused loop.

Bounds. The text is at most :data:`MAX_LENGTH` characters, :data:`MAX_NODES` parts and
:data:`MAX_DEPTH` levels deep. The operations that can make a small input huge are
guarded: ``*`` (sequence repetition, at most :data:`MAX_REPEAT` elements), ``**`` and
``<<`` on integers (results of at most :data:`MAX_INT_BITS` bits), ``round`` (at most
:data:`MAX_ROUND_DIGITS` digits) and ``%`` (only arithmetic: string formatting could
pad to any width). A guard on constants fails at validation (``10 ** 10 ** 10``); on
item values it raises :class:`ExprLimitError` for that item. Guards cost an inline
type test on the fast path, never a call, for the common operand types.

Errors. The fast function reads item keys as plain subscripts. When it raises
``KeyError`` or ``TypeError``, the same expression is evaluated once more by a checked
twin whose reads name what is wrong (:class:`MissingField`: ``item has no field
'level'``); expressions are pure, so evaluating again changes nothing but the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from .compiler import compile_text
from .errors import ExprError, ExprLimitError, MissingField
from .functions import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_LENGTH,
    MAX_NODES,
    MAX_REPEAT,
    MAX_ROUND_DIGITS,
    STR_METHODS,
)

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_REPEAT",
    "MAX_ROUND_DIGITS",
    "STR_METHODS",
    "Expr",
    "ExprError",
    "ExprLimitError",
    "Expression",
    "MissingField",
]


class Expression:
    """A compiled expression: call it with an item.

    ``Expression("level == 'ERROR'")`` checks and compiles the text, raising
    :class:`ExprError` (a ``ValueError``) with line and column when it is refused.
    :attr:`fn` is the compiled function of the item (what a hot loop should call);
    :attr:`names` the item fields it reads by name, in order of appearance.
    """

    __slots__ = ("fn", "names", "text")

    def __init__(self, text: str) -> None:
        if not isinstance(text, str):
            raise ExprError(f"an expression must be a string, not {type(text).__name__}")
        self.text = text
        self.fn: Callable[[Any], Any]
        self.names: tuple[str, ...]
        self.fn, self.names = compile_text(text)

    def __call__(self, item: Any) -> Any:
        """The value of the expression for ``item``."""
        return self.fn(item)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __reduce__(self) -> tuple[type[Expression], tuple[str]]:
        # The compiled function cannot be pickled; the text compiles again.
        return (Expression, (self.text,))


def _validate(value: Any) -> Expression:
    return value if isinstance(value, Expression) else Expression(value)


Expr = Annotated[
    Expression,
    PlainValidator(_validate),
    PlainSerializer(lambda e: e.text, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_LENGTH,
            "description": "A headwater expression of the item, e.g. \"level == 'ERROR'\".",
        }
    ),
]
"""A params field holding an expression: text in YAML, compiled at validation."""
