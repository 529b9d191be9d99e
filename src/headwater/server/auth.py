"""What the security hooks receive, and the static bearer tokens of the built-in plugin.

The server extracts a bearer token from every WebSocket upgrade, ``/api`` request and
plugin route (the ``Authorization: Bearer TOKEN`` header, else the ``token`` query
parameter, else on GET requests the dashboard's cookie: see
:func:`headwater.server.http.request_token`) and asks the ``authenticate`` hook for a
principal; the ``authorize`` hook then decides each
``subscribe``, ``run`` and ``cancel``. The types both sides share (:class:`AuthRequest`,
:class:`AuthSettings`, :class:`TokenGrant`, :class:`TokenPrincipal`) live in
:mod:`headwater.types`, which the hook specifications may import; they are re-exported
here. This module adds how the
server reads requests and ``HEADWATER_TOKENS`` (:func:`parse_tokens_env`).

Importing it is cheap (no pydantic, no websockets): plugins import it at load time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import parse_qs

from headwater.types import AuthRequest, AuthSettings, TokenGrant, TokenPrincipal, match_token

__all__ = [
    "TOKENS_ENV",
    "AuthRequest",
    "AuthSettings",
    "RedactingLogger",
    "TokenGrant",
    "TokenPrincipal",
    "bearer_token",
    "match_token",
    "parse_tokens_env",
    "principal_name",
    "redact_credentials",
]

TOKENS_ENV: Final = "HEADWATER_TOKENS"
"""Environment variable with static tokens, read by ``headwater serve`` (see
:func:`parse_tokens_env` for the format)."""


def bearer_token(path: str, headers: Mapping[str, str]) -> str | None:
    """The token of a request: ``Authorization: Bearer TOKEN``, else ``?token=TOKEN``.

    ``headers`` keys are lower-case. Returns None when there is neither.
    """
    value = headers.get("authorization")
    if value is not None:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    tokens = parse_qs(path.partition("?")[2]).get("token")
    if tokens and tokens[-1]:
        return tokens[-1]
    return None


def parse_tokens_env(value: str) -> dict[str, TokenGrant]:
    """Parse ``HEADWATER_TOKENS``: ``TOKEN=PRINCIPAL[:STREAMS[:PIPELINES]]``, comma-separated.

    ``STREAMS`` and ``PIPELINES`` are ``;``-separated patterns (default ``*``)::

        s3cret=alice,t0ken=bob:errors-*;logs:count

    gives alice every stream and pipeline, and bob the streams ``errors-*`` and ``logs``
    and the pipeline ``count``. Raises ``ValueError`` naming the bad entry (never its
    token).
    """
    grants: dict[str, TokenGrant] = {}
    for index, entry in enumerate(part.strip() for part in value.split(",")):
        if not entry:
            continue
        token, sep, rest = entry.partition("=")
        token = token.strip()
        fields = rest.split(":")
        principal = fields[0].strip()
        if not sep or not token or not principal or len(fields) > 3:
            raise ValueError(
                f"{TOKENS_ENV}: entry {index + 1} is not TOKEN=PRINCIPAL[:STREAMS[:PIPELINES]]"
            )
        grants[token] = TokenGrant(principal, _patterns(fields, 1), _patterns(fields, 2))
    return grants


def _patterns(fields: list[str], index: int) -> tuple[str, ...]:
    if len(fields) <= index:
        return ("*",)
    found = tuple(p.strip() for p in fields[index].split(";") if p.strip())
    return found or ("*",)


def principal_name(principal: Any) -> str | None:
    """A printable name for a principal (None for an anonymous connection)."""
    if principal is None:
        return None
    name = getattr(principal, "name", None)
    return name if isinstance(name, str) else str(principal)


_CREDENTIALS: Final = re.compile(
    r"(?P<query>[?&;](?:access_token|token)=)[^&;#\s\"']+"
    r"|(?P<header>(?:proxy-)?authorization:\s*)[^\r\n]+"
    r"|(?P<bearer>\bbearer\s+)[^\s\"']+"
    r"|(?P<cookie>headwater_token=)[^;\s\"']+",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    """``text`` with bearer tokens replaced by ``***``: ``?token=`` values,
    ``Authorization`` header values, ``Bearer X`` and the dashboard's cookie."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(m.lastgroup or 0)}***", text)


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for the ``websockets`` library that never writes a token.

    At debug level ``websockets`` logs every request line and header: ``?token=`` and
    ``Authorization`` values would reach the log. Records are formatted here and
    redacted (:func:`redact_credentials`) before they go to the wrapped logger.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(map(str, (msg, *args)))
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, redact_credentials(text), **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs
