"""Which hosts the plugin may reach: the operator's sandbox (``SandboxPolicy.hosts``).

The same rule as headwater's HTTP connectors: glob patterns of host names or addresses
(``api.search.brave.com``, ``*.example.org``; with ``:PORT``, that port only), and
loopback only when the operator lists none (``HEADWATER_ALLOW_HOSTS`` or a server's
``sandbox.hosts``). It applies to the search API and to every page the enricher fetches,
each redirect included: a search result cannot make the server fetch an internal
address the operator did not allow.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from urllib.parse import urlsplit

from headwater import SandboxPolicy

__all__ = ["HostRefused", "check_url", "host_allowed"]


class HostRefused(PermissionError):
    """A URL's host is not allowed by the operator's sandbox."""


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(policy: SandboxPolicy, host: str, port: int | None) -> bool:
    """May the plugin reach ``host`` on ``port``?"""
    if policy.unrestricted:
        return True
    host = host.lower().strip("[]")
    if not policy.hosts:
        return _loopback(host)
    for pattern in policy.hosts:
        pattern = pattern.lower()
        name, sep, want = pattern.rpartition(":")
        if sep and want.isdigit() and ":" not in name:
            if port == int(want) and fnmatch.fnmatchcase(host, name):
                return True
        elif fnmatch.fnmatchcase(host, pattern.strip("[]")):
            return True
    return False


def check_url(policy: SandboxPolicy, url: str, *, param: str | None = None) -> str:
    """``url`` if it is an http(s) URL whose host is allowed, else :class:`HostRefused`."""
    where = f" (param {param})" if param else ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise HostRefused(f"{url!r} is not a valid URL{where}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HostRefused(f"{url!r} is not an http:// or https:// URL{where}")
    if not host_allowed(policy, parts.hostname, port):
        allowed = ", ".join(policy.hosts) if policy.hosts else "loopback only"
        raise HostRefused(
            f"host {parts.hostname!r} is not allowed by the sandbox{where} (allowed: "
            f"{allowed}; the operator sets HEADWATER_ALLOW_HOSTS)"
        )
    return url
