"""Redis and NATS servers that a test starts, kills and restarts itself (fault tests).

Each server runs on a free port of 127.0.0.1 with its data in the test's temporary
directory, persisted (Redis: AOF with ``appendfsync always``, so that what Redis
acknowledged survives a SIGKILL; NATS: JetStream file storage), so a restart finds the
data it had. The binaries are looked up on ``PATH`` and at the usual Debian paths; when
one is missing the test is skipped with the reason, or fails under
``HEADWATER_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import _unavailable, need

__all__ = ["NatsServer", "RedisServer", "free_port", "nats_server", "redis_server"]

_CANDIDATES = {
    "redis-server": ("/usr/bin/redis-server", "/usr/local/bin/redis-server"),
    "nats-server": ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"),
}


def _binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in _CANDIDATES[name] if Path(p).is_file()), None)
    if found is None:
        _unavailable(f"{name} is not installed (needed to start, kill and restart a server)")
    assert found is not None
    return found


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    for _ in range(500):  # bounded: 10 s
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not listen on port {port} within 10 s")


class _Server:
    """A server process that can be killed (SIGKILL) and started again on its port."""

    name = ""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, port: int, data: Path) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start (again) on the same port, with the same data."""
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            self.argv(self.port, self.dir), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        _wait_listening(self.port, self.proc, f"{self.name} on port {self.port}")
        self.wait_ready()

    def wait_ready(self) -> None:
        """Return once the server answers requests (not only accepts connections)."""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def probe(self) -> _Server:
        """A copy of the (stopped) server's data served on another port, to look at what
        it held when killed without letting the clients of this one reconnect."""
        assert self.proc is None or self.proc.poll() is not None, "kill it first"
        copy = type(self)(self.binary, self.root / f"probe-{free_port()}")
        shutil.rmtree(copy.dir)
        shutil.copytree(self.dir, copy.dir)
        copy.start()
        return copy


class RedisServer(_Server):
    """``redis-server`` with AOF (``appendfsync always``) in a directory of its own."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def argv(self, port: int, data: Path) -> list[str]:
        return [
            self.binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]

    def client(self) -> Any:
        """A synchronous client of this server."""
        import redis

        return redis.Redis.from_url(self.url)

    def wait_ready(self) -> None:
        """Return once the AOF is loaded (``PING`` answers instead of ``LOADING``)."""
        import redis

        client = self.client()
        try:
            for _ in range(500):  # bounded: 10 s
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    time.sleep(0.02)
            raise AssertionError(f"redis on port {self.port} still loading after 10 s")
        finally:
            client.close()


class NatsServer(_Server):
    """``nats-server -js`` with file storage in a directory of its own."""

    name = "nats"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self, port: int, data: Path) -> list[str]:
        return [self.binary, "-js", "-sd", str(data), "-p", str(port), "-a", "127.0.0.1"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test alone (free port, AOF in the test's directory)."""
    need("redis", "redis")
    server = RedisServer(_binary("redis-server"), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS server with JetStream of this test alone (free port, own storage)."""
    need("nats", "nats")
    server = NatsServer(_binary("nats-server"), tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.kill()
