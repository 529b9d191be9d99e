"""The PostgreSQL plugin against a real server: sink (COPY, upsert, transactional with
checkpoints), checkpoint store, the incremental ``postgres.query`` source with
LISTEN/NOTIFY, and the operator's allowed tables."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

import headwater
from connector_services import pg_table, postgres_dsn
from headwater.builtin_plugins import postgres as pg_plugin
from headwater.builtin_plugins.postgres_store import PostgresCheckpointStore, PostgresStoreParams
from headwater.core.checkpoints import Checkpoint

__all__ = ["pg_table", "postgres_dsn"]

Table = Callable[[str], str]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async API runs on asyncio only."""
    return "asyncio"


def query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def sink_pipeline(name: str, sink: dict[str, Any], stop: int, **extra: Any) -> dict[str, Any]:
    """``range(stop)`` as ``{"n": i, "k": "k<i % 7>"}`` into the ``postgres`` sink."""
    return {
        "name": name,
        "sources": {"n": {"action": "range", "params": {"stop": stop}}},
        "steps": [{"transformer": "map", "params": {"expr": "{'n': item, 'k': item % 7}"}}],
        "sinks": [{"sink": "postgres", "params": sink}],
        **extra,
    }


def test_plugin_imports_without_psycopg_and_explains_when_used() -> None:
    code = """
import sys
sys.modules["psycopg"] = None          # as if the extra were not installed
sys.modules["psycopg_pool"] = None
import headwater
result = headwater.run_sync(
    {"name": "p", "sources": {"n": {"action": "range", "params": {"stop": 3}}},
     "sinks": [{"sink": "postgres", "params": {"table": "t"}}]}, raise_on_error=False)
print(result.state, result.errors[0])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed" in proc.stdout
    assert "pip install 'headwater[postgres]'" in proc.stdout


def test_copy_into_a_created_table_with_jsonb_and_sequences(
    postgres_dsn: str, pg_table: Table
) -> None:
    table = pg_table("copy")
    spec = {
        "name": table,
        "sources": {"n": {"action": "range", "params": {"stop": 1500}}},
        "steps": [
            {"transformer": "map", "params": {"expr": "{'n': item, 'doc': {'sq': item * item}}"}}
        ],
        "sinks": [{"sink": "postgres", "params": {"dsn": postgres_dsn, "table": table}}],
    }
    result = headwater.run_sync(spec)
    assert result.output == {"table": table, "rows": 1500}
    types = dict(
        query(
            postgres_dsn,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
            (table,),
        )
    )
    assert types == {"n": "bigint", "doc": "jsonb"}
    rows = query(postgres_dsn, f"SELECT n, doc FROM {table} ORDER BY n")
    assert rows == [(i, {"sq": i * i}) for i in range(1500)]
    # sequences in column order, into the existing table; unknown columns are refused
    seq = {**spec, "steps": [{"transformer": "map", "params": {"expr": "[item + 5000, None]"}}]}
    seq["sources"] = {"n": {"action": "range", "params": {"stop": 3}}}
    seq["sinks"] = [
        {
            "sink": "postgres",
            "params": {"dsn": postgres_dsn, "table": table, "columns": ["n", "doc"]},
        }
    ]
    assert headwater.run_sync(seq).output["rows"] == 3
    assert query(postgres_dsn, f"SELECT count(*) FROM {table} WHERE doc IS NULL") == [(3,)]
    bad = {**spec, "steps": [{"transformer": "map", "params": {"expr": "{'n': item, 'x': 1}"}}]}
    failed = headwater.run_sync(bad, raise_on_error=False)
    assert failed.state == "failed"
    assert 'column "x" does not exist' in str(failed.errors[0])


def test_upsert_keeps_the_last_item_of_each_key(postgres_dsn: str, pg_table: Table) -> None:
    table = pg_table("upsert")
    sink = {"dsn": postgres_dsn, "table": table, "mode": "upsert", "key": ["k"]}
    result = headwater.run_sync(sink_pipeline(table, sink, 1000))
    assert result.output == {"table": table, "rows": 1000}
    # one row per key, holding the last n of that key (duplicates inside one batch too)
    got = query(postgres_dsn, f"SELECT k, n FROM {table} ORDER BY k")
    assert got == [(k, max(n for n in range(1000) if n % 7 == k)) for k in range(7)]
    again = headwater.run_sync(sink_pipeline(table, sink, 10))
    assert again.state == "succeeded"
    got = query(postgres_dsn, f"SELECT k, n FROM {table} ORDER BY k")
    assert got == [(k, max(n for n in range(10) if n % 7 == k)) for k in range(7)]
    with pytest.raises(
        headwater.PipelineValidationError, match=r"sinks\[0\]\.params: mode: upsert"
    ):
        headwater.run_sync(sink_pipeline(table, {**sink, "key": None}, 1))


def test_transactional_rows_commit_only_with_their_checkpoint(
    postgres_dsn: str, pg_table: Table, tmp_path: Path
) -> None:
    """A run failing mid-way leaves exactly the rows of its last checkpoint; the resumed
    run writes the rest, each row once."""
    table = pg_table("tx")

    def committed_items() -> int:
        found = query(
            postgres_dsn,
            "SELECT data FROM headwater_sink_checkpoints WHERE pipeline = %s",
            (table,),
        )
        return Checkpoint.from_json(found[0][0]).items if found else 0

    @headwater.transformer("test.boom", kind="stream")
    async def boom(items: Any) -> Any:
        async for item in items:
            if item["n"] == 2345 and not resumed:
                # everything before went downstream: wait for a commit, then fail
                for _ in range(500):
                    if await anyio.to_thread.run_sync(committed_items) >= 2000:
                        break
                    await anyio.sleep(0.02)
                raise RuntimeError("boom")
            yield item

    resumed: list[bool] = []
    pm = headwater.PluginManager(strict=True).load()

    class Plugin:
        @headwater.hookimpl
        def register_transformers(self, register: Any) -> None:
            register(boom)

    pm.register(Plugin(), "test-boom")
    spec = sink_pipeline(
        table,
        {"dsn": postgres_dsn, "table": table},
        5000,
        checkpoint={
            "every_items": 1000,
            "every_seconds": None,
            "params": {"path": str(tmp_path / "ck.db")},
        },
    )
    spec["sources"]["n"]["params"]["chunk"] = 100
    spec["steps"].append({"transformer": "test.boom"})
    failed = headwater.run_sync(spec, plugins=pm, raise_on_error=False)
    assert failed.state == "failed"
    [(count, top)] = query(postgres_dsn, f"SELECT count(*), max(n) FROM {table}")
    [(data,)] = query(
        postgres_dsn,
        "SELECT data FROM headwater_sink_checkpoints WHERE pipeline = %s AND sink_table = %s",
        (table, table),
    )
    committed = Checkpoint.from_json(data)
    assert count == committed.items == top + 1  # the rows of the checkpoint, no more
    assert 2000 <= count <= 2345
    resumed.append(True)
    assert headwater.run_sync(spec, plugins=pm, resume=True).state == "succeeded"
    got = [n for (n,) in query(postgres_dsn, f"SELECT n FROM {table} ORDER BY n")]
    assert got == list(range(5000))


def test_checkpoint_store_saves_lists_and_resets(postgres_dsn: str, pg_table: Table) -> None:
    table = pg_table("store")
    store = PostgresCheckpointStore(PostgresStoreParams(dsn=postgres_dsn, table=table))
    try:
        assert store.load("p") is None
        store.save(Checkpoint("p", "f1", 1, {"s": 3}, items=3))
        store.save(Checkpoint("p", "f1", 2, {"s": 7}, items=7))
        store.save(Checkpoint("q", "f2", 1))
        loaded = store.load("p")
        assert loaded is not None
        assert (loaded.seq, loaded.positions, loaded.items) == (2, {"s": 7}, 7)
        assert [c.pipeline for c in store.list()] == ["p", "q"]
        assert store.reset("p") is True
        assert store.reset("p") is False
        assert store.load("p") is None
    finally:
        store.close()
    # a pipeline resumes from it
    spec = sink_pipeline(
        table + "_rows",
        {"dsn": postgres_dsn, "table": pg_table("rows")},
        100,
        checkpoint={"store": "postgres", "params": {"dsn": postgres_dsn, "table": table}},
    )
    assert headwater.run_sync(spec).state == "succeeded"
    again = headwater.run_sync(spec, resume=True)
    assert again.summary["checkpoint"]["note"].startswith("already completed")


def test_the_store_reports_an_unreachable_server(pg_table: Table) -> None:
    store = PostgresCheckpointStore(
        PostgresStoreParams(dsn="postgresql://postgres@127.0.0.1:1/test", outage_deadline=0.3)
    )
    try:
        with pytest.raises(headwater.CheckpointError, match=r"127\.0\.0\.1:1/test unreachable"):
            store.load("p")
    finally:
        store.close()


def fill(dsn: str, table: str, start: int, stop: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, ts timestamptz, v text)"
        )
        with conn.cursor().copy(f"COPY {table} (id, ts, v) FROM STDIN") as copy:
            for i in range(start, stop):
                # ten rows share each timestamp: ts alone is not a unique cursor
                copy.write_row((i, f"2026-01-01T00:00:{i // 10 % 60:02d}+00", f"v{i}"))


def source_pipeline(name: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "sources": {"rows": {"action": "postgres.query", "params": params}},
        "sinks": [{"sink": "collect"}],
        **extra,
    }


def test_query_reads_by_cursor_and_resumes_after_the_checkpoint(
    postgres_dsn: str, pg_table: Table, tmp_path: Path
) -> None:
    table = pg_table("src")
    fill(postgres_dsn, table, 0, 500)
    params = {"dsn": postgres_dsn, "table": table, "cursor": ["ts", "id"], "batch": 64}
    store = {"path": str(tmp_path / "ck.db")}
    spec = source_pipeline(table, params, checkpoint={"every_items": 1, "params": store})
    first = headwater.run_sync(spec)
    assert [r["id"] for r in first.output] == list(range(500))  # ts ties broken by id
    assert first.output[0]["v"] == "v0"
    fill(postgres_dsn, table, 500, 620)
    resumed = headwater.run_sync(spec, resume=True)
    assert resumed.summary["checkpoint"]["note"].startswith("already completed")
    # a fresh pipeline name over the same table, starting after a given cursor
    later = source_pipeline(
        table + "b",
        {**params, "cursor": ["id"], "start": [550], "columns": ["id"]},
    )
    assert headwater.run_sync(later).output == [{"id": i} for i in range(551, 620)]
    free = source_pipeline(
        table + "q",
        {
            "dsn": postgres_dsn,
            "query": f"SELECT id, v FROM {table} WHERE id % 100 = 0",
            "cursor": ["id"],
        },
    )
    assert [r["id"] for r in headwater.run_sync(free).output] == [0, 100, 200, 300, 400, 500, 600]


def test_an_interrupted_read_resumes_after_the_committed_cursor(
    postgres_dsn: str, pg_table: Table, tmp_path: Path
) -> None:
    """``postgres.query`` into the transactional sink: a run failing mid-way, resumed,
    leaves every row exactly once."""
    table, out = pg_table("src"), pg_table("out")
    fill(postgres_dsn, table, 0, 3000)
    fails = [True]

    @headwater.transformer("test.fail_once")
    def fail_once(item: Any) -> Any:
        if item["id"] == 1777 and fails:
            fails.clear()
            raise RuntimeError("boom")
        return {"id": item["id"], "v": item["v"]}

    class Plugin:
        @headwater.hookimpl
        def register_transformers(self, register: Any) -> None:
            register(fail_once)

    pm = headwater.PluginManager(strict=True).load()
    pm.register(Plugin(), "test-fail-once")
    spec = {
        "name": out,
        "sources": {
            "rows": {
                "action": "postgres.query",
                "params": {"dsn": postgres_dsn, "table": table, "cursor": ["id"], "batch": 250},
            }
        },
        "steps": [{"transformer": "test.fail_once"}],
        "sinks": [{"sink": "postgres", "params": {"dsn": postgres_dsn, "table": out}}],
        "checkpoint": {"every_items": 500, "params": {"path": str(tmp_path / "ck.db")}},
    }
    assert headwater.run_sync(spec, plugins=pm, raise_on_error=False).state == "failed"
    assert headwater.run_sync(spec, plugins=pm, resume=True).state == "succeeded"
    got = query(postgres_dsn, f"SELECT id, count(*) FROM {out} GROUP BY id ORDER BY id")
    assert got == [(i, 1) for i in range(3000)]


@pytest.mark.anyio
async def test_follow_is_woken_by_notify(postgres_dsn: str, pg_table: Table) -> None:
    """With the trigger of ``notify_trigger_sql`` installed, new rows arrive at once
    although the poll interval is an hour."""
    table = pg_table("follow")
    fill(postgres_dsn, table, 0, 5)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(pg_plugin.notify_trigger_sql(table))
    spec = source_pipeline(
        table,
        {
            "dsn": postgres_dsn,
            "table": table,
            "cursor": ["id"],
            "follow": True,
            "poll_interval": 3600,
        },
    )
    spec["sinks"] = []
    got: list[int] = []
    async with headwater.Engine() as engine, engine.stream(spec) as items:
        with anyio.fail_after(30):  # an hour's poll would miss this
            async for item in items:
                got.append(item["id"])
                if item["id"] == 4:
                    await anyio.to_thread.run_sync(fill, postgres_dsn, table, 5, 8)
                if item["id"] == 7:
                    break
    assert got == list(range(8))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP FUNCTION IF EXISTS "{pg_plugin.default_channel(table)}_notify" CASCADE')


def test_notify_trigger_sql_names_the_channel() -> None:
    text = pg_plugin.notify_trigger_sql("app.events")
    assert "pg_notify('headwater_app_events', '')" in text
    assert 'AFTER INSERT OR UPDATE ON "app"."events"' in text
    with pytest.raises(ValueError, match="not a table name"):
        pg_plugin.notify_trigger_sql("events; DROP TABLE x")


def test_tables_outside_the_allowed_list_are_refused(postgres_dsn: str, pg_table: Table) -> None:
    allowed, other = pg_table("allowed"), pg_table("other")
    fill(postgres_dsn, allowed, 0, 3)
    policy = headwater.SandboxPolicy(tables=(allowed[:12] + "*",))
    engine = headwater.Engine(policy=policy)
    ok = source_pipeline(allowed, {"dsn": postgres_dsn, "table": allowed, "cursor": ["id"]})
    assert [r["id"] for r in headwater.run_sync(ok, engine=engine).output] == [0, 1, 2]
    cases = {
        "sources.rows.params.table": source_pipeline(
            other, {"dsn": postgres_dsn, "table": other, "cursor": ["id"]}
        ),
        "sources.rows.params.query": source_pipeline(
            other, {"dsn": postgres_dsn, "query": f"SELECT * FROM {allowed}", "cursor": ["id"]}
        ),
        "sinks[0].params.table": sink_pipeline(other, {"dsn": postgres_dsn, "table": other}, 3),
    }
    for where, spec in cases.items():
        with pytest.raises(headwater.PipelineValidationError) as info:
            headwater.run_sync(spec, engine=engine)
        assert f"{where}: " in str(info.value)
        assert "HEADWATER_ALLOW_TABLES" in str(info.value)
    assert query(postgres_dsn, "SELECT to_regclass(%s)", (other,)) == [(None,)]


@pytest.mark.anyio
async def test_a_client_set_table_outside_the_allowed_list_is_refused(
    postgres_dsn: str, pg_table: Table, tmp_path: Path
) -> None:
    from websockets.asyncio.client import connect as ws_connect

    from headwater.server import Server
    from headwater.server.config import parse_server_config
    from test_sandbox_server import request

    allowed, other = pg_table("served"), pg_table("secret")
    fill(postgres_dsn, allowed, 0, 2)
    fill(postgres_dsn, other, 0, 2)
    config = parse_server_config(
        {
            "port": 0,
            "sandbox": {"roots": [str(tmp_path)], "tables": [allowed]},
            "pipelines": {
                "rows": {
                    "pipeline": {
                        "name": "rows",
                        "sources": {
                            "rows": {
                                "action": "postgres.query",
                                "params": {"dsn": postgres_dsn, "table": allowed, "cursor": ["id"]},
                            }
                        },
                        "sinks": [{"sink": "websocket"}],
                    },
                    "params": {"table": "sources.rows.params.table"},
                }
            },
        }
    )
    async with Server(config, base_dir=tmp_path) as server, ws_connect(server.url) as ws:
        [reply] = await request(
            ws, {"type": "run", "pipeline": "rows", "params": {"table": other}, "id": 1}
        )
        assert reply["code"] == "invalid_params"
        assert (
            f"sources.rows.params.table: table {other!r} is not in the allowed"
            in (reply["message"])
        )
        replies = await request(
            ws, {"type": "run", "pipeline": "rows", "params": {"table": allowed}, "id": 2}
        )
        got = [r["data"]["v"] for r in replies if r["type"] == "stream_update"]
        assert got == ["v0", "v1"]
        assert replies[-1]["reason"] == "succeeded"


def test_the_benchmark_scenario_runs(postgres_dsn: str, tmp_path: Path) -> None:
    """``python -m benchmarks postgres`` in a tiny mode: both rows measured, the target
    reported (no assertion on speed)."""
    from test_benchmarks_smoke import assert_metrics, run_benchmarks

    data, stdout = run_benchmarks(
        tmp_path, "--rounds", "1", "--warmup", "0", "--n", "3000", "postgres"
    )
    assert set(data["postgres"]) == {"handwritten_copy", "headwater_exactly_once"}
    for entry in data["postgres"].values():
        assert_metrics(entry, {"seconds", "rows_per_s"}, rounds=1)
    assert "headwater_exactly_once vs handwritten_copy (rows_per_s)" in stdout
    assert "exactly 3,000 distinct rows" in stdout
