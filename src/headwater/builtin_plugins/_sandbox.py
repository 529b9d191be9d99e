"""The sandbox checks of the built-ins that open paths (file tools and file sinks).

Each such component checks its path twice: when its params are validated, against the
policy in pydantic's validation context (:func:`check_path_param`, so ``headwater
validate``, a server's ``run`` and ``Engine.prepare`` report it with the param's path),
and when it opens the file, against ``ctx.policy`` (:func:`param_of` names the param),
which also catches a symlink swapped in between. See :mod:`headwater.core.policy`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationInfo

from headwater.core.context import StreamContext
from headwater.core.policy import SandboxPolicy, policy_of

__all__ = [
    "IN_MEMORY_DB",
    "check_db_path_param",
    "check_path_param",
    "param_of",
    "policy_in",
]

IN_MEMORY_DB = frozenset({":memory:", ""})
"""SQLite database names that are no file."""


def check_path_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator: a path outside the roots of the validation context's policy
    fails validation (no policy in the context: no check)."""
    policy = policy_of(info.context)
    if policy is not None and isinstance(value, str):
        policy.check_path(value)
    return value


def check_db_path_param(value: Any, info: ValidationInfo) -> Any:
    """Like :func:`check_path_param`, letting SQLite's in-memory databases through."""
    if isinstance(value, str) and value in IN_MEMORY_DB:
        return value
    return check_path_param(value, info)


def param_of(ctx: StreamContext | None, name: str = "path") -> str:
    """The dotted path of a param of the running stage, for run-time errors
    (``sources.logs.params.path``)."""
    return f"{ctx.stage}.params.{name}" if ctx is not None else name


def policy_in(ctx: StreamContext | None) -> SandboxPolicy:
    """The run's policy; a component made without a context (in a unit test) gets the
    environment's, as a new engine would."""
    return ctx.policy if ctx is not None else SandboxPolicy.from_environment()
