"""What a compiled expression can call: the allowed functions, the ``str`` methods, the
guards of the operations that could turn a small input into a huge result, and the
checked reads that explain a failed evaluation.

:data:`GLOBALS` is the whole namespace of a compiled expression; the compiler emits
calls to the ``_hw_*`` helpers, names no user text can produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from .errors import ExprLimitError, MissingField

__all__ = [
    "FUNCTIONS",
    "GLOBALS",
    "GUARDS_BY_NAME",
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_REPEAT",
    "MAX_ROUND_DIGITS",
    "STR_METHODS",
]

MAX_LENGTH: Final = 2000
"""Characters an expression may have."""
MAX_NODES: Final = 500
"""Parts (names, literals, operators, calls...) an expression may have."""
MAX_DEPTH: Final = 50
"""How deeply the parts of an expression may nest."""
MAX_REPEAT: Final = 1_000_000
"""Elements (characters, items) a repetition ``seq * n`` may produce."""
MAX_INT_BITS: Final = 10_000
"""Bits of an integer that ``**`` or ``<<`` may produce (about 3,000 decimal digits)."""
MAX_ROUND_DIGITS: Final = 1000
"""The largest ``abs(ndigits)`` of ``round(x, ndigits)``."""

_SEQUENCES = (str, bytes, bytearray, list, tuple)
_FORMATTABLE = (str, bytes, bytearray)


def _mul(a: Any, b: Any) -> Any:
    """``a * b``, refusing a repetition longer than :data:`MAX_REPEAT`."""
    if isinstance(b, int) and isinstance(a, _SEQUENCES):
        if len(a) * b > MAX_REPEAT:
            raise ExprLimitError(
                f"repeating a {type(a).__name__} of {len(a)} elements {b} times exceeds "
                f"{MAX_REPEAT:,} elements"
            )
    elif isinstance(a, int) and isinstance(b, _SEQUENCES):
        return _mul(b, a)
    return a * b


def _number(n: int) -> str:
    """``n`` for a message: its digits, or its size when they would flood the message."""
    return str(n) if n.bit_length() <= 64 else f"(an integer of {n.bit_length():,} bits)"


def _pow(a: Any, b: Any) -> Any:
    """``a ** b``, refusing integer results over :data:`MAX_INT_BITS` bits."""
    if isinstance(b, int) and not isinstance(a, float):
        if isinstance(a, int):
            if b > 0 and abs(a) > 1 and (bits := b * math.log2(abs(a))) > MAX_INT_BITS:
                raise ExprLimitError(
                    f"{_number(a)} ** {_number(b)} would have about {bits:,.0f} bits; "
                    f"the limit is {MAX_INT_BITS:,}"
                )
        elif abs(b) > MAX_INT_BITS:
            raise ExprLimitError(f"exponent {_number(b)} is too large (at most {MAX_INT_BITS:,})")
    return a**b


def _lshift(a: Any, b: Any) -> Any:
    """``a << b``, refusing integer results over :data:`MAX_INT_BITS` bits."""
    if isinstance(a, int) and isinstance(b, int) and a and a.bit_length() + b > MAX_INT_BITS:
        raise ExprLimitError(
            f"{_number(a)} << {_number(b)} would have {a.bit_length() + b:,} bits; "
            f"the limit is {MAX_INT_BITS:,}"
        )
    return a << b


def _mod(a: Any, b: Any) -> Any:
    """``a % b`` as arithmetic; ``%`` string formatting is refused (it pads to any width)."""
    if isinstance(a, _FORMATTABLE):
        raise ExprLimitError(
            f"'%' on a {type(a).__name__} is string formatting, which is not allowed in expressions"
        )
    return a % b


def _round(x: Any, ndigits: Any = None) -> Any:
    """``round(x, ndigits)`` with ``abs(ndigits) <= MAX_ROUND_DIGITS``."""
    if ndigits is None:
        return round(x)
    if isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise ExprLimitError(
            f"round() ndigits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}"
        )
    return round(x, ndigits)


def _get(container: Any, key: Any, default: Any = None) -> Any:
    """``container[key]``, or ``default`` when the key or index is absent or the
    container is None."""
    if container is None:
        return default
    try:
        return container[key]
    except (KeyError, IndexError):
        return default


FUNCTIONS: Final[Mapping[str, tuple[Callable[..., Any], int, int | None]]] = {
    "abs": (abs, 1, 1),
    "bool": (bool, 1, 1),
    "float": (float, 1, 1),
    "get": (_get, 2, 3),
    "int": (int, 1, 2),
    "len": (len, 1, 1),
    "max": (max, 1, None),
    "min": (min, 1, None),
    "round": (_round, 1, 2),
    "str": (str, 1, 1),
}
"""The functions an expression may call: name -> (function, fewest and most arguments)."""

STR_METHODS: Final[Mapping[str, tuple[int, int]]] = {
    "lower": (0, 0),
    "upper": (0, 0),
    "strip": (0, 1),
    "lstrip": (0, 1),
    "rstrip": (0, 1),
    "startswith": (1, 3),
    "endswith": (1, 3),
}
"""The ``str`` methods an expression may call: name -> (fewest and most arguments)."""


def _field(item: Any, name: Any) -> Any:
    """The checked read of a name: ``item[name]`` with errors that say what is wrong."""
    try:
        return item[name]
    except KeyError:
        raise MissingField(name) from None
    except TypeError:
        raise TypeError(
            f"cannot read field {name!r} of a {type(item).__name__} item; expected a mapping"
        ) from None


def _index(value: Any, key: Any, subject: str) -> Any:
    """The checked subscript of ``value`` (written ``subject``): a missing key is a
    :class:`MissingField`."""
    try:
        return value[key]
    except KeyError:
        raise MissingField(key, "has no key", subject) from None


def _method(name: str, value: Any) -> Callable[..., Any]:
    """The checked ``str`` method ``name`` bound to ``value``, refused before the
    arguments are evaluated (as Python looks a method up before it evaluates them)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}() is a str method; the value is of type {type(value).__name__}")
    return getattr(str, name).__get__(value)  # type: ignore[no-any-return]


GLOBALS: Final[dict[str, Any]] = {
    "__builtins__": {},
    **{name: spec[0] for name, spec in FUNCTIONS.items()},
    **{f"_hw_str_{name}": getattr(str, name) for name in STR_METHODS},
    "_hw_mul": _mul,
    "_hw_pow": _pow,
    "_hw_lshift": _lshift,
    "_hw_mod": _mod,
    "_hw_field": _field,
    "_hw_index": _index,
    "_hw_method": _method,
    "_hw_read_errors": (KeyError, TypeError),
    "_hw_int": int,
    "_hw_float": float,
}
"""The globals of every compiled expression: nothing but the allowed functions and the
helpers the compiler emits (``_hw_*``, which no user name can produce)."""

GUARDS_BY_NAME: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "*": _mul,
    "**": _pow,
    "<<": _lshift,
    "%": _mod,
}
"""The guarded operators and their guards (the compiler calls them on constants too)."""
