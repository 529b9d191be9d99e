"""Tests of headwater-tabular, with the pytest fixtures headwater ships for plugin authors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import anyio
import headwater
import pytest
from headwater.testing import RegisterPlugin, run_pipeline

import headwater_tabular
from headwater_tabular import RunningStats, compile_expression

CSV = """\
region,product,price,qty
north,apple,1.5,10
south,pear,2,3
north,plum,0.25,40
south,apple,1.5,

east,fig,4,2
"""


@pytest.fixture
def plugin(register_plugin: RegisterPlugin) -> None:
    register_plugin(headwater_tabular)


@pytest.fixture
def sales(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def read(path: Path, **params: Any) -> list[Any]:
    pipeline = headwater.Pipeline("read").source("tabular.read", path=str(path), **params)
    return list(run_pipeline(pipeline.sink("collect")).output)


def test_components_are_registered(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(headwater_tabular)
    assert sorted(info.components) == [
        "action:tabular.read",
        "transformer:tabular.enrich",
        "transformer:tabular.stats",
    ]


@pytest.mark.usefixtures("plugin")
def test_csv_records_are_coerced(sales: Path) -> None:
    records = read(sales)
    assert records[0] == {"region": "north", "product": "apple", "price": 1.5, "qty": 10}
    assert records[3]["qty"] is None  # empty value
    assert len(records) == 5  # the blank line is not a record
    raw = read(sales, coerce=False)
    assert raw[0]["price"] == "1.5"


@pytest.mark.usefixtures("plugin")
def test_resume_and_limit(sales: Path) -> None:
    assert [r["product"] for r in read(sales, start_at=2)] == ["plum", "apple", "fig"]
    assert [r["product"] for r in read(sales, start_at=1, limit=2)] == ["pear", "plum"]


@pytest.mark.usefixtures("plugin")
def test_jsonl_and_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n[1, 2]\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(headwater.PipelineFailed, match=r"events.jsonl, line 3: not JSON"):
        read(path)
    assert read(path, on_bad_record="skip") == [{"a": 1}, {"a": 3}]


@pytest.mark.usefixtures("plugin")
def test_csv_row_with_wrong_width_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n", encoding="utf-8")
    with pytest.raises(headwater.PipelineFailed, match="line 3: 1 fields, the header has 2"):
        read(path)


@pytest.mark.usefixtures("plugin")
def test_enrich_and_running_stats(sales: Path) -> None:
    # the record with no qty makes "price * qty" fail: skip it, keep the others
    pipeline = (
        headwater.Pipeline("sales")
        .source("tabular.read", path=str(sales))
        .step("tabular.enrich", on_error="skip", compute={"total": "price * qty"})
        .step("tabular.stats", fields=["total"], every=2)
        .sink("collect")
    )
    result = run_pipeline(pipeline)
    snapshots = result.output
    assert [s["records"] for s in snapshots] == [2, 4, 4]
    assert [s["final"] for s in snapshots] == [False, False, True]
    totals = [15.0, 6.0, 10.0, 8.0]
    final = snapshots[-1]["stats"]["total"]
    assert final["count"] == 4
    assert final["sum"] == sum(totals)
    assert final["mean"] == pytest.approx(statistics.mean(totals))
    assert final["stdev"] == pytest.approx(statistics.stdev(totals))
    assert (final["min"], final["max"]) == (6.0, 15.0)
    assert result.summary["stages"]["steps[0].tabular.enrich"]["skipped"] == 1


@pytest.mark.usefixtures("plugin")
def test_stats_per_group(sales: Path) -> None:
    pipeline = (
        headwater.Pipeline("g")
        .source("tabular.read", path=str(sales))
        .step("tabular.stats", group_by="region", fields=["price"])
        .sink("collect")
    )
    [final] = run_pipeline(pipeline).output
    assert final["groups"]["north"]["price"]["mean"] == pytest.approx(0.875)
    assert final["groups"]["east"]["price"]["count"] == 1


@pytest.mark.usefixtures("plugin")
def test_failing_expression_fails_the_run_by_default(sales: Path) -> None:
    pipeline = (
        headwater.Pipeline("f")
        .source("tabular.read", path=str(sales))
        .step("tabular.enrich", compute={"unit": "price / (qty - 3)"})
        .sink("collect")
    )
    with pytest.raises(headwater.PipelineFailed, match=r"computing unit = price / \(qty - 3\)"):
        run_pipeline(pipeline)


@pytest.mark.usefixtures("plugin")
def test_unsafe_expressions_are_validation_errors(sales: Path) -> None:
    for source in ("__import__('os').system('true')", "price.real", "open('x')", "1 +"):
        pipeline = (
            headwater.Pipeline("v")
            .source("tabular.read", path=str(sales))
            .step("tabular.enrich", compute={"x": source})
            .sink("collect")
        )
        with pytest.raises(headwater.PipelineValidationError, match=r"steps\[0\]\.params"):
            run_pipeline(pipeline)


def test_expressions() -> None:
    record = {"a": 2, "b": 5, "name": "Fig", "odd key": 7}
    cases = {
        "a * b + 1": 11,
        "b // a": 2,
        "a ** 3": 8,
        "-a": -2,
        "a < b <= 5": True,
        "a > b or name == 'Fig'": True,
        "'big' if b > 3 else 'small'": "big",
        "round(b / a)": 2,
        "max(a, b, 3)": 5,
        "lower(name)": "fig",
        "field('odd key') + 1": 8,
        "not a": False,
    }
    for source, expected in cases.items():
        assert compile_expression(source)(record) == expected, source
    with pytest.raises(KeyError, match="no field 'c'"):
        compile_expression("c + 1")(record)
    with pytest.raises(ValueError, match="too large"):
        compile_expression("2 ** 100000")(record)


def test_running_stats_match_statistics_module() -> None:
    values = [3.5, -1.0, 10.25, 4.0, 4.0, 0.5]
    running = RunningStats()
    for value in values:
        running.add(value)
    snap = running.snapshot()
    assert snap["mean"] == pytest.approx(statistics.mean(values))
    assert snap["stdev"] == pytest.approx(statistics.stdev(values))
    assert RunningStats().snapshot()["mean"] is None


@pytest.mark.usefixtures("plugin")
def test_progress_and_cancellation(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(50_000)))
    events: list[Any] = []

    async def main() -> headwater.RunResult:
        spec = headwater.Pipeline("c").source("tabular.read", path=str(path)).sink("null")
        async with headwater.open_run(spec) as handle:
            async for event in handle.events():
                events.append(event)
                if isinstance(event, headwater.Progress) and event.done > 0:
                    handle.cancel("enough")
            return await handle.wait()

    result = anyio.run(main)
    assert result.state == "cancelled"
    progress = [e for e in events if isinstance(e, headwater.Progress)]
    assert progress[0].total == path.stat().st_size
    assert "records" in (progress[0].message or "")
