"""What the security hooks receive, and the static bearer tokens of the built-in plugin.

The server extracts a bearer token from every WebSocket upgrade and ``/api`` request (the
``Authorization: Bearer TOKEN`` header, else the ``token`` query parameter) and asks the
``authenticate`` hook for a principal; the ``authorize`` hook then decides each
``subscribe``, ``run`` and ``cancel``. This module holds the types both sides share:
:class:`AuthRequest` (the request, as the hooks see it), :class:`AuthSettings` (the
server's effective ``auth`` settings) and, for the built-in static-token plugin
(:mod:`headwater.builtin_plugins.auth`), :class:`TokenGrant`, :class:`TokenPrincipal`
and :func:`parse_tokens_env` (the ``HEADWATER_TOKENS`` format).

Importing it is cheap (no pydantic, no websockets): plugins import it at load time.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

__all__ = [
    "TOKENS_ENV",
    "AuthRequest",
    "AuthSettings",
    "TokenGrant",
    "TokenPrincipal",
    "bearer_token",
    "match_token",
    "parse_tokens_env",
    "principal_name",
]

TOKENS_ENV: Final = "HEADWATER_TOKENS"
"""Environment variable with static tokens, read by ``headwater serve`` (see
:func:`parse_tokens_env` for the format)."""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """One static token: who it authenticates, and what that principal may reach.

    ``streams`` and ``pipelines`` are shell-style patterns (``fnmatch``: ``errors-*``,
    ``*``) matched against stream ids (``subscribe``, ``cancel``) and pipeline names
    (``run``).
    """

    principal: str
    streams: tuple[str, ...] = ("*",)
    pipelines: tuple[str, ...] = ("*",)


@dataclass(frozen=True, slots=True)
class TokenPrincipal:
    """The principal the static-token plugin returns: a name and its permissions."""

    name: str
    streams: tuple[str, ...] = ("*",)
    pipelines: tuple[str, ...] = ("*",)

    def __str__(self) -> str:
        return self.name

    def may(self, action: str, target: str) -> bool:
        """True if this principal's patterns allow ``action`` on ``target``."""
        patterns = self.pipelines if action == "run" else self.streams
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The server's effective authentication settings (config file plus environment).

    ``required`` is True when a connection without a principal is rejected; ``tokens``
    maps each static token to its grant (the built-in plugin's table).
    """

    required: bool = False
    tokens: Mapping[str, TokenGrant] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A request asking to be authenticated, as the ``authenticate`` hook sees it.

    ``headers`` maps lower-case header names to their (last) value. ``remote`` is the
    client's address (``host:port``) when known, ``origin`` its ``Origin`` header.
    """

    path: str
    headers: Mapping[str, str]
    remote: str | None = None
    origin: str | None = None
    auth: AuthSettings = field(default_factory=AuthSettings)

    @property
    def query(self) -> dict[str, list[str]]:
        """The query parameters of ``path``."""
        return parse_qs(self.path.partition("?")[2])


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


def match_token(token: str, tokens: Mapping[str, TokenGrant]) -> TokenGrant | None:
    """The grant of ``token``, compared in constant time with every known token."""
    found: TokenGrant | None = None
    given = token.encode()
    for known, grant in tokens.items():
        if hmac.compare_digest(given, known.encode()):
            found = grant
    return found


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
