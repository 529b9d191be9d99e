"""Tests of the built-in sinks: collect, null, stdout, jsonl and sqlite (real files)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

import headwater
from headwater.core.plugins import get_plugin_manager

WAIT_LIMIT = 20.0
"""Seconds :func:`wait_until` waits before failing the test."""


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it is true (fails the test after ``WAIT_LIMIT`` seconds)."""
    with anyio.fail_after(WAIT_LIMIT):
        # polling: the condition is the state of a file or database, no event to wait on
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def two_parts(
    first: Iterable[Any], ready: Callable[[], bool], second: Iterable[Any]
) -> AsyncIterator[Any]:
    """Yield ``first``, wait until the sink has it (``ready``), then yield ``second``.

    Makes batch boundaries deterministic: ``first`` is written (and committed) by the sink
    before any item of ``second`` exists.
    """
    for item in first:
        yield item
    await wait_until(ready)
    for item in second:
        yield item


def count_rows(db: Path, table: str = "t") -> int:
    """Rows in ``table`` seen through a separate connection (0 if it does not exist)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def select(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on a separate connection."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def line_count(path: Path) -> int:
    """Complete lines currently in ``path``."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


# -- collect and null -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_collect_returns_every_item_in_order() -> None:
    result = await headwater.Pipeline("c").source("range", stop=10_000).sink("collect").run()
    assert result.output == list(range(10_000))
    assert result.outputs == {"collect": list(range(10_000))}


@pytest.mark.anyio
async def test_null_counts_items() -> None:
    result = await headwater.Pipeline("n").source("range", stop=12_345).sink("null").run()
    assert result.output == 12_345


@pytest.mark.anyio
async def test_collect_and_null_on_an_empty_stream_and_fan_out() -> None:
    spec = headwater.Pipeline("e").source("range", stop=0).sink("collect").sink("null")
    result = await spec.run()
    assert result.outputs == {"collect": [], "null": 0}
    spec = headwater.Pipeline("f").source("range", stop=5).sink("collect").sink("null")
    assert (await spec.run()).outputs == {"collect": [0, 1, 2, 3, 4], "null": 5}


# -- stdout ---------------------------------------------------------------------------------

ITEMS = ["text", 1, 2.5, {"k": "é", "n": [1, 2]}, [1, "x"], None, True]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("auto", ["text", "1", "2.5", '{"k":"é","n":[1,2]}', '[1,"x"]', "null", "true"]),
        ("json", ['"text"', "1", "2.5", '{"k":"é","n":[1,2]}', '[1,"x"]', "null", "true"]),
        ("str", ["text", "1", "2.5", "{'k': 'é', 'n': [1, 2]}", "[1, 'x']", "None", "True"]),
        ("repr", ["'text'", "1", "2.5", "{'k': 'é', 'n': [1, 2]}", "[1, 'x']", "None", "True"]),
    ],
)
async def test_stdout_formats(
    capsys: pytest.CaptureFixture[str], fmt: str, expected: list[str]
) -> None:
    spec = headwater.Pipeline("o").source("iterable", items=ITEMS).sink("stdout", format=fmt)
    result = await spec.run()
    assert result.output == len(ITEMS)
    assert capsys.readouterr().out == "".join(line + "\n" for line in expected)


@pytest.mark.anyio
async def test_stdout_default_format_is_auto(capsys: pytest.CaptureFixture[str]) -> None:
    spec = headwater.Pipeline("o").source("iterable", items=["a", {"b": 1}]).sink("stdout")
    assert (await spec.run()).output == 2
    assert capsys.readouterr().out == 'a\n{"b":1}\n'


@pytest.mark.anyio
async def test_stdout_many_items(capsys: pytest.CaptureFixture[str]) -> None:
    spec = headwater.Pipeline("o").source("range", stop=20_000).sink("stdout")
    assert (await spec.run()).output == 20_000
    out = capsys.readouterr().out
    assert out.splitlines() == [str(i) for i in range(20_000)]


@pytest.mark.anyio
async def test_stdout_unserialisable_item_names_its_type(
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = headwater.Pipeline("o").source("iterable", items=[1, {2}]).sink("stdout")
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == "sinks.stdout"
    assert isinstance(err.cause, TypeError)
    assert "item 1 (set)" in str(err.cause)
    assert capsys.readouterr().out == ""  # nothing of the failed batch was written


def test_stdout_bad_format_is_a_validation_error() -> None:
    spec = headwater.Pipeline("o").source("range", stop=1).sink("stdout", format="xml")
    with pytest.raises(headwater.PipelineValidationError) as info:
        spec.run_sync()
    assert info.value.issues[0].path == "sinks[0].params.format"


# -- jsonl ----------------------------------------------------------------------------------


class Point(BaseModel):
    """A pydantic item."""

    x: int
    y: int


@dataclasses.dataclass
class Pair:
    """A dataclass item."""

    left: str
    right: list[int]


@pytest.mark.anyio
async def test_jsonl_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    items: list[Any] = [
        {"id": i, "name": f"n{i}", "tags": ["a", "ü"], "score": i / 3, "ok": i % 2 == 0}
        for i in range(5_000)
    ]
    items += [None, "plain", 42, [1, [2, {"deep": None}]]]
    spec = headwater.Pipeline("j").source("iterable", items=items).sink("jsonl", path=str(out))
    result = await spec.run()
    assert result.output == {"path": str(out), "items": len(items)}
    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    assert "ü".encode() in raw  # ensure_ascii is off by default
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert [json.loads(line) for line in lines] == items
    assert lines[0] == '{"id":0,"name":"n0","tags":["a","ü"],"score":0.0,"ok":true}'


@pytest.mark.anyio
async def test_jsonl_ensure_ascii_models_and_dataclasses(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    items = [Point(x=1, y=2), Pair("é", [1]), {"s": "☃"}]
    spec = headwater.Pipeline("j").source("iterable", items=items)
    await spec.sink("jsonl", path=out, ensure_ascii=True).run()
    assert out.read_text(encoding="ascii").splitlines() == [
        '{"x":1,"y":2}',
        '{"left":"\\u00e9","right":[1]}',
        '{"s":"\\u2603"}',
    ]


@pytest.mark.anyio
async def test_jsonl_truncates_by_default_and_appends_on_request(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"old":true}\n', encoding="utf-8")
    await headwater.Pipeline("j").source("range", stop=2).sink("jsonl", path=str(out)).run()
    assert out.read_text(encoding="utf-8") == "0\n1\n"
    spec = headwater.Pipeline("j").source("range", start=2, stop=4)
    result = await spec.sink("jsonl", path=str(out), append=True).run()
    assert result.output["items"] == 2
    assert out.read_text(encoding="utf-8") == "0\n1\n2\n3\n"


@pytest.mark.anyio
async def test_jsonl_empty_stream_truncates(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("stale\n", encoding="utf-8")
    result = await headwater.Pipeline("j").source("range", stop=0).sink("jsonl", path=out).run()
    assert result.output == {"path": str(out), "items": 0}
    assert out.read_bytes() == b""


@pytest.mark.anyio
@pytest.mark.parametrize("fsync", [False, True])
async def test_jsonl_flushes_every_batch(tmp_path: Path, fsync: bool) -> None:
    """Readers see a batch as soon as it is written, while the run is still going."""
    out = tmp_path / "live.jsonl"
    items = two_parts(range(100), lambda: line_count(out) == 100, range(100, 150))
    spec = headwater.Pipeline("j").source("iterable", items=items)
    result = await spec.sink("jsonl", path=str(out), fsync=fsync).run()
    assert result.output["items"] == 150
    assert out.read_text(encoding="utf-8") == "".join(f"{i}\n" for i in range(150))


@pytest.mark.anyio
async def test_jsonl_without_flush_every_batch_writes_all_at_close(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    spec = headwater.Pipeline("j").source("range", stop=30_000)
    result = await spec.sink("jsonl", path=str(out), flush_every_batch=False).run()
    assert result.output["items"] == 30_000
    assert line_count(out) == 30_000


@pytest.mark.anyio
async def test_jsonl_bad_item_fails_with_type_and_position(tmp_path: Path) -> None:
    out = tmp_path / "bad.jsonl"
    second = [{"n": i} if i != 150 else {"n": {1, 2}} for i in range(100, 200)]
    items = two_parts(({"n": i} for i in range(100)), lambda: line_count(out) == 100, second)
    spec = headwater.Pipeline("j").source("iterable", items=items).sink("jsonl", path=str(out))
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == "sinks.jsonl"
    assert err.position == 100  # the failed batch starts after the 100 written items
    assert isinstance(err.cause, TypeError)
    assert "item 150 (dict)" in str(err.cause)
    assert "set is not JSON-serialisable" in str(err.cause)
    # the committed batch is intact; nothing of the failed batch was written
    assert [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()] == [
        {"n": i} for i in range(100)
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("sink", ["jsonl", "sqlite"])
async def test_file_sinks_create_missing_folders(tmp_path: Path, sink: str) -> None:
    out = tmp_path / "a" / "b" / "o.data"
    params: dict[str, Any] = {"table": "t"} if sink == "sqlite" else {}
    spec = headwater.Pipeline("j").source("range", stop=3)
    spec = spec.map(lambda i: {"i": i}).sink(sink, path=str(out), **params)
    await spec.run()
    if sink == "jsonl":
        assert line_count(out) == 3
    else:
        assert count_rows(out) == 3


@pytest.mark.parametrize("sink", ["jsonl", "sqlite"])
@pytest.mark.parametrize(
    ("blocker", "needle"),
    [("file", "is a file, not a folder"), ("folder", "is a folder")],
)
def test_file_sink_path_that_cannot_be_created_is_a_validation_error(
    tmp_path: Path, sink: str, blocker: str, needle: str
) -> None:
    out = tmp_path / "out" / "o.data"
    if blocker == "file":
        (tmp_path / "out").write_text("not a folder")
    else:
        out.mkdir(parents=True)
    params: dict[str, Any] = {"table": "t"} if sink == "sqlite" else {}
    spec = headwater.Pipeline("j").source("range", stop=3).sink(sink, path=str(out), **params)
    with pytest.raises(headwater.PipelineValidationError) as info:
        spec.run_sync()
    [issue] = info.value.issues
    assert issue.path == "sinks[0].params.path"
    assert needle in issue.message


def test_file_sink_folders_are_not_made_through_a_link_out_of_the_roots(tmp_path: Path) -> None:
    from headwater.builtin_plugins._sandbox import make_parents
    from headwater.core.policy import SandboxError, SandboxPolicy

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    policy = SandboxPolicy(roots=(root,))
    make_parents(policy, str(root / "a" / "b" / "o.jsonl"), "sinks.jsonl.params.path")
    assert (root / "a" / "b").is_dir()
    with pytest.raises(SandboxError, match=r"sinks.jsonl.params.path: .*outside the allowed roots"):
        make_parents(policy, str(root / "link" / "sub" / "o.jsonl"), "sinks.jsonl.params.path")
    assert list(outside.iterdir()) == []


def test_validate_command_names_the_sink_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from headwater.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").write_text("a file where the folder should be")
    (tmp_path / "p.yaml").write_text(
        "name: p\nsources:\n  n: {action: range, params: {stop: 3}}\n"
        "sinks:\n  - {sink: jsonl, params: {path: out/x.jsonl}}\n"
    )
    assert main(["validate", "p.yaml"]) == 2
    err = capsys.readouterr().err
    assert "sinks[0].params.path: cannot create 'out/x.jsonl'" in err
    assert "Traceback" not in err
    (tmp_path / "out").unlink()
    assert main(["validate", "p.yaml"]) == 0
    assert not (tmp_path / "out").exists()  # validating makes no folder
    assert main(["run", "p.yaml"]) == 0
    assert line_count(tmp_path / "out" / "x.jsonl") == 3


# -- sqlite ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqlite_writes_dict_rows(tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    spec = (
        headwater.Pipeline("s")
        .source("range", stop=50_000)
        .map(lambda i: {"id": i, "name": f"n{i}", "half": i / 2, "blob": b"\x00" if i else None})
        .sink("sqlite", path=str(db), table="items")
    )
    result = await spec.run()
    assert result.output == {"path": str(db), "table": "items", "rows": 50_000}
    assert select(db, "SELECT count(*), sum(id), max(name) FROM items") == [
        (50_000, sum(range(50_000)), "n9999")
    ]
    assert select(db, "SELECT * FROM items WHERE id < 2 ORDER BY id") == [
        (0, "n0", 0.0, None),
        (1, "n1", 0.5, b"\x00"),
    ]
    assert select(db, "PRAGMA journal_mode") == [("wal",)]
    columns = [row[1] for row in select(db, "PRAGMA table_info(items)")]
    assert columns == ["id", "name", "half", "blob"]


@pytest.mark.anyio
async def test_sqlite_explicit_columns_ignore_extra_keys_and_accept_sequences(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    items = [{"a": 1, "b": 2, "extra": 3}, {"a": 4}, (5, 6), [7, 8]]
    spec = headwater.Pipeline("s").source("iterable", items=items)
    result = await spec.sink("sqlite", path=db, table="t", columns=["a", "b"]).run()
    assert result.output["rows"] == 4
    assert select(db, "SELECT a, b FROM t ORDER BY rowid") == [(1, 2), (4, None), (5, 6), (7, 8)]


@pytest.mark.anyio
async def test_sqlite_existing_table_without_create(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.commit()
    conn.close()
    items = [(1, "ann"), (2, "bob")]
    spec = headwater.Pipeline("s").source("iterable", items=items)
    sink = spec.sink("sqlite", path=str(db), table="people", columns=["id", "name"], create=False)
    assert (await sink.run()).output["rows"] == 2
    assert select(db, "SELECT * FROM people") == [(1, "ann"), (2, "bob")]


@pytest.mark.anyio
async def test_sqlite_missing_table_without_create_fails(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    spec = headwater.Pipeline("s").source("iterable", items=[{"a": 1}])
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.sink("sqlite", path=str(db), table="nope", create=False).run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == "sinks.sqlite"
    assert "no such table: nope" in str(err.cause)


@pytest.mark.anyio
async def test_sqlite_replace_mode_upserts(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    items = [{"k": 1, "v": "a"}, {"k": 2, "v": "b"}, {"k": 1, "v": "c"}]
    spec = headwater.Pipeline("s").source("iterable", items=items)
    sink = spec.sink("sqlite", path=str(db), table="kv", mode="replace", primary_key=["k"])
    assert (await sink.run()).output["rows"] == 3
    assert select(db, "SELECT k, v FROM kv ORDER BY k") == [(1, "c"), (2, "b")]


@pytest.mark.anyio
async def test_sqlite_insert_mode_duplicate_key_rolls_back_the_batch(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    items = [{"k": 1}, {"k": 2}, {"k": 1}]
    spec = headwater.Pipeline("s").source("iterable", items=items)
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.sink("sqlite", path=str(db), table="t", primary_key=["k"]).run()
    assert isinstance(info.value.errors[0].cause, sqlite3.IntegrityError)  # type: ignore[attr-defined]
    assert count_rows(db) == 0


@pytest.mark.anyio
async def test_sqlite_bad_row_rolls_back_its_batch_only(tmp_path: Path) -> None:
    """A failing batch leaves nothing behind; batches committed before it stay."""
    db = tmp_path / "tx.db"
    second = [{"n": i, "v": "ok" if i != 150 else {"not", "storable"}} for i in range(100, 200)]
    items = two_parts(
        ({"n": i, "v": "ok"} for i in range(100)), lambda: count_rows(db) == 100, second
    )
    spec = headwater.Pipeline("s").source("iterable", items=items)
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.sink("sqlite", path=str(db), table="t").run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == "sinks.sqlite"
    assert err.position == 100
    assert isinstance(err.cause, sqlite3.Error)
    assert [n for (n,) in select(db, "SELECT n FROM t ORDER BY n")] == list(range(100))


@pytest.mark.anyio
async def test_sqlite_failure_upstream_keeps_committed_batches(tmp_path: Path) -> None:
    """A map failing mid-way: earlier batches are in the table, nothing partial."""
    db = tmp_path / "up.db"

    def to_row(i: int) -> dict[str, int]:
        if i == 150:
            raise ValueError("boom at 150")
        return {"n": i}

    items = two_parts(range(100), lambda: count_rows(db) == 100, range(100, 200))
    spec = (
        headwater.Pipeline("s")
        .source("iterable", items=items)
        .map(to_row)
        .sink("sqlite", path=str(db), table="t")
    )
    with pytest.raises(headwater.PipelineFailed) as info:
        await spec.run()
    err = info.value.errors[0]
    assert isinstance(err, headwater.StageError)
    assert err.stage == "steps[0].map"
    assert err.position == 150
    rows = [n for (n,) in select(db, "SELECT n FROM t ORDER BY n")]
    assert rows == list(range(100))
    assert select(db, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.anyio
async def test_sqlite_rejects_items_it_cannot_map(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    cases: list[tuple[list[Any], dict[str, Any], str]] = [
        ([(1, 2)], {}, "must be dicts"),
        ([{"a": 1}, {"a": 2, "b": 3}], {}, "'b'"),
        (["ab"], {"columns": ["a", "b"]}, "str"),
        ([(1, 2, 3)], {"columns": ["a", "b"]}, "3 values, expected 2"),
        ([{"bad key": 1}], {}, "'bad key' is not a valid SQL identifier"),
    ]
    for items, params, needle in cases:
        spec = headwater.Pipeline("s").source("iterable", items=items)
        with pytest.raises(headwater.PipelineFailed) as info:
            await spec.sink("sqlite", path=str(db), table="t", **params).run()
        cause = info.value.errors[0].cause  # type: ignore[attr-defined]
        assert needle in str(cause), (items, str(cause))
    assert count_rows(db) == 0


def test_sqlite_params_are_validated() -> None:
    spec = (
        headwater.Pipeline("s")
        .source("range", stop=1)
        .sink("sqlite", path="x.db", table="t; DROP TABLE x", columns=["a", "1b"], mode="merge")
    )
    with pytest.raises(headwater.PipelineValidationError) as info:
        spec.run_sync()
    paths = sorted(issue.path for issue in info.value.issues)
    assert paths == ["sinks[0].params.columns", "sinks[0].params.mode", "sinks[0].params.table"]
    spec = (
        headwater.Pipeline("s")
        .source("range", stop=1)
        .sink("sqlite", path="x.db", table="t", columns=["a"], primary_key=["b"])
    )
    with pytest.raises(headwater.PipelineValidationError, match="primary_key"):
        spec.run_sync()


def test_sqlite_close_rolls_back_an_open_transaction(tmp_path: Path) -> None:
    """close(error) never commits a transaction left open (white-box: the sink's own
    connection is put mid-transaction, as if a write had been interrupted)."""
    db = tmp_path / "c.db"
    component = get_plugin_manager().get("sink", "sqlite")
    assert component.params is not None
    params = component.params.model_validate({"path": str(db), "table": "t", "columns": ["a"]})
    sink = component(params, None)
    sink.open()
    sink.write([{"a": 1}])
    sink._conn.execute("BEGIN IMMEDIATE")
    sink._conn.execute('INSERT INTO "t" ("a") VALUES (2)')
    assert sink.close(RuntimeError("stopped")) == {"path": str(db), "table": "t", "rows": 1}
    assert select(db, "SELECT a FROM t") == [(1,)]


def test_sink_metadata() -> None:
    pm = get_plugin_manager()
    sqlite_meta = pm.get("sink", "sqlite").metadata()
    assert sqlite_meta["delivery"] == "transactional"
    assert "transactional" in sqlite_meta["capabilities"]
    for name in ("stdout", "jsonl", "sqlite", "collect", "null"):
        meta = pm.get("sink", name).metadata()
        assert meta["description"], name
        props = meta["params_schema"]["properties"]
        assert all(p.get("description") for p in props.values()), name
    assert pm.get("sink", "jsonl").metadata()["delivery"] == "at_least_once"
