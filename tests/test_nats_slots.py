"""Worker names of ``nats.jetstream`` sources leased in a JetStream KV bucket.

* Two ``headwater worker`` processes of one host lease ``HOST-0`` and ``HOST-1``; a
  clean stop deletes the lease at once and the restarted worker takes its name back; a
  SIGKILLed worker's lease expires after the bucket's TTL while the live worker's is
  refreshed; ``--consumer`` leases nothing.
* A lease lost (another worker took the name) or expired is leased again, saying so; a
  lease held by a dead process of this host is taken over (in process, real server).
* A server killed under a worker for longer than the TTL: the worker reconnects, leases
  its name again and goes on (a server the test starts itself).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker_servers import NatsServer, nats_server
from headwater.builtin_plugins._nats_slots import lease_key
from services import headwater_command, nats_url, plugin_env, stop, unique

__all__ = ["nats_server", "nats_url"]

HOST = socket.gethostname()
TTL = 3.0
"""The lease TTL of the tests' buckets (seconds)."""
OUTAGE = 3.0
"""Seconds the server stays down in the fault test (the fault itself, not a wait)."""


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms; fail after ``seconds``."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds:g}s waiting for {what}")


async def _leases(url: str, bucket: str, stream: str) -> dict[str, dict[str, Any]]:
    """Worker name -> its lease (the holder's JSON plus ``revision``), of ``stream``'s
    durable ``d``."""
    import nats
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        try:
            kv = await nc.jetstream().key_value(bucket)
            keys = await kv.keys()
        except (BucketNotFoundError, NoKeysError):
            return {}
        found: dict[str, dict[str, Any]] = {}
        for key in keys:
            if key.startswith(f"{stream}.d."):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:  # expired meanwhile
                    continue
                found[key.split(".", 2)[2]] = {
                    **json.loads(entry.value),
                    "revision": entry.revision,
                }
        return found
    finally:
        await nc.close()


async def _lease(url: str, bucket: str, stream: str, name: str) -> dict[str, Any] | None:
    """The lease of worker ``name`` read by its key (None: there is none), which does not
    depend on listing the bucket's keys (a listing may come back empty under load)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            entry = await kv.get(lease_key(stream, "d", name))
        except KeyNotFoundError:
            return None
        return {**json.loads(entry.value), "revision": entry.revision}
    finally:
        await nc.close()


async def _bucket_exists(url: str, bucket: str) -> bool:
    import nats
    from nats.js.errors import BucketNotFoundError

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        await nc.jetstream().key_value(bucket)
        return True
    except BucketNotFoundError:
        return False
    finally:
        await nc.close()


async def _publish(url: str, stream: str, n: int) -> None:
    """Publish ``{"n": i}`` for i < n to ``STREAM.x`` (creating the stream as the
    workers' ``create_stream`` does)."""
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        subject = f"{stream}.x"
        futures = [await js.publish_async(subject, json.dumps({"n": i}).encode()) for i in range(n)]
        for future in futures:
            await future
    finally:
        await nc.close()


async def _delete(url: str, stream: str, bucket: str) -> None:
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        for delete in (lambda: js.delete_stream(stream), lambda: js.delete_key_value(bucket)):
            try:
                await delete()
            except Exception:  # never created, or gone
                continue
    finally:
        await nc.close()


class Workers:
    """``headwater worker`` processes of one pipeline (a unique stream and lease bucket)."""

    def __init__(self, tmp_path: Path, url: str, *, rate: float | None = None) -> None:
        self.tmp, self.url = tmp_path, url
        self.stream = unique("slots").replace("-", "_")
        self.bucket = unique("leases").replace("-", "_")
        source = {
            "action": "nats.jetstream",
            "params": {
                "url": url,
                "stream": self.stream,
                "durable": "d",
                "create_stream": [f"{self.stream}.>"],
                "fetch_timeout": 0.2,
                "lease_bucket": self.bucket,
                "lease_ttl": TTL,
            },
        }
        spec: dict[str, Any] = {
            "name": "slots",
            "sources": {"in": source},
            "sinks": [{"sink": "jsonl", "params": {"path": "out.jsonl"}}],
            "checkpoint": {"store": "memory", "every_seconds": 0.2},
        }
        if rate is not None:
            spec["steps"] = [{"transformer": "throttle", "params": {"rate": rate, "burst": 20}}]
        self.path = tmp_path / "pipeline.yaml"
        self.path.write_text(json.dumps(spec), encoding="utf-8")
        self.env = plugin_env(tmp_path)
        self.env.pop("HEADWATER_CONSUMER", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        args = ["worker", str(self.path), f"--set=sinks.0.params.path={name}.jsonl", *extra]
        with open(self.tmp / f"{name}.err", "ab") as err:
            proc = subprocess.Popen(
                headwater_command(*args),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
                cwd=self.tmp,
            )
        self.procs[name] = proc
        return proc

    def err(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")

    def out(self, name: str) -> list[int]:
        path = self.tmp / f"{name}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [json.loads(line)["n"] for line in lines if line.endswith("}")]

    def leases(self) -> dict[str, dict[str, Any]]:
        return anyio.run(_leases, self.url, self.bucket, self.stream)

    def lease(self, name: str) -> dict[str, Any] | None:
        return anyio.run(_lease, self.url, self.bucket, self.stream, name)

    def name_of(self, worker: str) -> str | None:
        """The name leased by ``worker``'s process, if any."""
        pid = self.procs[worker].pid
        return next((n for n, lease in self.leases().items() if lease["pid"] == pid), None)

    def leased(self, worker: str) -> str:
        """Wait until ``worker`` holds a lease; returns its name."""
        wait_for(lambda: self.name_of(worker) is not None, 60, f"worker {worker}'s lease")
        name = self.name_of(worker)
        assert name is not None
        return name

    def terminate(self, name: str) -> None:
        """SIGTERM ``name``: it drains and exits 0."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {name} did not exit within 30 s of SIGTERM")
        assert code == 0, f"worker {name} exited with {code}:\n{self.err(name)}"

    def close(self) -> None:
        for proc in self.procs.values():
            stop(proc)
        anyio.run(_delete, self.url, self.stream, self.bucket)


@pytest.fixture
def workers(tmp_path: Path, nats_url: str) -> Iterator[Workers]:
    group = Workers(tmp_path, nats_url)
    try:
        yield group
    finally:
        group.close()


def test_workers_of_one_host_lease_their_own_slots(workers: Workers) -> None:
    workers.start("a")
    assert workers.leased("a") == f"{HOST}-0"
    workers.start("b")
    assert workers.leased("b") == f"{HOST}-1"

    # A clean stop deletes the lease before the process exits; the restart takes it back.
    workers.terminate("b")
    assert workers.lease(f"{HOST}-1") is None
    assert workers.lease(f"{HOST}-0") is not None
    workers.start("b2")
    assert workers.leased("b2") == f"{HOST}-1"

    # SIGKILL: nobody deletes the lease, it expires after the bucket's TTL, while the
    # live worker's lease (refreshed every TTL / 3) stays.
    held = workers.lease(f"{HOST}-0")
    assert held is not None
    revision = held["revision"]
    workers.procs["b2"].kill()
    workers.procs["b2"].wait(timeout=10)
    wait_for(
        lambda: workers.lease(f"{HOST}-1") is None, 10 * TTL, "the killed worker's lease to expire"
    )
    kept = workers.lease(f"{HOST}-0")
    assert kept is not None
    assert kept["pid"] == workers.procs["a"].pid
    assert kept["revision"] > revision
    err = workers.err("a")
    assert "had expired" not in err, err  # never lost
    assert "was lost" not in err, err

    workers.terminate("a")
    assert workers.lease(f"{HOST}-0") is None
    assert workers.lease(f"{HOST}-1") is None


def test_an_explicit_consumer_name_leases_nothing(workers: Workers) -> None:
    workers.start("named", "--consumer", "billing-7", "-v")
    anyio.run(_publish, workers.url, workers.stream, 3)
    wait_for(lambda: len(workers.out("named")) == 3, 60, "the worker to write the messages")
    workers.terminate("named")
    assert "worker billing-7 bound to durable consumer d" in workers.err("named")
    assert anyio.run(_bucket_exists, workers.url, workers.bucket) is False


# -- in process ------------------------------------------------------------------------


class _Source:
    """What a lease uses of its ``nats.jetstream`` source, over a test's connection."""

    def __init__(self, nc: Any, url: str) -> None:
        from headwater.core.reconnect import Link

        self.js = nc.jetstream()
        self.log = logging.getLogger("headwater.nats")
        self.link = Link("nats.jetstream source", url, log=self.log)

    def transient(self, exc: BaseException) -> bool:
        from headwater.builtin_plugins.nats_jetstream import transient

        return transient(exc)

    async def reconnect(self) -> None:
        return None


def test_a_lost_lease_is_leased_again_and_a_dead_holder_is_taken_over(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from headwater.builtin_plugins._nats_slots import SlotLease

    stream, bucket = unique("slots").replace("-", "_"), unique("leases").replace("-", "_")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    pidns = os.stat("/proc/self/ns/pid").st_ino
    stale = json.dumps(
        {"host": HOST, "pid": int(dead.stdout), "start": None, "pidns": pidns, "token": "x"}
    )
    elsewhere = stale.replace(HOST, "elsewhere")

    async def scenario() -> list[str | None]:
        import nats

        nc = await nats.connect(nats_url, allow_reconnect=False)
        source = _Source(nc, nats_url)
        leases: list[SlotLease] = []

        def lease() -> SlotLease:
            leases.append(SlotLease(source, stream, "d", bucket=bucket, ttl=30))
            return leases[-1]

        try:
            first = lease()
            names: list[str | None] = [await first.claim()]  # HOST-0
            kv = await source.js.key_value(bucket)
            await kv.put(first.key(f"{HOST}-1"), stale.encode())
            await kv.put(first.key(f"{HOST}-2"), elsewhere.encode())
            names.append(await lease().claim())  # the dead process's HOST-1, at once
            names.append(await lease().claim())  # HOST-2 is another host's: HOST-3
            # another worker took HOST-0 (first's lease had expired): first moves on
            await kv.put(first.key(f"{HOST}-0"), elsewhere.encode())
            await first.refresh()
            names.append(first.name)
            # first's lease expired and nobody took the name: it takes it again
            await kv.delete(first.key(str(first.name)))
            await first.refresh()
            names.append(first.name)
            await first.refresh()  # and refreshes it as usual
            names.append(first.name)
            for held in leases:
                await held.release()
            names.append(str(sorted(await _leases(nats_url, bucket, stream))))
            return names
        finally:
            await nc.close()
            await _delete(nats_url, stream, bucket)

    with caplog.at_level(logging.WARNING, "headwater.nats"):
        names = anyio.run(scenario)
    h = HOST
    others = str(sorted([f"{h}-0", f"{h}-2"]))  # the other host's leases stay
    assert names == [f"{h}-0", f"{h}-1", f"{h}-3", f"{h}-4", f"{h}-4", f"{h}-4", others]
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"worker name {h}-0 was lost" in m and f"this worker is {h}-4 now" in m for m in messages
    )
    assert any(f"the lease of worker name {h}-4 had expired" in m for m in messages)
    assert len(messages) == 2, messages


# -- a server outage -------------------------------------------------------------------


def test_the_lease_outlives_a_server_outage_longer_than_its_ttl(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 3000
    group = Workers(tmp_path, nats_server.url, rate=500)
    try:
        group.start("a")
        name = group.leased("a")
        anyio.run(_publish, nats_server.url, group.stream, n)
        wait_for(lambda: len(group.out("a")) >= 300, 60, "the worker to write")
        nats_server.kill()
        killed_at = time.monotonic()
        wait_for(
            lambda: "connection to" in group.err("a") and " lost " in group.err("a"), 30, "the loss"
        )
        written = len(group.out("a"))
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed_at)))
        nats_server.start()
        wait_for(lambda: "reconnected to" in group.err("a"), 60, "the worker to reconnect")
        # The entry expired while the server was down (OUTAGE > TTL): the next refresh
        # finds it gone, and the worker leases its name again.
        wait_for(lambda: "leased it again" in group.err("a"), 30, "the lease to be renewed")
        assert group.name_of("a") == name
        wait_for(lambda: len(group.out("a")) >= n, 60, "every message to be written")
        assert group.procs["a"].poll() is None
        assert written < n, "everything was written before the outage: nothing tested"
        group.terminate("a")
        assert group.lease(name) is None
    finally:
        for proc in group.procs.values():
            stop(proc)
    err = group.err("a")
    assert f"the lease of worker name {name} had expired" in err, err
    assert f"worker name {name} was lost" not in err
