"""The sandbox: what the pipelines of one engine may run and read.

A :class:`SandboxPolicy` is set by the operator (the server config, the environment, or
the embedder's ``Engine(policy=...)``), never by a pipeline file or a client. It bounds

- programs the ``command`` action may start (:attr:`SandboxPolicy.commands`),
- Python callables that ``fn``-like params may name (:attr:`SandboxPolicy.callables`),
- files the file tools may read or write (:attr:`SandboxPolicy.roots`),
- hosts that connectors with settable addresses may reach (:attr:`SandboxPolicy.hosts`),
- database tables that connectors may read or write (:attr:`SandboxPolicy.tables`).

Params are validated with the policy in pydantic's validation context
(``model_validate(params, context={"policy": policy})``): validators read it with
:func:`policy_of`. At run time a component reads ``ctx.policy``.

**Files.** A path is allowed when its *real* path (``~`` expanded, relative paths taken
from the working directory, every symlink and ``..`` resolved) lies inside one of the
roots and outside ``/proc``, ``/sys`` and ``/dev``, which no root opens. Checking a path
and then opening it by name would leave a window in which a folder of the path could be
swapped for a symlink; :meth:`SandboxPolicy.open_file` therefore opens the checked real
path one component at a time from ``/`` with ``O_NOFOLLOW`` (:func:`open_nofollow`): a
symlink met on the way, which the resolved path cannot contain, means the tree changed
after the check, and the open is refused.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from .errors import HeadwaterError

__all__ = [
    "FORBIDDEN_PATHS",
    "POLICY_CONTEXT_KEY",
    "SandboxError",
    "SandboxPolicy",
    "open_nofollow",
    "policy_of",
    "within_roots",
]

POLICY_CONTEXT_KEY: Final = "policy"
"""The key of the policy in pydantic's validation context."""

FORBIDDEN_PATHS: Final = tuple(
    dict.fromkeys(
        path
        for name in ("/proc", "/sys", "/dev")
        for path in (Path(name), Path(os.path.realpath(name)))
    )
)
"""Folders the file tools never open, whatever the roots (kernel and device files: the
environment of processes, memory, disks)."""

_DIR_FLAGS: Final = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
"""Flags to hold a folder while walking a path (``O_PATH`` needs no read permission)."""


class SandboxError(HeadwaterError, ValueError):
    """A pipeline asked for something outside the operator's sandbox.

    A ``ValueError``, so that a params validator raising it becomes a validation issue
    with the param's path (``sources.logs.params.path: ...``).
    """


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
    empty: loopback only). ``tables`` lists the database tables (globs on the name as
    written, ``events`` or ``public.events``) that database connectors may read or write;
    None: any table, and with a list, free SQL queries are refused. ``unrestricted``
    switches every check off (an embedder's own trusted code, tests).
    """

    roots: tuple[Path, ...] = ()
    callables: tuple[str, ...] = ()
    commands: tuple[str, ...] | None = None
    command_env: tuple[str, ...] = ()
    command_path: str | None = None
    """The operator's ``PATH`` on which bare program names are resolved (None: the
    process's ``PATH`` when the policy was made)."""
    hosts: tuple[str, ...] = ()
    tables: tuple[str, ...] | None = None
    unrestricted: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Settings of plugins' own checks, by plugin name."""

    def __post_init__(self) -> None:
        roots: Any = self.roots
        if isinstance(roots, str | os.PathLike):  # one folder given on its own
            roots = (roots,)
        roots = roots or (Path.cwd(),)
        object.__setattr__(
            self,
            "roots",
            tuple(dict.fromkeys(Path(os.path.realpath(os.path.expanduser(r))) for r in roots)),
        )
        for name in ("callables", "command_env", "hosts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.commands is not None:
            object.__setattr__(self, "commands", tuple(self.commands))
        if self.tables is not None:
            object.__setattr__(self, "tables", tuple(self.tables))
        if self.command_path is None:
            object.__setattr__(self, "command_path", os.environ.get("PATH", os.defpath))

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> SandboxPolicy:
        """The policy the environment sets: ``HEADWATER_ROOTS`` (``os.pathsep``- or
        comma-separated folders; relative ones start at the working directory),
        ``HEADWATER_ALLOW_CALLABLES``, ``HEADWATER_COMMAND_ALLOW``,
        ``HEADWATER_COMMAND_ENV``, ``HEADWATER_ALLOW_HOSTS``, ``HEADWATER_ALLOW_TABLES``;
        ``overrides`` (e.g. from a
        server config or ``--root``) win over the environment, field by field."""
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
        tables = _split(env.get("HEADWATER_ALLOW_TABLES"))
        if tables is not None:
            values["tables"] = tables
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

    # -- tables -------------------------------------------------------------------------

    def check_table(self, name: str, *, param: str | None = None) -> str:
        """``name`` when :attr:`tables` allows it (compared as written, against globs),
        else :class:`SandboxError`; ``param`` starts the message."""
        if self.unrestricted or self.tables is None:
            return name
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.tables):
            return name
        where = f"{param}: " if param else ""
        allowed = ", ".join(repr(t) for t in self.tables) or "none"
        raise SandboxError(
            f"{where}table {name!r} is not in the allowed tables ({allowed}); the operator "
            "allows more with HEADWATER_ALLOW_TABLES or the server's sandbox.tables"
        )

    # -- files --------------------------------------------------------------------------

    def allows_path(self, real: str | os.PathLike[str]) -> bool:
        """May the file tools open ``real``, an absolute path with no symlink or ``..``
        left in it? Inside a root and outside ``/proc``, ``/sys``, ``/dev``."""
        if self.unrestricted:
            return True
        path = Path(real)
        return within_roots(path, self.roots) and not within_roots(path, FORBIDDEN_PATHS)

    def check_path(self, path: str | os.PathLike[str], *, param: str | None = None) -> Path:
        """The real path of ``path`` when the policy allows it, else :class:`SandboxError`.

        ``~`` is expanded and a relative path starts at the working directory; symlinks
        and ``..`` are resolved (those of a missing tail are taken as written). ``param``
        (``sources.logs.params.path``) starts the error message.
        """
        given = os.fspath(path)
        real = Path(os.path.realpath(os.path.expanduser(given)))
        if not self.allows_path(real):
            raise SandboxError(self._refusal(given, real, param))
        return real

    def _refusal(self, given: str, real: Path, param: str | None) -> str:
        where = f"{param}: " if param else ""
        shown = repr(given) if str(real) == given else f"{given!r} (resolves to {str(real)!r})"
        for banned in FORBIDDEN_PATHS:
            if within_roots(real, (banned,)):
                return f"{where}{shown} is in {banned}, which the file tools never open"
        roots = ", ".join(repr(str(root)) for root in self.roots)
        return (
            f"{where}{shown} is outside the allowed roots ({roots}); the operator allows "
            "more folders with HEADWATER_ROOTS, the server's sandbox.roots or --root"
        )

    def open_file(
        self,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        param: str | None = None,
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """Open ``path`` like :func:`open` once :meth:`check_path` allowed it.

        The checked real path is opened with :func:`open_nofollow`, so a symlink swapped
        into the path after the check is never followed. Raises :class:`SandboxError`
        (naming ``param``) or the ``OSError`` of the open.
        """
        if self.unrestricted:
            name = os.path.expanduser(os.fspath(path))
            return open(name, mode, buffering, encoding, errors, newline)
        real = self.check_path(path, param=param)
        shown = f"{param}: {os.fspath(path)!r}" if param else repr(os.fspath(path))

        def opener(name: str, flags: int) -> int:
            return open_nofollow(name, flags, shown=shown)

        return open(real, mode, buffering, encoding, errors, newline, opener=opener)

    def open_dir(
        self, path: str | os.PathLike[str], *, param: str | None = None
    ) -> tuple[int, Path]:
        """Check a folder and open it for listing: ``(fd, real path)``; the caller closes
        the descriptor. Raises like :meth:`open_file`."""
        real = self.check_path(path, param=param)
        shown = f"{param}: {os.fspath(path)!r}" if param else repr(os.fspath(path))
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if self.unrestricted:
            return os.open(real, flags), real
        return open_nofollow(real, flags, shown=shown), real


def open_nofollow(
    real: str | os.PathLike[str], flags: int, mode: int = 0o666, *, shown: str | None = None
) -> int:
    """Open the absolute path ``real`` one component at a time, following no symlink.

    Each folder is opened relative to the previous one with ``O_NOFOLLOW``, and so is the
    last component: the file opened is the one at ``real``, whatever was renamed or
    linked meanwhile. A symlink met on the way raises :class:`SandboxError` (naming
    ``shown``); other failures raise the ``OSError`` of the open. Returns a descriptor.
    """
    parts = Path(real).parts
    if not parts or parts[0] != os.sep:
        raise ValueError(f"open_nofollow needs an absolute path, got {os.fspath(real)!r}")
    try:
        return _open_parts(parts, flags, mode, shown)
    except SandboxError:
        raise
    except OSError as exc:  # name the whole path, as open() does, not the component
        raise type(exc)(exc.errno, exc.strerror, os.fspath(real)) from None


def _open_parts(parts: Sequence[str], flags: int, mode: int, shown: str | None) -> int:
    if len(parts) == 1:
        return os.open(os.sep, flags | os.O_CLOEXEC, mode)
    dir_fd = os.open(os.sep, _DIR_FLAGS)
    try:
        for depth, name in enumerate(parts[1:-1], start=2):
            try:
                fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as exc:
                _refuse_link(exc, name, dir_fd, parts[:depth], shown)
                raise
            os.close(dir_fd)
            dir_fd = fd
        name = parts[-1]
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            _refuse_link(exc, name, dir_fd, parts, shown)
            raise
    finally:
        os.close(dir_fd)


def _refuse_link(
    exc: OSError, name: str, dir_fd: int, parts: Sequence[str], shown: str | None
) -> None:
    """Raise :class:`SandboxError` when ``exc`` came from a symlink at ``name``."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return
    if is_link:
        where = f"{shown}: " if shown else ""
        raise SandboxError(
            f"{where}{os.path.join(*parts)!r} became a symbolic link after the path was "
            "checked; it is not followed"
        ) from None


def policy_of(context: Any) -> SandboxPolicy | None:
    """The policy in a pydantic validation context (``info.context``), if any.

    Without one (params validated directly in Python, outside ``resolve()``) each
    validator decides: the file checks apply no roots (the run-time check through
    ``ctx.policy`` still applies), while the checks of what may run (``command``
    programs, callables named by text) fall back to the environment's policy, so that
    nothing runs that the operator did not allow.
    """
    if isinstance(context, Mapping):
        found = context.get(POLICY_CONTEXT_KEY)
        if isinstance(found, SandboxPolicy):
            return found
    return None


def within_roots(path: Path, roots: Sequence[Path]) -> bool:
    """True when ``path`` is one of ``roots`` or lies inside one (compared as written:
    pass real paths)."""
    return any(path == root or root in path.parents for root in roots)
