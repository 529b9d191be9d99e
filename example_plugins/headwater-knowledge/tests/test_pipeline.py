"""The whole query pipeline: providers merged, enriched, deduplicated, ranked, answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import headwater
import pytest
from support import collect, corpus_pipeline, of_type, ranking

from headwater_knowledge.events import parse_event
from headwater_knowledge.standin import StandIn


def _final_statuses(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        e["provider"]: e
        for e in of_type(events, "status")
        if e["state"] != "started" and e["state"] != "running"
    }


@pytest.mark.anyio
async def test_providers_are_merged_enriched_ranked_and_answered(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    events = await collect(engine, corpus_pipeline(corpus, standin.url))
    for event in events:
        parse_event(event)
    assert events[0]["type"] == "query"
    assert [e["provider"] for e in events[1:4]] == ["fts", "files", "web"]  # started, at once
    assert events[-1]["type"] == "complete"
    statuses = _final_statuses(events)
    assert {p: s["state"] for p, s in statuses.items()} == {
        "fts": "done",
        "files": "done",
        "web": "done",
    }
    results = of_type(events, "result")
    providers = {p for r in results for p in r["providers"]}
    assert providers == {"fts", "files", "web"}
    # the same file from the index and from the folder is one result with both ranks
    rivers = [r for r in results if r["url"].endswith("/rivers.md")]
    assert rivers and set(rivers[-1]["providers"]) == {"fts", "files"}
    enriched = [e for e in of_type(events, "enrichment") if e["ok"]]
    assert len(enriched) >= 5 and all(e["passages"] for e in enriched)
    answer = "".join(e["delta"] for e in of_type(events, "answer"))
    assert "river" in answer.lower() and "[1]" in answer
    cited = {c["id"] for e in of_type(events, "answer") for c in e["citations"]}
    assert cited <= set(ranking(events)) | {r["id"] for r in results}
    complete = events[-1]
    assert complete["counts"]["results"] >= len(ranking(events))
    assert complete["timings"]["first_status"] <= complete["timings"]["first_result"]


@pytest.mark.anyio
async def test_ranking_and_dedup_do_not_depend_on_arrival_order(
    plugins: headwater.PluginManager, corpus: Path
) -> None:
    """The same corpus ranked with the web answering first, last, or in pieces gives the
    same final ranking and the same duplicates merged."""
    outcomes = []
    for latency in (0.0, 0.3, 0.05):
        with StandIn(duplicates=True, latency=latency, results=12) as api:
            engine = headwater.Engine(
                plugin_manager=plugins, policy=headwater.SandboxPolicy(roots=(corpus,))
            )
            pipe = corpus_pipeline(corpus, api.url, web={"pages": 2, "count": 6})
            events = await collect(engine, pipe)
        removed = sorted(
            (e["url"].rsplit("/", 1)[-1], e["duplicate_of"] is not None)
            for e in of_type(events, "result")
            if e["change"] == "removed"
        )
        final = [r.rsplit("/", 1)[-1] for r in _urls(events)]
        outcomes.append((final, removed))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    final, removed = outcomes[0]
    # page 3 is page 1's URL again (one result), page 5 mirrors page 2's text (merged)
    assert "3" not in final and ("5", True) in removed and "2" in final


def _urls(events: list[dict[str, Any]]) -> list[str]:
    url = {e["id"]: e["url"] for e in of_type(events, "result")}
    return [url[i] for i in ranking(events)]


@pytest.mark.anyio
async def test_a_failing_provider_does_not_stop_the_others(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    standin.configure(error_rate=1.0)
    events = await collect(engine, corpus_pipeline(corpus, standin.url))
    statuses = _final_statuses(events)
    assert statuses["web"]["state"] == "failed" and "500" in statuses["web"]["message"]
    [error] = of_type(events, "error")
    assert (error["where"], error["error"]) == ("web", "RuntimeError")
    assert statuses["fts"]["state"] == statuses["files"]["state"] == "done"
    assert ranking(events) and of_type(events, "answer")
    assert events[-1]["type"] == "complete"


@pytest.mark.anyio
async def test_a_hanging_provider_delays_nothing_beyond_its_timeout(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    standin.configure(hang_rate=1.0, hang_seconds=30)
    events = await collect(engine, corpus_pipeline(corpus, standin.url, web={"timeout": 1.0}))
    kinds = [(e["type"], e.get("provider"), e.get("state")) for e in events]
    web_end = kinds.index(("status", "web", "timed_out"))
    # the others finished, were ranked, enriched and answered while the web hung
    assert kinds.index(("status", "fts", "done")) < web_end
    assert kinds.index(("status", "files", "done")) < web_end
    assert min(i for i, k in enumerate(kinds) if k[0] == "enrichment") < web_end
    assert min(i for i, k in enumerate(kinds) if k[0] == "answer") < web_end
    assert events[-1]["type"] == "complete"
    assert events[-1]["providers"]["web"]["state"] == "timed_out"


@pytest.mark.anyio
async def test_the_enricher_limits_concurrency_and_reports_metrics(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    standin.configure(page_latency=0.1, slow_pages=True)
    pipe = corpus_pipeline(corpus, standin.url, web={"count": 12}, fts=None, files=None)
    pipe["steps"][0]["params"] = {"concurrency": 3, "batch_size": 4}
    seen: list[dict[str, Any]] = []
    async with engine, engine.stream(pipe) as items:
        async for item in items:
            if item["type"] == "enrichment" and not seen:
                seen.extend(engine.metrics.snapshot().get("knowledge_enrich", []))
    assert seen and seen[0]["pipeline"] == "knowledge" and seen[0]["in_flight"] <= 3
    assert standin.max_pages_at_once == 3
    totals = engine.metrics.snapshot()["knowledge"]
    assert totals["enrich_fetches"] == 12 and totals["enrich_failed"] == 0
    assert 3 <= totals["enrich_batches"] <= 12
    assert not engine.metrics.snapshot()["knowledge_enrich"]  # the query's entry is gone


@pytest.mark.anyio
async def test_the_enricher_fetches_only_hosts_the_sandbox_allows(
    plugins: headwater.PluginManager,
) -> None:
    engine = headwater.Engine(
        plugin_manager=plugins, policy=headwater.SandboxPolicy(hosts=("example.invalid",))
    )
    items = [
        {"type": "query", "query": "x", "providers": [], "started": 0},
        {
            "type": "hit",
            "provider": "web",
            "rank": 1,
            "url": "http://127.0.0.1:9/admin",
            "title": "internal",
        },
    ]
    pipe = (
        headwater.Pipeline("p")
        .source("iterable", items=items)
        .step("knowledge.enrich")
        .sink("collect")
    )
    result = await engine.run(pipe)
    [enrichment] = [i for i in result.output if i["type"] == "enrichment"]
    assert not enrichment["ok"] and "not allowed by the sandbox" in enrichment["error"]


@pytest.mark.anyio
async def test_a_new_query_in_the_session_stops_the_one_going_on(
    engine: headwater.Engine, corpus: Path, standin: StandIn
) -> None:
    """Embedded (no server): the first query's providers end ``cancelled`` at once."""
    standin.configure(hang_rate=1.0, hang_seconds=30)
    first = corpus_pipeline(corpus, standin.url, session="s", web={"timeout": 60})
    second = corpus_pipeline(corpus, None, session="s", query="lakes")
    events: list[dict[str, Any]] = []
    async with engine, anyio.create_task_group() as tg:

        async def run_first() -> None:
            async with engine.stream(first) as items:
                async for item in items:
                    events.append(item)
                    if item["type"] == "status" and item["state"] == "done":
                        started.set()

        started = anyio.Event()
        tg.start_soon(run_first)
        await started.wait()
        async with engine.stream(second) as items:
            others = [item async for item in items]
    assert _final_statuses(events)["web"]["state"] == "cancelled"
    assert events[-1]["type"] == "complete" and events[-1]["cancelled"] is True
    assert others[-1]["type"] == "complete" and not others[-1]["cancelled"]


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_the_pipeline_runs_on_trio(engine: headwater.Engine, corpus: Path) -> None:
    pytest.importorskip("trio")
    events = await collect(engine, corpus_pipeline(corpus, None))
    assert events[-1]["type"] == "complete" and ranking(events)
