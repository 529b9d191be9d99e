"""HTTP plumbing shared by the server's two front ends (``headwater serve`` and ASGI).

Every endpoint, built-in or contributed by a plugin, takes a neutral
:class:`~headwater.types.HttpRequest` and returns a :class:`~headwater.types.HttpResponse`;
the front ends translate: :func:`from_websockets` and :func:`to_websockets` for the
``websockets`` library's ``process_request``, :func:`encode_response` for the server's
own HTTP/1.1 connections, and the ASGI app its scope and messages. This module holds what
both need besides: JSON and error responses, route patterns (:class:`PathPattern`), the
token of a request (:func:`request_token`) and static folders of plugins
(:func:`static_file`).
"""

from __future__ import annotations

import http
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote

from pydantic_core import to_json
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from headwater.types import HttpRequest, HttpResponse

from .auth import bearer_token

__all__ = [
    "TOKEN_COOKIE",
    "PathPattern",
    "encode_response",
    "error_response",
    "from_websockets",
    "header_map",
    "json_response",
    "reason_phrase",
    "remote_text",
    "request_token",
    "response_headers",
    "static_file",
    "to_websockets",
]

TOKEN_COOKIE: Final = "headwater_token"
"""The cookie the dashboard sets with its token, for clients that cannot send headers
(``EventSource``). Read on ``GET`` requests other than WebSocket upgrades."""

_NO_STORE: Final = (("Cache-Control", "no-store"),)


def json_response(
    value: Any, status: int = 200, extra: Sequence[tuple[str, str]] = ()
) -> HttpResponse:
    """A JSON response (never cached); non-finite floats become null."""
    body = to_json(value, inf_nan_mode="null", fallback=repr)
    return HttpResponse(status, body, "application/json", (*_NO_STORE, *extra))


def error_response(
    status: int, message: str, extra: Sequence[tuple[str, str]] = ()
) -> HttpResponse:
    """``{"error": <reason phrase>, "message": message}`` with ``status``."""
    return json_response({"error": reason_phrase(status), "message": message}, status, extra)


def reason_phrase(status: int) -> str:
    """The standard reason phrase of a status code (``Unknown`` for others)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def response_headers(
    response: HttpResponse, *, close: bool = True, head: bool = False
) -> list[tuple[str, str]]:
    """Every header of ``response``: its own, with ``Content-Type`` and ``Content-Length``
    first, and ``Connection: close`` when ``close``."""
    out = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body)))]
    out.extend(response.headers)
    if close:
        out.append(("Connection", "close"))
    return out


def encode_response(response: HttpResponse, server: str, *, head: bool = False) -> bytes:
    """The HTTP/1.1 bytes of ``response`` (with ``Connection: close``); no body for HEAD."""
    lines = [f"HTTP/1.1 {response.status} {reason_phrase(response.status)}", f"Server: {server}"]
    lines += [f"{name}: {value}" for name, value in response_headers(response)]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    return data if head else data + response.body


# -- the websockets library ---------------------------------------------------------------


def from_websockets(request: Request, remote: Any) -> HttpRequest:
    """A ``websockets.http11.Request`` as a neutral request (websockets reads only GET)."""
    headers: dict[str, str] = {}
    for name, value in request.headers.raw_items():
        key = name.lower()
        headers[key] = f"{headers[key]}; {value}" if key == "cookie" and key in headers else value
    path, _, query = request.path.partition("?")
    return HttpRequest(
        method="GET", path=path, query_string=query, headers=headers, remote=remote_text(remote)
    )


def to_websockets(response: HttpResponse) -> Response:
    """A neutral response as a ``websockets.http11.Response``."""
    headers = Headers(response_headers(response))
    return Response(response.status, reason_phrase(response.status), headers, response.body)


def remote_text(remote: Any) -> str | None:
    """``host:port`` of a peer address tuple, or None."""
    if isinstance(remote, tuple | list) and len(remote) >= 2:
        return f"{remote[0]}:{remote[1]}"
    return None


# -- tokens ---------------------------------------------------------------------------------


def request_token(request: HttpRequest, *, cookie: bool = True) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer``, else ``?token=``, else
    (when ``cookie`` and the request is a GET) the dashboard's :data:`TOKEN_COOKIE`."""
    token = bearer_token(request.target, request.headers)
    if token is None and cookie and request.method in ("GET", "HEAD"):
        value = request.cookies.get(TOKEN_COOKIE)
        if value:
            token = unquote(value)
    return token


# -- route patterns -------------------------------------------------------------------------

_PART: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A route's path pattern: literal text, ``{name}`` (one segment), a last
    ``{name:path}`` (the rest of the path). Values are URL-decoded."""

    pattern: str
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str) -> PathPattern:
        """Compile ``pattern`` (``/api/streams/{stream}/events``)."""
        out, pos = [], 0
        for match in _PART.finditer(pattern):
            out.append(re.escape(pattern[pos : match.start()]))
            rest = match.group(2) is not None
            out.append(f"(?P<{match.group(1)}>{'.*' if rest else '[^/]+'})")
            pos = match.end()
        out.append(re.escape(pattern[pos:]))
        return cls(pattern, re.compile("".join(out)))

    def match(self, path: str) -> dict[str, str] | None:
        """The parameters of ``path`` (without its query), or None if it does not match."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        return {k: unquote(v) for k, v in found.groupdict().items()}

    def probes(self) -> list[str]:
        """Example paths this pattern matches, to find patterns that answer the same paths."""
        simple = _PART.sub(lambda m: "x", self.pattern)
        deeper = _PART.sub(lambda m: "x/y" if m.group(2) else "x", self.pattern)
        empty = _PART.sub(lambda m: "" if m.group(2) else "x", self.pattern)
        return [p for p in dict.fromkeys((simple, deeper, empty)) if p.startswith("/")]

    def overlaps(self, other: PathPattern) -> bool:
        """True when the two patterns answer at least one path in common (as far as their
        example paths tell)."""
        return any(other.match(p) is not None for p in self.probes()) or any(
            self.match(p) is not None for p in other.probes()
        )


# -- static folders -------------------------------------------------------------------------


def static_file(directory: str, name: str) -> HttpResponse | None:
    """``directory/name`` (``index.html`` for a folder), or None when it is not a file
    inside ``directory`` (``..`` and symbolic links leading out of it included)."""
    root = Path(directory).resolve()
    try:
        target = (root / name.lstrip("/")).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not target.is_relative_to(root):
        return None
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return None
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/javascript",):
        content_type += "; charset=utf-8"
    return HttpResponse(
        200,
        target.read_bytes(),
        content_type,
        (("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")),
    )


def header_map(pairs: Sequence[tuple[bytes, bytes]]) -> Mapping[str, str]:
    """ASGI header pairs as a neutral mapping: lower-case names, latin-1 values; several
    ``Cookie`` headers are joined."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "cookie" and name in headers:
            value = f"{headers[name]}; {value}"
        headers[name] = value
    return headers
