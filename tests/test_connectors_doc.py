"""The Connectors page holds what the connectors' metadata says, and its PostgreSQL,
MQTT and AMQP examples run against real servers (with names of the test's own)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

import headwater
from connector_services import amqp_url, mqtt_url, pg_table, postgres_dsn
from headwater import docgen
from headwater.builtin_plugins.postgres import notify_trigger_sql
from services import unique
from test_amqp import Rabbit
from test_mqtt import Sessions

__all__ = ["amqp_url", "mqtt_url", "pg_table", "postgres_dsn"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "connectors.md"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
CONNECTORS = ("postgres", "postgres.query", "mqtt", "amqp")


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == language]


def example(name: str, **replace: str) -> dict[str, Any]:
    """The YAML block saved as ``name`` (its first line ``# name``), with ``${VAR:-...}``
    and names replaced."""
    [text] = [b for b in blocks("yaml") if b.startswith(f"# {name}\n")]
    text = re.sub(r"\$\{(\w+):-[^}]*\}", lambda m: replace[m.group(1)], text)
    for old, new in replace.items():
        if not old.isupper():
            text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def test_the_table_rows_are_the_connectors_metadata() -> None:
    table = docgen.connectors_table(docgen.builtin_plugin_manager(), names=CONNECTORS)
    rows = table.splitlines()[2:]
    assert len(rows) == 6  # postgres sink and source, mqtt and amqp source and sink
    text = PAGE.read_text()
    for row in rows:
        assert row + "\n" in text, f"docs/connectors.md lacks (or has another) row:\n{row}"
    meta = headwater.PluginManager().load().get("sink", "postgres").metadata()
    assert meta["connector"]["guarantee"].startswith("exactly-once")


def test_the_trigger_shown_is_the_one_printed() -> None:
    assert notify_trigger_sql("events") in blocks("text")


def test_postgres_examples_run(postgres_dsn: str, pg_table: Any, tmp_path: Path) -> None:
    squares, events, copy = pg_table("squares"), pg_table("events"), pg_table("copy")
    spec = example("squares.yaml", PG_DSN=postgres_dsn, squares=squares)
    spec["name"] = squares
    spec["checkpoint"]["params"] = {"path": str(tmp_path / "ck.db")}
    assert headwater.run_sync(spec, resume=True).output == {"table": squares, "rows": 100_000}
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        [(count, distinct)] = conn.execute(
            f"SELECT count(*), count(DISTINCT n) FROM {squares}"
        ).fetchall()
        assert count == distinct == 100_000
        conn.execute(f"CREATE TABLE {events} (id bigserial PRIMARY KEY, what text)")
        conn.execute(f"INSERT INTO {events} (what) SELECT 'e' || i FROM generate_series(1, 7000) i")
    spec = example("copy-events.yaml", PG_DSN=postgres_dsn, events=events, events_copy=copy)
    spec["name"] = copy
    spec["checkpoint"]["params"] = {"path": str(tmp_path / "ck.db")}
    assert headwater.run_sync(spec, resume=True).output["rows"] == 7000
    with psycopg.connect(postgres_dsn) as conn:
        got = conn.execute(f"SELECT count(*), min(id), max(id) FROM {copy}").fetchall()
    assert got == [(7000, 1, 7000)]


def test_the_mqtt_example_runs(mqtt_url: str, tmp_path: Path) -> None:
    sessions = Sessions(mqtt_url)
    client = sessions.client()
    try:
        spec = example("sensors.yaml", MQTT_URL=mqtt_url, **{"sensors-archive": client})
        spec["name"] = client
        spec["sources"]["readings"]["params"]["idle_exit"] = 0.5
        spec["sinks"][0]["params"]["path"] = str(tmp_path / "readings.db")
        assert headwater.run_sync(spec).output["rows"] == 0  # the session exists now
        topic = spec["sources"]["readings"]["params"]["topics"][0].replace("+", unique("s"))
        publish = {
            "name": "publish",
            "sources": {"n": {"action": "range", "params": {"stop": 50}}},
            "steps": [{"transformer": "map", "params": {"expr": "{'celsius': item}"}}],
            "sinks": [{"sink": "mqtt", "params": {"url": mqtt_url, "topic": topic}}],
        }
        headwater.run_sync(publish)
        assert headwater.run_sync(spec).output["rows"] == 50
    finally:
        sessions.cleanup()


def test_the_amqp_example_runs(amqp_url: str, tmp_path: Path) -> None:
    rabbit = Rabbit(amqp_url)
    try:
        queue = rabbit.queue("orders")
        dlx, _ = rabbit.dead_letter_queue()
        spec = example("orders.yaml", AMQP_URL=amqp_url)
        params = spec["sources"]["orders"]["params"]
        assert (params["queue"], params["dead_letter_exchange"]) == ("orders", "orders.dead")
        params.update(queue=queue, dead_letter_exchange=dlx, idle_exit=0.5)
        spec["sinks"][0]["params"]["path"] = str(tmp_path / "orders.db")
        assert headwater.run_sync(spec).output["rows"] == 0  # the queue is declared
        rabbit.publish(queue, [{"order": i} for i in range(20)])
        assert headwater.run_sync(spec).output["rows"] == 20
        assert rabbit.count(queue) == 0
    finally:
        rabbit.cleanup()


@pytest.mark.parametrize(
    "name", ["squares.yaml", "copy-events.yaml", "sensors.yaml", "orders.yaml"]
)
def test_each_example_has_its_command(name: str) -> None:
    shell = "\n".join(blocks("bash"))
    assert f"headwater run {name}" in shell
