"""The secrets of an engine, and masking them wherever they could be shown.

Every value that ``${VAR}`` or ``${file:PATH}`` put into a pipeline, server or jobs file
is a secret of the engine that loaded it (:attr:`EngineServices.secrets
<headwater.core.services.EngineServices.secrets>`). :meth:`Secrets.mask` replaces each
of them with ``***`` in a text, and so does :meth:`Secrets.mask_data` in the strings of
a JSON-like structure; both also hide the password of a URL (``redis://user:***@host``)
and the values of credential-like query parameters (``?token=***``), known secrets or
not. The CLI masks its output, its error messages and its log records with them
(:meth:`Secrets.logging_filter`); the runtime masks the events and summaries of runs;
the server masks what its HTTP API answers.

A :class:`Secrets` belongs to one engine: two engines in one process mask only their own.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["MASK", "MIN_SECRET_CHARS", "Secrets", "mask_url_credentials"]

MASK: Final = "***"
"""What a secret is replaced with."""

MIN_SECRET_CHARS: Final = 4
"""Shorter values are not masked: hiding every ``1`` or ``on`` would garble all output
and protect nothing a reader could not guess."""

_URL_PASSWORD: Final = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@?#\"']*:)(?P<secret>[^\s/@?#\"']+)(?=@)"
)
"""``scheme://user:PASSWORD@``: the password of a URL's user information."""

_QUERY_SECRET: Final = re.compile(
    r"(?P<head>[?&;](?:access_token|api_?key|auth|client_secret|passw(?:or)?d|pwd|"
    r"refresh_token|secret|sig|signature|token)=)(?P<secret>[^&;#\s\"']+)",
    re.IGNORECASE,
)
"""``?token=VALUE``: credential-like parameters of a URL's query."""


def mask_url_credentials(text: str) -> str:
    """``text`` with the passwords of URLs (``redis://user:***@host``) and the values of
    credential-like query parameters (``?token=***``) replaced by ``***``."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\g<head>{MASK}", text)
    return text


class Secrets:
    """The secret values of one engine: what ``${...}`` substituted into its files.

    Thread-safe: values may be added while a log handler in another thread masks.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.update(values)

    def add(self, value: str) -> None:
        """Keep ``value`` as a secret (ignored when shorter than
        :data:`MIN_SECRET_CHARS`)."""
        if len(value) < MIN_SECRET_CHARS or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            by_length = sorted(self._values, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(map(re.escape, by_length)))

    def update(self, values: Iterable[str]) -> None:
        """Keep every one of ``values`` (see :meth:`add`)."""
        for value in values:
            self.add(value)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def __repr__(self) -> str:  # never the values themselves
        return f"<Secrets: {len(self._values)} values>"

    def mask(self, text: str) -> str:
        """``text`` with every secret, every URL password and every credential-like
        query parameter replaced by ``***``."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        return mask_url_credentials(text)

    def mask_data(self, value: Any) -> Any:
        """A copy of a JSON-like ``value`` (mappings, lists, tuples, strings, numbers)
        with :meth:`mask` applied to every string, keys included; other values are kept
        as they are. Structures that need no change are returned unchanged."""
        return self._masked(value)[0]

    def _masked(self, value: Any) -> tuple[Any, bool]:
        """``(masked value, whether it changed)``."""
        if isinstance(value, str):
            masked = self.mask(value)
            return masked, masked != value
        if isinstance(value, Mapping):
            items, changed = [], False
            for key, item in value.items():
                new_key, key_changed = self._masked(key)
                new_item, item_changed = self._masked(item)
                items.append((new_key, new_item))
                changed = changed or key_changed or item_changed
            return (dict(items), True) if changed else (value, False)
        if isinstance(value, list | tuple):
            results = [self._masked(v) for v in value]
            if not any(changed for _, changed in results):
                return value, False
            out = [v for v, _ in results]
            return (out if isinstance(value, list) else tuple(out)), True
        return value, False

    def logging_filter(self) -> logging.Filter:
        """A filter that masks the message, the traceback and the stack of every log
        record it passes (add it to a handler: ``handler.addFilter(...)``)."""
        return _MaskingFilter(self)


class _MaskingFilter(logging.Filter):
    """Masks a record's text with its engine's secrets (see :meth:`Secrets.mask`)."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it
            return True
        masked = self.secrets.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.secrets.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.secrets.mask(record.stack_info)
        return True
