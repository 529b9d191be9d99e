"""Redis connections for whatever in headwater talks to Redis (the built-in Redis plugins,
the stream bridge of serve nodes): one way to make a client, one list of transient
errors.

The client's own retries are off, so that every retry goes through
:mod:`headwater.core.reconnect` (one policy, one log line per change of state). Needs
the ``redis`` package (``pip install 'headwater[redis]'``), imported when used.
"""

from __future__ import annotations

from typing import Any, Final

from .optional import require

__all__ = ["redis_client", "redis_transient"]

_TRANSIENT_REPLIES: Final = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Error replies of a server that is restarting or failing over: retried like a lost
connection."""


def redis_client(url: str, component: str, *, timeout: float | None = None) -> Any:
    """An asyncio client for ``url`` with the client library's own retries off.

    ``timeout`` bounds every socket read (None: none, for blocking reads whose wait is
    bounded by the command itself); the connection attempt is bounded to 5 s, and TCP
    keepalive finds a silent peer (a network partition) even without a timeout.
    ``component`` names the user in the error raised when ``redis`` is not installed.
    """
    aioredis = require("redis.asyncio", "redis", component)
    retry = require("redis.asyncio.retry", "redis", component)
    backoff = require("redis.backoff", "redis", component)
    return aioredis.Redis.from_url(
        url,
        retry=retry.Retry(backoff.NoBackoff(), 0),
        socket_timeout=timeout,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
    )


def redis_transient(exc: BaseException, *, missing_group: bool = False) -> bool:
    """True for errors of an unreachable or restarting server (retry them); with
    ``missing_group``, also ``NOGROUP`` (a consumer group gone with a server restarted
    without persistence: the caller creates it again)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    try:
        from redis import exceptions
    except ImportError:  # pragma: no cover - the caller imported it already
        return False
    if isinstance(exc, exceptions.ConnectionError | exceptions.TimeoutError):
        return True
    if isinstance(exc, exceptions.ResponseError):
        text = str(exc)
        if text.startswith(_TRANSIENT_REPLIES):
            return True
        return missing_group and text.startswith("NOGROUP")
    return False
