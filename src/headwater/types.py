"""Neutral types the hook specifications mention: what a hook receives and returns.

:mod:`headwater.hookspecs` may import only :mod:`headwater.markers` and this module. It
imports nothing of headwater at run time (the component, pipeline and error types named
in annotations are imported for type checkers only), so that the plugin contract never
depends on the server, the runtime or the built-in plugins.

* :data:`Register`: the callback the collection hooks receive;
* :class:`AuthRequest`, :class:`AuthSettings`: what the ``authenticate`` hook sees;
* :class:`TokenGrant`, :class:`TokenPrincipal`, :func:`match_token`: the static bearer
  tokens of the built-in authentication plugin.

Importing it is cheap (no pydantic, no websockets): plugins import it at load time.
"""

from __future__ import annotations

import fnmatch
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .core.components import Component as Component
    from .core.errors import StageError as StageError
    from .core.pipeline import PipelineSpec as PipelineSpec

__all__ = [
    "AuthRequest",
    "AuthSettings",
    "Register",
    "TokenGrant",
    "TokenPrincipal",
    "match_token",
]

Register = Callable[["Component"], None]
"""The callback collection hooks receive: call it once per component."""


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


def match_token(token: str, tokens: Mapping[str, TokenGrant]) -> TokenGrant | None:
    """The grant of ``token``, compared in constant time with every known token."""
    found: TokenGrant | None = None
    given = token.encode()
    for known, grant in tokens.items():
        if hmac.compare_digest(given, known.encode()):
            found = grant
    return found
