"""``headwater validate --check-connections`` against the real services on 127.0.0.1.

Each connector is checked against its live server (OK) and against a closed port
(FAILED, naming the address and what is wrong, without a traceback or a password); the
state the checks could have touched is compared before and after (stream lengths,
pending entries, queue depths, row counts, files, the requests an HTTP server saw) to
show that no data moved. Services come from the fixtures of :mod:`services` and
:mod:`connector_services` (skipped with the reason without them, failing under
``HEADWATER_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from connector_services import amqp_url, mqtt_url, pg_table, postgres_dsn
from services import nats_url, redis_client, redis_url, unique
from test_cli import hw, write
from test_cli_validate import closed_port

__all__ = [
    "amqp_url",
    "mqtt_url",
    "nats_url",
    "pg_table",
    "postgres_dsn",
    "redis_client",
    "redis_url",
]


def on_port(url: str, port: int) -> str:
    """``url`` with its port replaced (user and password kept)."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    host = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=host))


def validate(tmp_path: Path, text: str, *extra: str) -> tuple[int, dict[str, str], str]:
    """Run ``validate --check-connections`` on a pipeline; the exit status, each stage's
    line (stage -> the text after it) and the whole output."""
    pipeline = write(tmp_path, "p.yaml", text)
    proc = hw("validate", pipeline, "--check-connections", *extra, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = {}
    for line in proc.stdout.splitlines():
        if line.startswith("  "):
            stage, _, rest = line.strip().partition("  ")
            lines[stage.split(" (")[0]] = rest.strip()
    return proc.returncode, lines, out


def test_redis_source_and_sink(tmp_path: Path, redis_url: str, redis_client: Any) -> None:
    stream, out, group = unique("check-in"), unique("check-out"), "workers"
    for i in range(3):
        redis_client.xadd(stream, {"data": str(i)})
    redis_client.xgroup_create(stream, group, id="0")
    redis_client.xadd(out, {"data": "x"})
    text = f"""\
    name: redis-check
    sources:
      events:
        action: redis.stream
        params: {{url: "{redis_url}", stream: {stream}, group: {group}}}
    sinks: [{{sink: redis.stream, params: {{url: "{redis_url}", stream: {out}}}}}]
    checkpoint: {{store: redis, params: {{url: "{redis_url}"}}}}
    """

    def state() -> Any:
        groups = redis_client.xinfo_groups(stream)
        keys = sorted(redis_client.scan_iter(match=f"headwater:lease:{stream}*"))
        return redis_client.xlen(stream), redis_client.xlen(out), groups, keys

    before = state()
    code, lines, output = validate(tmp_path, text)
    assert code == 0, output
    assert lines["sources.events"].startswith("OK: redis://127.0.0.1:")
    assert (
        f"stream '{stream}' has 3 entries; group 'workers': 0 consumers, 0 pending"
        in (lines["sources.events"])
    )
    assert f"stream '{out}' has 1 entries" in lines["sinks.redis.stream"]
    assert lines["checkpoint"].startswith("OK: redis://")
    assert "connections: 3 OK" in output
    assert state() == before  # nothing read, written, joined or leased

    port = closed_port()
    dead = text.replace(redis_url, on_port("redis://:s3cret@127.0.0.1:6379/0", port))
    code, lines, output = validate(tmp_path, dead)
    assert code == 1, output
    refused = f"FAILED: redis://127.0.0.1:{port}/0: connection refused"
    assert lines["sources.events"].startswith(refused), output
    assert lines["sinks.redis.stream"].startswith(refused), output
    assert "s3cret" not in output
    assert "connections: 3 FAILED" in output


def test_nats_source_and_sink(tmp_path: Path, nats_url: str) -> None:
    stream, subject, durable = unique("check"), unique("check-subject"), "workers"

    async def prepare() -> None:
        import nats

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        for i in range(2):
            await js.publish(subject, str(i).encode())
        await js.pull_subscribe(subject, durable=durable, stream=stream)
        await nc.close()

    async def state() -> tuple[int, int, int]:
        import nats

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        info = await js.stream_info(stream)
        consumer = await js.consumer_info(stream, durable)
        await nc.close()
        return info.state.messages, consumer.delivered.stream_seq, consumer.num_ack_pending

    async def remove() -> None:
        import nats

        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream(stream)
        await nc.close()

    anyio.run(prepare)
    try:
        text = f"""\
        name: nats-check
        sources:
          m:
            action: nats.jetstream
            params: {{url: "{nats_url}", stream: {stream}, durable: {durable}}}
        sinks:
          - {{sink: nats.jetstream, params: {{url: "{nats_url}", subject: {subject}}}}}
        checkpoint: {{store: memory}}
        """
        before = anyio.run(state)
        code, lines, output = validate(tmp_path, text)
        assert code == 0, output
        assert (
            f"stream '{stream}' has 2 messages; consumer 'workers': 2 not yet delivered"
            in (lines["sources.m"])
        )
        assert f"subject '{subject}' goes to stream '{stream}'" in lines["sinks.nats.jetstream"]
        assert lines["checkpoint"].startswith("no check:")  # memory: nothing to reach
        assert anyio.run(state) == before  # nothing fetched, acknowledged or published

        port = closed_port()
        code, lines, output = validate(tmp_path, text.replace(nats_url, on_port(nats_url, port)))
        assert code == 1, output
        refused = f"FAILED: nats://127.0.0.1:{port}: connection refused"
        assert lines["sources.m"].startswith(refused), output
        assert lines["sinks.nats.jetstream"].startswith(refused), output
    finally:
        anyio.run(remove)


def test_postgres_source_sink_and_store(
    tmp_path: Path, postgres_dsn: str, pg_table: Callable[[str], str]
) -> None:
    import psycopg

    table, missing, store = pg_table("check_in"), pg_table("check_out"), pg_table("check_cp")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {table} (v) VALUES ('a'), ('b')")
    text = f"""\
    name: pg-check
    sources:
      rows:
        action: postgres.query
        params: {{dsn: "{postgres_dsn}", table: {table}, cursor: [id]}}
    sinks:
      - {{sink: postgres, params: {{dsn: "{postgres_dsn}", table: {missing}}}}}
    checkpoint: {{store: postgres, params: {{dsn: "{postgres_dsn}", table: {store}}}}}
    """

    def state() -> tuple[Any, ...]:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            made = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename = ANY(%s)", ([missing, store],)
            ).fetchone()
            return rows, made

    before = state()
    code, lines, output = validate(tmp_path, text)
    assert code == 0, output
    assert lines["sources.rows"].startswith("OK: postgresql://127.0.0.1:")
    assert f"table '{table}' (SELECT allowed)" in lines["sources.rows"]
    assert f"table '{missing}' is created at the start" in lines["sinks.postgres"]
    assert f"table '{store}' is created at the start" in lines["checkpoint"]
    assert state() == before == ((2,), (0,))  # no row read or written, no table made

    code, lines, output = validate(tmp_path, text.replace("cursor: [id]", "cursor: [nope]"))
    assert code == 1, output
    assert 'column "nope" does not exist' in lines["sources.rows"]

    port = closed_port()
    dead = text.replace(
        postgres_dsn, on_port(postgres_dsn.replace("postgres@", "postgres:pw@"), port)
    )
    code, lines, output = validate(tmp_path, dead)
    assert code == 1, output
    for stage in ("sources.rows", "sinks.postgres", "checkpoint"):
        assert lines[stage].startswith(
            f"FAILED: postgresql://127.0.0.1:{port}/test: connection refused"
        ), output
    assert ":pw@" not in output


def test_amqp_source_and_sink(tmp_path: Path, amqp_url: str) -> None:
    queue, absent = unique("check-q"), unique("check-absent")

    async def prepare() -> None:
        import aio_pika

        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for i in range(2):
            await channel.default_exchange.publish(aio_pika.Message(str(i).encode()), queue)
        await conn.close()

    async def depth(name: str) -> int | None:
        import aio_pika

        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
            count = declared.declaration_result.message_count
        except aio_pika.exceptions.ChannelNotFoundEntity:
            count = None
        await conn.close()
        return count

    async def remove() -> None:
        import aio_pika

        conn = await aio_pika.connect(amqp_url)
        channel = await conn.channel()
        await channel.queue_delete(queue)
        await conn.close()

    anyio.run(prepare)
    try:
        text = f"""\
        name: amqp-check
        sources:
          q: {{action: amqp, params: {{url: "{amqp_url}", queue: {queue}, declare: false}}}}
        sinks:
          - {{sink: amqp, params: {{url: "{amqp_url}", routing_key: {absent}}}}}
        checkpoint: {{store: memory}}
        """
        code, lines, output = validate(tmp_path, text)
        assert code == 1, output  # nothing routes to the absent queue: the sink fails
        assert f"OK: amqp://127.0.0.1:5672/: queue '{queue}' (2 messages)" == lines["sources.q"]
        assert f"no queue '{absent}' for the default exchange" in lines["sinks.amqp"]
        code, lines, output = validate(tmp_path, text.replace(absent, queue))
        assert code == 0, output
        assert anyio.run(depth, queue) == 2  # nothing consumed or published
        assert anyio.run(depth, absent) is None  # nothing declared

        port = closed_port()
        dead = text.replace(amqp_url, on_port(amqp_url, port))
        code, lines, output = validate(tmp_path, dead)
        assert code == 1, output
        refused = f"FAILED: amqp://127.0.0.1:{port}/: connection refused"
        assert lines["sources.q"].startswith(refused), output
        assert lines["sinks.amqp"].startswith(refused), output
        assert "guest:guest" not in output
        assert "error when creating transport" not in output
    finally:
        anyio.run(remove)


def test_mqtt_source_and_sink(tmp_path: Path, mqtt_url: str) -> None:
    topic = unique("check")
    text = f"""\
    name: mqtt-check
    sources:
      t:
        action: mqtt
        params:
          {{url: "{mqtt_url}", topics: ["{topic}/#"], client_id: worker-1, session_expiry: 600}}
    sinks: [{{sink: mqtt, params: {{url: "{mqtt_url}", topic: "{topic}/out"}}}}]
    checkpoint: {{store: memory}}
    """
    code, lines, output = validate(tmp_path, text)
    assert code == 0, output
    assert lines["sources.t"].startswith("OK: mqtt://127.0.0.1:"), output
    assert lines["sinks.mqtt"].endswith("connected (MQTT 5)"), output

    port = closed_port()
    code, lines, output = validate(tmp_path, text.replace(mqtt_url, on_port(mqtt_url, port)))
    assert code == 1, output
    assert lines["sinks.mqtt"] == (
        f"FAILED: mqtt://127.0.0.1:{port}: connection refused (no server listens on that port)"
    )


class _Counting(http.server.BaseHTTPRequestHandler):
    """Answers HEAD with 200 and counts every request by method."""

    seen: list[str]

    def do_HEAD(self) -> None:
        self.seen.append(f"HEAD {self.path}")
        self.send_response(200 if self.path.startswith("/ok") else 401)
        self.end_headers()

    def do_POST(self) -> None:
        self.seen.append(f"POST {self.path}")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A plain HTTP server on 127.0.0.1 and the requests it received."""
    seen: list[str] = []
    handler = type("Handler", (_Counting,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_sink_request_and_files(tmp_path: Path, http_server: tuple[str, list[str]]) -> None:
    pytest.importorskip("httpx")
    base, seen = http_server
    text = f"""\
    name: http-check
    sources: {{n: {{action: range, params: {{stop: 3}}}}}}
    steps: [{{transformer: http.request, params: {{url: "{base}/ok/items/{{item}}"}}}}]
    sinks:
      - {{sink: http, params: {{url: "{base}/ok/in"}}}}
      - {{sink: jsonl, params: {{path: out/items.jsonl}}}}
      - {{sink: sqlite, params: {{path: db/items.db, table: items}}}}
    """
    code, lines, output = validate(tmp_path, text)
    assert code == 0, output
    assert lines["steps[0].http.request"] == f"OK: {base}/ok/items/: reached (HTTP 200 OK to HEAD)"
    assert lines["sinks.http"] == f"OK: {base}/ok/in: reached (HTTP 200 OK to HEAD)"
    assert "created by the run with its folder" in lines["sinks.jsonl"]
    assert "the database is created at the start" in lines["sinks.sqlite"]
    assert lines["sources.n"] == "no check: action 'range' declares no connection check"
    assert sorted(seen) == ["HEAD /ok/in", "HEAD /ok/items/"]  # no POST: nothing sent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # no file, no folder

    code, lines, output = validate(tmp_path, text.replace("/ok/in", "/private"))
    assert code == 1, output
    assert lines["sinks.http"] == (
        f"FAILED: {base}/private: the credentials were refused (HTTP 401 Unauthorized to HEAD)"
    )
    port = closed_port()
    code, lines, output = validate(tmp_path, text.replace(base, f"http://127.0.0.1:{port}"))
    assert code == 1, output
    assert lines["sinks.http"] == (
        f"FAILED: http://127.0.0.1:{port}/ok/in: connection refused (no server listens on "
        "that port)"
    )


def test_a_check_that_hangs_fails_at_the_timeout(tmp_path: Path) -> None:
    import socket

    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        text = f"""\
        name: slow
        sources: {{n: {{action: range, params: {{stop: 1}}}}}}
        sinks: [{{sink: redis.stream, params: {{url: "redis://127.0.0.1:{port}/0", stream: s}}}}]
        """
        pytest.importorskip("redis")
        code, lines, output = validate(tmp_path, text, "--timeout", "0.5")
    assert code == 1, output
    assert lines["sinks.redis.stream"] == "FAILED: no answer within 0.5s (--timeout)"


def test_a_check_stuck_in_a_blocking_call_does_not_hold_the_process(tmp_path: Path) -> None:
    """An SQLite 'database' that is a FIFO blocks ``sqlite3.connect`` for good: the check
    fails at the timeout and the command exits (bounded by ``hw``'s own timeout, which
    fails the test instead of hanging it)."""
    os.mkfifo(tmp_path / "q.fifo")
    text = """\
    name: fifo
    sources: {n: {action: range, params: {stop: 1}}}
    sinks: [{sink: sqlite, params: {path: q.fifo, table: t}}]
    """
    code, lines, output = validate(tmp_path, text, "--timeout", "0.5")
    assert code == 1, output
    assert lines["sinks.sqlite"] == "FAILED: no answer within 0.5s (--timeout)"


def _exiting_check(ctx: object) -> None:
    raise SystemExit(3)


async def _exiting_async_check(ctx: object) -> None:
    raise SystemExit(4)


@pytest.mark.parametrize(("check", "code"), [(_exiting_check, 3), (_exiting_async_check, 4)])
def test_a_check_calling_sys_exit_is_a_failed_check(check: Any, code: int) -> None:
    import headwater
    from headwater.core.connection_checks import check_stage
    from headwater.core.pipeline import ResolvedStage

    @headwater.sink("demo.exits", check=check)
    class Exits:
        def write(self, batch: list[Any]) -> None:
            pass

    stage = ResolvedStage("sinks.demo.exits", Exits, None)
    outcome = anyio.run(check_stage, stage, object(), 5.0)
    assert (outcome.outcome, outcome.detail) == ("failed", f"the check raised SystemExit({code})")
