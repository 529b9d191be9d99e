"""``nats.jetstream``'s default worker name: ``HOST-SLOT``, leased in a JetStream KV bucket.

Every worker binding a durable pull consumer shares it, so the name of a worker only
appears in its logs (and in the source's status); still, two live workers never share
one, and a worker restarted on the same host takes its predecessor's, as with Redis.

* The leases are the entries of the key-value bucket ``lease_bucket`` (default
  :data:`BUCKET`, created when missing: file storage, one revision per key, entries
  expiring after ``lease_ttl`` seconds, 30 by default). Its key for a name is
  ``STREAM.DURABLE.NAME`` (characters a key cannot hold written ``=XX``), its value the
  holder (host, pid, process start, a random token: :class:`~._slots.Holder`).
* The slot is chosen as for every broker (:func:`~._slots.claim_slot`): a free name is
  taken with ``create`` (create-if-absent), a stale one of this host with ``update``
  at the revision read (compare-and-set).
* A heartbeat task updates the entry at its last revision every third of the bucket's
  TTL, through the source's :class:`~headwater.core.reconnect.Link`: during an outage it
  waits and reconnects with the source (the outage is logged once), and never ends the
  run itself. An update refused for a wrong revision means the lease was lost (it
  expired during an outage, and maybe another worker took the name): the worker says so
  and leases a name again, the same one when it is still free.
* A clean stop deletes the entry (at its revision: never another worker's lease); a
  killed worker's entry expires after the TTL.

The TTL is the bucket's: a bucket that exists keeps its own (its refresh cadence
follows it), whatever ``lease_ttl`` says.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any, Final, Protocol

import anyio

from headwater.core.reconnect import BrokerUnavailable, Link, retry

from ._brokers import require
from ._slots import Holder, claim_slot

__all__ = ["BUCKET", "DEFAULT_TTL", "SlotLease", "Source", "lease_key"]

BUCKET: Final = "headwater_worker_slots"
"""Default KV bucket of the worker-name leases (param ``lease_bucket``)."""

DEFAULT_TTL: Final = 30.0
"""Seconds a lease lives without a refresh, in a bucket created by headwater."""

_KEY_SAFE: Final = re.compile(r"[^-/_a-zA-Z0-9.]")

Logger = logging.Logger | logging.LoggerAdapter[Any]


def _errors() -> Any:
    return require("nats.js.errors", "nats", "nats.jetstream")


def _escape(part: str) -> str:
    """``part`` with every character a KV key cannot hold written ``=XX`` (its UTF-8)."""
    return _KEY_SAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), part)


def lease_key(stream: str, durable: str, name: str) -> str:
    """The key of worker ``name``'s lease: ``STREAM.DURABLE.NAME``."""
    return ".".join(_escape(p.strip(".")) or "_" for p in (stream, durable, name))


class _KvSlots:
    """:class:`~._slots.SlotStore` on a KV bucket (the version compared is the revision);
    remembers the revision of the lease it last wrote."""

    def __init__(self, kv: Any, key: Callable[[str], str], value: bytes) -> None:
        self.kv = kv
        self.key = key
        self.value = value
        self.revision = 0

    async def create(self, name: str) -> bool:
        try:
            self.revision = int(await self.kv.create(self.key(name), self.value))
        except _errors().KeyWrongLastSequenceError:
            return False
        return True

    async def read(self, name: str) -> tuple[bytes | str, int] | None:
        try:
            entry = await self.kv.get(self.key(name))
        except _errors().KeyNotFoundError:
            return None
        return entry.value or b"", int(entry.revision or 0)

    async def take(self, name: str, version: int) -> bool:
        try:
            self.revision = int(await self.kv.update(self.key(name), self.value, last=version))
        except _errors().KeyWrongLastSequenceError:
            return False
        return True


class Source(Protocol):
    """What the lease uses of its source: the connection and how it rides out outages."""

    @property
    def js(self) -> Any:
        """The current JetStream context (a new one after each reconnection)."""

    @property
    def link(self) -> Link:
        """The connection's state through outages (shared with the reads)."""

    @property
    def log(self) -> Logger:
        """Where its messages go."""

    def transient(self, exc: BaseException) -> bool:
        """True for an error worth retrying."""

    async def reconnect(self) -> None:
        """Connect again if needed."""


class SlotLease:
    """One ``nats.jetstream`` source's worker name, leased in a KV bucket (see the module).

    It uses the ``source``'s connection, link and reconnection, so that the heartbeat
    rides out an outage with the reads.
    """

    def __init__(
        self,
        source: Source,
        stream: str,
        durable: str,
        *,
        bucket: str = BUCKET,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.bucket = bucket
        self.ttl = ttl
        """The bucket's TTL (``ttl`` until the bucket is found)."""
        self.holder = Holder()
        self.name: str | None = None
        """The leased name (None before the first claim)."""
        self.revision = 0
        """The revision of our entry (what the next refresh must find)."""
        self.lost = 0
        """Times the lease was found lost and leased again."""
        self._source = source
        self._log = source.log
        self._value = self.holder.value.encode()
        self._kv: Any = None
        self._kv_js: Any = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between two refreshes: a third of the TTL."""
        return (self.ttl if self.ttl > 0 else DEFAULT_TTL) / 3

    def key(self, name: str) -> str:
        """The KV key of ``name``'s lease."""
        return lease_key(self.stream, self.durable, name)

    async def claim(self) -> str:
        """Lease a name (again: the same one while it is ours) and keep it refreshed.

        Called once connected; a transient error propagates (the caller retries), any
        other says that no name could be leased."""
        async with self._lock:
            try:
                await self._claim()
            except Exception as exc:
                if self._source.transient(exc):
                    raise
                raise RuntimeError(
                    f"nats.jetstream: cannot lease a worker name in the KV bucket "
                    f"{self.bucket!r} ({type(exc).__name__}: {exc}); allow it, or name the "
                    "worker (headwater worker --consumer NAME)"
                ) from exc
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._heartbeat(), name=f"lease {self.name}")
        assert self.name is not None
        return self.name

    async def _claim(self) -> None:
        kv = await self._bucket()
        store = _KvSlots(kv, self.key, self._value)
        try:
            self.name = await claim_slot(self.holder, store, self.name)
        except Exception:
            self._kv = None  # bound again (created if it is gone) at the next attempt
            raise
        self.revision = store.revision

    async def _bucket(self) -> Any:
        """The bucket, bound through the current connection (created when missing)."""
        js = self._source.js
        if self._kv is not None and self._kv_js is js:
            return self._kv
        errors = _errors()
        try:
            kv = await js.key_value(self.bucket)
        except errors.BucketNotFoundError:
            try:
                kv = await js.create_key_value(
                    bucket=self.bucket,
                    ttl=self.ttl,
                    history=1,
                    description="headwater worker names (HOST-SLOT) leased by nats.jetstream",
                )
            except errors.BadRequestError:  # created meanwhile by another worker
                kv = await js.key_value(self.bucket)
        ttl = float((await kv.status()).ttl or 0)
        if ttl <= 0:
            self._log.warning(
                "nats.jetstream: the KV bucket %r has no TTL: the lease of a killed worker "
                "never expires (give the bucket a max age)",
                self.bucket,
            )
        self.ttl = ttl
        self._kv, self._kv_js = kv, js
        return kv

    async def refresh(self) -> None:
        """Renew the lease at its revision; lease a name again if it was lost."""
        async with self._lock:
            try:
                kv = await self._bucket()
                self.revision = int(
                    await kv.update(self.key(self.name or ""), self._value, last=self.revision)
                )
                return
            except _errors().KeyWrongLastSequenceError:
                pass
            except Exception:
                self._kv = None
                raise
            old = self.name
            await self._claim()
            self.lost += 1
        if self.name == old:
            self._log.warning(
                "nats.jetstream: the lease of worker name %s had expired (not refreshed "
                "for the %gs TTL of bucket %s); leased it again",
                old,
                self.ttl,
                self.bucket,
            )
        else:
            self._log.warning(
                "nats.jetstream: worker name %s was lost (its lease expired while this "
                "worker could not refresh it, and another worker took it); this worker is "
                "%s now",
                old,
                self.name,
            )

    async def _heartbeat(self) -> None:
        """Refresh every :attr:`interval` until :meth:`release`; never raises."""
        while True:
            await anyio.sleep(self.interval)
            source = self._source
            try:
                await retry(
                    source.link,
                    self.refresh,
                    transient=source.transient,
                    reconnect=source.reconnect,
                )
            except BrokerUnavailable:
                continue  # the source's reads share the link: they fail the run
            except Exception as exc:
                self._log.warning(
                    "nats.jetstream: refreshing the lease of worker name %s failed (%s: %s); "
                    "trying again in %.1fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    self.interval,
                )

    async def release(self) -> None:
        """Stop refreshing and delete the lease (a clean stop), if it is still ours."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.name is None:
            return
        with anyio.move_on_after(2):
            try:
                kv = await self._bucket()
                await kv.delete(self.key(self.name), last=self.revision)
            except Exception as exc:  # it expires after the TTL
                self._log.debug(
                    "nats.jetstream: releasing worker name %s failed: %s", self.name, exc
                )
