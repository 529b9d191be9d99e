"""Field types for params models that plugin authors can reuse."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = ["CallableRef", "import_callable"]


def import_callable(value: Any) -> Callable[..., Any]:
    """Resolve ``"pkg.mod:attr"`` (or ``"pkg.mod.attr"``) to a callable; pass callables through.

    Raises ``ValueError`` (a params validation error) naming what could not be found.
    """
    if callable(value):
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected 'module:attribute' or a callable, got {value!r}")
    text = value.strip()
    module_name, sep, attr_path = text.partition(":")
    if not sep:
        module_name, _, attr_path = text.rpartition(".")
    if not module_name or not attr_path:
        raise ValueError(f"expected 'module:attribute', got {value!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{text!r} is not callable ({type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


CallableRef = Annotated[
    Callable[..., Any],
    BeforeValidator(import_callable),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[\w.]+[:.][\w.]+$",
            "description": "An importable callable, 'package.module:function'.",
        }
    ),
]
"""A params field holding a callable: ``"pkg.mod:fn"`` in YAML, or a callable from Python."""
