"""The sandbox: what the pipelines of one engine may run and read.

A :class:`SandboxPolicy` is set by the operator (the server config, the environment, or
the embedder's ``Engine(policy=...)``), never by a pipeline file or a client. It bounds

- programs the ``command`` action may start (:attr:`SandboxPolicy.commands`),
- Python callables that ``fn``-like params may name (:attr:`SandboxPolicy.callables`),
- files the file tools may read or write (:attr:`SandboxPolicy.roots`),
- hosts that connectors with settable addresses may reach (:attr:`SandboxPolicy.hosts`).

Params are validated with the policy in pydantic's validation context
(``model_validate(params, context={"policy": policy})``): validators read it with
:func:`policy_of`. At run time a component reads ``ctx.policy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "POLICY_CONTEXT_KEY",
    "SandboxPolicy",
    "policy_of",
    "within_roots",
]

POLICY_CONTEXT_KEY: Final = "policy"
"""The key of the policy in pydantic's validation context."""


def _split(value: str | None) -> tuple[str, ...] | None:
    """Entries of a comma- or ``os.pathsep``-separated variable (None when unset/blank)."""
    if value is None or not value.strip():
        return None
    parts = value.replace(os.pathsep, ",").split(",")
    return tuple(part.strip() for part in parts if part.strip())


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """What pipelines may do. Immutable; build a changed copy with :meth:`with_`.

    ``roots`` are real (resolved) folders the file tools may touch; an empty tuple means
    the working directory at the time the policy was made. ``callables`` extends the
    default allow-list of ``fn``-like params with module names (``mypkg.fns``: every
    callable in it) or ``module:function`` patterns (globs). ``commands`` is the
    operator's allow-list of programs (bare names resolved on the operator's ``PATH`` or
    absolute paths; None: the ``command`` action needs its own ``allow`` param and both
    must allow a program). ``command_env`` names protected environment variables
    (``PATH``, ``LD_*``, ``PYTHON*``) a pipeline's ``env`` may nevertheless set.
    ``hosts`` lists the hosts connectors with settable addresses may reach (globs;
    empty: loopback only). ``unrestricted`` switches every check off (an embedder's own
    trusted code, tests).
    """

    roots: tuple[Path, ...] = ()
    callables: tuple[str, ...] = ()
    commands: tuple[str, ...] | None = None
    command_env: tuple[str, ...] = ()
    command_path: str | None = None
    """The operator's ``PATH`` on which bare program names are resolved (None: the
    process's ``PATH`` when the policy was made)."""
    hosts: tuple[str, ...] = ()
    unrestricted: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Settings of plugins' own checks, by plugin name."""

    def __post_init__(self) -> None:
        roots = self.roots or (Path.cwd(),)
        object.__setattr__(self, "roots", tuple(Path(root).resolve() for root in roots))
        if self.command_path is None:
            object.__setattr__(self, "command_path", os.environ.get("PATH", os.defpath))

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> SandboxPolicy:
        """The policy the environment sets: ``HEADWATER_ROOTS`` (``os.pathsep``- or
        comma-separated folders), ``HEADWATER_ALLOW_CALLABLES``,
        ``HEADWATER_COMMAND_ALLOW``, ``HEADWATER_COMMAND_ENV``, ``HEADWATER_ALLOW_HOSTS``;
        ``overrides`` (e.g. from a server config) win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        roots = _split(env.get("HEADWATER_ROOTS"))
        if roots:
            values["roots"] = tuple(Path(root) for root in roots)
        for key, name in (
            ("callables", "HEADWATER_ALLOW_CALLABLES"),
            ("command_env", "HEADWATER_COMMAND_ENV"),
            ("hosts", "HEADWATER_ALLOW_HOSTS"),
        ):
            entries = _split(env.get(name))
            if entries:
                values[key] = entries
        commands = _split(env.get("HEADWATER_COMMAND_ALLOW"))
        if commands is not None:
            values["commands"] = commands
        values["command_path"] = env.get("PATH", os.defpath)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> SandboxPolicy:
        """A copy with some fields changed."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(changes)
        return SandboxPolicy(**values)

    def validation_context(self) -> dict[str, Any]:
        """The pydantic validation context carrying this policy."""
        return {POLICY_CONTEXT_KEY: self}


def policy_of(context: Any) -> SandboxPolicy | None:
    """The policy in a pydantic validation context (``info.context``), if any.

    Validators of params use it; without one (params built directly in Python by an
    embedder) they apply no operator policy.
    """
    if isinstance(context, Mapping):
        found = context.get(POLICY_CONTEXT_KEY)
        if isinstance(found, SandboxPolicy):
            return found
    return None


def within_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True when the real path of ``path`` lies inside one of ``roots`` (real paths)."""
    return any(path == root or root in path.parents for root in roots)
