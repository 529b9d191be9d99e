"""What the Redis components (``redis.stream`` source and sink, ``redis`` store) share.

* :func:`client`: an asyncio client whose own retries are off, so that every retry goes
  through :mod:`headwater.core.reconnect`; :func:`transient` says which errors are worth
  retrying (both from :mod:`headwater.core.redis_conn`, shared with the stream bridge).
* :class:`ConsumerLease`: a default consumer name (``HOST-SLOT``) leased in Redis with
  ``SET NX`` and a TTL, so that two live workers never share a name, and a worker
  restarted on the same host takes its predecessor's name (and so its pending entries);
  the slot is chosen as for every broker (:mod:`._slots`).
* :data:`DELETE_IDLE_CONSUMERS`: deletes, atomically, the consumers of a group that hold
  nothing and have been idle long enough.
"""

from __future__ import annotations

import time
from typing import Any, Final

from headwater.core.redis_conn import redis_client, redis_transient

from ._brokers import require
from ._slots import Holder, claim_slot

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


class _RedisSlots:
    """:class:`~._slots.SlotStore` of a :class:`ConsumerLease` (the version compared is
    the value read)."""

    def __init__(self, lease: ConsumerLease, client: Any) -> None:
        self.lease = lease
        self.client = client

    async def create(self, name: str) -> bool:
        lease = self.lease
        return bool(await self.client.set(lease.key(name), lease.value, nx=True, px=lease.ttl_ms))

    async def read(self, name: str) -> tuple[bytes | str, bytes | str] | None:
        held = await self.client.get(self.lease.key(name))
        return None if held is None else (held, held)

    async def take(self, name: str, version: bytes | str) -> bool:
        lease = self.lease
        key = lease.key(name)
        return bool(await self.client.eval(_TAKE_OVER, 1, key, version, lease.value, lease.ttl_ms))


class ConsumerLease:
    """The default consumer name of a worker: ``HOST-SLOT``, leased in Redis.

    The slot is chosen by :func:`~._slots.claim_slot` (the lowest free one; a lease of a
    process of this host that no longer runs is taken over, so a worker restarted on the
    same host gets its predecessor's name, and so reads the entries its predecessor left
    pending first). A lease is the key ``PREFIX STREAM:GROUP:NAME``, set with
    ``SET NX PX ttl`` and refreshed while the worker runs.
    """

    def __init__(
        self, stream: str, group: str, *, prefix: str = "headwater:lease:", ttl: float = 30.0
    ) -> None:
        self.holder = Holder()
        self.host = self.holder.host
        self.value = self.holder.value
        self.ttl_ms = max(1000, int(ttl * 1000))
        self._prefix = f"{prefix}{stream}:{group}:"
        self.name: str | None = None
        self.refresh_due = 0.0

    def key(self, name: str) -> str:
        """The lease key of consumer ``name``."""
        return f"{self._prefix}{name}"

    async def acquire(self, client: Any) -> str:
        """Lease a name (the one held before, if any, else the lowest free slot)."""
        name = await claim_slot(self.holder, _RedisSlots(self, client), self.name)
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
