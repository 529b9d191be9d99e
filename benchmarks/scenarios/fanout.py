"""``fanout``: one stream pushed to many WebSocket clients over real loopback sockets.

Three servers, measured in alternating rounds in the harness process (asyncio):

* ``headwater``: :class:`headwater.server.Server` (``StreamingManager`` + websockets),
  stream ``bench``, slow-consumer policy ``block`` (nothing may be dropped), the
  producer calls ``manager.push_many`` once per batch of 64 chunks;
* ``headwater_sse``: the same server and stream, the clients following it with
  Server-Sent Events (``GET /api/streams/bench/events``) instead of WebSocket: the same
  frames written as ``id:``/``event:``/``data:`` events by the server's own HTTP path;
* ``bare_broadcast``: a bare ``websockets`` server whose producer encodes the same
  protocol frame once per chunk and calls ``websockets.broadcast(connections, frame,
  text=True)``; the same batches. No queues, no backpressure: the floor.

Both producers yield to the event loop once per batch. Each chunk is ``{"i": n, "t":
send_time_ns}`` (``time.monotonic_ns``, which is system-wide, so the clients can compute
one-way latency).

The clients live in one child process (``python -m benchmarks.scenarios.fanout client``)
so that their work does not run on the server's event loop. They are deliberately
cheap: raw asyncio protocols that do the opening handshake by hand, parse frame headers
and only look inside a payload for the timestamp (SSE clients: a GET, then events split
on blank lines). Phases of one round:

1. **throughput** for 1, 10 and 100 clients: every client subscribes, the producer pushes
   N chunks as fast as the server takes them; delivered messages per second =
   ``clients * N / (last message received - first push)``.
2. **latency** with 100 clients, the producer paced at ``PACED_RATE`` chunks per second
   (a steady full load that every client keeps up with): one-way delivery latency
   p50/p99 of every message at every client. While it runs, a probe connection
   subscribes ``PROBES`` times; the time from sending ``subscribe`` to the first
   ``stream_update`` gives the subscribe-to-first-update p50/p99.
   The throughput phase at 100 clients also reports the latency of its saturated run
   (``sat p99``): queueing time in buffers, for information only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from typing import Any

from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    TargetResult,
    fmt_rate,
    fmt_seconds,
    measure,
)
from ..procs import REPO_ROOT, child_env
from . import Progress

TITLE = "one stream to 1/10/100 WebSocket (and SSE) clients vs bare websockets.broadcast()"
DESCRIPTION = (
    "headwater's server (StreamingManager + websockets; and its Server-Sent Events) against "
    "a bare websockets broadcast() server, alternating rounds, real loopback sockets, "
    "clients in a child "
    "process. Metrics: delivered msgs/s at 1, 10 and 100 clients; one-way latency p50/p99 "
    "at 100 clients under a steady paced load; subscribe-to-first-update p50/p99."
)

CLIENT_COUNTS = (1, 10, 100)
FULL_DELIVERIES = 500_000
"""Messages delivered (clients x chunks) per throughput phase, full mode."""
QUICK_DELIVERIES = 100_000
BATCH = 64
"""Chunks per producer batch (one yield to the event loop per batch)."""
PACED_CLIENTS = 100
PACED_RATE = 500
"""Chunks per second in the latency phase (x 100 clients = 50,000 deliveries/s)."""
FULL_PACED_SECONDS = 3.0
QUICK_PACED_SECONDS = 1.0
PROBES = 40
QUICK_PROBES = 15
PHASE_TIMEOUT = 120.0

RATIO_TARGET = 0.9
LATENCY_TARGET = 0.050
SUBSCRIBE_TARGET = 0.010


# =======================================================================================
# The servers (harness process)
# =======================================================================================


class _HeadwaterServer:
    """headwater's server with one stream; the producer pushes batches into it."""

    name = "headwater"

    async def start(self) -> str:
        import logging

        import headwater
        from headwater.server import Server, ServerConfig

        # "no authentication configured: serving on 127.0.0.1 only" once per round
        logging.getLogger("headwater.server").setLevel(logging.ERROR)

        config = ServerConfig(
            port=0,
            ping_interval=None,
            streaming={
                "slow_consumer": "block",
                "inactivity_timeout": None,
                "send_timeout": None,
            },
        )
        self.server = Server(
            config, plugins=headwater.PluginManager(load_entry_points=False), environ={}
        )
        await self.server.start()
        self.manager = self.server.manager
        await self.manager.create_stream("bench")
        return self.server.url

    async def publish(self, chunks: list[dict[str, int]]) -> None:
        await self.manager.push_many("bench", chunks)

    async def stop(self) -> None:
        await self.server.aclose()


class _HeadwaterSseServer(_HeadwaterServer):
    """The same server; its clients follow the stream over Server-Sent Events."""

    name = "headwater_sse"

    async def start(self) -> str:
        await super().start()
        return f"{self.server.http_url}/api/streams/bench/events"


class _BareServer:
    """A bare websockets server: ``broadcast()`` of a frame encoded once per chunk."""

    name = "bare_broadcast"

    async def start(self) -> str:
        from pydantic_core import to_json
        from websockets.asyncio.server import ServerConnection, broadcast, serve

        self.to_json = to_json
        self.broadcast = broadcast
        self.clients: set[ServerConnection] = set()
        self.seq = 0

        async def handler(conn: ServerConnection) -> None:
            await conn.recv()  # the subscribe request
            self.clients.add(conn)
            try:
                await conn.send('{"type":"subscribed","v":1,"stream":"bench"}')
                await conn.wait_closed()
            finally:
                self.clients.discard(conn)

        self.ws = await serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None)
        port = self.ws.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def publish(self, chunks: list[dict[str, int]]) -> None:
        for data in chunks:
            self.seq += 1
            frame = self.to_json(
                {"type": "stream_update", "v": 1, "stream": "bench", "seq": self.seq, "data": data}
            )
            self.broadcast(self.clients, frame, text=True)

    async def stop(self) -> None:
        self.ws.close()
        await self.ws.wait_closed()


# -- one round ------------------------------------------------------------------------


class _Child:
    """The client process, driven by JSON lines on its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), PHASE_TIMEOUT)
        if not line:
            raise RuntimeError("the fan-out client process died")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fan-out client: {answer['error']}")
        return answer

    async def expect(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), PHASE_TIMEOUT)
        if not line:
            raise RuntimeError("the fan-out client process died")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fan-out client: {answer['error']}")
        return answer


def _chunks(start: int, n: int) -> list[dict[str, int]]:
    now = time.monotonic_ns
    return [{"i": i, "t": now()} for i in range(start, start + n)]


async def _produce(server: Any, n: int) -> int:
    """Push ``n`` chunks as fast as the server takes them; returns the first push time."""
    first = time.monotonic_ns()
    for start in range(0, n, BATCH):
        await server.publish(_chunks(start, min(BATCH, n - start)))
        await asyncio.sleep(0)
    return first


async def _produce_paced(server: Any, n: int, rate: float) -> None:
    """Push ``n`` chunks at ``rate`` per second, in small batches on a fixed schedule."""
    per_tick = max(1, round(rate / 200))  # 200 ticks per second
    interval = per_tick / rate
    begin = time.monotonic()
    sent = 0
    while sent < n:
        k = min(per_tick, n - sent)
        await server.publish(_chunks(sent, k))
        sent += k
        delay = begin + (sent / per_tick) * interval - time.monotonic()
        await asyncio.sleep(max(0.0, delay))


async def _round(
    kind: type[Any], counts: dict[int, int], paced_n: int, probes: int
) -> dict[str, Any]:
    server = kind()
    url = await server.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.scenarios.fanout",
        "client",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    child = _Child(proc)
    metrics: dict[str, float] = {}
    delivered: list[int] = []
    try:
        for clients, n in counts.items():
            await child.ask({"cmd": "connect", "clients": clients, "expect": n})
            first = await _produce(server, n)
            done = await child.expect()
            seconds = (done["last_ns"] - first) / 1e9
            metrics[f"msgs_per_s_{clients}"] = clients * n / seconds
            delivered.append(done["received"])
            if clients == max(counts):
                metrics["sat_latency_p99"] = done["p99"]
        await child.ask(
            {"cmd": "connect", "clients": PACED_CLIENTS, "expect": paced_n, "probes": probes}
        )
        await _produce_paced(server, paced_n, PACED_RATE)
        done = await child.expect()
        delivered.append(done["received"])
        metrics["latency_p50"] = done["p50"]
        metrics["latency_p99"] = done["p99"]
        metrics["subscribe_p50"] = done["probe_p50"]
        metrics["subscribe_p99"] = done["probe_p99"]
        await child.ask({"cmd": "exit"})
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
        await server.stop()
    return {"metrics": metrics, "delivered": delivered}


def _run_round(kind: type[Any], counts: dict[int, int], paced_n: int, probes: int) -> Sample:
    out = asyncio.run(_round(kind, counts, paced_n, probes))
    return Sample(out["metrics"], tuple(out["delivered"]))


# =======================================================================================
# The clients (child process)
# =======================================================================================


class _Conn(asyncio.Protocol):
    """A minimal WebSocket client: hand-made handshake, frame headers, no validation."""

    def __init__(self, host: str, path: str, owner: _Clients, probe: bool = False) -> None:
        self.host = host
        self.path = path
        self.owner = owner
        self.probe = probe
        self.buf = bytearray()
        self.pos = 0
        self.open = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.first_update: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.subscribe_sent = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        # masked with a zero key: the payload is unchanged (allowed by RFC 6455)
        header = bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00"
        assert self.transport is not None
        self.transport.write(header + payload)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {bytes(buf[:40])!r}")
            del buf[: end + 4]
            self.open = True
            self.subscribe_sent = time.monotonic_ns()
            self.send_text('{"type":"subscribe","stream":"bench"}')
        pos = self.pos
        size = len(buf)
        owner = self.owner
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                start = pos + head
                if buf.startswith(b'{"type":"stream_update"', start):
                    t = buf.rfind(b'"t":', start, end)
                    sent = int(buf[t + 4 : buf.index(b"}", t)])
                    now = time.monotonic_ns()
                    if self.probe:
                        if not self.first_update.done():
                            self.first_update.set_result(now)
                    else:
                        owner.on_update(now, sent)
                elif buf.startswith(b'{"type":"subscribed"', start) and not self.subscribed.done():
                    self.subscribed.set_result(None)
            pos = end
        if pos:
            del buf[:pos]
            pos = 0
        self.pos = pos

    def close(self) -> None:
        if self.transport is not None:
            # a close frame (1000), then the TCP connection
            header = bytes([0x88, 0x82]) + b"\x00\x00\x00\x00"
            self.transport.write(header + (1000).to_bytes(2, "big"))
            self.transport.close()


class _SseConn(asyncio.Protocol):
    """A minimal Server-Sent Events client: a GET, then events split on blank lines."""

    def __init__(self, host: str, path: str, owner: _Clients, probe: bool = False) -> None:
        self.host = host
        self.path = path
        self.owner = owner
        self.probe = probe
        self.buf = bytearray()
        self.open = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.first_update: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.subscribe_sent = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.subscribe_sent = time.monotonic_ns()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request refused: {bytes(buf[:40])!r}")
            del buf[: end + 4]
            self.open = True
        pos = 0
        owner = self.owner
        while True:
            end = buf.find(b"\n\n", pos)
            if end < 0:
                break
            if buf.startswith(b"id: ", pos):  # chunks only carry an id
                t = buf.rfind(b'"t":', pos, end)
                sent = int(buf[t + 4 : buf.index(b"}", t)])
                now = time.monotonic_ns()
                if self.probe:
                    if not self.first_update.done():
                        self.first_update.set_result(now)
                else:
                    owner.on_update(now, sent)
            elif buf.startswith(b"event: subscribed", pos) and not self.subscribed.done():
                self.subscribed.set_result(None)
            pos = end + 2
        if pos:
            del buf[:pos]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Clients:
    """Counts what every connection received, and the latency of each message."""

    def __init__(self) -> None:
        self.expected = 0
        self.received = 0
        self.last_ns = 0
        self.latencies: list[int] = []
        self.done: asyncio.Future[None] | None = None

    def reset(self, clients: int, per_client: int) -> None:
        self.expected = clients * per_client
        self.received = 0
        self.last_ns = 0
        self.latencies = []
        self.done = asyncio.get_running_loop().create_future()

    def on_update(self, now: int, sent: int) -> None:
        self.received += 1
        self.last_ns = now
        self.latencies.append(now - sent)
        if self.received >= self.expected and self.done is not None and not self.done.done():
            self.done.set_result(None)


def _quantiles(values: list[int]) -> tuple[float, float]:
    if not values:
        return 0.0, 0.0
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return p50 / 1e9, p99 / 1e9


async def _client_main(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    protocol = _SseConn if parts.scheme == "http" else _Conn
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    state = _Clients()
    conns: list[_Conn | _SseConn] = []

    def say(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async def open_conn(probe: bool = False) -> _Conn | _SseConn:
        _, conn = await loop.create_connection(
            lambda: protocol(f"{host}:{port}", path, state, probe), host, port
        )
        await conn.subscribed
        return conn

    async def run_probes(count: int) -> list[int]:
        times = []
        for _ in range(count):
            conn = await open_conn(probe=True)
            first = await conn.first_update
            times.append(first - conn.subscribe_sent)
            conn.close()
        return times

    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        if command["cmd"] == "exit":
            for conn in conns:
                conn.close()
            say({"ok": True})
            return
        for conn in conns:
            conn.close()
        conns = []
        state.reset(command["clients"], command["expect"])
        conns = list(await asyncio.gather(*(open_conn() for _ in range(command["clients"]))))
        probes = command.get("probes", 0)
        say({"ready": True})
        probe_times = await run_probes(probes) if probes else []
        assert state.done is not None
        await asyncio.wait_for(state.done, PHASE_TIMEOUT)
        p50, p99 = _quantiles(state.latencies)
        answer: dict[str, Any] = {
            "received": state.received,
            "last_ns": state.last_ns,
            "p50": p50,
            "p99": p99,
        }
        if probes:
            answer["probe_p50"], answer["probe_p99"] = _quantiles(probe_times)
        say(answer)


def _client_entry(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.fanout client")
    parser.add_argument("url")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_client_main(args.url))
    except Exception as exc:  # reported to the harness, which aborts the scenario
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.stdout.flush()
        return 1
    return 0


# =======================================================================================
# The scenario
# =======================================================================================


def _counts(deliveries: int) -> dict[int, int]:
    """Chunks per throughput phase: the same number of deliveries for each client count."""
    return {k: max(BATCH, deliveries // k) for k in CLIENT_COUNTS}


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Alternate headwater and bare broadcast; targets from ``benchmarks/README.md``."""
    deliveries = settings.pick_n(FULL_DELIVERIES, QUICK_DELIVERIES)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    seconds = QUICK_PACED_SECONDS if settings.quick else FULL_PACED_SECONDS
    probes = QUICK_PROBES if settings.quick else PROBES
    if settings.n is not None:  # tiny smoke runs
        seconds, probes = min(seconds, 0.5), min(probes, 5)
    counts = _counts(deliveries)
    paced_n = int(PACED_RATE * seconds)
    small = _counts(max(BATCH * 100, deliveries // 10))

    def impl(kind: type[Any], description: str) -> Implementation:
        return Implementation(
            kind.name,
            run=lambda: _run_round(kind, counts, paced_n, probes),
            warmup=lambda: _run_round(kind, small, PACED_RATE // 4, 3),
            description=description,
        )

    impls = [
        impl(_HeadwaterServer, "headwater Server: StreamingManager + websockets"),
        impl(_HeadwaterSseServer, "headwater Server, clients over Server-Sent Events"),
        impl(_BareServer, "bare websockets server, broadcast() per chunk"),
    ]
    expected = (*(k * n for k, n in counts.items()), PACED_CLIENTS * paced_n)
    measured = measure(impls, rounds=rounds, warmup=warmup, expected=expected, progress=progress)
    columns = [
        Column(
            f"msgs_per_s_{k}",
            f"{k} client{'s' if k != 1 else ''} msgs/s",
            fmt_rate,
            spread=k == CLIENT_COUNTS[-1],
        )
        for k in CLIENT_COUNTS
    ]
    columns += [
        Column("latency_p50", "lat p50", fmt_seconds, spread=False),
        Column("latency_p99", "lat p99", fmt_seconds),
        Column("subscribe_p50", "sub p50", fmt_seconds, spread=False),
        Column("subscribe_p99", "sub p99", fmt_seconds, spread=False),
        Column("sat_latency_p99", "sat p99", fmt_seconds, spread=False),
    ]
    report = ScenarioReport(
        name="fanout",
        title=TITLE,
        params={
            "chunks": " / ".join(f"{n:,}" for n in counts.values()),
            "clients": " / ".join(map(str, CLIENT_COUNTS)),
            "paced": f"{PACED_RATE}/s x {PACED_CLIENTS} clients x {seconds:g}s",
            "rounds": rounds,
            "warm-up": warmup,
        },
        measured=measured,
        columns=columns,
        descriptions={i.name: i.description for i in impls},
        baseline="bare_broadcast",
        ratio_metric="msgs_per_s_100",
        ratio_header="100 clients vs bare",
    )
    report.targets = [
        report.target_ratio("headwater", "bare_broadcast", "msgs_per_s_100", RATIO_TARGET),
        _below(
            report, "headwater p99 delivery latency, 100 clients", "latency_p99", LATENCY_TARGET
        ),
        _below(
            report, "headwater p99 subscribe-to-first-update", "subscribe_p99", SUBSCRIBE_TARGET
        ),
    ]
    for k in CLIENT_COUNTS[:-1]:
        ratio = report.ratio("headwater", "bare_broadcast", f"msgs_per_s_{k}")
        if ratio is not None:
            report.notes.append(f"headwater vs bare_broadcast at {k} client(s): {ratio:.2f}x")
    sse = report.ratio("headwater_sse", "bare_broadcast", f"msgs_per_s_{CLIENT_COUNTS[-1]}")
    ws = report.ratio("headwater", "bare_broadcast", f"msgs_per_s_{CLIENT_COUNTS[-1]}")
    if sse is not None and ws is not None:
        report.notes.append(
            f"at {CLIENT_COUNTS[-1]} clients: headwater_sse (Server-Sent Events) {sse:.2f}x "
            f"bare_broadcast, headwater (WebSocket) {ws:.2f}x"
        )
    report.notes.append(
        "every round delivered every chunk to every client (counts checked); policy `block`"
    )
    report.notes.append(
        "lat = one-way latency at 100 clients under a paced load; sub = subscribe to first "
        "stream_update under that load; sat p99 = latency of the saturated 100-client "
        "throughput run (time spent in buffers; bare broadcast has unbounded ones)"
    )
    return report


def _below(report: ScenarioReport, label: str, metric: str, limit: float) -> TargetResult:
    return report.target_below(label, "headwater", metric, limit, fmt_seconds)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(_client_entry(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.scenarios.fanout client URL")
