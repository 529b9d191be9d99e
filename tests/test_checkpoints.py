"""Checkpoints: state snapshots of stateful steps, the commit protocol, the SQLite store,
refusals (changed pipeline, corrupt / locked / newer database) and the CLI commands."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import math
import operator
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

import headwater
from headwater.builtin_plugins import transformers as tf
from headwater.core.checkpoints import Checkpoint, CheckpointError, SQLiteCheckpointStore
from headwater.testing import RegisterPlugin

TIMEOUT = 60
"""Upper bound for one CLI command or one wait; only hit when something hangs."""

# ---------------------------------------------------------------------------------------
# Test components: a resumable source that can fail on demand, sinks that block or fail
# in commit_checkpoint, checkpoint stores that record or fail.
# ---------------------------------------------------------------------------------------

FAIL_AT: dict[str, int | None] = {"item": None, "after_commit": None}
"""``test.ticks`` raises before emitting ``item`` (a crash that is not in the params, so
that the resumed run has the same fingerprint), once a checkpoint at ``after_commit`` or
later was committed, if given (so that the sinks certainly committed something)."""

SAVED: dict[str, list[Checkpoint]] = {}
STORE_DATA: dict[str, Checkpoint] = {}
"""Every checkpoint the ``test.recording`` store saved, by pipeline (survives runs)."""

FAIL_SAVE: dict[str, int | None] = {"items": None}
"""``test.flaky`` store: raise when saving a checkpoint at this many items."""


class TicksParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stop: int
    chunk: int = 1
    delay: float = 0.0


@headwater.action(
    "test.ticks",
    params=TicksParams,
    capabilities=("streaming", "resumable"),
    batched=True,
)
async def ticks(params: TicksParams, ctx: headwater.StreamContext) -> AsyncIterator[list[int]]:
    """Integers in chunks; resumable (the position is the next integer)."""
    first = int(ctx.resume_position or 0)
    fail, settle = FAIL_AT["item"], FAIL_AT["after_commit"]
    settled = anyio.Event()
    if settle is None:
        settled.set()

    def on_commit(position: Any) -> None:
        if settle is not None and int(position or 0) >= settle:
            settled.set()

    ctx.on_commit(on_commit)
    ctx.checkpoint(first)
    for offset in range(first, params.stop, params.chunk):
        end = min(offset + params.chunk, params.stop)
        if fail is not None and offset <= fail < end:
            with anyio.move_on_after(TIMEOUT):
                await settled.wait()
            raise RuntimeError(f"crash before item {fail}")
        if params.delay:
            await anyio.sleep(params.delay)
        yield list(range(offset, end))
        ctx.checkpoint(end)


class SyncTicksParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stop: int


@headwater.action(
    "test.sync_ticks", params=SyncTicksParams, capabilities=("streaming", "resumable")
)
def sync_ticks(params: SyncTicksParams, ctx: headwater.StreamContext) -> Iterator[int]:
    """A sync generator claiming to be resumable."""
    for i in range(params.stop):
        yield i
        ctx.checkpoint(i + 1)


class Gate:
    """Blocks ``test.gate``'s commit_checkpoint of one checkpoint until opened."""

    def __init__(self, block_seq: int | None) -> None:
        self.block_seq = block_seq
        self.reached = anyio.Event()
        self.opened = anyio.Event()
        self.commits: list[int] = []


GATES: dict[str, Gate] = {}


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: str


@headwater.sink("test.gate", params=GateParams)
class GateSink:
    """Collects items; its commit_checkpoint waits at the gate's checkpoint."""

    def __init__(self, params: GateParams) -> None:
        self.gate = GATES[params.gate]
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        self.items.extend(batch)

    async def commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        gate = self.gate
        if checkpoint.seq == gate.block_seq:
            gate.reached.set()
            await gate.opened.wait()
        gate.commits.append(checkpoint.seq)

    async def close(self, error: BaseException | None) -> list[Any]:
        return self.items


class CommitFailsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on_call: int = 2


@headwater.sink("test.commit_fails", params=CommitFailsParams)
class CommitFailsSink:
    """Its commit_checkpoint raises on call number ``on_call``."""

    def __init__(self, params: CommitFailsParams) -> None:
        self.on_call = params.on_call
        self.calls = 0

    def write(self, batch: list[Any]) -> None:
        pass

    def commit_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.calls += 1
        if self.calls == self.on_call:
            raise OSError("disk on fire")


@headwater.checkpoint_store("test.recording")
class RecordingStore:
    """In memory, but lasting across runs of the test; records every save."""

    def load(self, pipeline: str) -> Checkpoint | None:
        return STORE_DATA.get(pipeline)

    def save(self, checkpoint: Checkpoint) -> None:
        checkpoint = Checkpoint.from_json(checkpoint.to_json())  # what a real store keeps
        SAVED.setdefault(checkpoint.pipeline, []).append(checkpoint)
        STORE_DATA[checkpoint.pipeline] = checkpoint

    def list(self) -> list[Checkpoint]:
        return list(STORE_DATA.values())

    def reset(self, pipeline: str) -> bool:
        return STORE_DATA.pop(pipeline, None) is not None

    def close(self) -> None:
        pass


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str


@headwater.checkpoint_store("test.flaky", params=FlakyParams)
class FlakyStore(SQLiteCheckpointStore):
    """The SQLite store, failing to save the checkpoint at ``FAIL_SAVE['items']``."""

    def __init__(self, params: FlakyParams) -> None:
        super().__init__(params.path)

    def save(self, checkpoint: Checkpoint) -> None:
        if checkpoint.items == FAIL_SAVE["items"]:
            raise OSError("the store's disk is full")
        super().save(checkpoint)


class CounterState:
    """A stateful transformer that forgot snapshot/restore."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, item: Any) -> Any:
        self.n += 1
        return item


@headwater.transformer("test.forgetful", kind="map", factory=True, capabilities=("stateful",))
def forgetful() -> CounterState:
    """Counts items but cannot snapshot."""
    return CounterState()


class TestComponents:
    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(ticks)
        register(sync_ticks)

    @staticmethod
    @headwater.hookimpl
    def register_sinks(register: Any) -> None:
        register(GateSink)
        register(CommitFailsSink)

    @staticmethod
    @headwater.hookimpl
    def register_checkpoint_stores(register: Any) -> None:
        register(RecordingStore)
        register(FlakyStore)

    @staticmethod
    @headwater.hookimpl
    def register_transformers(register: Any) -> None:
        register(forgetful)


@pytest.fixture
def components(register_plugin: RegisterPlugin) -> Iterator[None]:
    """Register the test components; reset their global switches around the test."""
    register_plugin(TestComponents, "checkpoint-tests")
    FAIL_AT.update(item=None, after_commit=None)
    FAIL_SAVE["items"] = None
    SAVED.clear()
    STORE_DATA.clear()
    GATES.clear()
    yield
    FAIL_AT.update(item=None, after_commit=None)
    FAIL_SAVE["items"] = None


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary working directory (the default store is relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def stored(path: Path, pipeline: str) -> Checkpoint | None:
    store = SQLiteCheckpointStore(path)
    try:
        return store.load(pipeline)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------
# State snapshots of the built-in stateful transformers
# ---------------------------------------------------------------------------------------


def json_round_trip(state: Any) -> Any:
    """What a checkpoint gives back: the state through the checkpoint's own JSON."""
    checkpoint = Checkpoint("p", "f", 1, states={"s": state})
    return Checkpoint.from_json(checkpoint.to_json()).states["s"]


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types and the same dict key order, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


ODD_VALUES: list[Any] = [
    None,
    True,
    -0.0,
    1.5,
    10**30,
    "text",
    [1, [2, (3, 4)]],
    (1, "a", None),
    (),
    {"b": 1, "a": 2},  # not sorted: order kept
    {"a": 1, "b": {"c": [1, 2]}},
    {1: "int key", (1, 2): "tuple key", None: "none key", "s": "str"},
    {"$hw": "a key that looks like a tag"},
    {1, 2, 3},
    frozenset({"x", (1, 2)}),
    b"\x00\xffbytes",
    OrderedDict([("z", 1), ("a", 2)]),
    Counter({"x": 3, "y": 1}),
    decimal.Decimal("1.10"),
    datetime.datetime(2024, 5, 1, 12, 30, 15, 123456),
    datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
    datetime.date(2024, 5, 1),
    datetime.time(23, 59, 1),
    datetime.timedelta(days=-1, seconds=5, microseconds=7),
    float("nan"),
    float("inf"),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_state_codec_round_trips_faithfully(value: Any) -> None:
    encoded = tf._encode_state(value)
    json.dumps(encoded, allow_nan=True)  # a JSON value
    assert same(tf._decode_state(json_round_trip(encoded)), value)


def test_state_codec_copies_mutable_values() -> None:
    pending = [{"a": [1]}]
    encoded = tf._encode_state(pending)
    pending[0]["a"].append(2)
    assert tf._decode_state(encoded) == [{"a": [1]}]


def test_state_codec_refuses_other_types_naming_them() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"Opaque cannot be checkpointed"):
        tf._encode_state([1, {"k": Opaque()}])


def _feed(state: Any, kind: str, items: list[Any], chunk: int = 3) -> list[Any]:
    """Push ``items`` through a step's state object the way the runtime does."""
    out: list[Any] = []
    if kind == "batch":
        for i in range(0, len(items), chunk):
            out.extend(state(items[i : i + chunk]))
    elif kind == "filter":
        out.extend(x for x in items if state(x))
    else:
        for item in items:
            out.extend(state(item))
    return out


def _flush(state: Any) -> list[Any]:
    flush = getattr(state, "flush", None)
    return list(flush()) if flush is not None else []


def _dicts(n: int) -> list[dict[str, Any]]:
    keys = ["a", 2, (1, "x"), "b"]
    return [{"k": keys[i % 4], "v": (i * 7) % 11 - 3} for i in range(n)]


STATEFUL_CASES: list[tuple[str, str, Callable[[], Any], list[Any]]] = [
    ("batch size", "batch", lambda: tf.batch_transformer(tf.BatchParams(size=4)), list(range(23))),
    (
        "window tumbling",
        "batch",
        lambda: tf.window_transformer(tf.WindowParams(size=5)),
        list(range(23)),
    ),
    (
        "window tumbling, no partial",
        "batch",
        lambda: tf.window_transformer(tf.WindowParams(size=5, partial=False)),
        list(range(23)),
    ),
    (
        "window sliding",
        "batch",
        lambda: tf.window_transformer(tf.WindowParams(type="sliding", size=5, step=2)),
        list(range(23)),
    ),
    (
        "window sliding with gaps",
        "batch",
        lambda: tf.window_transformer(tf.WindowParams(type="sliding", size=2, step=5)),
        list(range(23)),
    ),
    ("take", "batch", lambda: tf.take_transformer(tf.TakeParams(count=8)), list(range(23))),
    ("take none", "batch", lambda: tf.take_transformer(tf.TakeParams(count=0)), list(range(9))),
    ("skip", "batch", lambda: tf.skip_transformer(tf.SkipParams(count=8)), list(range(23))),
    (
        "reduce add",
        "flat_map",
        lambda: tf.reduce_transformer(tf.ReduceParams(fn=operator.add, initial=0)),
        list(range(23)),
    ),
    (
        "reduce without initial, running",
        "flat_map",
        lambda: tf.reduce_transformer(tf.ReduceParams(fn=operator.add, emit="running")),
        list(range(23)),
    ),
    (
        "reduce to a tuple",
        "flat_map",
        lambda: tf.reduce_transformer(
            tf.ReduceParams(fn=lambda acc, x: (*acc, (x, {x: str(x)})), initial=())
        ),
        list(range(12)),
    ),
    *[
        (
            f"aggregate {op}",
            "flat_map",
            (lambda op=op: tf.aggregate_transformer(tf.AggregateParams(op=op, field="v"))),
            _dicts(23),
        )
        for op in ("count", "sum", "min", "max", "mean")
    ],
    *[
        (
            f"aggregate {op} by",
            "flat_map",
            (lambda op=op: tf.aggregate_transformer(tf.AggregateParams(op=op, field="v", by="k"))),
            _dicts(23),
        )
        for op in ("count", "sum", "min", "max", "mean")
    ],
    (
        "aggregate running by",
        "flat_map",
        lambda: tf.aggregate_transformer(
            tf.AggregateParams(op="sum", field="v", by="k", emit="running")
        ),
        _dicts(23),
    ),
    (
        "aggregate per item",
        "flat_map",
        lambda: tf.aggregate_transformer(tf.AggregateParams(op="sum", per_item=True)),
        [[1, 2], [3], [], [4, 5, 6]],
    ),
    (
        "dedupe whole items",
        "filter",
        lambda: tf.dedupe_transformer(tf.DedupeParams()),
        [{"a": [1, 2]}, [1, {2}], (1, [2]), "s", 1, (1, 2), {"a": [1, 2]}, [1, {2}], (1, [2]), 1]
        * 2,
    ),
    (
        "dedupe by key, small memory",
        "filter",
        lambda: tf.dedupe_transformer(tf.DedupeParams(key="k", max_keys=3)),
        [{"k": i % 5} for i in range(30)] + [{"k": i % 2} for i in range(6)],
    ),
]


@pytest.mark.parametrize(
    ("kind", "make", "items"),
    [case[1:] for case in STATEFUL_CASES],
    ids=[case[0] for case in STATEFUL_CASES],
)
def test_restored_state_continues_exactly(
    kind: str, make: Callable[[], Any], items: list[Any]
) -> None:
    whole = make()
    expected = _feed(whole, kind, items) + _flush(whole)
    for split in sorted({0, 1, 3, len(items) // 2, len(items) - 1, len(items)}):
        first = make()
        out = _feed(first, kind, items[:split])
        state = json_round_trip(first.snapshot())
        second = make()  # as in a new process
        second.restore(state)
        out += _feed(second, kind, items[split:]) + _flush(second)
        assert same(out, expected), f"split at {split}"


@pytest.mark.parametrize(
    ("make", "items"),
    [
        (
            lambda: tf.aggregate_transformer(tf.AggregateParams(op="sum", by="k", field="v")),
            _dicts(5),
        ),
        (lambda: tf.aggregate_transformer(tf.AggregateParams(op="max")), list(range(5))),
        (lambda: tf.reduce_transformer(tf.ReduceParams(fn=operator.add)), list(range(5))),
    ],
    ids=["aggregate by", "aggregate", "reduce"],
)
def test_a_snapshot_taken_after_flush_does_not_emit_again(
    make: Callable[[], Any], items: list[Any]
) -> None:
    """The final checkpoint is taken after the steps flushed: restoring it emits nothing."""
    state = make()
    _feed(state, "flat_map", items)
    assert _flush(state)
    restored = make()
    restored.restore(json_round_trip(state.snapshot()))
    assert _flush(restored) == []


def test_timed_batch_keeps_pending_items_and_their_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    first = tf.batch_transformer(tf.BatchParams(size=10, seconds=2.0))
    assert first([1, 2, 3]) == []
    clock[0] = 101.5  # 0.5 s left
    state = json_round_trip(first.snapshot())
    clock[0] = 5000.0  # another process: another clock, and time passed while down
    second = tf.batch_transformer(tf.BatchParams(size=10, seconds=2.0))
    second.restore(state)
    assert second.tick() == []  # the clock was paused while the pipeline was down
    assert second([4]) == []
    clock[0] = 5000.5
    assert second.tick() == [[1, 2, 3, 4]]
    empty = tf.batch_transformer(tf.BatchParams(size=10, seconds=2.0))
    empty.restore(json_round_trip(second.snapshot()))
    assert empty.pending == []
    assert math.isinf(empty.deadline)


def test_time_windows_keep_their_items_and_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restored with a paused clock, time windows hold exactly what they would have."""
    clock = [10.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def make() -> Any:
        return tf.window_transformer(tf.WindowParams(type="sliding", seconds=1.0, step=0.5))

    arrivals = [(0.0, [1]), (0.3, [2]), (0.7, [3]), (1.2, [4]), (1.6, [5]), (2.4, [6])]

    def play(state: Any, events: list[tuple[float, list[int]]], base: float) -> list[Any]:
        out: list[Any] = []
        for t, batch in events:
            clock[0] = base + t
            out += state(batch)
        return out

    whole = make()
    expected = play(whole, arrivals, 10.0)
    clock[0] = 10.0 + 3.0
    expected += whole.tick() + whole.flush()
    for cut in range(1, len(arrivals)):
        first = make()
        out = play(first, arrivals[:cut], 10.0)
        clock[0] = 10.0 + arrivals[cut - 1][0]
        state = json_round_trip(first.snapshot())
        # resumed much later, in a process whose clock is elsewhere
        resumed_base = 777.0
        clock[0] = resumed_base + arrivals[cut - 1][0]
        second = make()
        second.restore(state)
        out += play(second, arrivals[cut:], resumed_base)
        clock[0] = resumed_base + 3.0
        out += second.tick() + second.flush()
        assert out == expected, f"cut after {cut} arrivals"


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda: tf.batch_transformer(tf.BatchParams(size=2)), {"nope": 1}),
        (lambda: tf.take_transformer(tf.TakeParams(count=2)), [1]),
        (lambda: tf.dedupe_transformer(tf.DedupeParams()), {"keys": [{"$hw": "alien", "v": 1}]}),
    ],
    ids=["batch", "take", "dedupe"],
)
def test_restore_rejects_a_state_it_did_not_write(make: Callable[[], Any], bad: Any) -> None:
    with pytest.raises(ValueError, match=r"cannot restore|unknown value type"):
        make().restore(bad)


# ---------------------------------------------------------------------------------------
# The commit protocol
# ---------------------------------------------------------------------------------------


def ticks_spec(
    name: str, stop: int, *, chunk: int = 10, every_items: int | None = 30, **more: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "sources": {"n": {"action": "test.ticks", "params": {"stop": stop, "chunk": chunk}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"store": "test.recording", "every_items": every_items},
    }
    spec.update(more)
    return spec


def test_markers_every_n_items(components: None) -> None:
    result = headwater.run_sync(ticks_spec("every-n", 100, chunk=10, every_items=30))
    assert result.output == list(range(100))
    saves = SAVED["every-n"]
    # the run's empty starting checkpoint, then every 30 items, then the end
    assert [c.items for c in saves] == [0, 30, 60, 90, 100]
    assert [c.positions for c in saves] == [{}, {"n": 30}, {"n": 60}, {"n": 90}, {"n": 100}]
    assert [c.completed for c in saves] == [False] * 4 + [True]
    assert [c.seq for c in saves] == list(range(1, 6))
    assert result.summary["checkpoint"] == {
        "resumed": False,
        "committed_seq": 5,
        "committed_items": 100,
        "saved": 4,
        "note": None,
    }


def test_markers_every_t_seconds(components: None) -> None:
    spec = ticks_spec("every-t", 30, chunk=1, every_items=None)
    spec["sources"]["n"]["params"]["delay"] = 0.01
    spec["checkpoint"]["every_seconds"] = 0.06
    result = headwater.run_sync(spec)
    assert result.output == list(range(30))
    items = [c.items for c in SAVED["every-t"]]
    assert items[0] == 0
    assert items[-1] == 30
    middle = items[1:-1]
    assert 1 <= len(middle) <= 10, items  # ~0.3 s of items at one marker per 0.06 s
    assert middle == sorted(set(middle))
    assert all(0 < i <= 30 for i in middle)


@pytest.mark.anyio
async def test_checkpoint_is_saved_only_after_every_sink_acknowledged(
    components: None, tmp_path: Path
) -> None:
    store_path = tmp_path / "ck.db"
    db = tmp_path / "out.db"
    GATES["g"] = gate = Gate(block_seq=3)  # 1: fresh start, 2: first marker, 3: second
    spec = {
        "name": "two-sinks",
        "sources": {"n": {"action": "test.ticks", "params": {"stop": 100, "chunk": 10}}},
        "sinks": [
            {"sink": "sqlite", "params": {"path": str(db), "table": "t", "columns": ["x"]}},
            {"sink": "test.gate", "params": {"gate": "g"}},
        ],
        "steps": [{"transformer": "batch", "params": {"size": 1}}],
        "checkpoint": {"every_items": 20, "params": {"path": str(store_path)}},
    }
    with anyio.fail_after(TIMEOUT):
        async with headwater.open_run(spec) as handle:
            await gate.reached.wait()
            # the sqlite sink goes on: it commits every checkpoint with its rows, the last...
            for _ in range(2000):
                held = rows(db, "SELECT data FROM headwater_sink_checkpoints")
                if held and json.loads(held[0][0])["completed"]:
                    break
                await anyio.sleep(0.005)
            assert rows(db, "SELECT count(*) FROM t") == [(100,)]
            # ...but the gate sink has not acknowledged checkpoint 3: the store stays at 2
            checkpoint = stored(store_path, "two-sinks")
            assert checkpoint is not None
            assert (checkpoint.seq, checkpoint.items) == (2, 20)
            gate.opened.set()
            result = await handle.wait()
    assert result.state == "succeeded"
    final = stored(store_path, "two-sinks")
    assert final is not None
    assert final.completed
    assert final.items == 100
    assert gate.commits == sorted(gate.commits)
    assert gate.commits[-1] == final.seq


def test_a_completed_run_resumes_as_a_no_op_with_a_note(components: None) -> None:
    spec = ticks_spec("done", 50)
    assert headwater.run_sync(spec).output == list(range(50))
    again = headwater.run_sync(spec, resume=True)
    assert again.state == "succeeded"
    assert again.outputs == {}  # no sink ran: nothing was read, nothing written
    info = again.summary["checkpoint"]
    assert info["resumed"] is True
    assert info["committed_items"] == 50
    assert "already completed" in info["note"]


def test_an_error_in_commit_checkpoint_fails_the_run(components: None) -> None:
    spec = ticks_spec("commit-fails", 100)
    spec["sinks"] = [{"sink": "test.commit_fails", "params": {"on_call": 2}}]
    result = headwater.run_sync(spec, raise_on_error=False)
    assert result.state == "failed"
    error = result.errors[0]
    assert isinstance(error, headwater.StageError)
    assert error.stage == "sinks.test.commit_fails"
    assert "disk on fire" in str(error)
    # the first marker was committed, the second was not
    assert [c.items for c in SAVED["commit-fails"]] == [0, 30]


def test_a_store_that_cannot_save_fails_the_run(components: None, tmp_path: Path) -> None:
    FAIL_SAVE["items"] = 60
    spec = ticks_spec("store-fails", 100)
    spec["checkpoint"] = {
        "store": "test.flaky",
        "every_items": 30,
        "params": {"path": str(tmp_path / "ck.db")},
    }
    result = headwater.run_sync(spec, raise_on_error=False)
    assert result.state == "failed"
    assert "the store's disk is full" in str(result.errors[0])
    checkpoint = stored(tmp_path / "ck.db", "store-fails")
    assert checkpoint is not None
    assert checkpoint.items == 30


def as_row(x: Any) -> tuple[str]:
    """One row of one column: the item's repr."""
    return (repr(x),)


def as_str_row(x: Any) -> tuple[str]:
    """Another function making the same rows (a changed step for the fingerprint)."""
    return (str(x),)


def sqlite_spec(
    name: str, db: Path, store: Path, stop: int, *, steps: list[Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "sources": {"n": {"action": "test.ticks", "params": {"stop": stop, "chunk": 7}}},
        "steps": steps or [{"transformer": "map", "params": {"fn": as_row}}],
        "sinks": [{"sink": "sqlite", "params": {"path": str(db), "table": "t", "columns": ["x"]}}],
        "checkpoint": {"every_items": 50, "params": {"path": str(store)}},
        "batch_size": 16,
    }


def values(db: Path) -> list[Any]:
    return [r[0] for r in rows(db, "SELECT x FROM t ORDER BY rowid")]


def test_transactional_sink_resumes_exactly_once_after_a_crash(
    components: None, tmp_path: Path
) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = sqlite_spec("crash", db, store, 1000)
    for crash in (333, 334, 700, 999):
        FAIL_AT["item"] = crash
        first = headwater.run_sync(spec, resume=True, raise_on_error=False)
        assert first.state == "failed"
        assert "crash before item" in str(first.errors[0])
        assert len(values(db)) <= crash  # rows after the last checkpoint were rolled back
    FAIL_AT["item"] = None
    result = headwater.run_sync(spec, resume=True)
    assert result.summary["checkpoint"]["resumed"] is True
    assert values(db) == [repr(i) for i in range(1000)]


def peek(store: Path, pipeline: str) -> Checkpoint | None:
    """The stored checkpoint, if the store exists yet."""
    return stored(store, pipeline) if store.exists() else None


async def cancel_after_commits(spec: dict[str, Any], store: Path, items: int) -> int:
    """Run ``spec`` (resuming), cancel it once a checkpoint at ``items`` or more is saved;
    return the items the run had when it was cancelled (all of them if it finished first).
    """
    with anyio.fail_after(TIMEOUT):
        async with headwater.open_run(spec, resume=True) as handle:
            while not handle.done:
                checkpoint = await anyio.to_thread.run_sync(peek, store, spec["name"])
                if checkpoint is not None and checkpoint.items >= items:
                    handle.cancel("test")
                    break
                await anyio.sleep(0.002)
            result = await handle.wait()
    return int(result.summary["items_in"])


@pytest.mark.anyio
async def test_range_resumes_exactly_where_it_was_committed(tmp_path: Path) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = {
        "name": "range",
        "sources": {"n": {"action": "range", "params": {"start": 5, "stop": 50_005, "chunk": 64}}},
        "steps": [{"transformer": "batch", "params": {"size": 1}}],
        "sinks": [{"sink": "sqlite", "params": {"path": str(db), "table": "t", "columns": ["x"]}}],
        "checkpoint": {"every_items": 500, "params": {"path": str(store)}},
        "batch_size": 32,
    }
    for at in (10_000, 30_000):
        await cancel_after_commits(spec, store, at)
    resumed = await headwater.run(spec, resume=True)
    assert resumed.summary["items_in"] <= 20_005  # went on from 30,000 or later
    assert values(db) == list(range(5, 50_005))


@pytest.mark.anyio
async def test_file_lines_resumes_at_the_exact_byte(tmp_path: Path) -> None:
    """Multi-byte characters and CRLF line ends cut by small blocks: the committed offset
    is always at a line boundary, and resuming there gives every line once."""
    source = tmp_path / "in.txt"
    lines = [f"é€ {i} {'ü' * (i % 5)}#{i}" for i in range(10_000)]
    source.write_bytes("".join(f"{line}\r\n" for line in lines).encode())
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = {
        "name": "lines",
        "sources": {
            "l": {"action": "file.lines", "params": {"path": str(source), "block_size": 37}}
        },
        "steps": [{"transformer": "batch", "params": {"size": 1}}],
        "sinks": [{"sink": "sqlite", "params": {"path": str(db), "table": "t", "columns": ["x"]}}],
        "checkpoint": {"every_items": 200, "params": {"path": str(store)}},
        "batch_size": 32,
    }
    for at in (2_000, 5_000):
        await cancel_after_commits(spec, store, at)
    resumed = await headwater.run(spec, resume=True)
    assert resumed.summary["items_in"] <= 5_000  # went on from line 5,000 or later
    assert values(db) == lines


def test_the_sink_s_newer_checkpoint_wins_when_the_store_missed_it(
    components: None, tmp_path: Path
) -> None:
    """Crash between the sink's commit and the store's save: the sink's checkpoint (the
    same transaction as its rows) tells where to resume."""
    db = tmp_path / "out.db"
    spec = sqlite_spec("missed", db, tmp_path / "unused.db", 500)
    spec["checkpoint"] = {
        "store": "test.flaky",
        "every_items": 50,
        "params": {"path": str(tmp_path / "ck.db")},
    }
    FAIL_SAVE["items"] = 168  # chunks of 7, 50 items apart: markers at 56, 112, 168...
    assert headwater.run_sync(spec, raise_on_error=False).state == "failed"
    checkpoint = stored(tmp_path / "ck.db", "missed")
    assert checkpoint is not None
    assert checkpoint.items == 112
    assert len(values(db)) == 168  # committed by the sink with its checkpoint
    FAIL_SAVE["items"] = None
    result = headwater.run_sync(spec, resume=True)
    assert result.summary["items_in"] == 500 - 168
    assert values(db) == [repr(i) for i in range(500)]


def test_stateful_steps_resume_to_the_uninterrupted_result(
    components: None, tmp_path: Path
) -> None:
    steps = [
        {"transformer": "map", "params": {"fn": operator.methodcaller("__mod__", 13)}},
        {"transformer": "dedupe", "params": {"max_keys": 5}},
        {"transformer": "window", "params": {"size": 3}},
        {"transformer": "map", "params": {"fn": sum}},
        {"transformer": "aggregate", "params": {"op": "mean"}},
        {"transformer": "map", "params": {"fn": lambda x: (round(x, 9),)}},
    ]
    reference = headwater.run_sync(
        {
            "name": "ref",
            "sources": {"n": {"action": "range", "params": {"stop": 2000}}},
            "steps": steps,
            "sinks": [{"sink": "collect"}],
        }
    ).output
    db = tmp_path / "out.db"
    spec = sqlite_spec("stateful", db, tmp_path / "ck.db", 2000, steps=steps)
    for crash in (500, 1001, 1900):
        FAIL_AT["item"] = crash
        assert headwater.run_sync(spec, resume=True, raise_on_error=False).state == "failed"
    FAIL_AT["item"] = None
    headwater.run_sync(spec, resume=True)
    assert [(x,) for x in values(db)] == reference


def test_take_commits_its_last_items_and_completes(components: None, tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    steps = [{"transformer": "take", "params": {"count": 123}}]
    spec = sqlite_spec("take", db, tmp_path / "ck.db", 10_000, steps=steps)
    spec["sinks"][0]["params"]["columns"] = None
    spec["steps"].append({"transformer": "map", "params": {"fn": lambda x: {"x": x}}})
    result = headwater.run_sync(spec)
    assert values(db) == list(range(123))
    assert result.summary["checkpoint"]["committed_items"] is not None
    checkpoint = stored(tmp_path / "ck.db", "take")
    assert checkpoint is not None
    assert checkpoint.completed
    again = headwater.run_sync(spec, resume=True)
    assert "already completed" in again.summary["checkpoint"]["note"]
    assert values(db) == list(range(123))


def test_starting_over_replaces_the_checkpoint_at_once(components: None) -> None:
    """A run without resume that crashes before its first checkpoint must not leave the
    previous run's checkpoint behind (its sinks started over)."""
    spec = ticks_spec("over", 100)
    headwater.run_sync(spec)
    assert STORE_DATA["over"].completed
    FAIL_AT["item"] = 5
    assert headwater.run_sync(spec, raise_on_error=False).state == "failed"
    fresh = STORE_DATA["over"]
    assert (fresh.items, fresh.positions, fresh.completed) == (0, {}, False)
    FAIL_AT["item"] = None
    assert headwater.run_sync(spec, resume=True).output == list(range(100))


def test_reset_wins_over_a_checkpoint_held_by_a_sink(components: None, tmp_path: Path) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = sqlite_spec("reset", db, store, 300)
    FAIL_AT.update(item=200, after_commit=100)
    assert headwater.run_sync(spec, raise_on_error=False).state == "failed"
    assert rows(db, "SELECT count(*) FROM headwater_sink_checkpoints") == [(1,)]
    sqlite_store = SQLiteCheckpointStore(store)
    assert sqlite_store.reset("reset")
    sqlite_store.close()
    FAIL_AT["item"] = None
    result = headwater.run_sync(spec, resume=True)
    assert result.summary["checkpoint"]["resumed"] is False
    assert result.summary["items_in"] == 300  # from the start, not from the sink's checkpoint


def test_jsonl_resume_truncates_a_torn_line(components: None, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    spec = ticks_spec("torn", 200, every_items=50)
    spec["sinks"] = [{"sink": "jsonl", "params": {"path": str(out)}}]
    FAIL_AT["item"] = 120
    assert headwater.run_sync(spec, raise_on_error=False).state == "failed"
    with out.open("a") as f:
        f.write('{"half a li')  # what a kill in the middle of a write leaves
    FAIL_AT["item"] = None
    headwater.run_sync(spec, resume=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(set(lines)) == list(range(200))
    assert len(lines) - 200 <= 50  # duplicates: at most one checkpoint interval
    assert lines[-80:] == list(range(120, 200))


# ---------------------------------------------------------------------------------------
# Refusals: changed pipeline, bad checkpoint databases, steps that cannot be checkpointed
# ---------------------------------------------------------------------------------------


def test_resuming_a_changed_pipeline_is_refused_unless_forced(
    components: None, tmp_path: Path
) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = sqlite_spec("changed", db, store, 300)
    FAIL_AT["item"] = 150
    headwater.run_sync(spec, raise_on_error=False)
    FAIL_AT["item"] = None
    changed = sqlite_spec(
        "changed", db, store, 300, steps=[{"transformer": "map", "params": {"fn": as_str_row}}]
    )
    refused = headwater.run_sync(changed, resume=True, raise_on_error=False)
    assert refused.state == "failed"
    error = refused.errors[0]
    assert isinstance(error, CheckpointError)
    message = str(error)
    assert "'changed' changed since its checkpoint" in message
    assert "--force" in message
    assert "headwater checkpoints reset changed" in message
    assert len(values(db)) < 300  # nothing was written
    forced = headwater.run_sync(changed, resume=True, force=True)
    assert forced.summary["checkpoint"]["resumed"] is True
    assert len(values(db)) == 300


def test_checkpoints_are_kept_per_pipeline_name(components: None, tmp_path: Path) -> None:
    """Two pipelines share one store and one database (different tables): each resumes
    from its own checkpoint, in the store and in the sink."""
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    first = sqlite_spec("first", db, store, 400)
    second = sqlite_spec("second", db, store, 300)
    second["sinks"][0]["params"]["table"] = "t2"
    FAIL_AT.update(item=250, after_commit=100)
    assert headwater.run_sync(first, raise_on_error=False).state == "failed"
    FAIL_AT.update(item=None, after_commit=None)
    headwater.run_sync(second)  # complete, with many more checkpoints than "first" has
    sqlite_store = SQLiteCheckpointStore(store)
    try:
        kept = {c.pipeline: c for c in sqlite_store.list()}
        assert set(kept) == {"first", "second"}
        assert kept["second"].completed
        assert not kept["first"].completed
        assert kept["first"].fingerprint != kept["second"].fingerprint
    finally:
        sqlite_store.close()
    resumed = headwater.run_sync(first, resume=True)
    assert resumed.summary["checkpoint"]["resumed"] is True
    assert values(db) == [repr(i) for i in range(400)]
    assert [r[0] for r in rows(db, "SELECT x FROM t2 ORDER BY rowid")] == [
        repr(i) for i in range(300)
    ]


def test_sinks_timeouts_and_intervals_may_change_between_runs(
    components: None, tmp_path: Path
) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = sqlite_spec("tuned", db, store, 300)
    FAIL_AT["item"] = 150
    headwater.run_sync(spec, raise_on_error=False)
    FAIL_AT["item"] = None
    spec["checkpoint"]["every_items"] = 10
    spec["batch_size"] = 64
    spec["timeouts"] = {"total": 60}
    spec["sinks"].append({"sink": "null"})
    assert headwater.run_sync(spec, resume=True).summary["checkpoint"]["resumed"] is True
    assert values(db) == [repr(i) for i in range(300)]


def test_a_sink_s_checkpoint_of_another_definition_is_refused(
    components: None, tmp_path: Path
) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    spec = sqlite_spec("split", db, store, 300)
    FAIL_AT.update(item=150, after_commit=100)
    headwater.run_sync(spec, raise_on_error=False)
    FAIL_AT["item"] = None
    changed = sqlite_spec(
        "split", db, store, 300, steps=[{"transformer": "map", "params": {"fn": as_str_row}}]
    )
    # the store's checkpoint is older and of the new definition, the sink's of the old one
    sqlite_store = SQLiteCheckpointStore(store)
    old = sqlite_store.load("split")
    assert old is not None
    sqlite_store.save(
        dataclasses.replace(
            old, seq=old.seq - 1, fingerprint=headwater.parse_pipeline(changed).fingerprint()
        )
    )
    sqlite_store.close()
    refused = headwater.run_sync(changed, resume=True, raise_on_error=False)
    assert isinstance(refused.errors[0], CheckpointError)
    assert "changed since its checkpoint" in str(refused.errors[0])


def file_spec(store: Path, **store_params: Any) -> dict[str, Any]:
    return {
        "name": "bad-state",
        "sources": {"n": {"action": "range", "params": {"stop": 10}}},
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"params": {"path": str(store), **store_params}},
    }


def valid_store(path: Path) -> None:
    store = SQLiteCheckpointStore(path)
    store.save(Checkpoint("bad-state", "f", 1, positions={"n": 3}, items=3))
    store.close()


def newer_schema(path: Path) -> None:
    valid_store(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE headwater_meta SET value = 99 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def bad_row(path: Path) -> None:
    store = SQLiteCheckpointStore(path)
    store.save(Checkpoint("bad-state", "f", 1))
    store.close()
    conn = sqlite3.connect(path)
    conn.execute('UPDATE headwater_checkpoints SET data = \'{"pipeline": 1, "nope": 2}\'')
    conn.commit()
    conn.close()


def garbage(path: Path) -> None:
    path.write_bytes(b"this is no database\n" * 200)


def truncated(path: Path) -> None:
    valid_store(path)
    path.write_bytes(path.read_bytes()[:5000])


BAD_STATES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (garbage, "is corrupt"),
    "truncated": (truncated, "corrupt"),
    "newer schema": (newer_schema, "written by a newer headwater"),
    "unreadable checkpoint": (bad_row, "is unreadable"),
}


@pytest.mark.parametrize("bad", list(BAD_STATES), ids=list(BAD_STATES))
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "start-over"])
def test_a_bad_checkpoint_database_fails_clearly_and_is_left_alone(
    in_tmp: Path, bad: str, resume: bool
) -> None:
    make, words = BAD_STATES[bad]
    path = in_tmp / "ck.db"
    make(path)
    before = path.read_bytes()
    result = headwater.run_sync(file_spec(path), resume=resume, raise_on_error=False)
    assert result.state == "failed"
    error = result.errors[0]
    assert isinstance(error, CheckpointError)
    assert str(path) in str(error)
    assert words in str(error)
    if bad != "unreadable checkpoint":
        assert "newer" in str(error) or "move it away" in str(error)
    assert path.read_bytes() == before  # nothing overwritten


@pytest.fixture
def locked_db(tmp_path: Path) -> Iterator[Path]:
    """A checkpoint file on which another process holds ``BEGIN EXCLUSIVE``."""
    path = tmp_path / "locked.db"
    valid_store(path)
    code = textwrap.dedent(
        """
        import sqlite3, sys
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=TIMEOUT)


def test_a_locked_checkpoint_database_fails_clearly(locked_db: Path) -> None:
    result = headwater.run_sync(
        file_spec(locked_db, timeout=0.2), resume=True, raise_on_error=False
    )
    error = result.errors[0]
    assert isinstance(error, CheckpointError)
    assert str(locked_db) in str(error)
    assert "locked by another process" in str(error)
    with pytest.raises(CheckpointError, match="locked by another process"):
        SQLiteCheckpointStore(locked_db, timeout=0.1).list()


def test_a_corrupt_state_snapshot_fails_the_resume_clearly(
    components: None, tmp_path: Path
) -> None:
    db, store = tmp_path / "out.db", tmp_path / "ck.db"
    steps = [{"transformer": "batch", "params": {"size": 4}}]
    spec = sqlite_spec("bad-snapshot", db, store, 300, steps=steps)
    spec["steps"].append({"transformer": "map", "params": {"fn": as_row}})
    FAIL_AT.update(item=150, after_commit=100)
    headwater.run_sync(spec, raise_on_error=False)
    FAIL_AT["item"] = None
    # tamper with both copies of the checkpoint: the store's and the sink's
    conn = sqlite3.connect(db)
    data = json.loads(conn.execute("SELECT data FROM headwater_sink_checkpoints").fetchone()[0])
    data["states"]["steps[0].batch"] = {"unexpected": True}
    conn.execute("UPDATE headwater_sink_checkpoints SET data = ?", (json.dumps(data),))
    conn.commit()
    conn.close()
    sqlite_store = SQLiteCheckpointStore(store)
    sqlite_store.save(Checkpoint(**{**data, "seq": data["seq"] - 1}))
    sqlite_store.close()
    result = headwater.run_sync(spec, resume=True, raise_on_error=False)
    assert result.state == "failed"
    message = str(result.errors[0])
    assert "cannot restore the state of transformer 'batch'" in message
    assert "headwater checkpoints reset bad-snapshot" in message


def test_a_stateful_step_without_snapshot_cannot_be_checkpointed(components: None) -> None:
    spec = ticks_spec("forgetful", 10, steps=[{"transformer": "test.forgetful"}])
    result = headwater.run_sync(spec, raise_on_error=False)
    assert result.state == "failed"
    assert "is stateful but cannot snapshot its state" in str(result.errors[0])


def test_a_sync_generator_source_cannot_report_positions_yet(components: None) -> None:
    spec = ticks_spec("sync", 10)
    spec["sources"] = {"n": {"action": "test.sync_ticks", "params": {"stop": 10}}}
    # refused when validated, before a run could fail on its first position
    with pytest.raises(headwater.PipelineValidationError, match="cannot report checkpoint"):
        headwater.run_sync(spec, raise_on_error=False)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

PIPELINE = """\
name: lines
sources:
  src: {action: file.lines, params: {path: in.txt, block_size: 1024}}
steps:
  - {transformer: json.decode}
  - {transformer: aggregate, params: {op: sum}}
sinks:
  - {sink: jsonl, params: {path: out.jsonl}}
checkpoint: {every_items: 100}
"""


def hw(*args: str | Path, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "headwater", *map(str, args)],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "headwater: error:" in proc.stderr
    for word in words:
        assert word in proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "in.txt").write_text("".join(f"{i}\n" for i in range(1000)))
    (tmp_path / "p.yaml").write_text(PIPELINE)
    return tmp_path


def test_cli_run_resume_shows_the_checkpoint(project: Path) -> None:
    first = hw("run", "p.yaml", cwd=project)
    assert first.returncode == 0, first.stderr
    assert "checkpoint: committed checkpoint" in first.stderr
    assert (project / "out.jsonl").read_text() == f"{sum(range(1000))}\n"
    again = hw("run", "p.yaml", "--resume", cwd=project)
    assert again.returncode == 0, again.stderr
    assert "checkpoint: resumed, committed checkpoint" in again.stderr
    assert "already completed at checkpoint" in again.stderr
    assert (project / "out.jsonl").read_text() == f"{sum(range(1000))}\n"


def test_cli_run_resume_refusals(project: Path) -> None:
    assert hw("run", "p.yaml", cwd=project).returncode == 0
    changed = project / "changed.yaml"
    changed.write_text(PIPELINE.replace("op: sum", "op: count"))
    refused = hw("run", changed, "--resume", cwd=project)
    assert_clean_error(refused, "changed since its checkpoint", "--force")
    forced = hw("run", changed, "--resume", "--force", cwd=project)
    assert forced.returncode == 0, forced.stderr
    assert_clean_error(hw("run", "p.yaml", "--force", cwd=project), "only applies with --resume")
    plain = project / "plain.yaml"
    plain.write_text(PIPELINE.replace("checkpoint: {every_items: 100}\n", ""))
    assert_clean_error(hw("run", plain, "--resume", cwd=project), "no checkpoint section")


@pytest.mark.parametrize("bad", ["corrupt", "newer schema"])
def test_cli_bad_checkpoint_database_exits_2(project: Path, bad: str) -> None:
    store = project / ".headwater" / "checkpoints.db"
    store.parent.mkdir()
    make, words = BAD_STATES[bad]
    make(store)
    before = store.read_bytes()
    for args in (("run", "p.yaml", "--resume"), ("run", "p.yaml"), ("checkpoints", "list")):
        proc = hw(*args, cwd=project)
        assert_clean_error(proc, str(Path(".headwater") / "checkpoints.db"), words)
    assert store.read_bytes() == before
    assert not (project / "out.jsonl").exists()


def test_cli_locked_checkpoint_database_exits_2(locked_db: Path) -> None:
    where = locked_db.parent
    (where / "p.yaml").write_text(
        PIPELINE.replace(
            "checkpoint: {every_items: 100}",
            f"checkpoint: {{params: {{path: {locked_db.name}, timeout: 0.2}}}}",
        )
    )
    (where / "in.txt").write_text("1\n")
    assert_clean_error(hw("run", "p.yaml", "--resume", cwd=where), "locked by another process")
    listing = hw("checkpoints", "list", "--store-path", locked_db, "--timeout", "0.2", cwd=where)
    assert_clean_error(listing, str(locked_db), "locked by another process")


def test_cli_checkpoints_list_show_reset(project: Path) -> None:
    empty = hw("checkpoints", "list", cwd=project)
    assert empty.returncode == 0
    assert "no checkpoints" in empty.stdout
    assert not (project / ".headwater").exists()  # looking does not create the file
    assert hw("run", "p.yaml", cwd=project).returncode == 0

    listing = hw("checkpoints", "list", cwd=project)
    assert listing.returncode == 0, listing.stderr
    assert "lines" in listing.stdout
    assert "completed" in listing.stdout
    as_json = json.loads(hw("checkpoints", "list", "--json", cwd=project).stdout)
    assert [(c["pipeline"], c["items"], c["completed"]) for c in as_json] == [("lines", 1000, True)]
    assert as_json[0]["stages"] == ["steps[1].aggregate"]

    shown = hw("checkpoints", "show", "lines", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "items:       1,000" in shown.stdout
    assert '"offset": ' in shown.stdout
    assert "steps[1].aggregate" in shown.stdout
    full = json.loads(hw("checkpoints", "show", "lines", "--json", cwd=project).stdout)
    assert full["states"]["steps[1].aggregate"]["state"] == sum(range(1000))
    by_file = hw("checkpoints", "show", "--pipeline", "p.yaml", cwd=project)
    assert by_file.returncode == 0
    assert "(matches p.yaml)" in by_file.stdout
    assert_clean_error(hw("checkpoints", "show", "nope", cwd=project), "no checkpoint", "lines")

    refused = hw("checkpoints", "reset", "lines", cwd=project, stdin="")
    assert_clean_error(refused, "--yes")
    assert hw("checkpoints", "list", "--json", cwd=project).stdout.count('"lines"') == 1
    done = hw("checkpoints", "reset", "lines", "--yes", cwd=project)
    assert done.returncode == 0
    assert "starts from the beginning" in done.stdout
    assert json.loads(hw("checkpoints", "list", "--json", cwd=project).stdout) == []
    again = hw("checkpoints", "reset", "--pipeline", "p.yaml", "--yes", cwd=project)
    assert again.returncode == 0
    assert "nothing to reset" in again.stdout


def test_cli_checkpoints_store_path(project: Path) -> None:
    other = project / "elsewhere.db"
    store = SQLiteCheckpointStore(other)
    store.save(Checkpoint("elsewhere", "abc", 4, positions={"s": 7}, items=7))
    store.close()
    listing = hw("checkpoints", "list", "--store-path", other, cwd=project)
    assert listing.returncode == 0
    assert "elsewhere" in listing.stdout
    assert "resumable" in listing.stdout
    shown = hw("checkpoints", "show", "elsewhere", "--store-path", other, cwd=project)
    assert "s: 7" in shown.stdout


# ---------------------------------------------------------------------------------------
# The benchmark scenario (tiny: it runs and checks what it wrote; no speed asserted)
# ---------------------------------------------------------------------------------------


def test_checkpoint_benchmark_scenario_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    args = ["--json", str(out), "--rounds", "1", "--warmup", "0", "--n", "3000", "checkpoint"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cost of exactly-once (sqlite) at the default interval" in proc.stdout
    data = json.loads(out.read_text())["checkpoint"]
    names = ["sqlite_plain", "sqlite_checkpointed", "jsonl_plain", "jsonl_checkpointed"]
    assert set(data) == set(names)
    assert data["sqlite_plain"]["checkpoints"] == 0
    assert data["sqlite_checkpointed"]["checkpoints"] >= 1
    assert all(data[n]["items_per_s"] > 0 for n in names)
