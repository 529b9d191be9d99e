"""Default consumer names of the broker sources: ``HOST-SLOT``, leased in the broker.

A worker given no name (no ``consumer`` param, no ``HEADWATER_CONSUMER``) takes the
lowest slot of its host that no live worker holds. The broker keeps one lease per name
(Redis: a key set with ``SET NX`` and a TTL, :class:`._redis.ConsumerLease`; NATS: an
entry of a JetStream key-value bucket whose TTL is the bucket's,
:class:`._nats_slots.SlotLease`), which its holder refreshes while it runs and deletes
when it stops cleanly. What a broker does to create, read and replace a lease is behind
:class:`SlotStore`; which name to take is :func:`claim_slot`, the same for both:

* the name this worker held before, if any (a lease lost during an outage), then
  ``HOST-0``, ``HOST-1``, ... up to :data:`MAX_SLOTS`;
* a name nobody holds is taken with create-if-absent;
* a name whose lease holds this worker's own value (a retried claim) is renewed;
* a name held by a process of this host that no longer runs (its pid is gone, or
  belongs to a process started at another time, as in a restarted container) is taken
  over with compare-and-set, so a worker restarted on the same host gets its
  predecessor's name at once;
* names of live workers, and of other hosts, are skipped (the latter are only taken
  once their lease expired).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from typing import Final, Protocol, TypeVar

__all__ = ["MAX_SLOTS", "Holder", "SlotStore", "claim_slot"]

MAX_SLOTS: Final = 1024
"""Most default consumer names per host and group (``HOST-0`` .. ``HOST-1023``)."""

V = TypeVar("V")


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


def _pid_namespace() -> int | None:
    """The inode of this process's PID namespace (Linux), None where there is none."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


class Holder:
    """Who holds a lease: this host and process, as the JSON text stored in the lease
    (``{"host", "pid", "start", "pidns", "token"}``; the token tells two leases of one
    process apart). A lease is taken over at once only from a process of the same host
    and PID namespace that is gone; any other holder keeps it until its TTL runs out."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.start = _process_start(self.pid)
        self.pidns = _pid_namespace()
        self.value = json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "start": self.start,
                "pidns": self.pidns,
                "token": secrets.token_hex(8),
            }
        )

    def names(self, preferred: str | None) -> list[str]:
        """The names to try, in order: ``preferred`` first, then every slot of the host."""
        names = [preferred] if preferred else []
        return names + [f"{self.host}-{slot}" for slot in range(MAX_SLOTS)]

    def owns(self, raw: bytes | str) -> bool:
        """True when the lease value ``raw`` is this holder's."""
        return raw in (self.value, self.value.encode())

    def stale(self, raw: bytes | str) -> bool:
        """True when the lease value ``raw`` names a process of this host that is gone."""
        try:
            held = json.loads(raw)
            pid = int(held["pid"])
        except (ValueError, TypeError, KeyError):
            return False
        if held.get("host") != self.host:
            return False
        if self.pidns is None or held.get("pidns") != self.pidns:
            # a process of another PID namespace (a container sharing this host name):
            # its pid means nothing here, so only the lease's TTL can tell it is gone
            return False
        start = held.get("start")
        if pid == self.pid:
            # this process (another source of it), or an earlier life with the same pid
            # (a restarted container): only a different start time tells them apart
            return start is not None and self.start is not None and start != self.start
        if not _alive(pid):
            return True
        return start is not None and _process_start(pid) not in (None, start)


class SlotStore(Protocol[V]):
    """A broker's leases of one group's names, written with one :class:`Holder`'s value.

    ``V`` is what compare-and-set compares: the value read (Redis), or the revision
    (NATS KV).
    """

    async def create(self, name: str) -> bool:
        """Lease ``name`` if nobody holds it; False when somebody does."""

    async def read(self, name: str) -> tuple[bytes | str, V] | None:
        """The value of ``name``'s lease and its version; None when nobody holds it."""

    async def take(self, name: str, version: V) -> bool:
        """Replace ``name``'s lease (renewing its TTL) if it is still at ``version``."""


async def claim_slot(holder: Holder, store: SlotStore[V], preferred: str | None = None) -> str:
    """Lease a name for ``holder`` (see the module docstring); returns it."""
    for name in holder.names(preferred):
        if await store.create(name):
            return name
        held = await store.read(name)
        if held is None:  # expired or released between the two calls
            if await store.create(name):
                return name
            continue
        raw, version = held
        if (holder.owns(raw) or holder.stale(raw)) and await store.take(name, version):
            return name
    raise RuntimeError(
        f"no free consumer name: {MAX_SLOTS} workers of this host hold one already "
        "(name each worker: headwater worker --consumer NAME, or HEADWATER_CONSUMER)"
    )
