"""``http.webhook``: POSTed JSON/NDJSON to items, over real sockets on 127.0.0.1.

The source's server runs in its own thread, so the tests run on asyncio and trio; the
senders are ``httpx`` clients. Waits are bounded and wait for events (an answer, an item
reaching a sink), never for time to pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

import headwater
from headwater.builtin_plugins.http._bodies import BodyError, parse_body, parse_ndjson
from http_helpers import free_port, make_plugins

pytestmark = pytest.mark.anyio

TOKEN = "hook-s3cret"
WAIT = 20.0

# -- bodies (the parser) -------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(json_values, max_size=20),
    ending=st.sampled_from(["\n", "\r\n"]),
    blanks=st.lists(st.integers(min_value=0, max_value=20), max_size=5),
    final_newline=st.booleans(),
)
def test_ndjson_bodies_give_back_every_value_in_order(
    values: list[Any], ending: str, blanks: list[int], final_newline: bool
) -> None:
    lines = [json.dumps(v) for v in values]
    for at in sorted(blanks, reverse=True):
        lines.insert(min(at, len(lines)), "  ")  # blank lines are skipped
    text = ending.join(lines) + (ending if final_newline else "")
    assert parse_ndjson(text.encode()) == values
    assert parse_body(text.encode(), "application/x-ndjson; charset=utf-8") == values


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(json_values, min_size=1, max_size=10),
    bad=st.sampled_from(["{", "[1,", "nope", '{"a" 1}', '"open', "1 2"]),
    data=st.data(),
)
def test_a_line_that_is_not_json_is_named_and_nothing_is_kept(
    values: list[Any], bad: str, data: st.DataObject
) -> None:
    lines = [json.dumps(v) for v in values]
    at = data.draw(st.integers(min_value=0, max_value=len(lines)))
    lines.insert(at, bad)
    with pytest.raises(BodyError, match=rf"^line {at + 1} is not JSON"):
        parse_ndjson("\n".join(lines).encode())


@given(values=st.lists(json_values, max_size=10))
def test_a_json_array_is_many_items_anything_else_one(values: list[Any]) -> None:
    assert parse_body(json.dumps(values).encode(), "application/json") == values
    assert parse_body(json.dumps({"v": values}).encode(), None) == [{"v": values}]


def test_a_body_that_is_not_utf8_is_refused_with_a_reason() -> None:
    with pytest.raises(BodyError, match="not UTF-8"):
        parse_body(b'["\xff"]', "application/json")
    with pytest.raises(BodyError, match="line 2 is not UTF-8"):
        parse_ndjson(b'1\n"\xff"\n')


# -- test components -----------------------------------------------------------------------


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_batch: float = 0.02


@headwater.sink("test.slow", params=SlowParams)
class SlowSink:
    """Collects items; takes ``per_batch`` seconds per batch (a sink that is behind)."""

    def __init__(self, params: SlowParams, ctx: headwater.StreamContext) -> None:
        self.params = params
        self.items: list[Any] = []

    async def write(self, batch: list[Any]) -> None:
        await anyio.sleep(self.params.per_batch)  # the sink's own pace
        self.items.extend(batch)

    def close(self, error: BaseException | None) -> list[Any]:
        return self.items


class Gate:
    """A sink that records batches and holds each write until ``release``."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.arrived = anyio.Event()
        self.release = anyio.Event()


GATES: dict[str, Gate] = {}


class GateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: str


@headwater.sink("test.gate", params=GateParams)
class GateSink:
    def __init__(self, params: GateParams, ctx: headwater.StreamContext) -> None:
        self.gate = GATES[params.gate]

    async def write(self, batch: list[Any]) -> None:
        self.gate.arrived.set()
        await self.gate.release.wait()
        self.gate.written.extend(batch)


class TestSinks:
    @headwater.hookimpl
    def register_sinks(self, register: Any) -> None:
        register(SlowSink)
        register(GateSink)


def engine() -> headwater.Engine:
    return headwater.Engine(plugin_manager=make_plugins(TestSinks()))


def webhook_pipeline(port: int, sink: dict[str, Any], **params: Any) -> dict[str, Any]:
    pipeline: dict[str, Any] = {
        "name": "hook",
        "sources": {"hook": {"action": "http.webhook", "params": {"port": port, **params}}},
        "sinks": [sink],
    }
    if params.get("ack") == "commit":
        pipeline["checkpoint"] = {"store": "memory", "every_items": 1, "every_seconds": 0.05}
    return pipeline


@asynccontextmanager
async def running(
    pipeline: dict[str, Any], results: dict[str, Any]
) -> AsyncIterator[headwater.Engine]:
    """Run ``pipeline`` in the background; its result lands in ``results["run"]``."""
    async with engine() as eng, anyio.create_task_group() as tg:

        async def run() -> None:
            results["run"] = await eng.run(pipeline)

        tg.start_soon(run)
        yield eng


async def post(
    client: httpx.AsyncClient, url: str, body: Any, token: str | None = TOKEN, **kw: Any
) -> httpx.Response:
    """POST, waiting for the listener to come up (connection refused until it binds)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    with anyio.fail_after(WAIT):
        while True:
            try:
                if isinstance(body, bytes) or hasattr(body, "__aiter__"):
                    return await client.post(url, content=body, headers=headers, **kw)
                return await client.post(url, json=body, headers=headers, **kw)
            except httpx.ConnectError:
                await anyio.sleep(0.02)  # the source has not bound its port yet


# -- behaviour -----------------------------------------------------------------------------


async def test_refusals_say_why_wrong_token_size_path_method_and_body() -> None:
    port = free_port()
    results: dict[str, Any] = {}
    url = f"http://127.0.0.1:{port}/in"
    pipeline = webhook_pipeline(
        port, {"sink": "collect"}, path="/in", token=TOKEN, max_body=100, max_requests=2
    )
    async with running(pipeline, results), httpx.AsyncClient(timeout=WAIT) as client:
        wrong = await post(client, url, [1], token="not-it")
        missing = await post(client, url, [1], token=None)
        big = await post(client, url, [1] * 100)
        chunked = await post(client, url, _chunks(b"[" + b"1," * 80 + b"1]"))
        other_path = await post(client, f"http://127.0.0.1:{port}/", [1])
        method = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        bad = await post(
            client, url, b'{"a": 1}\n{"a": \n', headers={"content-type": "application/x-ndjson"}
        )
        ok1 = await post(client, url, [{"n": 1}, {"n": 2}])
        ok2 = await post(client, url, b'{"n": 3}\n', headers={"content-type": "application/jsonl"})
    assert wrong.status_code == missing.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert big.status_code == 413
    assert "100 bytes" in big.json()["error"]
    assert chunked.status_code == 413  # no Content-Length: counted while reading
    assert other_path.status_code == 404
    assert method.status_code == 405
    assert method.headers["allow"] == "POST"
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("line 2 is not JSON")
    assert (ok1.status_code, ok2.status_code) == (202, 202)
    assert results["run"].outputs["collect"] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 16):
        yield data[i : i + 16]


async def test_ack_commit_answers_only_after_the_sink_has_the_items() -> None:
    port = free_port()
    gate = GATES["commit"] = Gate()
    results: dict[str, Any] = {}
    url = f"http://127.0.0.1:{port}/"
    pipeline = webhook_pipeline(
        port, {"sink": "test.gate", "params": {"gate": "commit"}}, ack="commit", max_requests=1
    )
    answers: list[httpx.Response] = []
    async with (
        running(pipeline, results),
        httpx.AsyncClient(timeout=WAIT) as client,
        anyio.create_task_group() as tg,
    ):

        async def send() -> None:
            answers.append(await post(client, url, [{"a": 1}, {"a": 2}]))

        tg.start_soon(send)
        with anyio.fail_after(WAIT):
            await gate.arrived.wait()
        # the sink holds the batch: no answer may have come yet
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert answers == []
        gate.release.set()
    assert answers[0].status_code == 202
    assert answers[0].json() == {"accepted": 2, "committed": True}
    assert gate.written == [{"a": 1}, {"a": 2}]


async def test_ack_commit_needs_a_checkpoint_section() -> None:
    pipeline = webhook_pipeline(free_port(), {"sink": "collect"}, ack="commit")
    del pipeline["checkpoint"]
    async with engine() as eng:
        with pytest.raises(headwater.PipelineFailed, match="checkpoint"):
            await eng.run(pipeline)


def test_listening_beyond_loopback_needs_a_token() -> None:
    pipeline = webhook_pipeline(8080, {"sink": "collect"}, host="0.0.0.0")
    with pytest.raises(headwater.PipelineValidationError, match="token"):
        engine().prepare(pipeline)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_sender_faster_than_the_sink_is_told_429_retries_and_loses_nothing() -> None:
    """Senders POST far faster than the sink writes: the small buffer fills, they get
    429 with Retry-After, wait that long and send again; every item of every request is
    delivered exactly once, and only after its 202 did the sender consider it sent."""
    port = free_port()
    results: dict[str, Any] = {}
    url = f"http://127.0.0.1:{port}/"
    senders, per_sender, per_request = 4, 12, 5
    total = senders * per_sender
    pipeline = webhook_pipeline(
        port,
        {"sink": "test.slow", "params": {"per_batch": 0.02}},
        ack="commit",
        buffer=10,
        retry_after=1,
        max_requests=total,
    )
    pipeline["batch_size"] = 8
    pipeline["buffer"] = 1
    busy: list[str] = []
    accepted: list[list[dict[str, int]]] = []
    async with running(pipeline, results), httpx.AsyncClient(timeout=WAIT) as client:

        async def sender(s: int) -> None:
            for r in range(per_sender):
                body = [{"s": s, "r": r, "k": k} for k in range(per_request)]
                while True:
                    answer = await post(client, url, body)
                    if answer.status_code == 202:
                        accepted.append(body)
                        break
                    assert answer.status_code in (429, 503), answer.text
                    busy.append(answer.headers["retry-after"])
                    await anyio.sleep(float(answer.headers["retry-after"]))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for s in range(senders):
                    tg.start_soon(sender, s)
    delivered = results["run"].outputs["test.slow"]
    assert busy, "the buffer never filled: the test did not exercise backpressure"
    assert set(busy) == {"1"}
    assert len(accepted) == total
    expected = sorted((i["s"], i["r"], i["k"]) for body in accepted for i in body)
    assert sorted((i["s"], i["r"], i["k"]) for i in delivered) == expected  # once each
    for body in accepted:  # a request's items stay together and in order
        at = delivered.index(body[0])
        assert delivered[at : at + per_request] == body


def test_the_webhook_benchmark_runs_and_reports_requests_per_second(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--json",
            str(out),
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--n",
            "40",
            "webhook",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))["webhook"]
    assert set(data) == {"webhook_receive", "webhook_commit", "bare_uvicorn"}
    for entry in data.values():
        assert entry["requests_per_s"] > 0
        assert entry["rounds"] == 1
