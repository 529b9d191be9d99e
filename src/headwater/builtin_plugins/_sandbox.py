"""The sandbox checks of the built-ins that open paths (file tools and file sinks).

Each such component checks its path twice: when its params are validated, against the
policy in pydantic's validation context (:func:`check_path_param`, so ``headwater
validate``, a server's ``run`` and ``Engine.prepare`` report it with the param's path),
and when it opens the file, against ``ctx.policy`` (:func:`param_of` names the param),
which also catches a symlink swapped in between. See :mod:`headwater.core.policy`.

A file a sink writes is also checked for whether it can be created
(:func:`check_output_path_param`: no file in the way of its folders, permission to write),
and its missing folders are made when the sink opens it (:func:`make_parents`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationInfo

from headwater.core.context import StreamContext
from headwater.core.policy import SandboxPolicy, open_nofollow, policy_of

__all__ = [
    "IN_MEMORY_DB",
    "check_db_path_param",
    "check_output_path_param",
    "check_path_param",
    "make_parents",
    "output_path_problem",
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
    """Like :func:`check_output_path_param` (a database is written), letting SQLite's
    in-memory databases through."""
    if isinstance(value, str) and value in IN_MEMORY_DB:
        return value
    return check_output_path_param(value, info)


def check_output_path_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator of a file a sink writes: inside the roots, and creatable (see
    :func:`output_path_problem`). Like :func:`check_path_param`, it checks nothing when
    the validation context has no policy (params built directly in Python)."""
    value = check_path_param(value, info)
    if policy_of(info.context) is not None and isinstance(value, str):
        problem = output_path_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


def output_path_problem(path: str) -> str | None:
    """Why the file ``path`` could not be created or written, or None when it can.

    Missing folders are fine (the sink makes them); a file standing where a folder is
    needed, a folder standing where the file is, or a folder the process may not write
    in is not.
    """
    real = Path(os.path.realpath(os.path.expanduser(path)))
    if real.is_dir():
        return f"{path!r} is a folder; give the path of a file inside it"
    if real.exists():
        if not os.access(real, os.W_OK):
            return f"{path!r} exists and cannot be written (permission denied)"
        return None
    missing = real
    parent = real.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: the real path stops at it
            return f"cannot create the folder {str(parent)!r}: a broken symbolic link is there"
        missing, parent = parent, parent.parent
    if not parent.is_dir():
        return f"cannot create {path!r}: {str(parent)!r} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "the file" if missing == real else "the folder"
        return f"cannot create {what} {str(missing)!r}: no permission to write in {str(parent)!r}"
    return None


def make_parents(policy: SandboxPolicy, path: str, param: str) -> None:
    """Create the missing folders of the file ``path`` (like ``mkdir -p`` of its parent),
    once ``policy`` allowed the path.

    Each folder is made and opened relative to the one before it without following
    symlinks, so a link swapped into the path meanwhile never leads outside the roots.
    """
    real = policy.check_path(path, param=param)
    parent = real.parent
    missing: list[str] = []
    while not os.path.lexists(parent):
        missing.append(parent.name)
        parent = parent.parent
    if not missing:
        return
    if policy.unrestricted:
        os.makedirs(real.parent, exist_ok=True)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = open_nofollow(parent, flags, shown=f"{param}: {path!r}")
    try:
        for name in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile: opened below
                os.mkdir(name, dir_fd=fd)
            inner = os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def param_of(ctx: StreamContext | None, name: str = "path") -> str:
    """The dotted path of a param of the running stage, for run-time errors
    (``sources.logs.params.path``)."""
    return f"{ctx.stage}.params.{name}" if ctx is not None else name


def policy_in(ctx: StreamContext | None) -> SandboxPolicy:
    """The run's policy; a component made without a context (in a unit test) gets the
    environment's, as a new engine would."""
    return ctx.policy if ctx is not None else SandboxPolicy.from_environment()
