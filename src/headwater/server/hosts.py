"""The ``Host`` header check: which names a request may use to reach the server.

A web page can make a visitor's browser reach a server on the visitor's machine by
*DNS rebinding*: ``attacker.example`` first resolves to the attacker's server (which
serves the page), then to ``127.0.0.1``; the page's requests now reach the local server
as same-origin requests, so the origin check lets them through. What still tells them
apart is the ``Host`` header, which names ``attacker.example``. So every request (plain
HTTP, event streams and WebSocket upgrades, on both front ends) must name a host of the
server's allow-list, or gets 421 (Misdirected Request).

The allow-list is ``allowed_hosts`` of the configuration: entries ``HOST`` (any port),
``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``, ``.example.com`` (the domain and every
subdomain, any port), and ``*`` (no check). Without it, the default is built by
:func:`default_hosts`: the loopback names (``localhost``, ``127.0.0.1``, ``[::1]``), the
address the server is bound to and the address the request arrived on (an IP address,
which DNS rebinding cannot produce), each with the server's port or no port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["ANY_HOST", "LOOPBACK_NAMES", "HostPolicy", "default_hosts", "parse_host"]

ANY_HOST: Final = "*"
"""The ``allowed_hosts`` entry that turns the check off."""

LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "[::1]")
"""Names of this machine that are always allowed by default."""


def parse_host(value: str) -> tuple[str, int | None] | None:
    """``HOST[:PORT]`` (a ``Host`` header or an allow-list entry) as ``(host, port)``:
    host lower-case without a trailing dot, IPv6 addresses in brackets; None when it is
    not a host (empty, a bad port, an IPv6 address without brackets, spaces)."""
    text = value.strip().lower()
    if not text or any(c.isspace() or c in "/?#@\\" for c in text):
        return None
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port is None:
                return None
        return host, port
    host, sep, raw_port = text.rpartition(":")
    if not sep:
        host = text
    else:
        if ":" in host:
            return None  # an IPv6 address must be written in brackets
        port = _port(raw_port)
        if port is None:
            return None
    host = host.rstrip(".")
    if not host:
        return None
    return host, port


def _port(text: str) -> int | None:
    if not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


def _address_name(host: str) -> str:
    """An address as it appears in a ``Host`` header (IPv6 in brackets, lower-case)."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """An allow-list of ``Host`` header values (see the module's documentation)."""

    exact: frozenset[tuple[str, int | None]] = frozenset()
    """``(host, port)`` pairs allowed as they are (a port of None: no port)."""
    any_port: frozenset[str] = frozenset()
    """Hosts allowed with any port, or none."""
    domains: tuple[str, ...] = ()
    """``.example.com`` entries: the domain and its subdomains, any port."""
    any_host: bool = False
    """``*``: every value is allowed."""

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostPolicy:
        """The policy of ``allowed_hosts`` entries. Raises ``ValueError`` naming the first
        entry that is not a host."""
        exact: set[tuple[str, int | None]] = set()
        any_port: set[str] = set()
        domains: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            if entry == ANY_HOST:
                return cls(any_host=True)
            if entry.startswith(".") and parse_host(entry[1:]) == (entry[1:].rstrip("."), None):
                domains.append(entry.rstrip("."))
                continue
            parsed = parse_host(entry)
            if parsed is None:
                raise ValueError(f"{raw!r} is not HOST, HOST:PORT, [IPV6]:PORT, .DOMAIN or *")
            if parsed[1] is None:
                any_port.add(parsed[0])
            else:
                exact.add(parsed)
        return cls(frozenset(exact), frozenset(any_port), tuple(domains))

    def allows(self, header: str | None) -> bool:
        """May a request with this ``Host`` header (None: none) be answered?"""
        if self.any_host:
            return True
        if header is None:
            return False
        parsed = parse_host(header)
        if parsed is None:
            return False
        host = parsed[0]
        if parsed in self.exact or host in self.any_port:
            return True
        return any(host == d[1:] or host.endswith(d) for d in self.domains)


def default_hosts(
    bound: tuple[str, int] | None,
    local: tuple[str, int | None] | None,
    *,
    any_port_loopback: bool = False,
) -> HostPolicy:
    """The default allow-list: the loopback names, ``bound`` (the address the server
    listens on, when known) and ``local`` (the address the request arrived on), with
    the port of ``bound`` (else ``local``) or no port. ``any_port_loopback``: the loopback
    names with any port (for an ASGI app, which cannot know the port it is reached on
    through a proxy)."""
    port = bound[1] if bound is not None else (local[1] if local is not None else None)
    names = [_address_name(a[0]) for a in (bound, local) if a is not None and a[0]]
    exact: set[tuple[str, int | None]] = set()
    for name in (*LOOPBACK_NAMES, *names):
        exact.add((name, None))
        if port is not None:
            exact.add((name, port))
    any_port = frozenset(LOOPBACK_NAMES) if any_port_loopback else frozenset()
    return HostPolicy(frozenset(exact), any_port)
