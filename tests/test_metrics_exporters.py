"""The built-in exporters (``prometheus``, ``jsonl``, ``otel``), a third-party exporter,
exporters by name, ``headwater serve``'s ``/metrics``, and the metric list in the docs."""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, ConfigDict

import headwater
from headwater.builtin_plugins import catalogue
from headwater.builtin_plugins import exporters as builtin_exporters
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import sources as builtin_sources
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers
from headwater.builtin_plugins.exporters import (
    METRICS,
    JsonlExporter,
    PrometheusExporter,
    build_exporters,
    exposition,
    prometheus_registry,
)
from headwater.core import metrics
from headwater.core.errors import ComponentNotFound
from headwater.core.metrics import create_exporter, running_exporters, snapshot

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


@pytest.fixture(autouse=True)
def metrics_on() -> Iterator[None]:
    previous = metrics.enabled()
    metrics.set_enabled(True)
    yield
    metrics.set_enabled(previous)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def known_pipeline(name: str, n: int = 1000) -> dict[str, Any]:
    """``range(n) -> filter(bool) -> null``: 1000 in, 999 out."""
    return {
        "name": name,
        "sources": {"numbers": {"action": "range", "params": {"stop": n, "chunk": 100}}},
        "steps": [{"transformer": "filter", "params": {"fn": "builtins:bool"}}],
        "sinks": [{"sink": "null"}],
    }


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(), response.headers["Content-Type"]


def values(text: str, pipeline: str) -> dict[tuple[str, str], float]:
    """``(sample name, stage) -> value`` of one pipeline's samples in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pipeline") != pipeline or "le" in sample.labels:
                continue
            key = (sample.name, sample.labels.get("stage") or sample.labels.get("state", ""))
            out[key] = sample.value
    return out


# -- prometheus -----------------------------------------------------------------------------


def test_scraping_the_prometheus_exporter_gives_exact_counts() -> None:
    pytest.importorskip("prometheus_client")
    name = unique("prom")
    exporter = create_exporter(PrometheusExporter, {"port": 0})
    exporter.start()
    try:
        assert exporter.url is not None
        assert exporter.url.startswith("http://127.0.0.1:")
        for _ in range(3):
            assert headwater.run_sync(known_pipeline(name)).output == 999
        text, content_type = scrape(exporter.url)
    finally:
        exporter.stop()
    assert content_type.startswith("text/plain")
    got = values(text, name)
    assert got[("headwater_stage_items_out_total", "sources.numbers")] == 3000
    assert got[("headwater_stage_items_in_total", "steps[0].filter")] == 3000
    assert got[("headwater_stage_items_out_total", "steps[0].filter")] == 2997
    assert got[("headwater_stage_items_in_total", "sinks.null")] == 2997
    assert got[("headwater_stage_items_out_total", "sinks.null")] == 2997
    assert got[("headwater_stage_items_skipped_total", "sinks.null")] == 0
    batches = got[("headwater_stage_batches_out_total", "sinks.null")]
    assert got[("headwater_stage_batch_duration_seconds_count", "sinks.null")] == batches
    assert got[("headwater_pipeline_runs_total", "succeeded")] == 3
    assert got[("headwater_pipeline_runs_running", "")] == 0
    assert got[("headwater_pipeline_time_to_first_item_seconds_count", "")] == 3
    assert "process_cpu_seconds_total" in text or "python_info" in text
    # stopped: the port is closed
    with pytest.raises(urllib.error.URLError):
        scrape(exporter.url)


def test_exposition_negotiates_openmetrics_and_lists_every_family() -> None:
    pytest.importorskip("prometheus_client")
    name = unique("om")
    headwater.run_sync(known_pipeline(name, 10))
    registry = prometheus_registry()
    body, content_type = exposition("application/openmetrics-text; version=1.0.0", registry)
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.rstrip().endswith("# EOF")
    assert f'headwater_stage_items_in_total{{pipeline="{name}",stage="sinks.null"}} 9.0' in text
    assert "# UNIT headwater_stage_batch_duration_seconds seconds" in text
    body, content_type = exposition(None, registry)
    assert content_type.startswith("text/plain")
    families = set(re.findall(r"^# TYPE (\S+) ", body.decode(), re.MULTILINE))
    ours = {f for f in families if f.startswith("headwater_")}
    assert ours == {m.name for m in METRICS}


def test_a_collector_can_join_an_applications_registry() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(builtin_exporters.HeadwaterCollector(lambda: {"stages": []}))
    text = generate_latest(registry).decode()
    assert "# TYPE headwater_stage_items_in_total counter" in text


# -- jsonl ------------------------------------------------------------------------------


def test_the_jsonl_exporter_writes_on_its_interval_and_a_final_line(tmp_path: Path) -> None:
    name = unique("jsonl")
    path = tmp_path / "sub" / "metrics.jsonl"
    exporter = create_exporter(JsonlExporter, {"path": str(path), "interval": 0.02})

    async def main() -> None:
        async with running_exporters([exporter]):
            await headwater.run(known_pipeline(name))
            with anyio.fail_after(10):
                while exporter.lines < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)

    anyio.run(main)
    lines = path.read_text().splitlines()
    assert len(lines) == exporter.lines >= 3  # at least two on the interval, one at stop
    last = json.loads(lines[-1])
    stages = {s["stage"]: s for s in last["stages"] if s["pipeline"] == name}
    assert stages["sinks.null"]["items_out"] == 999
    assert stages["steps[0].filter"]["items_in"] == 1000
    assert next(p for p in last["pipelines"] if p["pipeline"] == name)["runs"] == {"succeeded": 1}
    assert exporter._thread is None
    exporter.stop()  # idempotent
    assert len(path.read_text().splitlines()) == len(lines)


def test_the_jsonl_exporter_fails_at_start_on_a_bad_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    exporter = create_exporter(JsonlExporter, {"path": str(blocker / "metrics.jsonl")})
    with pytest.raises((FileExistsError, NotADirectoryError)):
        exporter.start()


# -- opentelemetry ------------------------------------------------------------------------


def test_the_otel_exporter_feeds_observable_instruments() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    name = unique("otel")
    exporter = builtin_exporters.OpenTelemetryExporter.obj(
        builtin_exporters.OtelExporterParams(cache_seconds=0),
        snapshot,
        meter_provider=provider,
    )
    exporter.start()
    exporter.start()  # idempotent: the instruments exist once
    try:
        for _ in range(2):
            headwater.run_sync(known_pipeline(name))
        data = reader.get_metrics_data()
    finally:
        exporter.stop()
        provider.shutdown()
    assert data is not None
    points: dict[tuple[str, str], float] = {}
    names: set[str] = set()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "headwater"
            for metric in scope.metrics:
                names.add(metric.name)
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    if attrs.get("pipeline") == name:
                        key = (metric.name, str(attrs.get("stage") or attrs.get("state", "")))
                        points[key] = point.value
    assert points[("headwater.stage.items_out", "sources.numbers")] == 2000
    assert points[("headwater.stage.items_in", "sinks.null")] == 1998
    assert points[("headwater.stage.items_out", "steps[0].filter")] == 1998
    assert points[("headwater.pipeline.runs", "succeeded")] == 2
    assert points[("headwater.pipeline.time_to_first_item.count", "")] == 2
    assert points[("headwater.pipeline.time_to_first_item.sum", "")] > 0
    assert {"headwater.stage.batch.duration.count", "headwater.stage.queue_depth"} <= names


def test_the_otel_exporter_goes_quiet_when_stopped() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exporter = builtin_exporters.OpenTelemetryExporter.obj(
        builtin_exporters.OtelExporterParams(), snapshot, meter_provider=provider
    )
    exporter.start()
    exporter.stop()
    data = reader.get_metrics_data()
    provider.shutdown()
    points = [
        p
        for r in (data.resource_metrics if data else [])
        for s in r.scope_metrics
        for m in s.metrics
        for p in m.data.data_points
    ]
    assert points == []


# -- exporters by name, and a third-party exporter -----------------------------------------


class RecorderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str


@headwater.exporter("test.recorder", params=RecorderParams)
class RecorderExporter:
    """Keep the final item count of one pipeline's sinks when stopped."""

    def __init__(self, params: RecorderParams, snapshot_fn: Any) -> None:
        self.params, self.snapshot_fn = params, snapshot_fn
        self.started = False
        self.final: int | None = None

    async def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        stages = self.snapshot_fn()["stages"]
        self.final = sum(
            s["items_out"]
            for s in stages
            if s["pipeline"] == self.params.pipeline and s["stage"].startswith("sinks.")
        )


class ThirdPartyPlugin:
    """A third-party plugin contributing one exporter."""

    @headwater.hookimpl
    def register_metrics_exporters(self, register: Any) -> None:
        register(RecorderExporter)


def private_manager(*, with_exporters: bool, disable: tuple[str, ...] = ()) -> Any:
    pm = headwater.PluginManager(load_entry_points=False, strict=True, disable=disable)
    modules = [
        ("headwater.sources", builtin_sources),
        ("headwater.transformers", builtin_transformers),
        ("headwater.sinks", builtin_sinks),
    ]
    if with_exporters or disable:
        modules.append((builtin_exporters.PLUGIN_NAME, catalogue.exporters))
    for name, module in modules:
        pm.register(module, name, distribution="headwater", version="0.1.0")
    assert pm.register(ThirdPartyPlugin(), "third-party")
    return pm


def test_a_third_party_exporter_is_found_by_name_and_run() -> None:
    pm = private_manager(with_exporters=True)
    assert "exporter:test.recorder" in pm.plugins["third-party"].components
    assert {"exporter:prometheus", "exporter:jsonl", "exporter:otel"} <= set(
        pm.plugins[builtin_exporters.PLUGIN_NAME].components
    )
    name = unique("third")
    (recorder,) = build_exporters([{"exporter": "test.recorder", "params": {"pipeline": name}}], pm)

    async def main() -> None:
        async with running_exporters([recorder]):
            assert recorder.started
            await headwater.run(known_pipeline(name), plugins=pm)

    anyio.run(main)
    assert recorder.final == 999


def test_builtin_exporters_are_found_without_their_entry_point(tmp_path: Path) -> None:
    pm = private_manager(with_exporters=False)
    (jsonl,) = build_exporters(
        [builtin_exporters.ExporterEntry(exporter="jsonl", params={"path": str(tmp_path / "m")})],
        pm,
    )
    assert jsonl.params.interval == 10.0
    with pytest.raises(ComponentNotFound):
        build_exporters([{"exporter": "nope"}], pm)


def test_a_disabled_exporter_plugin_is_not_used_behind_the_users_back() -> None:
    pm = private_manager(with_exporters=False, disable=(builtin_exporters.PLUGIN_NAME,))
    assert pm.plugins[builtin_exporters.PLUGIN_NAME].disabled
    with pytest.raises(ComponentNotFound):
        build_exporters([{"exporter": "jsonl", "params": {"path": "x"}}], pm)


def test_the_metrics_config_section_validates() -> None:
    config = builtin_exporters.MetricsConfig.model_validate(
        {"exporters": [{"exporter": "jsonl", "params": {"path": "m.jsonl", "interval": 5}}]}
    )
    assert config.exporters[0].exporter == "jsonl"
    with pytest.raises(ValueError, match="Extra inputs"):
        builtin_exporters.MetricsConfig.model_validate({"exporters": [], "other": 1})


# -- headwater serve's /metrics -------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_serve_answers_metrics_with_exact_counts(anyio_backend: str) -> None:
    pytest.importorskip("prometheus_client")
    from test_server_helpers import http_get, make_plugins, running

    name = unique("served")
    async with running(plugins=make_plugins()) as server:
        await server.manager.create_stream("metrics-feed")
        for i in range(4):
            await server.manager.push("metrics-feed", {"i": i})
        await server.engine.run(known_pipeline(name))
        elsewhere = unique("elsewhere")
        await headwater.run(known_pipeline(elsewhere))  # the default engine's run
        status, headers, body = await http_get(f"{server.http_url}/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    got = values(text, name)
    assert got[("headwater_stage_items_out_total", "sources.numbers")] == 1000
    assert got[("headwater_stage_items_out_total", "sinks.null")] == 999
    assert got[("headwater_pipeline_runs_total", "succeeded")] == 1
    assert 'headwater_stream_chunks_total{stream="metrics-feed"} 4.0' in text
    assert 'headwater_stream_clients{stream="metrics-feed"} 0.0' in text
    assert re.search(r"^headwater_streams_open \d", text, re.MULTILINE)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_serve_metrics_needs_the_token_when_auth_is_on(anyio_backend: str) -> None:
    pytest.importorskip("prometheus_client")
    from test_server_helpers import config, http_get, make_plugins, running

    cfg = config(auth={"tokens": {"secret-token": {"principal": "prometheus"}}})
    async with running(cfg, plugins=make_plugins()) as server:
        status, headers, _ = await http_get(f"{server.http_url}/metrics")
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        status, _, body = await http_get(f"{server.http_url}/metrics", token="secret-token")
        assert status == 200
        assert b"# TYPE headwater_stage_items_in_total counter" in body


# -- docs ----------------------------------------------------------------------------------


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`headwater_"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == {m.name for m in METRICS}
    for m in METRICS:
        cells = rows[m.name]
        assert cells[1] == m.type, m.name
        labels = set(re.findall(r"`(\w+)`", cells[2]))
        assert labels == set(m.labels), m.name
        otel = f"{m.otel}.count" if m.type == "histogram" else m.otel
        assert f"`{otel}`" in text, otel


# -- optional dependencies ------------------------------------------------------------------


def test_missing_optional_dependencies_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError, match=r"pip install 'headwater\[otel\]'"):
        create_exporter(builtin_exporters.OpenTelemetryExporter)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match="needs prometheus-client"):
        create_exporter(PrometheusExporter, {"port": 0})
    with pytest.raises(ImportError, match="needs prometheus-client"):
        prometheus_registry()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_serve_metrics_without_prometheus_client_says_why(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_server_helpers import http_get, json_body, make_plugins, running

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    async with running(plugins=make_plugins()) as server:
        status, _, body = await http_get(f"{server.http_url}/metrics")
    assert status == 501
    assert "prometheus-client" in json_body(body)["message"]
