"""Field types for params models that plugin authors can reuse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from .callables import resolve_callable
from .policy import SandboxPolicy, policy_of

__all__ = ["CallableRef", "import_callable"]


def import_callable(value: Any, policy: SandboxPolicy | None = None) -> Callable[..., Any]:
    """Resolve ``"pkg.mod:attr"`` (or ``"pkg.mod.attr"``) to a callable; pass callables through.

    A name must be allowed by ``policy`` (default: the policy the environment sets,
    :meth:`SandboxPolicy.from_environment <headwater.SandboxPolicy.from_environment>`),
    which is checked before anything is imported; see :mod:`headwater.core.callables`.
    Raises ``ValueError`` (a params validation error) naming what is refused or could
    not be found.
    """
    if callable(value):
        return value  # type: ignore[no-any-return]
    return resolve_callable(
        value, policy if policy is not None else SandboxPolicy.from_environment()
    )


def _validate_callable(value: Any, info: ValidationInfo) -> Callable[..., Any]:
    """``CallableRef``'s validator: the policy comes from the validation context."""
    return import_callable(value, policy_of(info.context))


CallableRef = Annotated[
    Callable[..., Any],
    BeforeValidator(_validate_callable),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[\w.]+[:.][\w.]+$",
            "description": "A callable allowed by the sandbox policy, 'package.module:function'.",
        }
    ),
]
"""A params field holding a callable: ``"pkg.mod:fn"`` in YAML, or a callable from Python.

A name is checked against the operator's :class:`~headwater.SandboxPolicy` (in the
validation context; without one, the environment's) before it is imported: by default
a few pure builtins and the modules ``operator``, ``math``, ``statistics``, ``json``,
``re`` and ``datetime``. A callable given from Python is not checked."""
