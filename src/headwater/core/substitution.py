"""``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in the string values of a file.

The YAML loader (:mod:`headwater.core.yamlfile`) calls :meth:`Substitution.apply` on every
string *value* of a pipeline, server or jobs file once the file is parsed, so that what
is substituted is always text inside one value: it can never add keys, items or any
other structure. Mapping keys are never substituted.

- ``${NAME}``: the environment variable ``NAME``; an unset one is an error.
- ``${NAME:-default}``: ``default`` when ``NAME`` is unset or empty (as in a shell).
- ``${file:PATH}``: the content of a file (UTF-8, at most :data:`MAX_FILE_BYTES`), one
  trailing newline removed; a relative ``PATH`` is relative to the folder of the file
  being loaded.
- ``$${`` is a literal ``${``; a ``$`` not followed by ``{`` is just a ``$``.

The values read from the environment and from files are secrets: each is added to the
:class:`~headwater.core.secrets.Secrets` given, so that it is masked wherever it could be
shown. A default, written in the file for anybody to read, is not.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from .errors import HeadwaterError
from .secrets import Secrets

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_SUBSTITUTED_CHARS",
    "Substitution",
    "SubstitutionError",
    "needs_substitution",
]

MAX_FILE_BYTES: Final = 64 * 1024
"""Largest file ``${file:PATH}`` reads (a key, a token, a certificate chain)."""

MAX_SUBSTITUTED_CHARS: Final = 1024 * 1024
"""Most characters the substitutions of one file may insert in all."""

_NAME: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_FORMS: Final = "${NAME}, ${NAME:-default} or ${file:PATH}"


class SubstitutionError(HeadwaterError):
    """A ``${...}`` cannot be substituted (the loader adds the file, line and path)."""


def needs_substitution(text: str) -> bool:
    """True when ``text`` holds a ``${`` (a substitution, or an escaped ``$${``)."""
    return "${" in text


class Substitution:
    """Substitutes the ``${...}`` of the string values of one file.

    ``base_dir`` is the folder of the file (``${file:PATH}`` is relative to it);
    ``environ`` the variables (default: ``os.environ``); ``secrets`` receives every value
    read from the environment or a file. It counts what it inserted: beyond
    :data:`MAX_SUBSTITUTED_CHARS` in all, :meth:`apply` raises.
    """

    def __init__(
        self,
        base_dir: str | Path = ".",
        *,
        environ: Mapping[str, str] | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.environ = os.environ if environ is None else environ
        self.secrets = secrets
        self.inserted = 0
        self._files: dict[Path, str] = {}

    def apply(self, text: str) -> str:
        """``text`` with its ``${...}`` substituted; raises :class:`SubstitutionError`."""
        if "${" not in text:
            return text
        out: list[str] = []
        i = 0
        while True:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                break
            if text.startswith("$${", j):
                out.append(text[i:j] + "${")
                i = j + 3
            elif text.startswith("${", j):
                end = text.find("}", j + 2)
                if end < 0:
                    raise SubstitutionError(
                        f"unclosed {_shown(text[j:])}: write {_FORMS} (and $${{ for a literal ${{)"
                    )
                out.append(text[i:j])
                out.append(self._value(text[j + 2 : end]))
                i = end + 1
            else:
                out.append(text[i : j + 1])
                i = j + 1
        return "".join(out)

    def _value(self, expression: str) -> str:
        value: str | None
        if expression.startswith("file:"):
            value = self._file(expression[5:])
        else:
            match = _NAME.fullmatch(expression)
            if match is None:
                raise SubstitutionError(
                    f"cannot substitute {_shown('${' + expression + '}')}: write {_FORMS} "
                    "(and $${ for a literal ${)"
                )
            name, default = match.group(1), match.group(2)
            if default is not None and "${" in default:
                raise SubstitutionError(
                    f"the default of ${{{name}:-...}} holds a ${{: substitutions do not nest"
                )
            value = self.environ.get(name)
            if default is not None and not value:
                return self._count(default)
            if value is None:
                raise SubstitutionError(
                    f"environment variable {name} is not set (write ${{{name}:-default}} "
                    "for a default)"
                )
        assert value is not None
        if self.secrets is not None:
            self.secrets.add(value)
        return self._count(value)

    def _count(self, value: str) -> str:
        self.inserted += len(value)
        if self.inserted > MAX_SUBSTITUTED_CHARS:
            raise SubstitutionError(
                f"substitutions insert more than {MAX_SUBSTITUTED_CHARS:,} characters in all"
            )
        return value

    def _file(self, name: str) -> str:
        if not name.strip():
            raise SubstitutionError("${file:PATH} needs a path")
        path = Path(name)
        if not path.is_absolute():
            path = self.base_dir / path
        known = self._files.get(path)
        if known is None:
            known = self._files[path] = _read_value_file(path, name)
        return known


def _read_value_file(path: Path, name: str) -> str:
    """The text of a regular file of at most :data:`MAX_FILE_BYTES`, one trailing newline
    removed. Never blocks on a FIFO or a device, never reads more than the bound."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SubstitutionError(f"cannot read ${{file:{name}}}: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SubstitutionError(f"cannot read ${{file:{name}}}: not a regular file")
        data = b""
        while len(data) <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise SubstitutionError(f"cannot read ${{file:{name}}}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise SubstitutionError(
            f"${{file:{name}}} is larger than {MAX_FILE_BYTES:,} bytes (the limit)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubstitutionError(
            f"${{file:{name}}} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return exc.strerror
    return errno.errorcode.get(exc.errno or 0, str(exc))


def _shown(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
