"""The hosts the database and broker connectors may reach: ``SandboxPolicy.hosts``.

As for the HTTP connectors (:mod:`.http._hosts`, whose matching this reuses), an address
a pipeline sets (a PostgreSQL connection string, an ``amqp://`` or ``mqtt://`` URL) is
checked when the params are validated, against the policy in pydantic's validation
context (naming the param), and again when the component connects, against
``ctx.policy``. Without ``HEADWATER_ALLOW_HOSTS`` (or the server's ``sandbox.hosts``)
only loopback addresses are allowed; a PostgreSQL connection through a Unix socket (no
host, or a host that is a path) stays on this machine and is allowed.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationInfo

from headwater.core.optional import MissingDependency, require
from headwater.core.policy import SandboxError, SandboxPolicy, policy_of

__all__ = ["check_dsn", "check_dsn_param", "check_url", "check_url_param"]


def _refuse(policy: SandboxPolicy, host: str, param: str | None) -> SandboxError:
    where = f"{param}: " if param else ""
    allowed = ", ".join(policy.hosts) if policy.hosts else "loopback addresses only"
    return SandboxError(
        f"{where}host {host!r} is not allowed by the sandbox; allowed: {allowed} (the "
        "operator sets HEADWATER_ALLOW_HOSTS or the server's sandbox.hosts)"
    )


def _allowed(policy: SandboxPolicy, host: str, port: int | None) -> bool:
    from .http._hosts import host_allowed

    return host_allowed(policy, host, port)


def check_url(policy: SandboxPolicy, url: str, *, param: str | None = None) -> str:
    """``url`` when its host is allowed (or it has none: the client's default, loopback);
    else :class:`~headwater.core.policy.SandboxError`."""
    if policy.unrestricted:
        return url
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        where = f"{param}: " if param else ""
        raise SandboxError(f"{where}{url!r} is not a valid URL: {exc}") from None
    if host and not _allowed(policy, host, port):
        raise _refuse(policy, host, param)
    return url


def check_dsn(
    policy: SandboxPolicy, dsn: str, *, param: str | None = None, unparsable_ok: bool = False
) -> str:
    """A PostgreSQL connection string whose every host is allowed; else
    :class:`~headwater.core.policy.SandboxError`. A string that is no connection string
    is refused too, unless ``unparsable_ok`` (at validation, where it may still hold a
    ``${VAR}`` to substitute: the check when connecting refuses it)."""
    if policy.unrestricted:
        return dsn
    conninfo = require("psycopg.conninfo", "postgres", param or "postgres")
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except Exception as exc:
        if unparsable_ok:
            return dsn
        where = f"{param}: " if param else ""
        raise SandboxError(f"{where}not a PostgreSQL connection string: {exc}") from None
    hosts = str(parts.get("host") or "").split(",")
    ports = str(parts.get("port") or "").split(",")
    for i, host in enumerate(h.strip() for h in hosts):
        if not host or host.startswith("/") or host.startswith("@"):
            continue  # a Unix socket: this machine
        port = ports[min(i, len(ports) - 1)].strip()
        if not _allowed(policy, host, int(port) if port.isdigit() else None):
            raise _refuse(policy, host, param)
    return dsn


def check_url_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator of a broker URL (no policy in the context: no check)."""
    policy = policy_of(info.context)
    if policy is not None and isinstance(value, str):
        check_url(policy, value)
    return value


def check_dsn_param(value: Any, info: ValidationInfo) -> Any:
    """Params validator of a PostgreSQL connection string (needs psycopg to parse it;
    without it the component reports the missing extra when it runs)."""
    policy = policy_of(info.context)
    if policy is not None and isinstance(value, str):
        # without psycopg the component reports the missing extra when it runs
        with contextlib.suppress(MissingDependency):
            check_dsn(policy, value, unparsable_ok=True)
    return value
