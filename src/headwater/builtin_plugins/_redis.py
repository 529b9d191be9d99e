"""What the Redis components (``redis.stream`` source and sink, ``redis`` store) share.

* :func:`client`: an asyncio client whose own retries are off, so that every retry goes
  through :mod:`headwater.core.reconnect`; :func:`transient` says which errors are worth
  retrying (both from :mod:`headwater.core.redis_conn`, shared with the stream bridge).
* :class:`ConsumerLease`: a default consumer name (``HOST-SLOT``) leased in Redis with
  ``SET NX`` and a TTL, so that two live workers never share a name, and a worker
  restarted on the same host takes its predecessor's name (and so its pending entries).
* :data:`DELETE_IDLE_CONSUMERS`: deletes, atomically, the consumers of a group that hold
  nothing and have been idle long enough.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Any, Final

from headwater.core.redis_conn import redis_client, redis_transient

from ._brokers import require

__all__ = [
    "DELETE_IDLE_CONSUMERS",
    "ConsumerLease",
    "client",
    "redis_asyncio",
    "transient",
]


def redis_asyncio(component: str) -> Any:
    """``redis.asyncio``, or an error naming the extra to install."""
    return require("redis.asyncio", "redis", component)


def client(url: str, component: str, *, timeout: float | None = None) -> Any:
    """:func:`headwater.core.redis_conn.redis_client` (retries off: see the module)."""
    return redis_client(url, component, timeout=timeout)


def transient(exc: BaseException, *, missing_group: bool = False) -> bool:
    """:func:`headwater.core.redis_conn.redis_transient`."""
    return redis_transient(exc, missing_group=missing_group)


# ---------------------------------------------------------------------------------------
# consumer names
# ---------------------------------------------------------------------------------------

_TAKE_OVER: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""
"""Replace a lease's value only if it is still ``ARGV[1]`` (compare and set)."""

_REFRESH: Final = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not held then
  if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
end
return 0
"""
"""Extend our lease (or take it again if it expired meanwhile); 0: someone else has it."""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

MAX_SLOTS: Final = 1024
"""Most default consumer names per host and group (``HOST-0`` .. ``HOST-1023``)."""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), if the system says."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class ConsumerLease:
    """The default consumer name of a worker: ``HOST-SLOT``, leased in Redis.

    The lowest free slot is taken with ``SET key VALUE NX PX ttl`` (the key is
    ``PREFIX STREAM:GROUP:NAME``), and refreshed while the worker runs. A lease whose
    holder was a process of this host that no longer runs (its pid is gone, or belongs
    to a process started at another time, as in a restarted container) is taken over:
    a worker restarted on the same host gets its predecessor's name, and so reads the
    entries its predecessor left pending first. Leases of other hosts are only taken once
    expired.
    """

    def __init__(
        self, stream: str, group: str, *, prefix: str = "headwater:lease:", ttl: float = 30.0
    ) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.start = _process_start(self.pid)
        self.ttl_ms = max(1000, int(ttl * 1000))
        self._prefix = f"{prefix}{stream}:{group}:"
        self.value = json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "start": self.start,
                "token": secrets.token_hex(8),
            }
        )
        self.name: str | None = None
        self.refresh_due = 0.0

    def key(self, name: str) -> str:
        """The lease key of consumer ``name``."""
        return f"{self._prefix}{name}"

    def _stale(self, raw: bytes | str) -> bool:
        """True when the holder was a process of this host that is gone."""
        try:
            held = json.loads(raw)
            pid = int(held["pid"])
        except (ValueError, TypeError, KeyError):
            return False
        if held.get("host") != self.host:
            return False
        start = held.get("start")
        if pid == self.pid:
            # this process (another source of it), or an earlier life with the same pid
            # (a restarted container): only a different start time tells them apart
            return start is not None and self.start is not None and start != self.start
        if not _alive(pid):
            return True
        return start is not None and _process_start(pid) not in (None, start)

    async def acquire(self, client: Any) -> str:
        """Lease a name (the one held before, if any, else the lowest free slot)."""
        names = [self.name] if self.name else []
        names += [f"{self.host}-{slot}" for slot in range(MAX_SLOTS)]
        for name in names:
            key = self.key(name)
            if await client.set(key, self.value, nx=True, px=self.ttl_ms):
                return self._got(name)
            held = await client.get(key)
            if held is None:
                if await client.set(key, self.value, nx=True, px=self.ttl_ms):
                    return self._got(name)
                continue
            if held in (self.value, self.value.encode()):
                await client.pexpire(key, self.ttl_ms)
                return self._got(name)
            if self._stale(held) and await client.eval(
                _TAKE_OVER, 1, key, held, self.value, self.ttl_ms
            ):
                return self._got(name)
        raise RuntimeError(
            f"no free consumer name: {MAX_SLOTS} workers of this host hold one already "
            "(set `consumer` or headwater worker --consumer)"
        )

    def _got(self, name: str) -> str:
        self.name = name
        self.refresh_due = time.monotonic() + self.ttl_ms / 3000
        return name

    async def refresh(self, client: Any) -> bool:
        """Extend the lease; False when another worker holds the name now (this one
        was presumed dead: it must lease another name)."""
        assert self.name is not None
        ok = await client.eval(_REFRESH, 1, self.key(self.name), self.value, self.ttl_ms)
        self.refresh_due = time.monotonic() + self.ttl_ms / 3000
        return bool(ok)

    async def release(self, client: Any) -> None:
        """Give the name back (a clean stop): the next worker of this host may take it."""
        if self.name is not None:
            await client.eval(_RELEASE, 1, self.key(self.name), self.value)


DELETE_IDLE_CONSUMERS: Final = """
local deleted = {}
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(deleted, info['name'])
  end
end
return deleted
"""
"""Delete every consumer of group ``ARGV[1]`` with nothing pending, idle at least
``ARGV[2]`` ms, other than ``ARGV[3]``; returns their names. Atomic: no consumer can
read an entry between the check and the deletion (which would drop it from the
group's pending entries)."""
