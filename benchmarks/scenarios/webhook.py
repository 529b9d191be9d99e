"""``webhook``: requests per second into ``http.webhook``, the sink keeping up.

``SENDERS`` concurrent keep-alive ``httpx`` clients POST N one-item JSON requests to an
``http.webhook -> null`` pipeline running in the same process (the webhook's uvicorn
server runs in its own thread), timed from the first request to the last answer:

* ``webhook_receive``: ``ack: receive``, each request answered 202 once its item is in
  the source's inbox;
* ``webhook_commit``: ``ack: commit`` with ``checkpoint: {store: memory,
  every_seconds: 0.01}``, each request answered 202 once a checkpoint covering it was
  committed (the answer waits for the commit interval; throughput comes from the
  concurrent senders);
* ``bare_uvicorn``: the same senders against a plain ASGI app under uvicorn that reads
  the body and answers 202: the ceiling of the HTTP stack (and of the senders, which
  share the machine's two cores with the server).

Every round counts what arrived: the null sink's count (or the bare app's) must be N.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    fmt_rate,
    fmt_seconds,
    measure,
    timed,
)
from . import Progress

TITLE = "http.webhook: requests/s into a pipeline whose sink keeps up"
DESCRIPTION = (
    "Concurrent keep-alive httpx senders POST one-item JSON requests to http.webhook -> "
    "null (ack: receive, and ack: commit with a 10 ms checkpoint interval), and to a bare "
    "uvicorn app answering 202. Metrics: seconds, requests_per_s."
)

FULL_N = 5_000
QUICK_N = 600
WARMUP_N = 200
SENDERS = 32
RATIO_TARGET = 0.5
"""webhook_receive must reach at least half the requests/s of the bare HTTP stack."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _send_all(url: str, n: int) -> int:
    """POST ``n`` requests from ``SENDERS`` clients; returns how many were answered 202."""
    import anyio
    import httpx

    accepted = 0
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def sender() -> None:
            nonlocal accepted
            for i in todo:
                while True:
                    try:
                        answer = await client.post(url, json=[{"i": i}])
                    except httpx.ConnectError:  # the listener is not up yet
                        await anyio.sleep(0.01)
                        continue
                    if answer.status_code == 202:
                        accepted += 1
                        break
                    await anyio.sleep(float(answer.headers.get("retry-after", "0.01")))

        async with anyio.create_task_group() as tg:
            for _ in range(SENDERS):
                tg.start_soon(sender)
    return accepted


def make_webhook(ack: str, n: int) -> Callable[[], Sample]:
    """One round: start the pipeline, send N requests, wait for the run's end."""

    def run() -> Sample:
        import anyio

        import headwater

        port = _free_port()
        params: dict[str, Any] = {"port": port, "ack": ack, "max_requests": n}
        spec: dict[str, Any] = {
            "name": f"bench-webhook-{ack}",
            "sources": {"hook": {"action": "http.webhook", "params": params}},
            "sinks": [{"sink": "null"}],
        }
        if ack == "commit":
            spec["checkpoint"] = {"store": "memory", "every_seconds": 0.01}
        box: dict[str, Any] = {}

        async def main() -> None:
            async with headwater.Engine() as engine, anyio.create_task_group() as tg:

                async def pipeline() -> None:
                    box["result"] = await engine.run(spec)

                tg.start_soon(pipeline)
                box["sample"] = await _timed_async(
                    lambda: _send_all(f"http://127.0.0.1:{port}/", n)
                )

        anyio.run(main)
        sample: Sample = box["sample"]
        sample.result = box["result"].outputs["null"]
        return sample

    return run


async def _timed_async(fn: Callable[[], Any]) -> Sample:
    import time

    cpu = time.process_time()
    start = time.perf_counter()
    result = await fn()
    seconds = time.perf_counter() - start
    return Sample({"seconds": seconds, "cpu_seconds": time.process_time() - cpu}, result)


def make_bare(n: int) -> Callable[[], Sample]:
    """One round against a plain ASGI app answering 202 under uvicorn (in a thread)."""

    def run() -> Sample:
        import anyio
        import uvicorn

        received = 0

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            nonlocal received
            if scope["type"] != "http":
                return
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            received += 1
            body = b'{"accepted":1}'
            headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
            await send({"type": "http.response.start", "status": 202, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, interface="asgi3", lifespan="off", log_config=None, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True
        )
        thread.start()
        try:
            sample = timed(lambda: anyio.run(_send_all, f"http://127.0.0.1:{port}/", n))
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
        sample.result = received
        return sample

    return run


def _derive(n: int) -> Callable[[dict[str, float]], dict[str, float]]:
    def derive(metrics: dict[str, float]) -> dict[str, float]:
        seconds = metrics["seconds"]
        return {
            "seconds": seconds,
            "requests_per_s": n / seconds,
            "cpu_seconds": metrics["cpu_seconds"],
        }

    return derive


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the three variants; target: webhook_receive >= 0.5x bare_uvicorn."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    small = min(n, WARMUP_N)
    impls = [
        Implementation(
            "webhook_receive",
            run=make_webhook("receive", n),
            warmup=make_webhook("receive", small),
            description="http.webhook -> null, ack: receive",
            requires=("httpx", "uvicorn"),
        ),
        Implementation(
            "webhook_commit",
            run=make_webhook("commit", n),
            warmup=make_webhook("commit", small),
            description="http.webhook -> null, ack: commit, checkpoint every 10 ms",
            requires=("httpx", "uvicorn"),
        ),
        Implementation(
            "bare_uvicorn",
            run=make_bare(n),
            warmup=make_bare(small),
            description="a plain ASGI app answering 202 under uvicorn (the HTTP stack)",
            requires=("httpx", "uvicorn"),
        ),
    ]
    measured = measure(
        impls, rounds=rounds, warmup=warmup, derive=_derive(n), expected=n, progress=progress
    )
    report = ScenarioReport(
        name="webhook",
        title=TITLE,
        params={"N": n, "senders": SENDERS, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("seconds", "seconds", fmt_seconds),
            Column("requests_per_s", "requests/s", fmt_rate, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="bare_uvicorn",
        ratio_metric="seconds",
        ratio_header="time vs bare_uvicorn",
    )
    report.targets = [
        report.target_ratio_below("webhook_receive", "bare_uvicorn", "seconds", 1 / RATIO_TARGET),
    ]
    report.notes.append(
        f"every round delivered exactly {n:,} items (the null sink's count); senders and "
        "servers share the machine, so requests/s is that of the whole exchange"
    )
    return report
