"""``http.request`` and the ``http`` sink against real HTTP servers on 127.0.0.1.

The APIs (:mod:`http_helpers`) run under uvicorn in their own thread and count what they
see: calls, 429s, and the most calls in progress at once.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

import headwater
from headwater.builtin_plugins.http._retry import CircuitBreaker, retry_after
from headwater.builtin_plugins.http._template import UrlTemplate
from headwater.core.expr import MissingField
from http_helpers import FlakyApi, RecordingSink, make_plugins, serving

pytestmark = pytest.mark.anyio


def engine(**policy: Any) -> headwater.Engine:
    return headwater.Engine(plugin_manager=make_plugins(), policy=headwater.SandboxPolicy(**policy))


def users(n: int) -> dict[str, Any]:
    return {"action": "range", "params": {"stop": n}}


def enrich_pipeline(url: str, n: int, **params: Any) -> dict[str, Any]:
    return {
        "name": "enrich",
        "sources": {"ids": users(n)},
        "steps": [
            {"transformer": "map", "params": {"expr": "{'id': item}"}},
            {
                "transformer": "http.request",
                "params": {"url": url, **params},
                "on_error": "skip",
            },
        ],
        "sinks": [{"sink": "collect"}],
        "dead_letter": {"sink": "collect"},
    }


# -- the pieces ----------------------------------------------------------------------------


def test_templates_encode_values_so_they_cannot_change_the_url() -> None:
    template = UrlTemplate("http://127.0.0.1:9/u/{user.id}?q={q}&x={{y}}")
    url = template.fill({"user": {"id": "a/b?c#d@e"}, "q": "x y&z"})
    assert url == "http://127.0.0.1:9/u/a%2Fb%3Fc%23d%40e?q=x%20y%26z&x={y}"
    with pytest.raises(MissingField):
        template.fill({"q": 1})
    with pytest.raises(ValueError, match="not a field name"):
        UrlTemplate("http://h/{a b}")
    with pytest.raises(ValueError, match="unbalanced"):
        UrlTemplate("http://h/{a")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_the_circuit_opens_after_failures_in_a_row_and_probes_once_after_reset() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, reset=10.0, clock=lambda: now[0])
    for _ in range(2):
        breaker.failed()
    breaker.succeeded()  # a success in between: the count starts again
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.state == "open"
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failed()  # the probe failed: open again, for another reset
    assert breaker.state == "open"
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert breaker.opened == 2


# -- against a flaky API --------------------------------------------------------------------


async def test_every_item_is_enriched_or_dead_lettered_and_concurrency_stays_bounded() -> None:
    n, limit = 150, 6
    doomed = frozenset(range(0, n, 17))
    api = FlakyApi(fail_rate=0.3, always_fail=doomed, rate=12, window=0.1)
    with serving(api) as served:
        pipeline = enrich_pipeline(
            served.url + "/users/{id}",
            n,
            concurrency=limit,
            retries=4,
            backoff=0.01,
            max_backoff=0.05,
            breaker_failures=None,
        )
        async with engine() as eng:
            result = await eng.run(pipeline)
    enriched = result.outputs["collect"]
    dead = result.outputs["dead_letter"]
    assert api.peak <= limit
    assert api.peak > 1, "calls never overlapped: the limit was not exercised"
    assert api.limited > 0, "the API never rate-limited: Retry-After was not exercised"
    assert [e["id"] for e in enriched] == sorted(set(range(n)) - {d["item"]["id"] for d in dead})
    assert all(e["response"] == {"id": e["id"], "name": f"user-{e['id']}"} for e in enriched)
    assert doomed <= {d["item"]["id"] for d in dead}
    assert len(enriched) + len(dead) == n  # nothing dropped, nothing twice
    assert all("answered 50" in d["message"] for d in dead)
    assert {d["stage"] for d in dead} == {"steps[1].http.request"}
    stage = result.summary["stages"]["steps[1].http.request"]
    assert stage["skipped"] == len(dead)


async def test_an_open_circuit_fails_items_at_once_without_calling() -> None:
    api = FlakyApi(fail_rate=1.0)
    with serving(api) as served:
        pipeline = enrich_pipeline(
            served.url + "/users/{id}",
            20,
            concurrency=1,
            retries=1,
            backoff=0.01,
            breaker_failures=3,
            breaker_reset=60,
        )
        async with engine() as eng:
            result = await eng.run(pipeline)
    dead = result.outputs["dead_letter"]
    assert len(dead) == 20
    assert result.outputs["collect"] == []
    assert api.calls == 3 * 2  # three items, each tried twice; then the circuit opened
    assert dead[-1]["error"] == "CircuitOpen"
    assert "circuit open" in dead[-1]["message"]


async def test_under_the_default_fail_policy_a_failed_call_fails_the_run() -> None:
    api = FlakyApi(fail_rate=1.0)
    with serving(api) as served:
        pipeline = enrich_pipeline(served.url + "/users/{id}", 3, retries=0)
        del pipeline["steps"][1]["on_error"]
        async with engine() as eng:
            with pytest.raises(headwater.PipelineFailed, match="answered 500"):
                await eng.run(pipeline)


async def test_a_checkpoint_never_covers_an_item_still_in_flight(tmp_path: Any) -> None:
    """A run fails on item 45 while later calls are in flight, checkpointing every item;
    resumed, it misses nothing: no checkpoint committed a position past an item whose
    answer had not reached the sink."""
    n = 80
    api = FlakyApi(fail_rate=0.0, always_fail=frozenset({45}), delay=0.01)
    out = tmp_path / "out.jsonl"
    with serving(api) as served:
        pipeline = enrich_pipeline(served.url + "/users/{id}", n, concurrency=8, retries=0)
        del pipeline["steps"][1]["on_error"]
        pipeline["sinks"] = [{"sink": "jsonl", "params": {"path": str(out)}}]
        pipeline["checkpoint"] = {
            "store": "sqlite",
            "params": {"path": str(tmp_path / "ck.db")},
            "every_items": 1,
        }
        pipeline["batch_size"] = 4
        async with engine(roots=(tmp_path,)) as eng:
            with pytest.raises(headwater.PipelineFailed, match="answered 503"):
                await eng.run(pipeline)
            first = [json.loads(line)["id"] for line in out.read_text().splitlines()]
            api.always_fail = frozenset()
            await eng.run(pipeline, resume=True)
    assert api.peak > 1
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert 0 < len(first) <= 45
    assert sorted(set(ids)) == list(range(n))  # nothing lost across the failure


# -- the sandbox's hosts ---------------------------------------------------------------------


def test_a_url_outside_the_allowed_hosts_fails_validation_naming_the_param() -> None:
    pipeline = enrich_pipeline("http://api.example.com/users/{id}", 1)
    with pytest.raises(headwater.PipelineValidationError) as info:
        engine().prepare(pipeline)
    text = str(info.value)
    assert "steps[1].params.url" in text
    assert "api.example.com" in text
    # the operator's globs let it in (no call is made: validation only)
    engine(hosts=("*.example.com",)).prepare(pipeline)
    with pytest.raises(headwater.PipelineValidationError, match=r"api\.example\.com"):
        engine(hosts=("*.example.org", "api.example.com:8443")).prepare(pipeline)


async def test_a_templated_host_is_checked_once_filled() -> None:
    pipeline = enrich_pipeline("http://{host}/users", 1)
    pipeline["steps"][0]["params"]["expr"] = "{'host': 'example.com'}"
    async with engine() as eng:
        result = await eng.run(pipeline)
    (dead,) = result.outputs["dead_letter"]
    assert "host 'example.com' is not allowed by the sandbox" in str(dead)
    assert result.outputs["collect"] == []


async def test_a_redirect_to_a_host_outside_the_sandbox_is_not_followed() -> None:
    api = FlakyApi(fail_rate=0.0)
    with serving(api) as served:
        url = served.url + "/users/{id}?redirect=http://internal.example.net/secrets"
        async with engine() as eng:
            result = await eng.run(enrich_pipeline(url, 1))
    (dead,) = result.outputs["dead_letter"]
    assert "internal.example.net" in str(dead)
    assert "not allowed" in str(dead)
    assert api.calls == 1  # the first call; the redirect was refused before connecting


# -- the http sink --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
async def test_the_sink_retries_with_the_same_idempotency_key_and_delivers_each_batch_once(
    fmt: str,
) -> None:
    receiver = RecordingSink(fail_every=3)
    with serving(receiver) as served:
        pipeline = {
            "name": "out",
            "sources": {"n": users(100)},
            "sinks": [
                {
                    "sink": "http",
                    "params": {
                        "url": served.url + "/in",
                        "format": fmt,
                        "max_batch": 7,
                        "backoff": 0.01,
                    },
                }
            ],
            "batch_size": 10,
        }
        async with engine() as eng:
            result = await eng.run(pipeline)
    out = result.outputs["http"]
    keys = [key for key, _, _ in receiver.attempts]
    assert out["retries"] > 0
    assert len(keys) == out["requests"] + out["retries"]
    assert len(receiver.stored) == out["requests"]  # a retry repeats its key
    bodies = [receiver.stored[k] for k in dict.fromkeys(keys)]
    items: list[Any] = []
    for body in bodies:
        if fmt == "json":
            items.extend(json.loads(body))
        else:
            items.extend(int(line) for line in body.splitlines())
    assert items == list(range(100))
    kinds = {kind for _, _, kind in receiver.attempts}
    assert kinds == {"application/json" if fmt == "json" else "application/x-ndjson"}


def test_the_sink_url_obeys_the_sandbox() -> None:
    pipeline = {
        "name": "out",
        "sources": {"n": users(1)},
        "sinks": [{"sink": "http", "params": {"url": "https://collector.example.com/in"}}],
    }
    with pytest.raises(headwater.PipelineValidationError, match=r"sinks\[0\].params.url|url"):
        engine().prepare(pipeline)
    engine(hosts=("collector.example.com",)).prepare(pipeline)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("module", "step"),
    [
        ("httpx", {"transformer": "http.request", "params": {"url": "http://127.0.0.1:9/x"}}),
        ("uvicorn", None),
    ],
)
async def test_a_missing_client_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, step: dict[str, Any] | None
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    pipeline: dict[str, Any] = {
        "name": "missing",
        "sources": {"n": users(1)},
        "steps": [{"transformer": "map", "params": {"expr": "{'id': item}"}}],
        "sinks": [{"sink": "collect"}],
    }
    if step is None:
        pipeline["sources"] = {"hook": {"action": "http.webhook", "params": {"port": 0}}}
    else:
        pipeline["steps"].append(step)
    async with engine() as eng:
        with pytest.raises(headwater.PipelineFailed, match=r"pip install 'headwater\[http\]'"):
            await eng.run(pipeline)
