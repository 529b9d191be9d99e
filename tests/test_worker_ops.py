"""Operating workers: readiness that follows the broker, JSON logs, the event-loop lag
monitor, and the supervisor examples of docs/scaling-out.md.

* ``headwater worker --metrics-port``: ``/readyz`` answers 503 while Redis is down and
  200 once the worker is back; ``/healthz`` and ``/metrics`` answer throughout.
* ``--log-format json``: every stderr line parses, and a run's records carry its run id
  and stage.
* :class:`~headwater.core.loop_lag.LagMonitor` reports a ``fn`` that blocks the event
  loop, with its stack, and counts the stall.
* The systemd unit and the Compose file of the docs, which the docs tests do not run,
  are syntax-checked here.
"""

from __future__ import annotations

import configparser
import json
import logging
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import headwater
from broker_servers import RedisServer, free_port, redis_server
from services import (
    headwater_command,
    plugin_env,
    redis_client,
    redis_url,
    stop,
    unique,
    until,
)

__all__ = ["redis_client", "redis_server", "redis_url"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "scaling-out.md"


def get(url: str) -> tuple[int, str]:
    """``(status, body)`` of a GET (no exception for 5xx)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_for_status(url: str, status: int, seconds: float) -> str:
    """Poll ``url`` every 50 ms until it answers ``status``; returns the body."""
    last: tuple[int, str] = (0, "")
    for _ in range(int(seconds / 0.05)):
        last = get(url)
        if last[0] == status:
            return last[1]
        time.sleep(0.05)
    pytest.fail(f"{url} answered {last} instead of {status} for {seconds:g}s")


def test_readiness_follows_the_broker(tmp_path: Path, redis_server: RedisServer) -> None:
    client = redis_server.client()
    for i in range(100):
        client.xadd("jobs", {"data": json.dumps({"n": i})})
    client.close()
    spec = {
        "name": "ops",
        "sources": {
            "in": {
                "action": "redis.stream",
                "params": {
                    "url": redis_server.url,
                    "stream": "jobs",
                    "group": "g",
                    "block_ms": 100,
                },
            }
        },
        "sinks": [{"sink": "jsonl", "params": {"path": "out.jsonl"}}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    err = tmp_path / "worker.err"
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            headwater_command("worker", str(path), "--metrics-port", str(port)),
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=plugin_env(tmp_path),
            cwd=tmp_path,
        )
    try:
        assert wait_for_status(f"{base}/readyz", 200, 60).strip() == "ready"
        redis_server.kill()
        body = wait_for_status(f"{base}/readyz", 503, 30)
        assert f"redis.stream source ({redis_server.url})" in body
        assert get(f"{base}/healthz")[0] == 200  # alive all the same: do not restart it
        redis_server.start()
        wait_for_status(f"{base}/readyz", 200, 30)
        status, metrics = get(f"{base}/metrics")
        assert status == 200
        assert "headwater_stage_items_out_total" in metrics
        assert get(f"{base}/nothing")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
    finally:
        stop(proc)
    assert f"health and metrics at {base}" in err.read_text()


def test_json_log_lines_carry_run_and_stage(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    stream = unique("logs")
    redis_client.xadd(stream, {"data": "1"})
    spec = {
        "name": "logs",
        "sources": {
            "in": {
                "action": "redis.stream",
                "params": {"url": redis_url, "stream": stream, "group": "g", "idle_exit": 0.3},
            }
        },
        "sinks": [{"sink": "null"}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps(spec), encoding="utf-8")
    args = ("worker", str(path), "--log-format", "json", "--log-level", "info")
    proc = subprocess.run(
        headwater_command(*args),
        capture_output=True,
        text=True,
        env=plugin_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # every line parses
    assert {"time", "level", "logger", "message"} <= set(records[0])
    banner = next(r for r in records if r["message"].startswith("worker "))
    run = banner["run"]
    assert re.search(rf"\(run {run}\)", banner["message"])
    joined = next(r for r in records if r["logger"] == "headwater.redis")
    assert (joined["run"], joined["stage"], joined["pipeline"]) == (run, "sources.in", "logs")
    assert "joined group g" in joined["message"]
    assert any(r["message"].startswith("pipeline 'logs' succeeded") for r in records)


@pytest.mark.anyio
async def test_the_lag_monitor_reports_a_blocking_fn(caplog: pytest.LogCaptureFixture) -> None:
    from headwater.core.loop_lag import LagMonitor
    from headwater.core.metrics import MetricsRegistry

    def sleepy_fn(item: int) -> int:
        time.sleep(0.3)  # blocks the event loop: the mistake the monitor is for
        return item

    spec = {
        "name": unique("lag"),
        "sources": {"n": {"action": "range", "params": {"stop": 2}}},
        "steps": [{"transformer": "map", "params": {"fn": sleepy_fn}}],
        "sinks": [{"sink": "collect"}],
    }
    registry = MetricsRegistry()
    caplog.set_level(logging.WARNING, logger="headwater.loop")
    # imports and plugin loading block the loop too: do them before the monitor watches
    await headwater.run({**spec, "steps": []})
    async with LagMonitor(threshold=0.1, metrics=registry) as monitor:
        result = await headwater.run(spec)
        await until(
            lambda: any("ran again" in r.getMessage() for r in caplog.records),
            5,
            "the end of the stall to be logged",
        )
        figures = registry.snapshot()["event_loop"]
    assert result.output == [0, 1]
    blocked = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert blocked, caplog.text
    # the stack of the blocking code
    assert any("sleepy_fn" in m and "time.sleep(0.3)" in m for m in blocked), blocked
    assert monitor.stalls >= 1
    assert figures["stalls"] >= 1
    assert figures["max_lag_seconds"] >= 0.2


def fenced(language: str) -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def test_the_systemd_unit_in_the_docs_is_well_formed() -> None:
    (unit,) = fenced("ini")
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep case
    parser.read_string(unit)
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
    service = parser["Service"]
    argv = service["ExecStart"].split()
    assert argv[1:3] == ["worker", "work.yaml"]
    from headwater.cli import build_parser

    args = build_parser().parse_args(
        [a.replace("%i", "1") for a in argv[1:]]
    )  # the command line is one headwater accepts
    assert args.metrics_port == 911
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30  # longer than the default drain timeout


def test_the_compose_healthcheck_in_the_docs_is_well_formed() -> None:
    composes = [yaml.safe_load(b) for b in fenced("yaml")]
    (compose,) = [c for c in composes if isinstance(c, dict) and "services" in c]
    worker = compose["services"]["worker"]
    from headwater.cli import build_parser

    args = build_parser().parse_args(worker["command"].split()[1:])
    check = worker["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    compile(check[3], "healthcheck", "exec")  # the probe is valid Python
    assert f"127.0.0.1:{args.metrics_port}/healthz" in check[3]
    assert worker["stop_signal"] == "SIGTERM"
