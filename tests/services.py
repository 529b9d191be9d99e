"""Real Redis and NATS servers for the tests of the broker plugins, workers and bridge.

Addresses come from ``HEADWATER_REDIS_URL`` (default ``redis://127.0.0.1:6379``) and
``HEADWATER_NATS_URL`` (default ``nats://127.0.0.1:4222``). A test that needs a server
that does not answer (or a client library that is not installed) is *skipped* with the
reason, unless ``HEADWATER_REQUIRE_SERVICES=1``: then it *fails*, so that CI cannot go
green by skipping.

Test modules import the fixtures they use (``from services import redis_url``); every
name a test creates (stream, group, subject, consumer) comes from :func:`unique` and is
removed afterwards.

In-process runs use a private plugin manager (:func:`broker_plugins`); subprocesses
(``headwater worker``, ``headwater serve``) find the broker plugins through headwater's
own ``headwater`` entry points, as any installed plugin is found (:func:`plugin_env`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REDIS_URL = os.environ.get("HEADWATER_REDIS_URL", "redis://127.0.0.1:6379")
NATS_URL = os.environ.get("HEADWATER_NATS_URL", "nats://127.0.0.1:4222")
REQUIRED = os.environ.get("HEADWATER_REQUIRE_SERVICES", "").strip().lower() in {
    "1",
    "true",
    "yes",
    "on",
}

BROKER_PLUGINS = {
    "headwater.redis": "headwater.builtin_plugins.catalogue:redis",
    "headwater.nats": "headwater.builtin_plugins.catalogue:nats",
}
"""Entry point name -> module of the broker plugins."""

REPO = Path(__file__).resolve().parents[1]


_names: list[str] = []
"""Every name :func:`unique` gave (the Redis fixture deletes the keys starting with them)."""


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses: ``hwtest-PREFIX-RANDOM``."""
    name = f"hwtest-{prefix}-{uuid.uuid4().hex[:10]}"
    _names.append(name)
    return name


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (HEADWATER_REQUIRE_SERVICES=1: failing instead of skipping)")
    pytest.skip(reason)


def _reachable(url: str, default_port: int) -> str | None:
    """None when a TCP connection to ``url``'s host and port succeeds, else why not."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return None
    except OSError as exc:
        return f"no server at {host}:{port} ({exc.strerror or exc})"


def need(module: str, extra: str) -> None:
    """Skip (or fail) unless ``module`` is importable."""
    if importlib.util.find_spec(module) is None:
        _unavailable(f"{module} is not installed (pip install 'headwater[{extra}]')")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis server (the ``redis`` package installed)."""
    need("redis", "redis")
    problem = _reachable(REDIS_URL, 6379)
    if problem is not None:
        _unavailable(f"Redis ({REDIS_URL}) is not available: {problem}")
    return REDIS_URL


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The URL of a reachable NATS server with JetStream (``nats-py`` installed)."""
    need("nats", "nats")
    problem = _reachable(NATS_URL, 4222)
    if problem is not None:
        _unavailable(f"NATS ({NATS_URL}) is not available: {problem}")
    return NATS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A synchronous Redis client; keys named by :func:`unique` during the test (and keys
    starting with such a name) are deleted afterwards. Only those: runs going on at the
    same time (another checkout, pytest-xdist) keep theirs."""
    import redis

    client = redis.Redis.from_url(redis_url)
    first = len(_names)
    try:
        yield client
    finally:
        for name in _names[first:]:
            for key in client.scan_iter(match=f"{name}*"):
                client.delete(key)
        client.close()


def broker_plugins() -> Any:
    """A fresh plugin manager with every installed plugin (not installed as the
    process-wide manager).

    Strict about the broker plugins only: a failure of theirs fails the test, while an
    unrelated plugin that fails to load in this environment is skipped, as headwater
    itself does.
    """
    from headwater.core.plugins import PluginManager

    manager = PluginManager(strict=False).load()
    broken = [str(f) for f in manager.failures if f.plugin in BROKER_PLUGINS]
    missing = [name for name in BROKER_PLUGINS if name not in manager.plugins]
    assert not broken, f"broker plugins failed to load: {broken}"
    assert not missing, f"broker plugins not installed: {missing}"
    return manager


def plugin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``headwater`` subprocess that finds the broker plugins (this
    checkout first on ``PYTHONPATH``; ``tmp_path`` is no longer needed)."""
    env = dict(os.environ)
    paths = [str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def headwater_command(*args: str) -> list[str]:
    """``python -m headwater ARGS`` with this interpreter."""
    return [sys.executable, "-m", "headwater", *args]


def stop(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Kill ``proc`` if it is still running and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; fail the test after ``seconds``."""
    import anyio

    for _ in range(max(1, int(seconds / 0.02))):
        if predicate():
            return
        await anyio.sleep(0.02)
    pytest.fail(f"timed out after {seconds:g}s waiting for {what}")
