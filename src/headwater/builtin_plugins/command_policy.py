"""What the ``command`` action may start: allow-lists, deny patterns, protected variables.

The rules, checked when params are validated and again when the run starts:

- **Programs.** A bare name (``ls``) is looked up on the operator's ``PATH``
  (:attr:`SandboxPolicy.command_path <headwater.SandboxPolicy.command_path>`; its relative
  entries are ignored), never on a ``PATH`` the pipeline sets; a name with a folder is
  taken as written (relative to ``cwd``). The program started is that absolute path.
  An allow-list entry allows a program when both name the same real file (symlinks
  resolved) under the same file name: multi-call programs such as busybox choose what
  they do by the name they are started under, so ``ls`` must not allow ``rm`` when both
  are links to one file.
- **Allow-lists.** The operator's list (``HEADWATER_COMMAND_ALLOW``, the server config:
  :attr:`SandboxPolicy.commands <headwater.SandboxPolicy.commands>`) bounds every
  pipeline; the ``allow`` param can only narrow it. Without an operator list, the
  ``allow`` param alone decides; without either, nothing runs.
- **Environment.** The pipeline's ``env`` may not set variables that choose which code
  a program loads (:data:`PROTECTED_ENV`: ``PATH``, ``LD_*``, ``PYTHON*``...), unless
  :attr:`SandboxPolicy.command_env <headwater.SandboxPolicy.command_env>` names them.
- **Deny patterns** (:func:`deny_matches`): globs no argument may match, aware of how
  programs parse options.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Final

from headwater.core.policy import SandboxPolicy

__all__ = [
    "ALLOW_ENV",
    "PROTECTED_ENV",
    "check_environment",
    "deny_matches",
    "resolve_command",
]

ALLOW_ENV: Final = "HEADWATER_COMMAND_ALLOW"
"""The environment variable listing (comma-separated) the programs any pipeline may run."""

ENV_ALLOW_ENV: Final = "HEADWATER_COMMAND_ENV"
"""The environment variable listing protected variables pipelines may nevertheless set."""

PROTECTED_ENV: Final = (
    "PATH",
    "LD_*",
    "DYLD_*",
    "PYTHON*",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYLIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "JAVA_TOOL_OPTIONS",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_*",
    "SHELLOPTS",
    "BASHOPTS",
    "IFS",
    "PS4",
    "GCONV_PATH",
)
"""Variables (globs, compared in upper case) that choose where programs find the code they
load or run: program lookup, the dynamic loader, interpreters' start-up and module paths,
shells' start-up files and exported functions."""


def _has_dir(name: str) -> bool:
    return os.sep in name or bool(os.altsep and os.altsep in name)


def _glob_atoms(pattern: str) -> list[str]:
    """``pattern`` cut into glob atoms: ``*``, ``?``, a ``[...]`` class, one literal char.

    Classes are delimited as :func:`fnmatch.translate` does (``[!...]``, a ``]`` right
    after the opening is literal, an unclosed ``[`` is a literal).
    """
    atoms: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end >= 0:
                atoms.append(pattern[i : end + 1])
                i = end + 1
                continue
        atoms.append(pattern[i])
        i += 1
    return atoms


def _prefix_of_match(text: str, pattern: str) -> bool:
    """True when ``text`` starts some string that matches glob ``pattern``.

    ``text`` then matches the pattern's first k atoms for some k: each atom but ``*``
    takes exactly one character, and a ``*`` can stop anywhere.
    """
    atoms = _glob_atoms(pattern)
    return any(fnmatchcase(text, "".join(atoms[:k])) for k in range(len(atoms) + 1))


def deny_matches(arg: str, pattern: str) -> bool:
    """True when the deny ``pattern`` refuses the argument ``arg``.

    - Any argument matching the glob as a whole is refused.
    - A pattern starting with ``--`` names long options: it refuses ``--NAME`` and
      ``--NAME=VALUE`` when NAME is a prefix of a name the pattern matches (programs
      accept unambiguous abbreviations: ``--recursive`` also refuses ``--recur``). With an
      ``=`` the pattern's value part must match the value too (``--color=al*``).
    - A pattern starting with a single ``-`` names short options: an argument ``-lR`` is
      read as ``-l -R``, and refused when one of them matches (``-R`` refuses ``-lR``).
    - Any other pattern also applies to the value of ``--NAME=VALUE`` (``/etc/*`` refuses
      ``--file=/etc/passwd``).
    """
    if fnmatchcase(arg, pattern):
        return True
    if arg.startswith("--"):
        name, eq, value = arg[2:].partition("=")
        if not name:
            return False
        if pattern.startswith("--"):
            pattern_name, pattern_eq, pattern_value = pattern[2:].partition("=")
            if not _prefix_of_match(name, pattern_name):
                return False
            return not pattern_eq or (bool(eq) and fnmatchcase(value, pattern_value))
        return bool(eq) and not pattern.startswith("-") and fnmatchcase(value, pattern)
    if arg.startswith("-") and len(arg) > 2 and pattern.startswith("-"):
        return any(fnmatchcase("-" + letter, pattern) for letter in arg[1:])
    return False


def _protected(name: str) -> bool:
    upper = name.upper()
    return any(fnmatchcase(upper, pattern) for pattern in PROTECTED_ENV)


def check_environment(env: Mapping[str, str], policy: SandboxPolicy) -> None:
    """Refuse variables of ``env`` the pipeline may not set (see :data:`PROTECTED_ENV`).

    :raises ValueError: Naming the first refused variable.
    """
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"{name!r}: not a valid environment variable")
        if policy.unrestricted or not _protected(name):
            continue
        if any(fnmatchcase(name.upper(), entry.upper()) for entry in policy.command_env):
            continue
        raise ValueError(
            f"{name}: a pipeline may not set {name} (it chooses which code programs load); "
            f"the operator can allow it with {ENV_ALLOW_ENV} or sandbox.command_env"
        )


def _operator_path(policy: SandboxPolicy) -> str:
    """The operator's ``PATH`` without relative entries (they would follow the cwd)."""
    entries = (policy.command_path or "").split(os.pathsep)
    return os.pathsep.join(e for e in entries if e and os.path.isabs(e))


def _locate(name: str, cwd: str | None, path: str) -> str | None:
    """Absolute path of the program ``name`` names (None: none, or not executable)."""
    if _has_dir(name):
        name = os.path.expanduser(name)
        if not os.path.isabs(name):
            name = os.path.join(cwd or os.getcwd(), name)
        found = shutil.which(name)
    else:
        found = shutil.which(name, path=path)
    return None if found is None else os.path.abspath(found)


def _same_program(a: str, b: str) -> bool:
    """One real file started under one file name."""
    same_name = os.path.basename(a) == os.path.basename(b)
    return same_name and os.path.realpath(a) == os.path.realpath(b)


def _allows(entries: Iterable[str], program: str, cwd: str | None, path: str) -> bool:
    for entry in entries:
        located = _locate(entry, cwd, path)
        if located is not None and _same_program(located, program):
            return True
    return False


def resolve_command(
    argv: Sequence[str],
    *,
    allow: Sequence[str] | None,
    deny: Sequence[str],
    policy: SandboxPolicy,
    cwd: str | None = None,
) -> str:
    """Check ``argv`` against ``policy``, ``allow`` and ``deny``; return the program to start.

    :param argv: The program and its arguments.
    :param allow: Programs the params allow (None: the operator's list alone decides).
    :param deny: Patterns no argument (the program included) may match, see
        :func:`deny_matches`.
    :param policy: The operator's sandbox (its program list and ``PATH``).
    :param cwd: Working directory of the command (relative program paths resolve there).
    :raises ValueError: Naming the refused program or argument and the rule refusing it.
    """
    if not argv or not argv[0]:
        raise ValueError("argv must start with the program to run")
    for arg in argv:
        if "\0" in arg:
            raise ValueError(f"argument {arg!r} contains a NUL character")
    argv0 = argv[0]
    operator = None if policy.unrestricted else policy.commands
    if allow is None and operator is None and not policy.unrestricted:
        raise ValueError(
            f"command {argv0!r} refused: no allow-list; list the programs a pipeline may run "
            f"in the allow param (allow: [{os.path.basename(argv0)}]) or, as the operator, in "
            f"{ALLOW_ENV} or sandbox.commands"
        )
    for pattern in deny:
        for arg in argv:
            if deny_matches(arg, pattern):
                raise ValueError(f"argument {arg!r} refused: it matches deny pattern {pattern!r}")
    path = _operator_path(policy)
    program = _locate(argv0, cwd, path)
    if program is None:
        where = "" if _has_dir(argv0) else " on the operator's PATH"
        raise ValueError(f"program {argv0!r} not found{where} (or not executable)")
    for source, names in (
        ("the allow param", allow),
        (f"the operator's allow-list ({ALLOW_ENV} or sandbox.commands)", operator),
    ):
        if names is not None and not _allows(names, program, cwd, path):
            listed = ", ".join(repr(n) for n in names) or "nothing"
            raise ValueError(
                f"program {argv0!r} refused: not in {source} (which allows {listed}); a bare "
                "name allows the program found on the operator's PATH under that name, a "
                "path allows that file"
            )
    return program
