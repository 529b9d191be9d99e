"""Event-time and keyed windows against a plain-Python reference.

The reference knows nothing of watermarks firing windows: it walks the events in
arrival order to find the late ones (event time below the largest time seen so far minus
``lateness``), then sorts the on-time events by event time and cuts them into windows.
The ``window`` step must emit exactly those windows (items in arrival order), each once,
in order of end; and the late items it sets aside must be exactly the reference's. The
step is driven batch by batch (random batch sizes), and its state goes through a JSON
round trip (a checkpoint) at a random batch boundary.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater.builtin_plugins.transformers import WindowParams
from headwater.builtin_plugins.transformers.batching import window_transformer

Window = tuple[Any, float, float]


def reference(
    events: list[dict[str, Any]],
    kind: str,
    *,
    size: int = 0,
    step: int = 0,
    gap: int = 0,
    lateness: int,
    keyed: bool,
) -> tuple[dict[Window, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The windows (key, start, end) -> items in arrival order, and the late events."""
    on_time: list[tuple[int, dict[str, Any]]] = []
    late = []
    largest = -math.inf
    for i, e in enumerate(events):
        if e["t"] < largest - lateness:
            late.append(e)
            continue
        largest = max(largest, e["t"])
        on_time.append((i, e))
    windows: dict[Window, list[tuple[int, dict[str, Any]]]] = {}
    if kind == "session":
        by_key: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
        for i, e in on_time:
            by_key.setdefault(e["k"] if keyed else None, []).append((i, e))
        for key, pairs in by_key.items():
            pairs.sort(key=lambda p: p[1]["t"])
            session = [pairs[0]]
            for pair in pairs[1:]:
                if pair[1]["t"] - session[-1][1]["t"] >= gap:
                    windows[(key, session[0][1]["t"], session[-1][1]["t"] + gap)] = session
                    session = []
                session.append(pair)
            windows[(key, session[0][1]["t"], session[-1][1]["t"] + gap)] = session
    else:
        every = size if kind == "tumbling" else step
        for i, e in sorted(on_time, key=lambda p: p[1]["t"]):
            t = e["t"]
            first = math.floor((t - size) / every) * every + every  # first start > t - size
            for start in range(first, t + 1, every):
                if start % every == 0 and start <= t < start + size:
                    key = e["k"] if keyed else None
                    windows.setdefault((key, start, start + size), []).append((i, e))
    return {
        w: [e for _, e in sorted(pairs, key=lambda p: p[0])] for w, pairs in windows.items()
    }, late


Events = list[dict[str, Any]]


def drive(
    params: WindowParams, events: Events, cuts: list[int], restore_at: int
) -> tuple[list[Any], list[Any]]:
    """Feed ``events`` in batches cut at ``cuts``; at batch ``restore_at`` continue in a
    fresh step restored from a JSON round trip of the state. Returns (windows, late)."""
    step = window_transformer(params)
    out: list[Any] = []
    late: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        if n == restore_at:
            state = json.loads(json.dumps(step.snapshot()))
            step = window_transformer(params)
            step.restore(state)
        out.extend(step(events[a:b]))
        items, dropped = step.take_late()
        assert dropped == 0  # late: dead_letter keeps them all
        late.extend(items)
    out.extend(step.flush())
    return out, late


events_strategy = st.integers(min_value=0, max_value=12).flatmap(
    lambda disorder: st.lists(
        st.tuples(st.integers(0, disorder), st.sampled_from(["a", "b", "c", 7])),
        min_size=1,
        max_size=120,
    ).map(lambda rows: [{"t": 1_000 + i - d, "k": k, "n": i} for i, (d, k) in enumerate(rows)])
)


def check(
    kind: str,
    events: Events,
    cuts: list[int],
    restore_at: int,
    lateness: int,
    keyed: bool,
    **shape: int,
) -> None:
    params = WindowParams.model_validate(
        {
            "type": kind,
            "time": "event",
            "timestamp": "t",
            "lateness": lateness,
            "late": "dead_letter",
            **({"by": "k"} if keyed else {}),
            **({"gap": shape["gap"]} if kind == "session" else {"seconds": shape["size"]}),
            **({"step": shape["step"]} if kind == "sliding" else {}),
            "agg": {"count": "count", "total": "sum:n"},
        }
    )
    got, late = drive(params, events, cuts, restore_at)
    expected, expected_late = reference(events, kind, lateness=lateness, keyed=keyed, **shape)
    assert late == expected_late
    seen = {}
    for w in got:
        where = (w["key"], w["start"], w["end"])
        assert where not in seen, f"window {where} emitted twice"
        seen[where] = w["items"]
        assert w["count"] == len(w["items"])
        assert w["total"] == sum(e["n"] for e in w["items"])
    assert seen == expected
    ends = [w["end"] for w in got]
    assert ends == sorted(ends), "windows are emitted in order of end"


cuts_strategy = st.lists(st.integers(0, 120), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    events=events_strategy,
    cuts=cuts_strategy,
    restore_at=st.integers(0, 9),
    lateness=st.integers(0, 6),
    keyed=st.booleans(),
    size=st.integers(1, 9),
)
def test_tumbling_matches_reference(
    events: Events, cuts: list[int], restore_at: int, lateness: int, keyed: bool, size: int
) -> None:
    check("tumbling", events, cuts, restore_at, lateness, keyed, size=size)


@settings(max_examples=150, deadline=None)
@given(
    events=events_strategy,
    cuts=cuts_strategy,
    restore_at=st.integers(0, 9),
    lateness=st.integers(0, 6),
    keyed=st.booleans(),
    size=st.integers(1, 9),
    step=st.integers(1, 12),
)
def test_sliding_matches_reference(
    events: Events,
    cuts: list[int],
    restore_at: int,
    lateness: int,
    keyed: bool,
    size: int,
    step: int,
) -> None:
    check("sliding", events, cuts, restore_at, lateness, keyed, size=size, step=step)


@settings(max_examples=150, deadline=None)
@given(
    events=events_strategy,
    cuts=cuts_strategy,
    restore_at=st.integers(0, 9),
    lateness=st.integers(0, 6),
    keyed=st.booleans(),
    gap=st.integers(1, 6),
)
def test_session_matches_reference(
    events: Events, cuts: list[int], restore_at: int, lateness: int, keyed: bool, gap: int
) -> None:
    check("session", events, cuts, restore_at, lateness, keyed, gap=gap)


def test_disorder_beyond_lateness_is_late_exactly_as_the_reference_says() -> None:
    # a fixed case where disorder (5) exceeds lateness (2): both ways of handling late
    # items see the same ones
    events = [{"t": t, "k": "a", "n": i} for i, t in enumerate([10, 11, 6, 12, 9, 20, 17, 15])]
    _, expected_late = reference(events, "tumbling", size=5, lateness=2, keyed=False)
    assert [e["t"] for e in expected_late] == [6, 9, 17, 15]
    dead = (
        headwater.Pipeline("late")
        .source("iterable", items=events)
        .step("window", time="event", timestamp="t", seconds=5, lateness=2, late="dead_letter")
        .sink("collect")
        .dead_letter("collect")
        .run_sync()
    )
    assert [r["item"] for r in dead.outputs["dead_letter"]] == expected_late
    assert {r["error"] for r in dead.outputs["dead_letter"]} == {"LateItem"}
    dropped = (
        headwater.Pipeline("late")
        .source("iterable", items=events)
        .step("window", time="event", timestamp="t", seconds=5, lateness=2)
        .sink("collect")
        .run_sync()
    )
    stage = dropped.summary["stages"]["steps[0].window"]
    assert (stage["late"], stage["skipped"]) == (4, 4)
    assert dropped.output == dead.output
    assert [(w["start"], len(w["items"])) for w in dropped.output] == [(10, 3), (20, 1)]


def test_iso_timestamps_and_epoch_alignment() -> None:
    events = [
        {"at": "2024-05-01T12:00:59Z", "user": "u1"},
        {"at": "2024-05-01T12:01:00+00:00", "user": "u1"},
        {"at": "2024-05-01T12:00:01", "user": "u2"},
    ]
    result = (
        headwater.Pipeline("iso")
        .source("iterable", items=events)
        .step(
            "window",
            time="event",
            timestamp="at",
            seconds=60,
            lateness=60,
            by="user",
            agg={"n": "count"},
            keep_items=False,
        )
        .sink("collect")
        .run_sync()
    )
    minute = 1_714_564_800  # 2024-05-01T12:00:00Z
    assert result.output == [
        {"key": "u1", "start": minute, "end": minute + 60, "n": 1},
        {"key": "u2", "start": minute, "end": minute + 60, "n": 1},
        {"key": "u1", "start": minute + 60, "end": minute + 120, "n": 1},
    ]


def test_a_later_event_time_window_fires_on_the_upstream_watermark() -> None:
    # per-key minute counts, then an hourly total per key: the hourly windows are
    # emitted as the minute windows' watermark passes their end, not only at the end
    events = [{"t": 60 * i, "k": "a"} for i in range(200)]
    seen: list[Any] = []

    def note(item: Any) -> Any:
        seen.append(item)
        return item

    result = (
        headwater.Pipeline("chain")
        .source("iterable", items=events)
        .step(
            "window",
            time="event",
            timestamp="t",
            seconds=60,
            by="k",
            agg={"n": "count"},
            keep_items=False,
        )
        .step(
            "window",
            time="event",
            timestamp="start",
            seconds=3600,
            by="key",
            agg={"n": "sum:n"},
            keep_items=False,
            lateness=60,
        )
        .map(note)
        .sink("collect")
        .run_sync()
    )
    assert [w["n"] for w in result.output] == [60, 60, 60, 20]
    assert result.summary["stages"]["steps[1].window"]["late"] == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"time": "event", "seconds": 5}, "time: event needs timestamp"),
        ({"seconds": 5, "lateness": 3}, "lateness applies to time: event only"),
        ({"type": "session", "seconds": 5}, "a session window needs gap"),
        ({"seconds": 5, "agg": {"key": "count"}}, "taken by the window itself"),
        ({"seconds": 5, "agg": {"x": "median:v"}}, "is not count or OP:FIELD"),
        ({"size": 5, "by": "k"}, "count windows (size) cannot be keyed"),
        ({"seconds": 5, "keep_items": False}, "keep_items: false applies to windows as dicts"),
        ({"seconds": 5, "gap": 2}, "gap applies to session windows only"),
    ],
)
def test_bad_params_are_named(params: dict[str, Any], message: str) -> None:
    pipe = headwater.Pipeline("bad").source("range", stop=1).step("window", **params)
    with pytest.raises(headwater.PipelineValidationError) as info:
        pipe.sink("collect").run_sync()
    assert message in str(info.value)
    assert "steps[0].params" in str(info.value)


def test_a_missing_timestamp_fails_with_the_field_named() -> None:
    pipe = (
        headwater.Pipeline("missing")
        .source("iterable", items=[{"t": 1}, {"x": 2}])
        .step("window", time="event", timestamp="t", seconds=5)
        .sink("collect")
    )
    with pytest.raises(headwater.PipelineFailed, match=r"steps\[0\].window.*no field 't'"):
        pipe.run_sync()


def test_processing_time_keyed_windows_are_dicts_aligned_to_the_epoch() -> None:
    result = (
        headwater.Pipeline("proc")
        .source("iterable", items=[{"k": i % 2} for i in range(10)])
        .step("window", seconds=3600, by="k", agg={"n": "count"})
        .sink("collect")
        .run_sync()
    )
    assert sorted((w["key"], w["n"]) for w in result.output) == [(0, 5), (1, 5)]
    for w in result.output:
        assert w["start"] % 3600 == 0
        assert w["end"] == w["start"] + 3600
        assert len(w["items"]) == 5


def test_plain_windows_keep_their_lists() -> None:
    result = headwater.Pipeline("plain").source("range", stop=5).step("window", size=2)
    assert result.sink("collect").run_sync().output == [[0, 1], [2, 3], [4]]


def test_the_watermark_crosses_stages_and_fires_windows_before_the_end() -> None:
    # minute windows of keys a and b, only a's kept, then (in another stage, past a
    # stream transformer) hourly sums of a. a's events stop at minute 100, b's go on to
    # minute 150: a's second hour ends at minute 120, which only the watermark coming
    # from the first window (b's times) can tell. The source holds its end back until
    # that hour came out.
    fired = anyio.Event()

    async def events() -> AsyncIterator[dict[str, Any]]:
        for i in range(150):
            yield {"t": 60 * i, "k": "b"}
            if i < 100:
                yield {"t": 60 * i, "k": "a"}
        with anyio.fail_after(10):
            await fired.wait()

    def note(window: dict[str, Any]) -> dict[str, Any]:
        if window["start"] == 3600:
            fired.set()
        return window

    result = (
        headwater.Pipeline("stages")
        .source("iterable", items=events())
        .step(
            "window",
            time="event",
            timestamp="t",
            seconds=60,
            by="k",
            agg={"n": "count"},
            keep_items=False,
        )
        .step("filter", expr="key == 'a'")
        .step("throttle", rate=1e9, burst=1_000_000)
        .step(
            "window",
            time="event",
            timestamp="start",
            seconds=3600,
            by="key",
            agg={"n": "sum:n"},
            keep_items=False,
            lateness=60,
        )
        .map(note)
        .sink("collect")
        .run_sync()
    )
    assert [(w["start"], w["n"]) for w in result.output] == [(0, 60), (3600, 40)]


@pytest.mark.parametrize(
    "params",
    [
        {"seconds": 0.05, "by": "k", "agg": {"n": "count"}},
        {"type": "session", "gap": 0.05, "by": "k"},
        {"type": "session", "gap": 0.05},
    ],
    ids=["keyed-tumbling", "keyed-session", "plain-session"],
)
def test_processing_time_windows_fire_by_the_clock_while_input_is_quiet(
    params: dict[str, Any],
) -> None:
    fired = anyio.Event()

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"k": "a"}
        yield {"k": "a"}
        with anyio.fail_after(10):
            await fired.wait()  # only a tick of the wall clock can emit the window
        yield {"k": "b"}

    def note(window: Any) -> Any:
        fired.set()
        return window

    result = (
        headwater.Pipeline("clock")
        .source("iterable", items=events())
        .step("window", **params)
        .map(note)
        .sink("collect")
        .run_sync()
    )
    first, second = result.output
    if "by" in params:
        assert (first["key"], second["key"]) == ("a", "b")
        assert len(first.get("items", [])) == 2 or first["n"] == 2
    else:
        assert (first, second) == ([{"k": "a"}, {"k": "a"}], [{"k": "b"}])


def test_the_benchmark_implementations_agree_on_a_small_input() -> None:
    from benchmarks.scenarios import windows as bench

    n = 30_000
    expected = bench.hand_loop(n)
    assert expected[1] == n  # no event is late: disorder is below lateness
    assert bench.headwater_run(bench.plugin_manager())(n) == expected
