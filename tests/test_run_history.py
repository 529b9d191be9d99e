"""The run history: runs recorded in a run store, kept across restarts, listed over HTTP
and replayed through the normal ``subscribe`` and event streams after their end.

Servers run in-process on 127.0.0.1, port 0, with the built-in SQLite store in a
temporary folder (a restart is a second server on the same file), or the memory store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import headwater
from headwater.client import RequestFailed
from headwater.server import ServerConfigError
from headwater.server.history import (
    MemoryRunStore,
    Retention,
    RunQuery,
    RunRecord,
    SQLiteRunStore,
)
from test_server_helpers import (
    client_of,
    config,
    http_get,
    json_body,
    make_plugins,
    of_type,
    running,
    until,
)

pytestmark = pytest.mark.anyio

FAILING = {
    "pipeline": {
        "name": "boom",
        "sources": {"n": {"action": "range", "params": {"stop": 5}}},
        "steps": [{"transformer": "map", "params": {"fn": "operator:truediv"}}],
        "sinks": [{"sink": "websocket"}],
    }
}

COUNT = {
    "pipeline": {
        "name": "count",
        "sources": {"n": {"action": "range", "params": {"stop": 7}}},
        "sinks": [{"sink": "websocket"}],
    },
    "params": {"stop": "sources.n.params.stop"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def history_config(path: Path, **fields: Any) -> Any:
    history = {"store": "sqlite", "params": {"path": str(path)}, **fields.pop("history", {})}
    return config(pipelines={"count": COUNT, "boom": FAILING}, history=history, **fields)


async def run_to_end(server: Any, pipeline: str, params: dict[str, Any] | None = None) -> Any:
    """Run ``pipeline`` from a client until its stream completes; the ``run_started``."""
    async with client_of(server) as client:
        started = await client.run(pipeline, params or {})
        await until(client, of_type("stream_complete", started.stream))
    return started


async def recorded(server: Any, run_id: str, state: str) -> dict[str, Any]:
    """``GET /api/runs/{id}`` once the run is recorded with ``state`` (bounded wait: the
    record is written after the stream completed)."""
    with anyio.fail_after(10):
        while True:
            status, _, body = await http_get(f"{server.http_url}/api/runs/{run_id}")
            if status == 200 and json_body(body)["state"] == state:
                return dict(json_body(body))
            await anyio.sleep(0.02)  # the write happens in a worker thread


# -- the stores, without a server ---------------------------------------------------------


def record(run_id: str, started: float, state: str = "succeeded", **kw: Any) -> RunRecord:
    return RunRecord(run_id, kw.pop("pipeline", "p"), f"p-{run_id}", state, started, **kw)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_store_pages_newest_first_and_filters(kind: str, tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "runs.db") if kind == "sqlite" else MemoryRunStore()
    for i in range(25):
        store.save(record(f"r{i:02d}", 1000.0 + i, pipeline="a" if i % 2 else "b"))
    store.save(record("live", 2000.0, state="running"), [(1, b"1"), (2, b"2")])
    page = store.query(RunQuery(limit=10))
    assert [r.run_id for r in page.runs][:3] == ["live", "r24", "r23"]
    seen = [r.run_id for r in page.runs]
    while page.next is not None:
        page = store.query(RunQuery(limit=10, before=page.next))
        seen += [r.run_id for r in page.runs]
    assert len(seen) == 26
    assert len(set(seen)) == 26
    assert {r.pipeline for r in store.query(RunQuery(pipeline="a", limit=200)).runs} == {"a"}
    between = store.query(RunQuery(since=1005, until=1010, limit=200)).runs
    assert sorted(r.run_id for r in between) == ["r05", "r06", "r07", "r08", "r09"]
    assert [r.run_id for r in store.query(RunQuery(state="running")).runs] == ["live"]
    assert store.chunks("live", 1) == [(2, b"2")]
    assert store.by_stream("p-r03") is not None
    assert store.get("nope") is None
    # a server that died left "live" running: the next one marks it interrupted
    assert store.interrupt(3000.0) == 1
    found = store.get("live")
    assert found is not None
    assert (found.state, found.ended_at) == ("interrupted", 3000.0)
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_retention_bounds_count_bytes_and_age(kind: str, tmp_path: Path) -> None:
    store = SQLiteRunStore(tmp_path / "runs.db") if kind == "sqlite" else MemoryRunStore()
    for i in range(30):
        r = record(f"r{i:02d}", 1000.0 + i, ended_at=1000.0 + i)
        r.size = 100
        store.save(r, [(1, b"x" * 50)])
    going = record("going", 1.0, state="running")
    going.size = 10_000
    store.save(going)
    assert store.prune(Retention(max_runs=20, max_bytes=10**9, max_age=None), 2000.0) == 10
    assert store.prune(Retention(max_runs=100, max_bytes=1000, max_age=None), 2000.0) == 10
    kept = [r.run_id for r in store.query(RunQuery(limit=200)).runs]
    assert kept[:10] == [f"r{i:02d}" for i in range(29, 19, -1)]
    assert store.prune(Retention(max_runs=100, max_bytes=10**9, max_age=5.0), 1030.0) == 5
    # a run going on is never pruned, however old or large
    assert store.get("going") is not None
    assert store.chunks("r10") == []
    store.close()


# -- a server's history -----------------------------------------------------------------


async def test_a_failed_run_is_kept_across_a_restart_with_its_error_and_chunks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    async with running(history_config(path)) as server:
        good = await run_to_end(server, "count", {"stop": 9})
        bad = await run_to_end(server, "boom")
        await recorded(server, bad.run, "failed")
        await recorded(server, good.run, "succeeded")
    assert path.is_file()
    async with running(history_config(path)) as server:
        status, _, body = await http_get(f"{server.http_url}/api/runs")
        assert status == 200
        runs = json_body(body)["runs"]
        assert [r["run_id"] for r in runs] == [bad.run, good.run]
        assert runs[0]["state"] == "failed"
        assert runs[0]["error"] == "TypeError"
        failed = await recorded(server, bad.run, "failed")
        assert failed["fatal"]["stage"] == "steps[0].map"
        assert "Traceback" in failed["fatal"]["traceback"]
        assert "truediv" in failed["fatal"]["message"]
        assert [s["stage"] for s in failed["graph"]["steps"]] == ["steps[0].map"]
        ok = await recorded(server, good.run, "succeeded")
        assert ok["params"] == {"stop": 9}
        assert ok["stages"]["sources.n"]["items_out"] == 9
        assert ok["live"] is False
        assert ok["can_run_again"] is True
        # the finished stream replays from the history, then completes
        async with client_of(server) as client:
            sub = await client.subscribe(good.stream, since=0)
            assert (sub.seq, sub.replayed) == (9, 9)
            messages = await until(client, of_type("stream_complete", good.stream))
            assert [m.data for m in messages if m.type == "stream_update"] == list(range(9))
            assert messages[-1].reason == "succeeded"  # type: ignore[union-attr]
            # without since: no chunk, just the end
            await client.subscribe(good.stream)
            assert (await client.receive()).type == "stream_complete"
        # and so does its event stream
        status, _, body = await http_get(
            f"{server.http_url}/api/streams/{good.stream}/events?since=6"
        )
        assert status == 200
        text = body.decode()
        assert [
            json.loads(line[6:])["data"] for line in text.splitlines() if '"stream_update"' in line
        ] == [6, 7, 8]
        assert text.rstrip().splitlines()[-2] == "event: stream_complete"


async def test_chunks_beyond_the_retention_are_a_replay_gap(tmp_path: Path) -> None:
    cfg = history_config(tmp_path / "runs.db", history={"chunks_per_run": 5})
    async with running(cfg) as server:
        started = await run_to_end(server, "count", {"stop": 20})
        await recorded(server, started.run, "succeeded")
        async with client_of(server) as client:
            sub = await client.subscribe(started.stream, since=0)
            assert sub.replayed == 5
            messages = await until(client, of_type("stream_complete"))
        gap = [m for m in messages if m.type == "replay_gap"]
        assert len(gap) == 1
        assert (gap[0].reason, gap[0].first_available) == ("evicted", 16)
        seqs = [m.seq for m in messages if m.type == "stream_update"]
        assert seqs == [16, 17, 18, 19, 20]


async def test_runs_are_listed_by_pipeline_state_and_page(tmp_path: Path) -> None:
    async with running(history_config(tmp_path / "runs.db")) as server:
        ids = [(await run_to_end(server, "count", {"stop": 1})).run for _ in range(3)]
        failed = (await run_to_end(server, "boom")).run
        await recorded(server, failed, "failed")
        await recorded(server, ids[-1], "succeeded")
        base = f"{server.http_url}/api/runs"
        _, _, body = await http_get(f"{base}?pipeline=count&limit=2")
        first = json_body(body)
        assert [r["run_id"] for r in first["runs"]] == ids[::-1][:2]
        _, _, body = await http_get(f"{base}?pipeline=count&limit=2&cursor={first['next']}")
        assert [r["run_id"] for r in json_body(body)["runs"]] == ids[:1]
        _, _, body = await http_get(f"{base}?state=failed")
        assert [r["run_id"] for r in json_body(body)["runs"]] == [failed]
        for bad, name in (("state=gone", "state"), ("limit=0", "limit"), ("since=x", "since")):
            status, _, body = await http_get(f"{base}?{bad}")
            assert status == 400
            assert json_body(body)["message"].startswith(f"{name}:")
        status, _, _ = await http_get(f"{base}/not-a-run")
        assert status == 404


@pytest.mark.parametrize("front", ["serve", "asgi"])
async def test_a_principal_sees_only_the_runs_it_may_follow(tmp_path: Path, front: str) -> None:
    tokens = {
        "all": "admin",
        "mine": {"principal": "bob", "streams": ["nothing*"], "pipelines": ["count"]},
    }
    cfg = history_config(tmp_path / "runs.db", auth={"tokens": tokens})
    async with running(cfg, front=front) as server:
        async with client_of(server, token="mine") as client:
            own = await client.run("count", {"stop": 2})
            await until(client, of_type("stream_complete", own.stream))
        async with client_of(server, token="all") as client:
            other = await client.run("count", {"stop": 2})
            await until(client, of_type("stream_complete", other.stream))
        with anyio.fail_after(10):
            while True:
                _, _, body = await http_get(f"{server.http_url}/api/runs", "all")
                if all(r["state"] == "succeeded" for r in json_body(body)["runs"]):
                    break
                await anyio.sleep(0.02)
        assert len(json_body(body)["runs"]) == 2
        _, _, body = await http_get(f"{server.http_url}/api/runs", "mine")
        assert [r["run_id"] for r in json_body(body)["runs"]] == [own.run]
        status, _, _ = await http_get(f"{server.http_url}/api/runs/{other.run}", "mine")
        assert status == 404  # as for a run that does not exist
        status, _, _ = await http_get(f"{server.http_url}/api/runs", None)
        assert status == 401
        # the owner may replay its finished run's stream; the other one is refused
        async with client_of(server, token="mine") as client:
            sub = await client.subscribe(own.stream, since=0)
            assert sub.replayed == 2
            with pytest.raises(RequestFailed, match="unauthorized"):
                await client.subscribe(other.stream, since=0)


class PluginStore(MemoryRunStore):
    """A run store of a plugin (remembers that it was made)."""

    made: list[dict[str, Any]] = []

    def __init__(self, **params: Any) -> None:
        super().__init__()
        PluginStore.made.append(params)


class StorePlugin:
    @headwater.hookimpl
    def register_run_stores(self, register: Any) -> None:
        register("plugin-store", PluginStore)
        register("sqlite", PluginStore)  # taken: refused, the built-in one stays


async def test_a_plugins_run_store_is_used_by_name() -> None:
    PluginStore.made.clear()
    plugins = make_plugins((StorePlugin(), "store-plugin"))
    cfg = config(history={"store": "plugin-store", "params": {"label": "x"}})
    async with running(cfg, plugins) as server:
        assert isinstance(server.history.store, PluginStore)
        assert PluginStore.made == [{"label": "x"}]
        assert [f.stage for f in server.history.failures] == ["run-stores"]
        assert "'sqlite'" in server.history.failures[0].error
        started = await run_to_end(server, "count")
        await recorded(server, started.run, "succeeded")


async def test_an_unknown_run_store_is_a_configuration_error() -> None:
    with pytest.raises(ServerConfigError, match=r"history\.store: no run store 'nope'"):
        async with running(config(history={"store": "nope"})):
            pass  # pragma: no cover - never started
