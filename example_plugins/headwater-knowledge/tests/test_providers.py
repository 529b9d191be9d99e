"""Each provider on its own: the index, the folder (through ``file.find``), the web API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import headwater
import pytest
from headwater.testing import RegisterPlugin
from support import of_type

import headwater_knowledge
from headwater_knowledge.events import parse_event
from headwater_knowledge.index import open_index, search_rows
from headwater_knowledge.providers.brave import BraveWebSearch
from headwater_knowledge.text import fts_query

COMPONENTS = [
    "action:knowledge.files",
    "action:knowledge.fts",
    "action:knowledge.search",
    "action:knowledge.web",
    "transformer:knowledge.enrich",
    "transformer:knowledge.rank",
    "transformer:knowledge.synthesize",
]


def test_components_are_registered(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(headwater_knowledge)
    assert sorted(info.components) == COMPONENTS


async def _action(engine: headwater.Engine, name: str, **params: Any) -> list[dict[str, Any]]:
    async with engine, engine.stream_action(name, **params) as chunks:
        events = [event async for event in chunks]
    for event in events:
        parse_event(event)
    return events


def test_the_index_ranks_by_bm25_with_titles_first(corpus: Path) -> None:
    conn = open_index(corpus / "knowledge.db")
    rows = list(search_rows(conn, fts_query("delta") or "", 10, 100))
    assert rows[0][1] == "Deltas"  # the word in the title counts most
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    assert all(r[0].startswith("file://") for r in rows)


@pytest.mark.anyio
async def test_fts_streams_hits_best_first(engine: headwater.Engine, corpus: Path) -> None:
    events = await _action(
        engine, "knowledge.fts", query="river headwater", index=str(corpus / "knowledge.db")
    )
    assert events[0] == {**events[0], "type": "status", "state": "started"}
    hits = of_type(events, "hit")
    assert [h["title"] for h in hits][:2] == ["Rivers", "Glaciers"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert hits[0]["content"] and "headwater" in hits[0]["content"]
    assert events[-1]["state"] == "done" and events[-1]["hits"] == len(hits)
    assert "Bread" not in str(hits)


@pytest.mark.anyio
async def test_fts_outside_the_sandbox_fails_as_a_status(
    engine: headwater.Engine, tmp_path: Path
) -> None:
    events = await _action(engine, "knowledge.fts", query="river", index=str(tmp_path / "x.db"))
    assert events[-1]["state"] == "failed"
    assert "outside" in events[-1]["message"] or "roots" in events[-1]["message"]


@pytest.mark.anyio
async def test_files_finds_one_hit_per_matching_file(
    engine: headwater.Engine, corpus: Path
) -> None:
    events = await _action(
        engine, "knowledge.files", query="glaciers yeast", path=str(corpus / "docs")
    )
    hits = of_type(events, "hit")
    names = sorted(h["title"] for h in hits)
    assert names == ["glaciers.md", "unrelated.txt"]
    assert all(h["url"].startswith("file://") for h in hits)
    assert events[-1]["state"] == "done"


@pytest.mark.anyio
async def test_web_reads_pages_in_the_brave_shape(engine: headwater.Engine, standin: Any) -> None:
    answer = BraveWebSearch.model_validate(standin.answer("river delta", 5, 1, standin.settings))
    assert answer.web is not None and len(answer.web.results) == 5
    events = await _action(
        engine, "knowledge.web", query="river delta", base_url=standin.url, count=5, pages=3
    )
    hits = of_type(events, "hit")
    assert sorted(h["rank"] for h in hits) == list(range(1, 16))
    assert "<strong>" not in str([h["title"] for h in hits])
    assert events[-1]["state"] == "done" and events[-1]["hits"] == 15


@pytest.mark.anyio
async def test_web_retries_transient_failures(engine: headwater.Engine, standin: Any) -> None:
    standin.configure(fail_next=2)
    events = await _action(engine, "knowledge.web", query="river", base_url=standin.url)
    assert events[-1]["state"] == "done" and events[-1]["hits"] == 10
    assert standin.calls == 3 and standin.failed == 2


@pytest.mark.anyio
async def test_web_reports_a_refused_key_and_a_timeout(
    engine: headwater.Engine, standin: Any
) -> None:
    standin.configure(key="right")
    events = await _action(
        engine, "knowledge.web", query="river", base_url=standin.url, api_key="wrong"
    )
    assert events[-1]["state"] == "failed"
    assert "401" in events[-1]["message"]
    standin.configure(key=None, hang_rate=1.0, hang_seconds=5)
    engine2 = headwater.Engine(plugin_manager=engine.plugins, policy=engine.services.policy)
    events = await _action(
        engine2, "knowledge.web", query="river", base_url=standin.url, timeout=0.3
    )
    assert [e["state"] for e in of_type(events, "status")] == ["started", "timed_out"]


@pytest.mark.anyio
async def test_web_refuses_hosts_the_sandbox_does_not_allow(
    plugins: headwater.PluginManager,
) -> None:
    engine = headwater.Engine(plugin_manager=plugins, policy=headwater.SandboxPolicy())
    events = await _action(engine, "knowledge.web", query="river", base_url="https://example.org")
    assert events[-1]["state"] == "failed"
    assert "not allowed by the sandbox" in events[-1]["message"]


def test_index_command(tmp_path: Path, corpus: Path) -> None:
    db = tmp_path / "k.db"
    run = [sys.executable, "-m", "headwater_knowledge.cli", "index", "--db", str(db)]
    done = subprocess.run(
        [*run, str(corpus / "docs"), "--package", "headwater_knowledge"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "docs: 6 documents" in done.stdout
    conn = open_index(db)
    titles = {r[1] for r in search_rows(conn, fts_query("reciprocal rank fusion") or "", 50, 0)}
    assert "headwater_knowledge.rank" in titles  # a module docstring, read without importing
    missing = subprocess.run(
        [*run, str(tmp_path / "nope")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "no folder" in missing.stderr
