"""Real PostgreSQL, RabbitMQ and Mosquitto servers for the connector tests.

Addresses come from ``HEADWATER_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), ``HEADWATER_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``) and ``HEADWATER_MQTT_URL`` (default
``mqtt://127.0.0.1:1883``). As in :mod:`services` (Redis and NATS), a test whose server
does not answer, or whose client library is missing, is skipped with the reason, and
fails instead under ``HEADWATER_REQUIRE_SERVICES=1``. Every table, queue, exchange and
topic a test creates is named by :func:`services.unique` and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services import _reachable, _unavailable, need, unique

__all__ = [
    "MosquittoServer",
    "amqp_url",
    "mosquitto_binary",
    "mosquitto_server",
    "mqtt_url",
    "pg_table",
    "postgres_dsn",
    "unique_table",
]

POSTGRES_URL = os.environ.get("HEADWATER_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("HEADWATER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MQTT_URL = os.environ.get("HEADWATER_MQTT_URL", "mqtt://127.0.0.1:1883")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The connection string of a reachable PostgreSQL server (psycopg installed)."""
    need("psycopg", "postgres")
    need("psycopg_pool", "postgres")
    problem = _reachable(POSTGRES_URL, 5432)
    if problem is None:
        import psycopg

        try:
            psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
        except psycopg.Error as exc:
            problem = str(exc).strip()
    if problem is not None:
        _unavailable(f"PostgreSQL ({POSTGRES_URL}) is not available: {problem}")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of a reachable RabbitMQ server (aio-pika installed)."""
    need("aio_pika", "amqp")
    problem = _reachable(AMQP_URL, 5672)
    if problem is not None:
        _unavailable(f"RabbitMQ ({AMQP_URL}) is not available: {problem}")
    return AMQP_URL


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """The URL of a reachable MQTT broker (paho-mqtt installed)."""
    need("paho.mqtt", "mqtt")
    problem = _reachable(MQTT_URL, 1883)
    if problem is not None:
        _unavailable(f"MQTT broker ({MQTT_URL}) is not available: {problem}")
    return MQTT_URL


def unique_table(prefix: str) -> str:
    """A table name no other test uses (``hwtest_PREFIX_RANDOM``: a plain identifier)."""
    return unique(prefix).replace("-", "_")


@pytest.fixture
def pg_table(postgres_dsn: str) -> Iterator[Any]:
    """Make unique table names with ``pg_table("prefix")``; each is dropped afterwards,
    with the sink checkpoints of the pipeline or table of that name."""
    import psycopg

    made: list[str] = []

    def make(prefix: str = "t") -> str:
        name = unique_table(prefix)
        made.append(name)
        return name

    yield make
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                conn.execute(
                    "DELETE FROM headwater_sink_checkpoints WHERE pipeline = %s OR sink_table = %s",
                    (name, name),
                )


# ---------------------------------------------------------------------------------------
# a Mosquitto of the test's own, to kill and restart
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoServer:
    """A Mosquitto on a free port of 127.0.0.1 with a configuration of its own (persistent
    sessions kept in the test's folder; no limit on queued messages)."""

    def __init__(self, binary: str, root: Path, **settings: Any) -> None:
        self.binary = binary
        self.root = root
        self.port = _free_port()
        self.conf = root / "mosquitto.conf"
        lines = {
            "listener": f"{self.port} 127.0.0.1",
            "allow_anonymous": "true",
            "persistence": "true",
            "persistence_location": f"{root}/",
            "max_queued_messages": "0",
            "log_dest": "none",
            **{k: str(v) for k, v in settings.items()},
        }
        if os.geteuid() == 0:  # else it drops to user mosquitto, who cannot write here
            lines["user"] = "root"
        self.conf.write_text("".join(f"{k} {v}\n" for k, v in lines.items()), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(500):  # bounded: 10 s
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited with {self.proc.returncode} at start")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise AssertionError(f"mosquitto did not listen on port {self.port} within 10 s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def mosquitto_binary() -> str:
    """The ``mosquitto`` program (the test is skipped, or fails, without it)."""
    need("paho.mqtt", "mqtt")
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()),
        None,
    )
    if binary is None:
        _unavailable("mosquitto is not installed (needed to run a broker of the test's own)")
    assert binary is not None
    return binary


@pytest.fixture
def mosquitto_server(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A running Mosquitto of the test's own (stopped afterwards)."""
    server = MosquittoServer(mosquitto_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
