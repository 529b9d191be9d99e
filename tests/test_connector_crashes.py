"""Crash tests of the connectors with real services: a ``headwater run`` process is
killed with SIGKILL again and again and resumed, as in :mod:`test_crash_resume` (whose
kill loop this reuses).

* PostgreSQL, transactional sink: ten kills, then every row exactly once.
* AMQP and MQTT (QoS 1) sources into the transactional SQLite sink: nothing lost, and
  each kill repeats at most the window of messages taken and not yet acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import headwater
import test_crash_resume as crash
from connector_services import (
    MosquittoServer,
    amqp_url,
    mosquitto_server,
    pg_table,
    postgres_dsn,
)
from test_amqp import Rabbit
from test_crash_resume import seed

__all__ = ["amqp_url", "mosquitto_server", "pg_table", "postgres_dsn", "seed"]

pytestmark = crash.pytestmark

PG_KILLS = 10
BROKER_KILLS = 5
MESSAGES = 10_000
WINDOW = 500
"""Prefetch (AMQP) and receive maximum (MQTT): messages handed out and not yet
acknowledged at any time."""
BROKER_CHECKPOINT = "{store: memory, every_items: 250, every_seconds: 0.2}"


@pytest.fixture
def fewer_kills(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set how many kills :func:`test_crash_resume.crash_and_resume` makes."""

    def set_kills(kills: int) -> None:
        monkeypatch.setattr(crash, "KILLS", kills)
        monkeypatch.setattr(crash, "EARLY_KILLS", max(1, kills // 5))

    return set_kills


def test_postgres_sink_is_exactly_once_across_kill_9(
    tmp_path: Path,
    postgres_dsn: str,
    pg_table: Callable[[str], str],
    seed: int,
    fewer_kills: Callable[[int], None],
) -> None:
    import psycopg

    fewer_kills(PG_KILLS)
    table = pg_table("crash")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(crash.line(i) + "\n" for i in range(crash.LINES)))
    sink = json.dumps({"dsn": postgres_dsn, "table": table, "columns": ["n", "k"]})
    (tmp_path / "p.yaml").write_text(
        crash.pipeline_yaml(table, source, None, f"{{sink: postgres, params: {sink}}}")
    )

    def committed_rows() -> int:
        try:
            with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=2) as conn:
                return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except psycopg.Error:  # not created yet
            return 0

    crashes = crash.crash_and_resume(tmp_path, committed_rows, crash.LINES, seed)
    assert crashes.mid_run >= PG_KILLS // 2, crashes
    with psycopg.connect(postgres_dsn) as conn:
        got = conn.execute(f"SELECT n, k FROM {table} ORDER BY n").fetchall()
    assert len(got) == crash.LINES, f"{len(got)} rows; {crashes}"
    assert [n for n, _ in got] == list(range(crash.LINES)), crashes  # each exactly once
    assert all(k == f"k{n % 7}" for n, k in got), crashes


def _sqlite_rows(db: Path) -> list[int]:
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return [int(n) for (n,) in conn.execute("SELECT n FROM t")]
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def _broker_pipeline(tmp_path: Path, name: str, source: dict[str, Any]) -> None:
    (tmp_path / "p.yaml").write_text(
        f"name: {name}\n"
        f"sources:\n  in: {json.dumps(source)}\n"
        "sinks:\n  - {sink: sqlite, params: {path: out.db, table: t, columns: [n]}}\n"
        f"checkpoint: {BROKER_CHECKPOINT}\n"
    )


def _check_at_least_once(tmp_path: Path, crashes: Any) -> None:
    got = _sqlite_rows(tmp_path / "out.db")
    assert set(got) == set(range(MESSAGES)), f"lost {MESSAGES - len(set(got))}; {crashes}"
    duplicates = len(got) - MESSAGES
    kills = sum("killed" in entry for entry in crashes.log)
    assert duplicates <= kills * WINDOW, f"{duplicates} duplicates, {kills} kills; {crashes}"
    print(f"{duplicates} duplicates after {kills} kills")


def test_amqp_source_loses_nothing_across_kill_9(
    tmp_path: Path, amqp_url: str, seed: int, fewer_kills: Callable[[int], None]
) -> None:
    fewer_kills(BROKER_KILLS)
    rabbit = Rabbit(amqp_url)
    try:
        queue = rabbit.queue("crash")
        source = {"url": amqp_url, "queue": queue, "prefetch": WINDOW, "idle_exit": 2}
        _broker_pipeline(tmp_path, queue, {"action": "amqp", "params": source})
        declare = {**source, "idle_exit": 0.2}
        spec = {
            "name": queue,
            "sources": {"in": {"action": "amqp", "params": declare}},
            "sinks": [{"sink": "collect"}],
            "checkpoint": {"store": "memory"},
        }
        assert headwater.run_sync(spec).output == []  # the queue exists (quorum)
        rabbit.publish(queue, [{"n": i} for i in range(MESSAGES)])
        crashes = crash.crash_and_resume(
            tmp_path, lambda: len(_sqlite_rows(tmp_path / "out.db")), MESSAGES, seed
        )
        _check_at_least_once(tmp_path, crashes)
        assert rabbit.count(queue) == 0, crashes  # every message acknowledged in the end
    finally:
        rabbit.cleanup()


def test_mqtt_source_loses_nothing_across_kill_9(
    tmp_path: Path,
    mosquitto_server: MosquittoServer,
    seed: int,
    fewer_kills: Callable[[int], None],
) -> None:
    fewer_kills(BROKER_KILLS)
    url = mosquitto_server.url
    topic, client_id = "hwtest/crash", "hwtest-crash-worker"
    source = {
        "url": url,
        "topics": [topic],
        "client_id": client_id,
        "receive_maximum": WINDOW,
        "idle_exit": 2,
    }
    _broker_pipeline(tmp_path, "crash-mqtt", {"action": "mqtt", "params": source})
    spec = {
        "name": "session",
        "sources": {"in": {"action": "mqtt", "params": {**source, "idle_exit": 0.2}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"store": "memory"},
    }
    assert headwater.run_sync(spec).output == []  # the persistent session exists
    publish = {
        "name": "publish",
        "sources": {"n": {"action": "range", "params": {"stop": MESSAGES}}},
        "steps": [{"transformer": "map", "params": {"expr": "{'n': item}"}}],
        "sinks": [{"sink": "mqtt", "params": {"url": url, "topic": topic}}],
    }
    assert headwater.run_sync(publish).output["published"] == MESSAGES
    crashes = crash.crash_and_resume(
        tmp_path, lambda: len(_sqlite_rows(tmp_path / "out.db")), MESSAGES, seed
    )
    _check_at_least_once(tmp_path, crashes)
