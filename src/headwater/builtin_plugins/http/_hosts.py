"""The hosts an HTTP connector may reach: the operator's ``SandboxPolicy.hosts``.

A URL a pipeline (or a client, through a named pipeline's params) can set is checked
twice, as the file tools check paths: when the params are validated, against the policy
in pydantic's validation context (:func:`check_url_param`, so ``headwater validate`` and
a server's ``run`` refuse it naming the param), and at run time against ``ctx.policy``
for every request actually sent: after a URL template was filled from an item and for
each redirect (:func:`guard_requests`, an httpx request hook).

``hosts`` holds glob patterns (``api.example.com``, ``*.internal``, ``10.0.0.*``); a
pattern with a port (``api.example.com:8443``) only matches that port. An empty list
allows loopback only (``localhost``, ``127.0.0.0/8``, ``::1``). Hosts are compared in
lower case, as written in the URL: a name is not resolved, so ``*.example.com`` does not
let in an address that a name of it would resolve to.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationInfo

from headwater.core.net import is_loopback
from headwater.core.policy import SandboxError, SandboxPolicy, policy_of

__all__ = ["check_url", "check_url_param", "guard_requests", "host_allowed"]

_SCHEMES = ("http", "https")


def host_allowed(policy: SandboxPolicy, host: str, port: int | None) -> bool:
    """May a connector reach ``host`` (a name or an address, without brackets) on
    ``port``? Loopback when the policy lists no host, else a matching pattern."""
    if policy.unrestricted:
        return True
    host = host.lower().strip("[]")
    if not policy.hosts:
        return is_loopback(host)
    for pattern in policy.hosts:
        pattern = pattern.lower()
        name, sep, want = pattern.rpartition(":")
        if sep and want.isdigit() and "]" not in want and name.count(":") == 0:
            if port is not None and int(want) == port and fnmatch.fnmatchcase(host, name):
                return True
            continue
        if fnmatch.fnmatchcase(host, pattern.strip("[]")):
            return True
    return False


def check_url(policy: SandboxPolicy, url: str, *, param: str | None = None) -> str:
    """``url`` when it is an http(s) URL whose host the policy allows; else
    :class:`~headwater.core.policy.SandboxError` naming the host (and ``param``)."""
    where = f" (param {param})" if param else ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SandboxError(f"{url!r} is not a valid URL{where}: {exc}") from None
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise SandboxError(f"{url!r} is not an http:// or https:// URL with a host{where}")
    if not host_allowed(policy, parts.hostname, port):
        allowed = ", ".join(policy.hosts) if policy.hosts else "loopback addresses only"
        raise SandboxError(
            f"host {parts.hostname!r} is not allowed by the sandbox{where}; allowed: "
            f"{allowed} (the operator sets HEADWATER_ALLOW_HOSTS or the server's "
            "sandbox.hosts)"
        )
    return url


def check_url_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator: a URL whose host the validation context's policy refuses fails
    validation. A URL template whose host is itself a template (``http://{host}/``) is
    checked at run time only, once filled. No policy in the context: no check."""
    policy = policy_of(info.context)
    if policy is None or not isinstance(value, str):
        return value
    netloc = value.partition("://")[2].partition("/")[0]
    if "{" in netloc:
        return value
    check_url(policy, value.replace("{", "").replace("}", ""), param=info.field_name)
    return value


def guard_requests(policy: SandboxPolicy, param: str) -> Callable[[Any], Awaitable[None]]:
    """An httpx ``request`` event hook refusing any request (the first and every
    redirect) to a host the policy does not allow: the send raises
    :class:`~headwater.core.policy.SandboxError`."""

    async def check(request: Any) -> None:
        check_url(policy, str(request.url), param=param)

    return check
