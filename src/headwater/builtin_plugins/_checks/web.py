"""Connection checks of the HTTP connectors.

``http`` sink, ``http.request`` and ``sse``: one ``HEAD`` request (no body either way,
redirects not followed) to the URL, with the component's headers, once the sandbox
allowed its host. Any answer means the server is reached (405 too: many APIs take only
the method they serve); 401, 403 and 407 mean the credentials were refused, 5xx that
the server is failing. A URL whose host each item fills in cannot be checked; one whose
path does is checked up to the first placeholder. ``http.webhook``: the address can be
listened on (bound and closed at once).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from headwater.core.context import StreamContext
from headwater.core.errors import CheckFailed, CheckSkipped

from .network import unreachable

if TYPE_CHECKING:
    from ..http.request import RequestParams
    from ..http.sink import HttpSinkParams
    from ..http.sse import SseParams
    from ..http.webhook import WebhookParams

__all__ = ["check_http_head", "check_webhook"]

_REFUSED = {
    401: "the credentials were refused",
    403: "access is forbidden",
    407: "a proxy refused the credentials",
}


def _checked_url(url: str) -> str:
    """``url`` up to its first ``{placeholder}``; CheckSkipped when the host has one."""
    netloc = url.partition("://")[2].partition("/")[0]
    if "{" in netloc:
        raise CheckSkipped("the URL's host is filled in from each item")
    cut = url.find("{")
    return url if cut < 0 else url[:cut].rpartition("/")[0] + "/"


async def check_http_head(
    params: HttpSinkParams | RequestParams | SseParams, ctx: StreamContext
) -> str:
    """A HEAD request to the URL (its host allowed by the sandbox): the status."""
    from headwater.core.optional import require
    from headwater.core.reconnect import display_address

    from ..http._hosts import check_url

    httpx = require("httpx", "http", "http")
    url = _checked_url(params.url)
    check_url(ctx.policy, url, param=f"{ctx.stage}.params.url")
    shown = display_address(url)
    timeout = min(float(getattr(params, "timeout", 10.0)), 10.0)
    async with httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, headers=dict(params.headers)
    ) as client:
        try:
            response = await client.head(url)
        except httpx.HTTPError as exc:
            raise unreachable(shown, exc) from None
    status = response.status_code
    line = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in _REFUSED:
        raise CheckFailed(f"{shown}: {_REFUSED[status]} ({line} to HEAD)")
    if status >= 500:
        raise CheckFailed(f"{shown}: the server is failing ({line} to HEAD)")
    if 300 <= status < 400:
        where = response.headers.get("location", "")
        return f"{shown}: reached ({line} to HEAD, redirects to {where})"
    return f"{shown}: reached ({line} to HEAD)"


def check_webhook(params: WebhookParams, ctx: StreamContext) -> str:
    """The address can be listened on: bound, then closed at once."""
    if params.port == 0:
        raise CheckSkipped("listens on any free port: nothing to check")
    family = socket.AF_INET6 if ":" in params.host else socket.AF_INET
    sock: Any = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((params.host, params.port))
    except OSError as exc:
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise CheckFailed(f"cannot listen on {params.host}:{params.port}: {why}") from None
    finally:
        sock.close()
    return f"can listen on {params.host}:{params.port}"
