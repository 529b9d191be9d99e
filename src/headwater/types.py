"""Neutral types the hook specifications mention: what a hook receives and returns.

:mod:`headwater.hookspecs` may import only :mod:`headwater.markers` and this module. It
imports nothing of headwater at run time (the component, pipeline and error types named
in annotations are imported for type checkers only), so that the plugin contract never
depends on the server, the runtime or the built-in plugins.

* :data:`Register`: the callback the collection hooks receive;
* :class:`AuthRequest`, :class:`AuthSettings`: what the ``authenticate`` hook sees;
* :class:`TokenGrant`, :class:`TokenPrincipal`, :func:`match_token`: the static bearer
  tokens of the built-in authentication plugin;
* :class:`HttpRoute`, :data:`RouteRegister`, :class:`HttpRequest`, :class:`HttpResponse`,
  :data:`RouteHandler`: the HTTP routes plugins contribute (``register_routes``), and
  the request and response their handlers see, the same under ``headwater serve`` and
  the ASGI app.

Importing it is cheap (no pydantic, no websockets): plugins import it at load time.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .core.components import Component as Component
    from .core.errors import StageError as StageError
    from .core.pipeline import PipelineSpec as PipelineSpec

__all__ = [
    "HTTP_METHODS",
    "AuthRequest",
    "AuthSettings",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "Register",
    "RouteHandler",
    "RouteRegister",
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


# -- HTTP routes contributed by plugins ---------------------------------------------------

HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""The methods a plugin route may answer."""

_SEGMENT: Final = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@%-]+|\{[A-Za-z_][A-Za-z0-9_]*(?::path)?\})"
_PATTERN: Final = re.compile(rf"(?:/{_SEGMENT})+/?|/")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request as a route handler sees it, under any of headwater's servers.

    ``path`` is the path inside the application, without the query and without the
    prefix it is mounted under (``root_path``, e.g. ``/hw`` in a Starlette app; empty
    under ``headwater serve``): a handler links to its own pages with
    ``request.root_path + "/my/page"``. ``headers`` maps lower-case names to their value.
    """

    method: str
    path: str
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    root_path: str = ""
    remote: str | None = None
    """The client's address (``host:port``), when known."""
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)
    """The values of the route pattern's ``{name}`` parts (URL-decoded)."""
    principal: Any = None
    """What the ``authenticate`` hook returned for the request (None: anonymous)."""
    services: Any = None
    """The services of the engine behind the server answering the request (its
    ``policy``, ``metrics``, ``secrets``...; None outside a server). A route reaches
    per-engine state through it, never through module-level variables."""

    @property
    def target(self) -> str:
        """``path?query`` (the request target, inside the application)."""
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    @property
    def query(self) -> dict[str, list[str]]:
        """The query parameters: name -> every value, in order."""
        return parse_qs(self.query_string)

    def query_value(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies the request carries (``Cookie`` header), by name."""
        found: dict[str, str] = {}
        for part in self.headers.get("cookie", "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                found[name] = value.strip().strip('"')
        return found


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a route handler returns: a status, a body and headers.

    ``Content-Length`` and ``Content-Type`` (from ``content_type``) are added by the
    server; ``headers`` holds any others, as ``(name, value)`` pairs.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = ()

    @classmethod
    def json(
        cls, value: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> HttpResponse:
        """A JSON response (``application/json``); values JSON cannot hold become text."""
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        return cls(status, body.encode(), "application/json", tuple(headers))

    @classmethod
    def text(
        cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8"
    ) -> HttpResponse:
        """A text response (UTF-8)."""
        return cls(status, text.encode(), content_type)

    @classmethod
    def html(cls, html: str, status: int = 200) -> HttpResponse:
        """An HTML page (UTF-8)."""
        return cls(status, html.encode(), "text/html; charset=utf-8")


RouteHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""A route's handler: ``async def handler(request) -> HttpResponse``."""


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTP route a plugin contributes: a handler, a static folder or a fixed page.

    ``path`` is a pattern: literal segments and ``{name}`` parts, each matching one path
    segment (``/reports/{name}``); a last ``{name:path}`` part matches the rest of the
    path, slashes included. Build routes with :meth:`get` (or the constructor for other
    methods), :meth:`static` and :meth:`page`. ``plugin`` is filled in by headwater.
    """

    method: str
    path: str
    handler: RouteHandler | None = None
    directory: str | None = None
    """A folder whose files are served under ``path`` (see :meth:`static`)."""
    body: bytes | None = None
    """A fixed body served at ``path`` (see :meth:`page`)."""
    content_type: str = "text/html; charset=utf-8"
    """The content type of ``body``."""
    plugin: str | None = None
    """The plugin that registered the route (set by headwater)."""

    def __post_init__(self) -> None:
        if self.method not in HTTP_METHODS:
            raise ValueError(
                f"route {self.path!r}: method {self.method!r} is not one of "
                f"{', '.join(sorted(HTTP_METHODS))}"
            )
        if not isinstance(self.path, str) or not _PATTERN.fullmatch(self.path):
            raise ValueError(
                f"route {self.path!r}: a path starts with / and is made of segments or "
                "{name} parts"
            )
        if ":path}" in self.path.rstrip("/")[:-1]:
            raise ValueError(f"route {self.path!r}: only the last part may be {{name:path}}")
        given = sum(x is not None for x in (self.handler, self.directory, self.body))
        if given != 1:
            raise ValueError(f"route {self.path!r}: give exactly one of handler, directory, body")
        if self.handler is not None and not callable(self.handler):
            raise ValueError(f"route {self.path!r}: handler is not callable")

    @classmethod
    def get(cls, path: str, handler: RouteHandler) -> HttpRoute:
        """``GET path`` answered by ``handler``."""
        return cls("GET", path, handler)

    @classmethod
    def static(cls, path: str, directory: str | os.PathLike[str]) -> HttpRoute:
        """The files of ``directory`` (and its subfolders) under ``path``: ``GET
        path/NAME`` serves ``directory/NAME``, ``GET path/`` its ``index.html``. Names
        cannot leave the folder (``..`` and symbolic links out of it answer 404)."""
        return cls("GET", path.rstrip("/") or "/", directory=os.fspath(directory))

    @classmethod
    def page(
        cls, path: str, body: str | bytes, content_type: str = "text/html; charset=utf-8"
    ) -> HttpRoute:
        """A fixed page (HTML unless ``content_type`` says otherwise) at ``path``."""
        data = body.encode() if isinstance(body, str) else bytes(body)
        return cls("GET", path, body=data, content_type=content_type)


RouteRegister = Callable[[HttpRoute], None]
"""The callback ``register_routes`` receives: call it once per :class:`HttpRoute`."""
