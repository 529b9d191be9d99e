"""Built-in static bearer tokens for ``headwater serve``.

Tokens come from the server configuration (``auth.tokens``) and from the
``HEADWATER_TOKENS`` environment variable (``TOKEN=PRINCIPAL[:STREAMS[:PIPELINES]]``,
comma-separated); the server merges both into :attr:`AuthRequest.auth
<headwater.server.auth.AuthRequest>`, so this plugin keeps no state of its own.

* ``authenticate``: no tokens configured -> no opinion (None). A known token -> a
  :class:`~headwater.server.auth.TokenPrincipal` carrying the grant's patterns. An unknown
  token -> ``False`` (HTTP 401). No token at all -> no opinion (the server rejects the
  connection when authentication is required).
* ``authorize``: for its own principals, whether the stream id (``subscribe``,
  ``cancel``) or pipeline name (``run``) matches one of their patterns; no opinion about
  other principals.

Another plugin registered later (any third-party plugin) is asked first and can override
both decisions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import headwater

if TYPE_CHECKING:
    from headwater.types import AuthRequest, TokenPrincipal

# headwater.types is imported in the hooks, which only servers call: loading the plugins
# for a ``headwater run`` does not pay for it.


@headwater.hookimpl
def authenticate(token: str | None, request: AuthRequest) -> TokenPrincipal | bool | None:
    """A principal for a known token, ``False`` for an unknown one, else no opinion."""
    from headwater.types import TokenPrincipal, match_token

    tokens = request.auth.tokens
    if not tokens or token is None:
        return None
    grant = match_token(token, tokens)
    if grant is None:
        return False
    return TokenPrincipal(grant.principal, grant.streams, grant.pipelines)


@headwater.hookimpl
def authorize(principal: Any, action: str, target: str) -> bool | None:
    """Whether a token principal's patterns allow the action; no opinion about others."""
    from headwater.types import TokenPrincipal

    if isinstance(principal, TokenPrincipal):
        return principal.may(action, target)
    return None
